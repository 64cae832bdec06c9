"""Tests for pipeline.sample_data: the synthetic scene, PNG encoding and the three shard layouts."""

from __future__ import annotations

import io
import logging
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.config import SampleDataConfig
from pipeline.imaging import encode_png
from pipeline.sample_data import sample_for_index, shard_ranges, write_sample_data
from pipeline.synthetic import synthetic_sample


def decode_png(data: bytes) -> np.ndarray:
    """Return the pixel array of PNG ``data``."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image)


def grey(image: np.ndarray) -> np.ndarray:
    """Return the per-pixel mean over the RGB channels, as float."""
    return image.astype(np.float64).mean(axis=2)


def samples(num_classes: int, count: int, size: tuple[int, int] = (96, 96), seed: int = 0):
    """Return ``count`` (image, mask) pairs drawn with one seeded generator."""
    rng = np.random.default_rng(seed)
    return [synthetic_sample(rng, *size, num_classes) for _ in range(count)]


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Return every file under ``root`` keyed by its relative path."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def config(tmp_path: Path, layout: str = "tar", **overrides) -> SampleDataConfig:
    """Return a small SampleDataConfig writing under ``tmp_path``."""
    values = dict(output=str(tmp_path / layout), num_images=7, num_shards=3, min_size=20, max_size=40, layout=layout)
    values.update(overrides)
    return SampleDataConfig(**values)


# ------------------------------------------------------------------------------ synthetic_sample


@pytest.mark.parametrize("height, width", [(64, 64), (37, 101), (16, 16)])
def test_sample_shapes_and_dtypes(height: int, width: int) -> None:
    image, mask = synthetic_sample(np.random.default_rng(1), height, width, 3)
    assert image.shape == (height, width, 3) and image.dtype == np.uint8
    assert mask.shape == (height, width) and mask.dtype == np.uint8


def test_sample_is_deterministic_given_the_generator_state() -> None:
    first = synthetic_sample(np.random.default_rng(42), 80, 72, 5)
    second = synthetic_sample(np.random.default_rng(42), 80, 72, 5)
    other = synthetic_sample(np.random.default_rng(43), 80, 72, 5)
    assert np.array_equal(first[0], second[0]) and np.array_equal(first[1], second[1])
    assert not np.array_equal(first[0], other[0])
    assert not np.array_equal(first[1], other[1])


@pytest.mark.parametrize("num_classes", [2, 3, 5, 8])
def test_mask_holds_only_valid_classes_and_every_foreground_class_appears(num_classes: int) -> None:
    pairs = samples(num_classes, count=6)
    masks = np.stack([mask for _, mask in pairs])
    assert masks.max() <= num_classes - 1
    assert set(np.unique(masks)) == set(range(num_classes))
    for mask in masks:  # the background stays visible too
        assert np.count_nonzero(mask == 0) > 0


def test_most_images_hold_every_foreground_class() -> None:
    pairs = samples(num_classes=4, count=20)
    complete = sum(set(np.unique(mask)) == {0, 1, 2, 3} for _, mask in pairs)
    assert complete >= 16


def test_bright_discs_are_brighter_than_the_background() -> None:
    for image, mask in samples(num_classes=3, count=8):
        if np.any(mask == 1):
            brightness = grey(image)
            assert brightness[mask == 1].mean() > brightness[mask == 0].mean() + 30


def test_striped_rectangles_are_darker_than_the_background() -> None:
    for image, mask in samples(num_classes=3, count=8):
        if np.any(mask == 2):
            brightness = grey(image)
            assert brightness[mask == 2].mean() < brightness[mask == 0].mean() - 20


def test_checkered_triangles_are_more_textured_than_smooth_discs() -> None:
    pairs = samples(num_classes=4, count=8, size=(128, 128))
    checks = np.concatenate([grey(image)[mask == 3] for image, mask in pairs])
    discs = np.concatenate([grey(image)[mask == 1] for image, mask in pairs])
    background = np.concatenate([grey(image)[mask == 0] for image, mask in pairs])
    assert checks.std() > 3 * discs.std()
    assert checks.std() > 3 * background.std()


def test_green_rings_are_tinted_green() -> None:
    pairs = samples(num_classes=5, count=6)
    rings = np.concatenate([image[mask == 4].astype(np.float64) for image, mask in pairs])
    background = np.concatenate([image[mask == 0].astype(np.float64) for image, mask in pairs])
    ring_r, ring_g, _ = rings.mean(axis=0)
    back_r, back_g, _ = background.mean(axis=0)
    assert ring_g - ring_r > 50
    assert abs(back_g - back_r) < 25


@pytest.mark.parametrize(
    "height, width, num_classes", [(4, 64, 3), (64, 7, 3), (64, 64, 1), (64, 64, 9)]
)
def test_sample_rejects_unusable_arguments(height: int, width: int, num_classes: int) -> None:
    with pytest.raises(ValueError):
        synthetic_sample(np.random.default_rng(0), height, width, num_classes)


# ------------------------------------------------------------------------------------ encode_png


@pytest.mark.parametrize(
    "array",
    [
        np.arange(12 * 10, dtype=np.uint8).reshape(12, 10),
        np.arange(12 * 10 * 3, dtype=np.uint8).reshape(12, 10, 3),
        (np.arange(12 * 10, dtype=np.uint16) * 500).reshape(12, 10),
    ],
    ids=["grey8", "rgb8", "grey16"],
)
def test_encode_png_is_lossless(array: np.ndarray) -> None:
    data = encode_png(array)
    assert data.startswith(b"\x89PNG")
    decoded = decode_png(data)
    assert decoded.shape == array.shape
    assert np.array_equal(decoded.astype(array.dtype), array)


def test_encode_png_rejects_float_arrays() -> None:
    with pytest.raises(ValueError, match="uint8"):
        encode_png(np.zeros((4, 4), dtype=np.float32))


# ------------------------------------------------------------------------------------- sharding


@pytest.mark.parametrize(
    "num_images, num_shards, sizes",
    [(10, 3, [4, 3, 3]), (6, 3, [2, 2, 2]), (2, 5, [1, 1]), (1, 1, [1])],
)
def test_shard_ranges_are_consecutive_and_even(num_images: int, num_shards: int, sizes: list[int]) -> None:
    ranges = shard_ranges(num_images, num_shards)
    assert [len(r) for r in ranges] == sizes
    assert [i for r in ranges for i in r] == list(range(num_images))


def test_sample_depends_on_seed_and_index_only(tmp_path: Path) -> None:
    cfg = config(tmp_path, num_shards=1)
    image, mask = sample_for_index(cfg, 3)
    again, _ = sample_for_index(config(tmp_path, layout="parquet", num_shards=5), 3)
    assert np.array_equal(image, again)
    assert 20 <= image.shape[0] <= 40 and 20 <= image.shape[1] <= 40
    assert not np.array_equal(image, sample_for_index(cfg, 4)[0])


# ------------------------------------------------------------------------------------ tar layout


def test_tar_layout_round_trips(tmp_path: Path) -> None:
    cfg = config(tmp_path, layout="tar")
    urls = write_sample_data(cfg)
    assert urls == [str(tmp_path / "tar" / f"shard-{i:05d}.tar") for i in range(3)]

    keys: list[str] = []
    for url in urls:
        with tarfile.open(url) as archive:
            members = {m.name: archive.extractfile(m).read() for m in archive.getmembers()}
            assert all(m.mtime == 0 for m in archive.getmembers())
        shard_keys = sorted(name[: -len(".mask.png")] for name in members if name.endswith(".mask.png"))
        assert sorted(members) == sorted([f"{k}.png" for k in shard_keys] + [f"{k}.mask.png" for k in shard_keys])
        for key in shard_keys:
            image, mask = decode_png(members[f"{key}.png"]), decode_png(members[f"{key}.mask.png"])
            assert image.ndim == 3 and image.shape[2] == 3
            assert image.shape[:2] == mask.shape
            assert cfg.min_size <= mask.shape[0] <= cfg.max_size and cfg.min_size <= mask.shape[1] <= cfg.max_size
            assert mask.max() < cfg.num_classes
            assert np.array_equal(mask, sample_for_index(cfg, int(key.split("-")[1]))[1])
        keys.extend(shard_keys)
    assert keys == [f"sample-{i:06d}" for i in range(cfg.num_images)]


def test_tar_shards_are_byte_identical_for_the_same_seed(tmp_path: Path) -> None:
    write_sample_data(config(tmp_path / "a"))
    write_sample_data(config(tmp_path / "b"))
    write_sample_data(config(tmp_path / "c", seed=1))
    first, second, third = (tree_bytes(tmp_path / name / "tar") for name in "abc")
    assert first == second
    assert first.keys() == third.keys()
    assert all(first[name] != third[name] for name in first)


def test_file_urls_go_through_storage(tmp_path: Path) -> None:
    cfg = config(tmp_path, output=f"file://{tmp_path}/via-url", num_images=2, num_shards=1)
    urls = write_sample_data(cfg)
    assert urls == [f"file://{tmp_path}/via-url/shard-00000.tar"]
    assert (tmp_path / "via-url" / "shard-00000.tar").is_file()


def test_writing_logs_one_summary_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="pipeline.sample_data"):
        write_sample_data(config(tmp_path, num_images=2, num_shards=1))
    lines = [r.getMessage() for r in caplog.records if r.name == "pipeline.sample_data"]
    assert len(lines) == 1 and "2 synthetic images" in lines[0]


# --------------------------------------------------------------------------------- folder layout


def test_folder_layout_writes_image_and_mask_per_sample(tmp_path: Path) -> None:
    cfg = config(tmp_path, layout="folder")
    urls = write_sample_data(cfg)
    root = tmp_path / "folder"
    keys = [f"sample-{i:06d}" for i in range(cfg.num_images)]
    assert urls == [str(root / "images" / f"{key}.png") for key in keys]
    assert sorted(p.name for p in (root / "masks").iterdir()) == [f"{key}.png" for key in keys]
    for key in keys:
        image = decode_png((root / "images" / f"{key}.png").read_bytes())
        mask = decode_png((root / "masks" / f"{key}.png").read_bytes())
        assert image.shape == (*mask.shape, 3)
        assert mask.max() < cfg.num_classes


# -------------------------------------------------------------------------------- parquet layout


def test_parquet_layout_holds_one_row_per_sample(tmp_path: Path) -> None:
    cfg = config(tmp_path, layout="parquet", num_classes=4)
    urls = write_sample_data(cfg)
    assert urls == [str(tmp_path / "parquet" / f"part-{i:05d}.parquet") for i in range(3)]
    tables = [pq.read_table(url) for url in urls]
    assert [t.num_rows for t in tables] == [3, 2, 2]
    assert tables[0].schema.names == ["key", "image", "mask"]
    rows = [row for table in tables for row in table.to_pylist()]
    assert [row["key"] for row in rows] == [f"sample-{i:06d}" for i in range(cfg.num_images)]
    for index, row in enumerate(rows):
        image, mask = sample_for_index(cfg, index)
        assert np.array_equal(decode_png(row["image"]), image)
        assert np.array_equal(decode_png(row["mask"]), mask)


def test_parquet_files_are_byte_identical_for_the_same_seed(tmp_path: Path) -> None:
    write_sample_data(config(tmp_path / "a", layout="parquet"))
    write_sample_data(config(tmp_path / "b", layout="parquet"))
    assert tree_bytes(tmp_path / "a" / "parquet") == tree_bytes(tmp_path / "b" / "parquet")


def test_native_scale_objects_keep_their_pixel_size_and_grow_in_number_with_the_area() -> None:
    def cover_and_edge(side: int, object_size: float | None) -> tuple[float, float]:
        """Return the share of the image the objects cover, and their boundary pixels per object pixel."""
        _, mask = synthetic_sample(np.random.default_rng(side), side, side, 3, object_size=object_size)
        edges = np.count_nonzero(mask[:, 1:] != mask[:, :-1]) + np.count_nonzero(mask[1:] != mask[:-1])
        return float((mask > 0).mean()), edges / max(1, np.count_nonzero(mask))

    small_cover, small_edge = cover_and_edge(300, 16)
    large_cover, large_edge = cover_and_edge(1200, 16)
    assert 0.15 < small_cover < 0.35 and 0.15 < large_cover < 0.35  # a quarter of any image: more objects on more area
    assert 0.7 < large_edge / small_edge < 1.4  # the same boundary per area: objects of the same pixel size
    resized_small, resized_large = cover_and_edge(300, None)[1], cover_and_edge(1200, None)[1]
    assert resized_large / resized_small < 0.5  # without it objects grow with the image
    cfg = SampleDataConfig(output="x", scale="native", min_size=600, max_size=700, object_size=16)
    image, mask = sample_for_index(cfg, 0)
    assert 600 <= min(mask.shape) and max(mask.shape) <= 700 and image.shape[:2] == mask.shape
