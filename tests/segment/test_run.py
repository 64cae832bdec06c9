"""End-to-end segmentation runs on the session's local Ray, from and to the S3 server or local files."""

from __future__ import annotations

import io
import json
import math
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pytest
import s3fs
from PIL import Image

from pipeline.config import ConfigError, SampleDataConfig, SegmentConfig, load_config
from pipeline.imaging import decode_mask, encode_png
from pipeline.io import storage
from pipeline.metrics import image_metrics
from pipeline.sample_data import write_sample_data
from pipeline.segment.run import run_segmentation
from tests.conftest import FAKE_KEY, FAKE_SECRET

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_cluster")]


def read_metrics(output: str) -> list[dict]:
    """Return every metrics row under ``output`` read back with pyarrow (through fsspec for s3://)."""
    fs, path = storage.filesystem_for(storage.join_url(output, "metrics"))
    return pads.dataset(path, format="parquet", filesystem=fs).to_table().to_pylist()


def truth_masks_from_tars(input_url: str) -> dict[str, bytes]:
    """Return ``key -> encoded ground-truth mask`` from the input tar shards."""
    masks = {}
    for url in storage.list_files(input_url, [".tar"]):
        with tarfile.open(fileobj=io.BytesIO(storage.read_bytes(url))) as archive:
            for member in archive:
                if member.name.endswith(".mask.png"):
                    masks[member.name[: -len(".mask.png")]] = archive.extractfile(member).read()
    return masks


def copy_tree(source: str, target: str) -> None:
    for path in Path(source).iterdir():
        storage.write_bytes(storage.join_url(target, path.name), path.read_bytes())


@pytest.mark.parametrize("tiling", ["resize", "windows"])
def test_s3_to_s3_run_is_complete_and_its_metrics_recompute(s3_bucket: str, tiny_model: str, tiling: str) -> None:
    data, model, output = f"{s3_bucket}/shards", f"{s3_bucket}/models/tiny", f"{s3_bucket}/runs/r1"
    # windows: images from below the 32-px tile to several windows a side
    sizes = {"min_size": 40, "max_size": 72} if tiling == "resize" else {"min_size": 20, "max_size": 130}
    write_sample_data(SampleDataConfig(output=data, num_images=20, num_shards=3, num_classes=3, **sizes))
    copy_tree(tiny_model, model)

    summary = run_segmentation(SegmentConfig(input=data, model=model, output=output, batch_size=8, run_id="e2e",
                                             tiling=tiling, overlap=0.5))

    rows = read_metrics(output)
    assert summary.images == len(rows) == 20 and summary.errors == 0
    assert len({row["key"] for row in rows}) == 20
    truths = truth_masks_from_tars(data)
    fs = s3fs.S3FileSystem()
    for row in rows:
        assert row["status"] == "ok" and row["run_id"] == "e2e" and row["model_id"] == summary.model_id
        predicted = np.asarray(Image.open(io.BytesIO(fs.cat_file(row["mask_uri"]))))
        assert predicted.shape == (row["height"], row["width"])
        assert row["class_pixels"] == np.bincount(predicted.ravel(), minlength=3).tolist()
        truth = decode_mask(truths[row["key"]], 3, predicted.shape)
        expected = image_metrics(predicted, truth, 3)
        assert row["tp"] == expected["tp"].tolist() and row["fp"] == expected["fp"].tolist()
        assert row["fn"] == expected["fn"].tolist()
        assert np.allclose(row["dice"], expected["dice"], equal_nan=True)
        assert np.allclose(row["iou"], expected["iou"], equal_nan=True)
        assert math.isclose(row["mean_dice"], expected["mean_dice"]) or (math.isnan(row["mean_dice"]) and math.isnan(expected["mean_dice"]))
    names = sorted(p.rsplit("/", 1)[1] for p in fs.find(f"{output}/metrics"))
    assert names == ["shard-00000.parquet", "shard-00001.parquet", "shard-00002.parquet"]
    assert len(fs.find(f"{output}/_done")) == 3
    run_text = fs.cat_file(f"{output}/run.json").decode()
    run = json.loads(run_text)
    assert run["status"] == "finished" and run["summary"]["images"] == 20 and run["model"]["id"] == summary.model_id
    expected_tiling = {"mode": tiling, "requested": tiling, "window": [32, 32]}
    if tiling == "windows":
        expected_tiling.update(overlap=0.5, blend="gaussian")
    assert run["tiling"] == expected_tiling
    assert FAKE_SECRET not in run_text and FAKE_KEY not in run_text


