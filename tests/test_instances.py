"""Instance metrics on hand-made label images a reader can check, and against a direct implementation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.instances import THRESHOLDS, instance_scores, iou_matrix


def test_one_object_split_in_two_matches_neither_half() -> None:
    true = np.zeros((6, 6), np.int32)
    true[1:5, 1:5] = 1  # 16 pixels
    predicted = np.zeros_like(true)
    predicted[1:5, 1:3], predicted[1:5, 3:5] = 1, 2  # two halves of 8: IoU exactly 0.5, not above it
    scores = instance_scores(true, predicted)
    assert (scores["objects_true"], scores["objects_predicted"]) == (1, 2)
    assert scores["tp"] == [0] * 10 and scores["fp"] == [2] * 10 and scores["fn"] == [1] * 10
    assert scores["dsb_score"] == 0.0 and scores["f1"] == 0.0 and scores["pq"] == 0.0 and math.isnan(scores["sq"])
    assert scores["match"] == {1: 0}


def test_two_objects_merged_into_one_match_the_larger_below_its_iou() -> None:
    true = np.zeros((4, 4), np.int32)
    true[:, :3], true[:, 3] = 1, 2  # 12 and 4 pixels, touching
    predicted = np.ones_like(true)  # one blob over both: IoU 12/16 = 0.75 with the first
    scores = instance_scores(true, predicted)
    assert scores["tp"] == [1, 1, 1, 1, 1, 0, 0, 0, 0, 0]  # matched at 0.50-0.70; at 0.75 IoU is not above it
    assert scores["fn"] == [1] * 5 + [2] * 5 and scores["fp"] == [0] * 5 + [1] * 5
    assert scores["dsb_score"] == pytest.approx((5 * 1 / 2 + 5 * 0 / 3) / 10)  # 0.25
    assert scores["f1"] == pytest.approx(2 / 3)
    assert scores["rq"] == pytest.approx(1 / (1 + 0.5)) and scores["sq"] == pytest.approx(0.75)
    assert scores["pq"] == pytest.approx(0.75 / 1.5) and scores["match"] == {1: 1, 2: 0}


def test_a_shifted_object_just_above_and_just_below_the_threshold() -> None:
    true = np.zeros((12, 20), np.int32)
    true[1:11, 2:12] = 5
    above, below = np.zeros_like(true), np.zeros_like(true)
    above[1:11, 5:15] = 9  # shifted 3 columns: IoU 70/130 = 0.538
    below[1:11, 6:16] = 9  # shifted 4 columns: IoU 60/140 = 0.429
    scores = instance_scores(true, above)
    assert scores["tp"] == [1] + [0] * 9 and scores["dsb_score"] == pytest.approx(0.1 * 1 + 0.9 * 0 / 2)
    assert scores["matched_iou"] == pytest.approx([7 / 13]) and scores["match"] == {5: 9}
    assert instance_scores(true, below)["tp"] == [0] * 10


def test_empty_images() -> None:
    empty = np.zeros((5, 5), np.int32)
    one = empty.copy()
    one[1:3, 1:3] = 1
    both = instance_scores(empty, empty)
    assert all(math.isnan(both[k]) for k in ("dsb_score", "f1", "pq", "sq", "rq"))  # undefined, as Dice
    assert both["objects_true"] == both["objects_predicted"] == 0
    for true, predicted in ((one, empty), (empty, one)):
        scores = instance_scores(true, predicted)
        assert scores["dsb_score"] == scores["f1"] == scores["pq"] == 0.0
    perfect = instance_scores(one, one * 7)
    assert perfect["dsb_score"] == perfect["f1"] == perfect["pq"] == 1.0


def direct_dsb_score(true: np.ndarray, predicted: np.ndarray) -> float:
    """The 2018 Data Science Bowl's definition, written out: objects as pixel sets, a hit where IoU > t."""
    objects = {side: {label: {tuple(p) for p in np.argwhere(image == label)} for label in np.unique(image) if label}
               for side, image in (("true", true), ("predicted", predicted))}
    precisions = []
    for threshold in THRESHOLDS:
        hits = sum(any(len(a & b) / len(a | b) > threshold for b in objects["predicted"].values())
                   for a in objects["true"].values())
        misses = len(objects["true"]) - hits
        false = sum(not any(len(a & b) / len(a | b) > threshold for a in objects["true"].values())
                    for b in objects["predicted"].values())
        precisions.append(hits / (hits + false + misses))
    return float(np.mean(precisions))


