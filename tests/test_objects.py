"""Objects from masks: components per class, the watershed split of touching objects, and their measurements."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.imaging import mask_from_scores
from pipeline.objects import (
    border_target,
    border_width,
    fold_borders,
    label_objects,
    object_rows,
    speckle_size,
    typical_diameter,
)


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


def disc_pairs(radius: float, size: int, pairs: int, apart: float = 1.6) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(mask, instances)``: ``pairs`` rows, each of a pair of touching discs of ``radius``
    (centres ``apart`` radii apart) and two lone discs, on a ``size`` x ``size`` image (16 radii wide)."""
    rows, cols = np.mgrid[0:size, 0:size]
    instances = np.zeros((size, size), np.int32)
    step = size // pairs
    for index in range(pairs):
        centre_row = step * index + step / 2
        centres = (1.2 * radius, (1.2 + apart) * radius, size - 4 * radius, size - 1.2 * radius)
        for label, centre_col in enumerate(centres):
            disc = (rows - centre_row) ** 2 + (cols - centre_col) ** 2 <= radius**2
            instances[disc & (instances == 0)] = len(centres) * index + label + 1
    return (instances > 0).astype(np.uint8), instances


@pytest.mark.parametrize("radius", [5, 30])
def test_the_watershed_follows_the_objects_size_splitting_pairs_and_keeping_lone_discs(radius: int) -> None:
    # touching pairs and lone discs of 10 px and of 60 px: markers a fixed 3 px apart would cut a
    # 60-px disc along every bump of its distance transform; the size-aware split finds each disc once
    mask, instances = disc_pairs(radius, size=16 * radius, pairs=4)
    assert label_objects(mask, 2)[0].max() == 12  # a component per pair and per lone disc
    labels, _ = label_objects(mask, 2, split="watershed")
    assert labels.max() == 16
    for label in range(1, 17):  # each found object is one true disc: split at the neck, where the later disc's arc is the truth
        assert np.bincount(instances[labels == label]).max() >= 0.85 * (labels == label).sum()
    # one lone disc alone in the image: nothing to compare it with, and still not split
    single = (instances == 3).astype(np.uint8)
    assert label_objects(single, 2, split="watershed")[0].max() == 1


def test_speckle_and_split_settings_follow_the_diameter() -> None:
    assert speckle_size(None) == 0 and speckle_size(20) == int(np.pi * 2.5**2)
    assert border_width(None) == 1 and border_width(20) == 3 and border_width(200) == 4
    assert typical_diameter(disc_pairs(10, 160, 4)[0] * 0, 2) is None
    assert abs(typical_diameter((disc_pairs(10, 160, 4)[1] > 2).astype(np.uint8), 2) - 20) <= 1  # lone discs


def test_border_targets_mark_where_objects_meet_and_only_there() -> None:
    # two squares side by side (touching along a column), a third one pixel from the second, a lone one
    instances = np.zeros((20, 40), np.int32)
    instances[2:8, 2:8], instances[2:8, 8:14], instances[2:8, 15:20], instances[12:18, 30:36] = 1, 2, 3, 4
    mask = (instances > 0).astype(np.uint8)
    target = border_target(mask, instances, 1, 2)
    border = target == 2
    assert border[2:8, 7].all() and border[2:8, 8].all()  # the contact, one pixel on either side
    assert not border[2:8, 13].any() and not border[2:8, 15].any()  # a pixel of background between: 2 px apart
    assert not border[2:8, 2:7].any() and not border[12:18, 30:36].any()  # the rest, and the lone square
    assert (target[mask == 0] == 0).all() and (target[(mask == 1) & ~border] == 1).all()
    wider = border_target(mask, instances, 2, 2) == 2
    assert wider[2:8, 6:10].all() and not wider[2:8, 5].any()
    assert wider[2:8, 13].all() and wider[2:8, 15].all() and not wider[2:8, 14].any()  # near now; the gap stays background
    ignored = mask.copy()
    ignored[2:8, 8] = 255  # not labelled: stays so, never a border
    assert (border_target(ignored, instances, 1, 2)[2:8, 8] == 255).all()


def test_a_border_models_output_is_decided_back_into_the_users_classes() -> None:
    # three classes (background, a, b) and the border class 3: each border pixel takes its nearest class
    decided = np.array([[0, 1, 1, 3, 3, 2, 2, 0],
                        [0, 1, 3, 3, 3, 3, 2, 0]], dtype=np.uint8)
    assert fold_borders(decided, 3).tolist() == [[0, 1, 1, 1, 2, 2, 2, 0], [0, 1, 1, 1, 2, 2, 2, 0]]
    two = np.array([[0, 1, 2, 2, 1, 255]], dtype=np.uint8)
    assert fold_borders(two, 2).tolist() == [[0, 1, 1, 1, 1, 255]]
    # the three-channel probabilities of the model decided by argmax, then folded: interior + border = nucleus
    scores = np.array([[[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.3, 0.6]]], dtype=np.float32)
    assert fold_borders(mask_from_scores(scores, 0.5), 2).tolist() == [[0, 1, 1]]


def border_scores(interior: np.ndarray, border: np.ndarray) -> np.ndarray:
    """Return a border model's probabilities (background, object, border) for hand-drawn interior and border."""
    scores = np.zeros((*interior.shape, 3), np.float32)
    scores[..., 0] = 0.9
    scores[interior] = (0.05, 0.85, 0.1)
    scores[border] = (0.1, 0.3, 0.6)
    return scores


def test_the_marker_watershed_splits_touching_discs_along_their_border_and_not_a_long_object() -> None:
    mask, instances = disc_pairs(8, 128, 1)
    true_border = border_target(mask, instances, 2, 2) == 2
    decided = mask_from_scores(border_scores(mask.astype(bool) & ~true_border, true_border), 0.5)
    labels, classes = label_objects(decided, 2, split="borders")
    assert labels.max() == 4 and classes.tolist() == [0, 1, 1, 1, 1]
    assert ((labels > 0) == (mask > 0)).all()  # the borders grown back: every object pixel in an object
    for label in range(1, 5):  # each object is one true disc, to within a few pixels of the curved contact
        own = np.bincount(instances[labels == label])
        assert own.max() >= 0.97 * (labels == label).sum() and own.max() >= 0.95 * (instances == own.argmax()).sum()
    # a long object with a waist, its edge predicted as a little border here and there: one marker, one object
    rows, cols = np.mgrid[0:40, 0:120]
    long_object = ((rows - 20) / 8) ** 2 + ((cols - 60) / 50) ** 2 <= 1
    long_object &= ~((np.abs(cols - 60) < 4) & (np.abs(rows - 20) > 5))
    speckled = long_object & (np.random.default_rng(0).random(long_object.shape) < 0.05)
    decided = mask_from_scores(border_scores(long_object & ~speckled, speckled), 0.5)
    assert label_objects(decided, 2, split="borders")[0].max() == 1
    # the mask-only split keeps a long object of even width whole: its distance transform has one peak
    ellipse = (((rows - 20) / 8) ** 2 + ((cols - 60) / 50) ** 2 <= 1).astype(np.uint8)
    assert label_objects(ellipse, 2, split="watershed")[0].max() == 1
