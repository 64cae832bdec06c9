"""Labelled data as its owners keep it, end to end: VOC-style palette masks with 255 bands trained on
and segmented through a labels.yaml; a COCO file in object storage segmented into objects and
exported for COCOeval."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline import metrics
from pipeline.config import (
    ExportConfig,
    LoaderConfig,
    ModelConfig,
    ObjectsConfig,
    OptimConfig,
    ReportConfig,
    SampleDataConfig,
    SegmentConfig,
    TrainConfig,
)
from pipeline.imaging import IGNORE
from pipeline.io import storage
from pipeline.report.build import build_report
from pipeline.report.export import export_run
from pipeline.sample_data import write_sample_data
from pipeline.segment.run import run_segmentation
from pipeline.train.run import run_training
from tests.segment.test_run import read_metrics
from tests.test_labels import VOC_PALETTE


def with_void_band(mask: np.ndarray) -> np.ndarray:
    """Return ``mask`` with every pixel on an object's boundary set to 255, as PASCAL VOC draws them."""
    edges = np.zeros(mask.shape, bool)
    edges[:-1] |= mask[:-1] != mask[1:]
    edges[1:] |= mask[:-1] != mask[1:]
    edges[:, :-1] |= mask[:, :-1] != mask[:, 1:]
    edges[:, 1:] |= mask[:, :-1] != mask[:, 1:]
    return np.where(edges, IGNORE, mask).astype(np.uint8)


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_voc_palette_masks_with_void_bands_train_and_segment_through_a_labels_yaml(tmp_path: Path) -> None:
    data = tmp_path / "voc"
    write_sample_data(SampleDataConfig(output=str(data), num_images=8, num_shards=1, num_classes=3, min_size=32,
                                       max_size=40, layout="folder"))
    for path in (data / "masks").glob("*.png"):
        picture = Image.fromarray(with_void_band(np.array(Image.open(path)))).convert("P")
        picture.putpalette(VOC_PALETTE)
        picture.save(path)
    (data / "labels.yaml").write_text("classes: [background, disc, stripes]\nignore: [255]\n")
    model = tmp_path / "model"
    cfg = TrainConfig(data=str(data), output=str(model), num_workers=1, cpus_per_worker=1.0, epochs=1, scale="resize",
                      val_fraction=0.0, optim=OptimConfig(batch_size=4), loader=LoaderConfig(steps_per_epoch=0),
                      model=ModelConfig(input_size=32, depth=2, base_filters=4))
    summary = run_training(cfg)  # no --num-classes: the label map says 3
    assert summary.skipped == "" and summary.history[0]["images"] == 8
    info = json.loads((model / "model.json").read_text())
    assert info["num_classes"] == 3 and info["class_names"] == ["background", "disc", "stripes"]
    assert info["labels"]["ignore"] == [255]

    run_segmentation(SegmentConfig(input=str(data), model=str(model), output=str(tmp_path / "seg")))
    rows = read_metrics(str(tmp_path / "seg"))
    assert len(rows) == 8 and all(row["status"] == "ok" and row["truth_error"] is None for row in rows)
    for row in rows:  # the counts are the hand computation on the labelled pixels alone
        truth = np.array(Image.open(data / "masks" / f"{row['key']}.png"))
        predicted = np.array(Image.open(row["mask_uri"]))
        labelled = truth != IGNORE
        expected = metrics.image_metrics(predicted[labelled], truth[labelled], 3)
        assert row["tp"] == expected["tp"].tolist() and row["fp"] == expected["fp"].tolist()
        assert row["fn"] == expected["fn"].tolist() and row["ignored_pixels"] == int((~labelled).sum()) > 0
    (metrics_file,) = (tmp_path / "seg" / "metrics").glob("*.parquet")
    assert json.loads(pq.read_schema(metrics_file).metadata[b"class_names"]) == ["background", "disc", "stripes"]
    report = json.loads(Path(build_report(ReportConfig(run=str(tmp_path / "seg"), worst=2)).summary_url).read_text())
    assert [entry["name"] for entry in report["classes"]] == ["background", "disc", "stripes"]
    assert report["counts"]["ignored_pixels"] == sum(row["ignored_pixels"] for row in rows)


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_a_coco_file_in_object_storage_is_segmented_into_objects_and_exported_for_cocoeval(
        s3_bucket: str, tiny_model: str, tmp_path: Path) -> None:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    data = f"{s3_bucket}/coco"
    write_sample_data(SampleDataConfig(output=data, num_images=6, num_shards=1, num_classes=3, min_size=32, max_size=40,
                                       layout="coco", instances=True))
    annotations = f"{data}/annotations.json"
    trained = run_training(TrainConfig(data=annotations, output=f"{s3_bucket}/model", num_workers=1,
                                       cpus_per_worker=1.0, epochs=1, scale="resize", val_fraction=0.0,
                                       optim=OptimConfig(batch_size=2), loader=LoaderConfig(steps_per_epoch=0),
                                       model=ModelConfig(input_size=32, depth=2, base_filters=4)))
    assert trained.history[0]["images"] == 6 and trained.skipped == ""  # the classes came from the categories
    info = json.loads(storage.read_bytes(f"{s3_bucket}/model/model.json"))
    assert info["class_names"] == ["background", "class_1", "class_2"] and info["labels"]["ignore"] == [IGNORE]
    summary = run_segmentation(SegmentConfig(input=annotations, model=tiny_model, output=f"{s3_bucket}/seg",
                                             folder_shard_size=4, objects=ObjectsConfig(enabled=True)))
    assert summary.images == 6 and summary.errors == 0
    rows = read_metrics(f"{s3_bucket}/seg")
    assert sorted(row["key"] for row in rows) == [f"sample-{index:06d}" for index in range(6)]
    assert all(row["status"] == "ok" and row["tp"] is not None and row["truth_instances"] == "labels" for row in rows)
    assert {row["source"] for row in rows} == {annotations}

    export_run(ExportConfig(run=f"{s3_bucket}/seg", output=f"{s3_bucket}/results.json"))
    results = json.loads(storage.read_bytes(f"{s3_bucket}/results.json"))
    assert len(results) == sum(sum(row["objects_predicted"]) for row in rows)
    assert results, "the tiny model predicts objects on these images"
    (tmp_path / "truth.json").write_bytes(storage.read_bytes(annotations))
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO(str(tmp_path / "truth.json"))
        evaluation = COCOeval(truth, truth.loadRes(results), "segm")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    assert 0.0 <= evaluation.stats[0] <= 1.0  # an untrained model: any figure, but one COCOeval computed