def random_labels(rng: np.random.Generator, size: int = 24) -> np.ndarray:
    """Return a label image of a few random overlapping rectangles (later ones on top)."""
    image = np.zeros((size, size), np.int32)
    for label in range(1, int(rng.integers(2, 7))):
        top, left = rng.integers(0, size - 4, 2)
        height, width = rng.integers(3, 10, 2)
        image[top:top + height, left:left + width] = label
    return image


def test_the_dsb_score_equals_the_published_definition_on_random_label_images() -> None:
    rng = np.random.default_rng(0)
    for _ in range(40):
        true = random_labels(rng)
        predicted = np.roll(random_labels(rng) if rng.random() < 0.3 else true * 3, int(rng.integers(-2, 3)), axis=1)
        assert instance_scores(true, predicted)["dsb_score"] == pytest.approx(direct_dsb_score(true, predicted))


def test_iou_matrix_of_hand_made_objects() -> None:
    true = np.array([[1, 1, 0], [2, 2, 0]])
    predicted = np.array([[4, 0, 0], [4, 4, 4]])
    iou, rows, cols = iou_matrix(true, predicted)
    assert rows.tolist() == [1, 2] and cols.tolist() == [4]
    assert iou[:, 0].tolist() == pytest.approx([1 / 5, 2 / 4])
    with pytest.raises(ValueError, match="same size"):
        iou_matrix(true, predicted[:, :2])


def test_class_scores_score_each_class_on_its_own_objects() -> None:
    from pipeline.instances import class_scores

    true = np.array([[1, 1, 0, 2], [1, 1, 0, 2]])
    true_class = np.array([0, 1, 2])  # label 1 is class 1, label 2 class 2
    predicted = np.array([[3, 3, 0, 0], [3, 3, 0, 0]])
    predicted_class = np.array([0, 0, 0, 1])  # the one predicted object, label 3, is class 1
    scores = class_scores(true, true_class, predicted, predicted_class, 3)
    assert scores["objects_true"] == [0, 1, 1] and scores["objects_predicted"] == [0, 1, 0]
    assert math.isnan(scores["dsb_score"][0]) and scores["dsb_score"][1:] == [1.0, 0.0]
    assert scores["tp"][1] == [1] * 10 and scores["fn"][2] == [1] * 10 and scores["pq"][1] == 1.0
    # each predicted label's match and best IoU within its class (label 3 matches true 1 exactly)
    assert scores["predicted_match"].tolist() == [0, 0, 0, 1] and scores["predicted_iou"][3] == 1.0


def test_a_predicted_object_that_matches_nothing_keeps_its_best_iou() -> None:
    from pipeline.instances import class_scores

    true = np.array([[1, 1, 1, 1, 0, 0]])
    predicted = np.array([[0, 0, 0, 1, 1, 1]])  # IoU 1/6 with the true object: no match
    scores = class_scores(true, np.array([0, 1]), predicted, np.array([0, 1]), 2)
    assert scores["predicted_match"].tolist() == [0, 0] and scores["predicted_iou"][1] == pytest.approx(1 / 6)


def test_true_objects_come_from_instance_labels_with_their_mask_class_or_else_the_mask_components() -> None:
    from pipeline.segment.measure import true_objects

    labels = np.array([[5, 5, 0, 9], [5, 5, 0, 9]])  # two objects, labels not consecutive
    mask = np.array([[1, 1, 0, 2], [1, 2, 0, 2]])  # object 5 mostly class 1, object 9 class 2
    found, label_class, source = true_objects(mask, labels, 3, 8)
    assert source == "labels" and found.tolist() == [[1, 1, 0, 2], [1, 1, 0, 2]] and label_class.tolist() == [0, 1, 2]
    found, label_class, source = true_objects(None, labels, 2, 8)  # two classes: every object is class 1
    assert label_class.tolist() == [0, 1, 1] and source == "labels"
    assert true_objects(None, labels, 3, 8) is None  # more classes and no mask: the classes are unknown
    touching = np.array([[1, 1, 0, 1], [0, 0, 0, 1]])
    found, label_class, source = true_objects(touching, None, 2, 8)
    assert source == "components" and found.max() == 2 and label_class.tolist() == [0, 1, 1]
    assert true_objects(None, None, 2, 8) is None
