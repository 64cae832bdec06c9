"""Objects end to end: instances, one row per object and the instance metrics, written with the shard's
commit, S3 to S3 through a killed driver, and at the image's own size in windows."""

from __future__ import annotations

import io
import json
import math
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pytest
import s3fs
from PIL import Image

from pipeline.config import ObjectsConfig, SampleDataConfig, SegmentConfig
from pipeline.imaging import decode_instances, decode_mask
from pipeline.instances import class_scores
from pipeline.io import storage
from pipeline.model import ModelInfo, build_unet, save_artifact
from pipeline.sample_data import write_sample_data
from pipeline.segment.measure import true_objects
from pipeline.segment.run import run_segmentation
from tests.conftest import TINY_CLASSES, TINY_UNET

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_cluster")]


def read_table(output: str, part: str) -> list[dict]:
    """Return every row of ``<output>/<part>/*.parquet`` read back with pyarrow (through fsspec for s3://)."""
    fs, path = storage.filesystem_for(storage.join_url(output, part))
    return pads.dataset(path, format="parquet", filesystem=fs).to_table().to_pylist()


def truth_from_tars(input_url: str) -> dict[str, dict[str, bytes]]:
    """Return ``key -> {"mask": bytes, "instances": bytes}`` from the input tar shards."""
    found: dict[str, dict[str, bytes]] = {}
    for url in storage.list_files(input_url, [".tar"]):
        with tarfile.open(fileobj=io.BytesIO(storage.read_bytes(url))) as archive:
            for member in archive:
                key, _, role = member.name.partition(".")
                if role in ("mask.png", "instances.png"):
                    found.setdefault(key, {})[role.split(".")[0]] = archive.extractfile(member).read()
    return found


def check_objects(output: str, metrics: list[dict], objects: list[dict], truth: dict[str, dict[str, bytes]] | None,
                  num_classes: int, read: object) -> None:
    """Assert the objects table, instance images and instance metrics agree with each other and the truth."""
    assert len({(row["key"], row["label"]) for row in objects}) == len(objects), "an object row is repeated"
    by_key = Counter(row["key"] for row in objects)
    assert set(by_key) <= {row["key"] for row in metrics}
    for row in metrics:
        assert row["status"] == "ok"
        assert by_key[row["key"]] == sum(row["objects_predicted"])
        own = [o for o in objects if o["key"] == row["key"]]
        # every foreground pixel of the mask is in exactly one object (no min_size here)
        assert sum(o["area"] for o in own) == sum(row["class_pixels"][1:])
        labels = decode_instances(read(row["instances_uri"]), (row["height"], row["width"]))
        areas = np.bincount(labels.ravel(), minlength=max([o["label"] for o in own], default=0) + 1)
        assert all(areas[o["label"]] == o["area"] for o in own)
        assert all(0.0 <= o["mean_score"] <= 1.0 for o in own)
        predicted_mask = np.asarray(Image.open(io.BytesIO(read(row["mask_uri"]))))
        assert all((predicted_mask[labels == o["label"]] == o["class"]).all() for o in own)
        if truth is None:
            assert row["objects_true"] is None and all(o["true_label"] is None for o in own)
            continue
        files = truth[row["key"]]
        true_mask = decode_mask(files["mask"], num_classes, labels.shape)
        true_labels, true_class, source = true_objects(true_mask, decode_instances(files["instances"], labels.shape),
                                                       num_classes, 8)
        assert row["truth_instances"] == source == "labels"
        label_class = np.zeros(labels.max() + 1, dtype=np.int32)
        for o in own:
            label_class[o["label"]] = o["class"]
        expected = class_scores(true_labels, true_class, labels, label_class, num_classes)
        assert row["objects_true"] == expected["objects_true"]
        assert np.allclose(row["dsb_score"], expected["dsb_score"], equal_nan=True)
        assert np.allclose(row["pq"], expected["pq"], equal_nan=True)
        assert row["object_tp"] == expected["tp"] and row["object_fn"] == expected["fn"]
        assert all(o["true_label"] == expected["predicted_match"][o["label"]] for o in own)


def committed_shards(fs: s3fs.S3FileSystem, output: str) -> int:
    fs.invalidate_cache()
    return len(fs.glob(f"{output}/_done/*.json"))


def run_state(fs: s3fs.S3FileSystem, output: str) -> dict:
    try:
        return json.loads(fs.cat_file(f"{output}/run.json"))
    except (OSError, ValueError):
        return {}


