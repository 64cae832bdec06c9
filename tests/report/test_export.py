"""COCO out: a run's objects as a COCO results file that pycocotools' COCOeval reads and scores."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline import schema
from pipeline.config import ExportConfig
from pipeline.imaging import encode_instances
from pipeline.io.readers import read_shard
from pipeline.io.shards import discover_shards
from pipeline.report.export import export_run
from pipeline.report.reading import ReportError
from tests.io.test_coco import HEIGHT, WIDTH, hand_data


def coco_eval(annotations: str, results: str) -> np.ndarray:
    """Return COCOeval's 12 segmentation statistics (stats[0]: AP at IoU 0.50:0.95)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO(annotations)
        evaluation = COCOeval(truth, truth.loadRes(results), "segm")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return evaluation.stats


def write_run_of(truth: Path, run: Path, shift: int = 0) -> None:
    """Write a run over the COCO file at ``truth`` as `segpipe segment --objects` would, whose predicted
    objects are the file's own (moved ``shift`` pixels right)."""
    (shard,) = discover_shards(str(truth), None, 256)
    rows, objects = [], {"key": [], "label": [], "class": [], "mean_score": []}
    for row in read_shard(shard):
        if row["error"] or not row["instances"]:
            continue
        from pipeline import imaging

        labels = np.roll(imaging.decode_instances(row["instances"], (HEIGHT, WIDTH)), shift, axis=1)
        mask = imaging.decode_mask(row["mask"], imaging.LabelMap(num_classes=3, ignore=(255,)), (HEIGHT, WIDTH))
        uri = run / "instances" / shard.name / f"{row['key']}.png"
        uri.parent.mkdir(parents=True, exist_ok=True)
        uri.write_bytes(encode_instances(labels)[0])
        rows.append({"key": row["key"], "source": shard.url, "status": "ok", "model_id": "m", "run_id": "r",
                     "instances_uri": str(uri)})
        for label in range(1, int(labels.max()) + 1):
            objects["key"].append(row["key"])
            objects["label"].append(label)
            objects["class"].append(int(np.bincount(mask[np.roll(labels, -shift, axis=1) == label]).argmax()))
            objects["mean_score"].append(0.9)
    for part in ("metrics", "objects", "_done"):
        (run / part).mkdir(parents=True, exist_ok=True)
    pq.write_table(schema.metrics_table(rows), run / "metrics" / f"{shard.name}.parquet")
    pq.write_table(schema.objects_table({**objects, "area": [1] * len(objects["key"])}),
                   run / "objects" / f"{shard.name}.parquet")
    (run / "_done" / f"{shard.name}.json").write_text("{}")
    (run / "run.json").write_text(json.dumps({"run_id": "r", "status": "finished", "shards": 1, "config": {
        "input": str(truth), "objects": {"enabled": True}}}))


def test_cocoeval_scores_an_export_of_the_true_objects_as_perfect_and_a_shifted_one_lower(tmp_path: Path) -> None:
    document = hand_data(tmp_path)
    document["annotations"] = document["annotations"][:4]  # without the broken polygon, which pycocotools cannot read
    truth = tmp_path / "annotations.json"
    truth.write_text(json.dumps(document))
    write_run_of(truth, tmp_path / "run")
    summary = export_run(ExportConfig(run=str(tmp_path / "run"), output=str(tmp_path / "results.json")))
    entries = json.loads((tmp_path / "results.json").read_text())
    assert summary.objects == len(entries) == 3 and summary.coco_ids
    assert {entry["image_id"] for entry in entries} == {11} and {entry["category_id"] for entry in entries} == {3, 7}
    assert coco_eval(str(truth), str(tmp_path / "results.json"))[0] == pytest.approx(1.0)

    write_run_of(truth, tmp_path / "shifted", shift=1)  # each object one pixel right: IoU 0.5-0.6
    export_run(ExportConfig(run=str(tmp_path / "shifted"), output=str(tmp_path / "shifted.json")))
    assert 0.0 < coco_eval(str(truth), str(tmp_path / "shifted.json"))[0] < 0.5


def test_a_run_without_objects_is_refused(tmp_path: Path) -> None:
    hand_data(tmp_path)
    write_run_of(tmp_path / "annotations.json", tmp_path / "run")
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    record["config"]["objects"]["enabled"] = False
    (tmp_path / "run" / "run.json").write_text(json.dumps(record))
    with pytest.raises(ReportError, match="--objects"):
        export_run(ExportConfig(run=str(tmp_path / "run"), output=str(tmp_path / "results.json")))