def mixed_tar(path: Path) -> dict[str, str]:
    """Write a tar of good and bad samples; return ``key -> expected error fragment`` ("" = ok)."""
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)
    good_png = encode_png(rgb)
    gray16 = Image.fromarray((rng.integers(0, 65535, (37, 45))).astype(np.uint16))
    buffer16 = io.BytesIO()
    gray16.save(buffer16, format="PNG")
    cmyk = io.BytesIO()
    Image.new("CMYK", (20, 20)).save(cmyk, format="JPEG")
    members = {
        "rgb.png": good_png,
        "rgb.mask.png": encode_png((rng.random((40, 50)) > 0.5).astype(np.uint8) * 255),
        "gray8.png": encode_png(rng.integers(0, 255, (33, 71), dtype=np.uint8)),
        "gray16.png": buffer16.getvalue(),
        "corrupt.png": b"\x89PNG\r\n\x1a\n not really",
        "truncated.png": good_png[: len(good_png) // 2],
        "cmyk.jpg": cmyk.getvalue(),
        "wrongsize.png": good_png,
        "wrongsize.mask.png": encode_png(np.zeros((10, 10), np.uint8)),
        "badclass.png": good_png,
        "badclass.mask.png": encode_png(np.full((40, 50), 7, np.uint8)),
        "../escape.png": good_png,
        "/absolute.png": good_png,
    }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, blob in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            archive.addfile(info, io.BytesIO(blob))
    path.write_bytes(buffer.getvalue())
    return {
        "rgb": "", "gray8": "", "gray16": "",
        "corrupt": "cannot be decoded",
        "truncated": "corrupt or truncated",
        "cmyk": "unsupported image mode 'CMYK'",
        "wrongsize": "mask size 10x10 differs from image size 50x40",
        "badclass": "class values [7]",
        "../escape": "cannot name an output file",
        "/absolute": "cannot name an output file: it is absolute",
    }


MIXED_KINDS = {"corrupt": "corrupt_image", "truncated": "corrupt_image", "cmyk": "unsupported_image",
               "../escape": "unsafe_key", "/absolute": "unsafe_key"}
TRUTH_KINDS = {"wrongsize": "mask_size_mismatch", "badclass": "mask_classes"}  # the image is still segmented


def test_bad_samples_become_error_rows_and_the_run_continues(tmp_path: Path, tiny_model: str) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    expected = mixed_tar(inputs / "mixed.tar")
    with tarfile.open(inputs / "empty.tar", "w"):
        pass
    output = tmp_path / "out"

    summary = run_segmentation(SegmentConfig(input=str(inputs), model=tiny_model, output=str(output), batch_size=4))

    rows = {row["key"]: row for row in read_metrics(str(output))}
    assert set(rows) == set(expected)
    for key, fragment in expected.items():
        row = rows[key]
        if key in TRUTH_KINDS:
            assert row["status"] == "ok" and Image.open(row["mask_uri"]).size == (row["width"], row["height"])
            assert row["truth_error_kind"] == TRUTH_KINDS[key] and fragment in row["truth_error"], row
            assert key in row["truth_error"] and "mixed.tar" in row["truth_error"]
            assert row["dice"] is None and row["tp"] is None and row["class_pixels"] is not None
        elif fragment:
            assert row["status"] == "error" and fragment in row["error"], (key, row["error"])
            assert row["error_kind"] == MIXED_KINDS[key], (key, row["error_kind"])
            assert row["mask_uri"] is None
        else:
            assert row["status"] == "ok" and row["error"] is None
            assert Image.open(row["mask_uri"]).size == (row["width"], row["height"])
    assert rows["rgb"]["dice"] is not None  # the 0/255 mask was read as classes {0, 1}
    assert rows["gray16"]["dice"] is None and rows["gray16"]["class_pixels"] is not None  # no ground truth
    assert summary.empty_shards == ("empty",) and summary.errors == 5
    written = sorted(str(p.relative_to(output / "masks" / "mixed")) for p in tmp_path.rglob("*.png"))
    assert written == ["badclass.png", "gray16.png", "gray8.png", "rgb.png", "wrongsize.png"]
    assert (output / "_done" / "empty.json").exists() and (output / "metrics" / "empty.parquet").exists()


@pytest.mark.parametrize("layout", ["folder", "parquet"])
def test_folder_and_parquet_inputs(tmp_path: Path, tiny_model: str, layout: str) -> None:
    data = tmp_path / "data"
    write_sample_data(SampleDataConfig(output=str(data), num_images=10, num_shards=2, layout=layout, min_size=32, max_size=48))
    summary = run_segmentation(
        SegmentConfig(input=f"file://{data}", model=tiny_model, output=str(tmp_path / "out"), folder_shard_size=4)
    )
    rows = read_metrics(str(tmp_path / "out"))
    assert summary.images == len(rows) == 10 and all(row["status"] == "ok" for row in rows)
    assert all(row["dice"] is not None and len(row["dice"]) == 3 for row in rows)
    expected_shards = 3 if layout == "folder" else 2
    assert len(list((tmp_path / "out" / "_done").iterdir())) == expected_shards


def test_asking_for_gpus_the_cluster_lacks_stops_before_work(tmp_path: Path, tiny_model: str) -> None:
    data = tmp_path / "data"
    write_sample_data(SampleDataConfig(output=str(data), num_images=2, num_shards=1))
    cfg = load_config(SegmentConfig, None, [f"input={data}", f"model={tiny_model}", f"output={tmp_path / 'out'}", "actors.gpus=1"])
    with pytest.raises(ConfigError, match="actors.gpus=1 but the cluster has 0 GPUs"):
        run_segmentation(cfg)
    assert not (tmp_path / "out" / "run.json").exists()


def test_keys_repeated_across_shards_keep_every_image_and_are_reported(tmp_path: Path, tiny_model: str) -> None:
    data = tmp_path / "data"
    write_sample_data(SampleDataConfig(output=str(data), num_images=3, num_shards=1))
    (data / "shard-copy.tar").write_bytes((data / "shard-00000.tar").read_bytes())
    summary = run_segmentation(SegmentConfig(input=str(data), model=tiny_model, output=str(tmp_path / "out")))
    rows = read_metrics(str(tmp_path / "out"))
    assert summary.images == 6 and summary.ok == 6 and summary.duplicate_keys == 0
    masks = {(row["source"], row["key"]): row["mask_uri"] for row in rows}
    assert len(set(masks.values())) == 6  # each shard writes under its own folder: nothing overwritten
    for (source, key), uri in masks.items():
        shard = Path(source).stem
        assert uri == str(tmp_path / "out" / "masks" / shard / f"{key}.png") and Path(uri).is_file()
    assert summary.repeated_keys["count"] == 3
    assert sorted(e["key"] for e in summary.repeated_keys["examples"]) == sorted({row["key"] for row in rows})
    assert all(e["shards"] == ["shard-00000", "shard-copy"] for e in summary.repeated_keys["examples"])
    recorded = json.loads((tmp_path / "out" / "run.json").read_text())["summary"]["repeated_keys"]
    assert recorded == summary.repeated_keys and "3 key(s) held by more than one shard" in summary.line()


def test_a_model_only_the_actors_can_refuse_fails_the_run_with_one_message(tmp_path: Path, tiny_model: str) -> None:
    import shutil
    import zipfile

    from pipeline.model import ModelArtifactError

    broken = tmp_path / "model"
    shutil.copytree(tiny_model, broken)
    buffer = io.BytesIO()
    with zipfile.ZipFile(Path(tiny_model) / "model.keras") as source, zipfile.ZipFile(buffer, "w") as target:
        for name in source.namelist():  # the config (what the driver checks) intact, the weights not
            target.writestr(name, b"not HDF5" if name.endswith(".h5") else source.read(name))
    (broken / "model.keras").write_bytes(buffer.getvalue())
    # as an artifact from before model.json recorded the weights' sha256 (else the driver refuses it first)
    described = json.loads((broken / "model.json").read_text())
    del described["model_sha256"]
    (broken / "model.json").write_text(json.dumps(described))
    data, output = tmp_path / "data", tmp_path / "out"
    write_sample_data(SampleDataConfig(output=str(data), num_images=4, num_shards=2, min_size=32, max_size=40))
    with pytest.raises(ModelArtifactError, match=r"model.keras cannot be loaded"):
        run_segmentation(SegmentConfig(input=str(data), model=str(broken), output=str(output)))
    assert not list((output / "_done").glob("*.json"))  # nothing committed
    assert json.loads((output / "run.json").read_text())["status"] == "failed"


def test_run_json_breaks_the_start_up_down(tmp_path: Path, tiny_model: str) -> None:
    data, output = tmp_path / "data", tmp_path / "out"
    write_sample_data(SampleDataConfig(output=str(data), num_images=6, num_shards=2, min_size=32, max_size=40))
    summary = run_segmentation(SegmentConfig(input=str(data), model=tiny_model, output=str(output)))
    steps = json.loads((output / "run.json").read_text())["summary"]["startup"]
    assert steps == summary.startup
    for step in ("config_and_plan", "tensorflow_import", "model_load", "first_trace", "first_read", "first_batch",
                 "first_result", "first_commit", "after_last_commit"):
        assert 0 <= steps[step] < 120, step
    assert steps["first_result"] <= steps["first_commit"]
    assert "cli_import" not in steps  # a run inside a longer-lived process counts from the call


@pytest.mark.parametrize("tiling", ["resize", "whole"])
def test_a_phone_photo_turned_by_exif_is_segmented_and_scored_as_displayed(tmp_path: Path, tiny_model: str,
                                                                           tiling: str) -> None:
    from tests.test_imaging import stored_with_orientation

    rng = np.random.default_rng(5)
    shown = rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)  # as a phone's viewer shows it: landscape
    truth = np.zeros((30, 50), np.uint8)
    truth[:, 25:] = 1  # the mask was drawn on the displayed photo
    members = {"photo.jpg": stored_with_orientation(shown, 6, "JPEG"), "photo.mask.png": encode_png(truth)}
    (tmp_path / "in").mkdir()
    with tarfile.open(tmp_path / "in" / "phone.tar", "w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    run_segmentation(SegmentConfig(input=str(tmp_path / "in"), model=tiny_model, output=str(tmp_path / "out"),
                                   tiling=tiling))
    (row,) = read_metrics(str(tmp_path / "out"))
    assert row["status"] == "ok" and row["truth_error"] is None and row["dice"] is not None
    assert (row["height"], row["width"], row["orientation"]) == (30, 50, 6)
    assert Image.open(row["mask_uri"]).size == (50, 30)