def test_objects_s3_to_s3_resume_after_a_driver_kill_without_duplicate_rows(s3_bucket: str, tmp_path: Path) -> None:
    data, output, model = f"{s3_bucket}/shards", f"{s3_bucket}/runs/objects", str(tmp_path / "model")
    write_sample_data(SampleDataConfig(output=data, num_images=64, num_shards=8, min_size=32, max_size=48,
                                       instances=True))
    # With the tiny model all shards commit within a few tenths of a second of the first, too close
    # for the kill to land between them; at 256x256 and 16 filters they come ~0.4 s apart.
    spec = replace(TINY_UNET, input_size=(256, 256), depth=3, base_filters=16)
    import keras

    keras.utils.set_random_seed(3)  # an untrained model that predicts some foreground, whatever ran before
    save_artifact(build_unet(spec), ModelInfo(spec=spec, class_names=TINY_CLASSES), model)
    command = [sys.executable, "-m", "jobs.cli", "segment", "--input", data, "--model", model, "--output", output,
               "--batch-size", "4", "--objects", "--split", "watershed", "--min-object-size", "0", "stage_cpus=0.2"]
    env = {name: value for name, value in os.environ.items() if name != "RAY_ADDRESS"}  # its own local Ray
    fs = s3fs.S3FileSystem()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None and (
            committed_shards(fs, output) < 2 or "progress" not in run_state(fs, output)):
        time.sleep(0.05)
    killed = process.poll() is None
    if killed:
        os.killpg(process.pid, signal.SIGKILL)  # the driver and the local Ray it started, mid-run
    process.wait(timeout=60)
    assert killed, "the run finished before the driver could be killed"
    state = run_state(fs, output)
    assert state["status"] == "running" and state["progress"]["committed_shards"] >= 1  # rewritten every few s
    assert 2 <= committed_shards(fs, output) < 8

    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)

    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "committed by an earlier attempt" in finished.stdout + finished.stderr
    fs.invalidate_cache()
    metrics, objects = read_table(output, "metrics"), read_table(output, "objects")
    assert sorted(row["key"] for row in metrics) == [f"sample-{i:06d}" for i in range(64)]
    assert sorted(p.rsplit("/", 1)[1] for p in fs.find(f"{output}/objects")) == [
        f"shard-{i:05d}.parquet" for i in range(8)]
    assert objects, "no objects found"
    check_objects(output, metrics, objects, truth_from_tars(data), 3, fs.cat_file)
    run = json.loads(fs.cat_file(f"{output}/run.json"))
    assert run["status"] == "finished" and run["config"]["objects"] == {
        "enabled": True, "min_size": 0, "split": "watershed", "diameter": 0.0, "connectivity": 8}


def test_objects_in_windows_at_the_image_size_without_ground_truth(tmp_path: Path, tiny_model: str) -> None:
    data, output = tmp_path / "data", tmp_path / "out"
    write_sample_data(SampleDataConfig(output=str(data), num_images=4, num_shards=1, min_size=40, max_size=90,
                                       layout="folder"))
    for path in (data / "masks").iterdir():  # no ground truth: the objects are measured but not scored
        path.unlink()
    summary = run_segmentation(SegmentConfig(input=str(data), model=tiny_model, output=str(output), tiling="windows",
                                             objects=ObjectsConfig(enabled=True, connectivity=4, min_size=0)))
    assert summary.images == 4 and summary.errors == 0
    metrics, objects = read_table(str(output), "metrics"), read_table(str(output), "objects")
    check_objects(str(output), metrics, objects, None, 3, lambda url: Path(url).read_bytes())
    assert all(row["truth_instances"] is None and math.isnan(row["mean_dsb_score"] or math.nan) for row in metrics)

    bigger = tmp_path / "out-min-size"  # objects below min_size are dropped: fewer, all at least that large
    run_segmentation(SegmentConfig(input=str(data), model=tiny_model, output=str(bigger), tiling="windows",
                                   objects=ObjectsConfig(enabled=True, connectivity=4, min_size=20)))
    large = read_table(str(bigger), "objects")
    assert large and all(o["area"] >= 20 for o in large) and len(large) < len(objects)


def test_a_border_model_trained_on_instance_labels_gives_objects_from_its_borders_s3_to_s3(s3_bucket: str,
                                                                                          tmp_path: Path) -> None:
    from pipeline.config import LoaderConfig, ModelConfig, OptimConfig, TrainConfig
    from pipeline.train.run import run_training

    data, model, output = f"{s3_bucket}/nuclei", str(tmp_path / "model"), f"{s3_bucket}/runs/borders"
    write_sample_data(SampleDataConfig(output=data, num_images=12, num_shards=2, num_classes=2, min_size=40, max_size=48,
                                       instances=True))
    # the plan, left to choose the target, draws borders from the instance labels
    run_training(TrainConfig(data=data, output=model, num_workers=1, cpus_per_worker=1.0, epochs=2, scale="resize",
                             val_fraction=0.0, optim=OptimConfig(batch_size=4), loader=LoaderConfig(steps_per_epoch=3),
                             model=ModelConfig(input_size=32, depth=2, base_filters=4)))
    info = json.loads(Path(model, "model.json").read_text())
    plan = {choice["key"]: choice for choice in info["plan"]}
    assert info["parameters"]["target"] == "borders" and not plan["model.target"]["given"]
    assert info["objects"]["border_width"] == plan["model.border_width"]["value"] >= 1
    assert info["objects"]["diameter"] > 0 and info["objects"]["source"] == "labels"

    summary = run_segmentation(SegmentConfig(input=data, model=model, output=output,
                                             objects=ObjectsConfig(enabled=True, min_size=0)))
    assert summary.images == 12 and summary.errors == 0
    fs = s3fs.S3FileSystem()
    fs.invalidate_cache()
    metrics, objects = read_table(output, "metrics"), read_table(output, "objects")
    assert sorted(row["key"] for row in metrics) == [f"sample-{i:06d}" for i in range(12)]
    assert all(row["objects_method"] == "borders" for row in metrics)
    for row in metrics:  # the masks hold the user's classes only: borders folded into their objects
        assert np.asarray(Image.open(io.BytesIO(fs.cat_file(row["mask_uri"])))).max() <= 1
        assert len(row["class_pixels"]) == 2
    check_objects(output, metrics, objects, truth_from_tars(data), 2, fs.cat_file)
