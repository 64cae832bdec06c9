"""Objects from masks: components per class, the watershed split of touching objects, and their measurements."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.objects import label_objects, object_rows


def two_touching_discs(radius: int = 8) -> np.ndarray:
    """Return a class-1 mask of two discs whose edges overlap by a few pixels (one blob to connected components)."""
    rows, cols = np.mgrid[0:40, 0:60]
    first = (rows - 20) ** 2 + (cols - 18) ** 2 <= radius**2
    second = (rows - 20) ** 2 + (cols - 18 - 2 * radius + 3) ** 2 <= radius**2
    return (first | second).astype(np.uint8)


def test_touching_objects_are_one_component_and_two_after_the_watershed() -> None:
    mask = two_touching_discs()
    labels, classes = label_objects(mask, 2)
    assert labels.max() == 1 and classes.tolist() == [0, 1]
    split, classes = label_objects(mask, 2, split="watershed")
    assert split.max() == 2 and classes.tolist() == [0, 1, 1]
    assert np.array_equal(split > 0, mask > 0)  # nothing lost, nothing added
    areas = np.bincount(split.ravel())[1:]
    assert abs(int(areas[0]) - int(areas[1])) <= 0.05 * areas.sum()  # split near the middle


def test_connectivity_min_size_and_numbering_across_classes() -> None:
    mask = np.zeros((6, 6), np.uint8)
    mask[0, 0] = mask[1, 1] = 1  # diagonal neighbours
    mask[4:6, 4:6] = 2
    mask[3, 0] = 2  # a single pixel of class 2
    assert label_objects(mask, 3, connectivity=8)[0].max() == 3  # the diagonal pair is one
    labels, classes = label_objects(mask, 3, connectivity=4)
    assert labels.max() == 4 and classes.tolist() == [0, 1, 1, 2, 2]
    assert labels[0, 0] == 1 and labels[1, 1] == 2 and labels[3, 0] == 3 and labels[5, 5] == 4  # class, then raster
    kept, classes = label_objects(mask, 3, connectivity=4, min_size=2)
    assert kept.max() == 1 and classes.tolist() == [0, 2] and kept[5, 5] == 1
    with pytest.raises(ValueError, match="connectivity"):
        label_objects(mask, 3, connectivity=6)


def test_object_rows_measure_each_object() -> None:
    mask = np.zeros((10, 12), np.uint8)
    mask[2:6, 3:9] = 1  # a 4 x 6 rectangle
    mask[8, 0:2] = 2
    labels, classes = label_objects(mask, 3)
    scores = np.zeros((10, 12, 3), np.float32)
    scores[..., 1], scores[..., 2] = 0.8, 0.6
    rows = object_rows(labels, classes, scores)
    assert rows["class"].tolist() == [1, 2] and rows["label"].tolist() == [1, 2]
    assert rows["area"].tolist() == [24, 2] and rows["area"].sum() == (mask > 0).sum()
    assert [rows[k][0] for k in ("bbox_top", "bbox_left", "bbox_bottom", "bbox_right")] == [2, 3, 6, 9]
    assert (rows["centroid_row"][0], rows["centroid_col"][0]) == pytest.approx((3.5, 5.5))
    assert rows["equivalent_diameter"][0] == pytest.approx(np.sqrt(4 * 24 / np.pi))
    assert rows["solidity"][0] == pytest.approx(1.0) and 0 < rows["eccentricity"][0] < 1
    assert rows["mean_score"].tolist() == pytest.approx([0.8, 0.6])
    empty = object_rows(*label_objects(np.zeros((4, 4), np.uint8), 2))
    assert all(len(column) == 0 for column in empty.values())


def test_the_summed_moments_equal_regionprops_object_by_object() -> None:
    from scipy import ndimage
    from skimage import measure

    noise = ndimage.gaussian_filter(np.random.default_rng(4).random((120, 90, 3)), (1.5, 1.5, 0))
    labels, classes = label_objects(noise.argmax(-1).astype(np.uint8), 3)
    rows = object_rows(labels, classes)
    reference = measure.regionprops_table(labels, properties=("label", "centroid", "eccentricity",
                                                              "equivalent_diameter_area"))
    assert len(rows["label"]) > 50 and rows["label"].tolist() == reference["label"].tolist()
    assert np.allclose(rows["eccentricity"], reference["eccentricity"], atol=1e-12)
    assert np.allclose(rows["centroid_row"], reference["centroid-0"]) and np.allclose(rows["centroid_col"], reference["centroid-1"])
    assert np.allclose(rows["equivalent_diameter"], reference["equivalent_diameter_area"])
