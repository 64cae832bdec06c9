"""COCO in: an instances file's polygons, RLEs and crowd regions drawn into the class mask and the
instance labels, read back against hand-drawn references; shards of a fixed number of images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from pipeline import imaging
from pipeline.errors import ErrorKind
from pipeline.imaging import IGNORE, encode_png
from pipeline.io.labelmaps import input_label_map
from pipeline.io.readers import read_shard
from pipeline.io.shards import InputError, discover_shards

HEIGHT, WIDTH = 8, 10


def compressed(pixels: np.ndarray) -> dict:
    rle = coco_mask.encode(np.asfortranarray(pixels.astype(np.uint8)))
    return {"size": [HEIGHT, WIDTH], "counts": rle["counts"].decode()}


def hand_data(folder: Path) -> dict:
    """Write four images and a COCO file: polygon, uncompressed and compressed RLE and crowd on ``a``,
    nothing on ``b``, a broken polygon on ``c``, and ``d`` whose file is missing."""
    low_box = np.zeros((HEIGHT, WIDTH), bool)
    low_box[5:7, 1:4] = True
    document = {
        "images": [{"id": 11, "file_name": "a.png", "height": HEIGHT, "width": WIDTH},
                   {"id": 12, "file_name": "b.png", "height": HEIGHT, "width": WIDTH},
                   {"id": 13, "file_name": "c.png", "height": HEIGHT, "width": WIDTH},
                   {"id": 14, "file_name": "d.png", "height": HEIGHT, "width": WIDTH}],
        "categories": [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}],  # ids in any order: cat is class 1
        "annotations": [
            {"id": 1, "image_id": 11, "category_id": 3, "iscrowd": 0, "area": 12,  # a box x 2..5, y 1..3
             "segmentation": [[2, 1, 6, 1, 6, 4, 2, 4]]},
            {"id": 2, "image_id": 11, "category_id": 7, "iscrowd": 0, "area": 4,  # column 8, rows 4..7 (column-major)
             "segmentation": {"size": [HEIGHT, WIDTH], "counts": [68, 4, 8]}},
            {"id": 3, "image_id": 11, "category_id": 3, "iscrowd": 0, "area": 6, "segmentation": compressed(low_box)},
            {"id": 4, "image_id": 11, "category_id": 7, "iscrowd": 1, "area": 2,  # a crowd: rows 0..1 of column 9
             "segmentation": {"size": [HEIGHT, WIDTH], "counts": [72, 2, 6]}},
            {"id": 5, "image_id": 13, "category_id": 3, "iscrowd": 0, "segmentation": [[1, 1, 2, 2]]},
        ],
    }
    for name in ("a", "b", "c"):
        (folder / f"{name}.png").write_bytes(encode_png(np.full((HEIGHT, WIDTH, 3), 90, np.uint8)))
    (folder / "annotations.json").write_text(json.dumps(document))
    return document


def test_a_coco_file_is_drawn_into_masks_and_instances_equal_to_the_hand_drawn_reference(tmp_path: Path) -> None:
    hand_data(tmp_path)
    url = str(tmp_path / "annotations.json")
    label_map, _ = input_label_map(url, None, None)
    assert label_map.names == ("background", "cat", "dog") and label_map.ignore == (IGNORE,)
    (shard,) = discover_shards(url, None, 256)
    rows = {row["key"]: row for row in read_shard(shard)}
    assert sorted(rows) == ["a", "b", "c", "d"]

    expected_mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    expected_mask[1:4, 2:6] = 1  # the polygon: cat
    expected_mask[4:8, 8] = 2  # the uncompressed RLE: dog
    expected_mask[5:7, 1:4] = 1  # the compressed RLE: cat
    expected_mask[0:2, 9] = IGNORE  # the crowd: not labelled
    mask = imaging.decode_mask(rows["a"]["mask"], label_map, (HEIGHT, WIDTH))
    assert np.array_equal(mask, expected_mask)
    labels = imaging.decode_instances(rows["a"]["instances"], (HEIGHT, WIDTH))
    objects = [labels == value for value in range(1, 4)]  # largest first; the crowd is no object
    assert labels.max() == 3 and not labels[0:2, 9].any()
    box, low_box = np.zeros_like(objects[0]), np.zeros_like(objects[0])
    box[1:4, 2:6], low_box[5:7, 1:4] = True, True
    assert np.array_equal(objects[0], box) and np.array_equal(objects[1], low_box)
    assert np.array_equal(objects[2], expected_mask == 2)

    assert not imaging.decode_mask(rows["b"]["mask"], label_map, (HEIGHT, WIDTH)).any()  # no annotation: background
    assert rows["c"]["error"] == "" and rows["c"]["truth_error_kind"] == ErrorKind.BAD_ANNOTATION
    assert "annotation 5" in rows["c"]["truth_error"] and not rows["c"]["mask"]
    assert rows["d"]["error_kind"] == ErrorKind.CORRUPT_IMAGE and "d.png" in rows["d"]["error"]


def test_a_coco_file_is_cut_into_shards_and_a_changed_annotation_redoes_only_its_shard(tmp_path: Path) -> None:
    document = hand_data(tmp_path)
    url = str(tmp_path / "annotations.json")
    before = discover_shards(url, None, 2)
    assert [shard.name for shard in before] == ["annotations-00000", "annotations-00001"]
    document["annotations"][4]["segmentation"] = [[1, 1, 3, 1, 3, 3]]  # image c (the second shard) fixed
    (tmp_path / "annotations.json").write_text(json.dumps(document))
    after = discover_shards(url, None, 2)
    assert before[0].identity == after[0].identity and before[1].identity != after[1].identity
    rows = {row["key"]: row for row in read_shard(after[1])}
    assert rows["c"]["truth_error"] == "" and rows["c"]["mask"]


def test_a_file_that_is_not_coco_is_refused_naming_it(tmp_path: Path) -> None:
    (tmp_path / "other.json").write_text(json.dumps({"images": []}))
    with pytest.raises(InputError, match="not a COCO instances file"):
        discover_shards(str(tmp_path / "other.json"))
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(InputError, match="not valid JSON"):
        discover_shards(str(tmp_path / "broken.json"))