def test_a_jpeg_mask_is_scored_after_snapping_and_the_row_counts_the_snapped_pixels(tmp_path: Path,
                                                                                   tiny_model: str) -> None:
    from tests.test_imaging import jpeg_bytes

    yy, xx = np.mgrid[:40, :48]
    disc = ((yy - 20) ** 2 + (xx - 24) ** 2 < 12 ** 2).astype(np.uint8)
    folder = tmp_path / "in"
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    (folder / "images" / "horse.png").write_bytes(encode_png(np.dstack([disc * 200] * 3).astype(np.uint8)))
    (folder / "images" / "plain.png").write_bytes(encode_png(disc * 200))
    (folder / "masks" / "horse.jpg").write_bytes(jpeg_bytes(disc * 255))  # as the Weizmann horses are kept
    (folder / "masks" / "plain.png").write_bytes(encode_png(disc))
    two_class = tmp_path / "model2"
    from dataclasses import replace

    from pipeline.model import ModelInfo, build_unet, save_artifact
    from tests.conftest import TINY_UNET

    spec = replace(TINY_UNET, num_classes=2)
    save_artifact(build_unet(spec), ModelInfo(spec=spec, class_names=("background", "horse")), str(two_class))
    run_segmentation(SegmentConfig(input=str(folder), model=str(two_class), output=str(tmp_path / "out")))
    rows = {row["key"]: row for row in read_metrics(str(tmp_path / "out"))}
    assert rows["horse"]["status"] == "ok" and rows["horse"]["truth_error"] is None
    assert rows["horse"]["snapped_pixels"] > 0 and rows["horse"]["dice"] is not None
    assert rows["plain"]["snapped_pixels"] == 0
