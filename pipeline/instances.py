"""Instance metrics: matching predicted objects to true ones in label images, and the scores of
the 2018 Data Science Bowl and of panoptic segmentation.

A label image is ``(h, w)`` of integers, 0 the background and each object one positive label.
A predicted object matches a true one at threshold ``t`` when their IoU is **greater than** ``t``
(strictly, as the 2018 Data Science Bowl defines it; StarDist uses ``>=``). For ``t >= 0.5`` such a
match is one-to-one by itself: an object cannot overlap two disjoint objects by more than half
of their union each, so no assignment step is needed.

Per image (and class, for label images restricted to one class), at the thresholds
0.50, 0.55, ..., 0.95:

- ``tp``, ``fp``, ``fn``: matched pairs, unmatched predictions, unmatched true objects;
- ``dsb_score``: the mean over thresholds of ``TP / (TP + FP + FN)``;
- ``f1``: ``2 TP / (2 TP + FP + FN)`` at 0.5;
- ``pq``: panoptic quality at 0.5, ``SQ x RQ`` with ``SQ`` the mean IoU of the matched pairs and
  ``RQ = TP / (TP + FP/2 + FN/2)``.

Empty images: with no object on either side every score is NaN (undefined, as Dice is for a class
absent from both); with objects on one side only the scores are 0 (``SQ`` alone is NaN when
nothing matched).
"""

from __future__ import annotations

from typing import Any

import numpy as np

THRESHOLDS = tuple(round(0.5 + 0.05 * step, 2) for step in range(10))


def overlaps(true: np.ndarray, predicted: np.ndarray) -> dict[str, np.ndarray]:
    """Return the pairs of a true and a predicted object that share a pixel, sparsely: ``rows`` and
    ``cols`` (each pair's index among ``true_labels`` and ``predicted_labels``, the objects' labels
    in ascending order, 0 left out) and ``iou``. Memory grows with the pixels and the overlapping
    pairs, never with true x predicted objects."""
    true, predicted = np.asarray(true).ravel(), np.asarray(predicted).ravel()
    if true.shape != predicted.shape:
        raise ValueError(f"label images of {true.size} and {predicted.size} pixels: they must be the same size")
    true_labels, true_index = np.unique(true, return_inverse=True)
    predicted_labels, predicted_index = np.unique(predicted, return_inverse=True)
    true_area = np.bincount(true_index, minlength=len(true_labels))
    predicted_area = np.bincount(predicted_index, minlength=len(predicted_labels))
    both = (true != 0) & (predicted != 0)
    codes, intersection = np.unique(true_index[both].astype(np.int64) * len(predicted_labels) + predicted_index[both],
                                    return_counts=True)
    rows, cols = np.divmod(codes, len(predicted_labels))
    iou = intersection / (true_area[rows] + predicted_area[cols] - intersection)
    true_foreground, predicted_foreground = true_labels != 0, predicted_labels != 0
    return {"rows": (np.cumsum(true_foreground) - 1)[rows], "cols": (np.cumsum(predicted_foreground) - 1)[cols],
            "iou": iou, "true_labels": true_labels[true_foreground],
            "predicted_labels": predicted_labels[predicted_foreground]}


def iou_matrix(true: np.ndarray, predicted: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(iou, true_labels, predicted_labels)``: the IoU of every true object (rows) with
    every predicted one (columns), 0 where they do not overlap, and the labels the rows and columns
    stand for (dense: for small images; :func:`overlaps` is the sparse form)."""
    found = overlaps(true, predicted)
    iou = np.zeros((len(found["true_labels"]), len(found["predicted_labels"])))
    iou[found["rows"], found["cols"]] = found["iou"]
    return iou, found["true_labels"], found["predicted_labels"]


def matched_pairs(iou: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Return the ``(rows, columns)`` of the pairs whose IoU is greater than ``threshold`` (>= 0.5: one-to-one)."""
    if threshold < 0.5:
        raise ValueError(f"threshold {threshold}: matching without an assignment step needs a threshold of 0.5 or more")
    return np.nonzero(iou > threshold)


def instance_scores(true: np.ndarray, predicted: np.ndarray) -> dict[str, Any]:
    """Return the instance metrics of one pair of label images (see the module's conventions).

    Keys: ``objects_true``, ``objects_predicted``, ``tp``/``fp``/``fn`` (lists over
    :data:`THRESHOLDS`), ``dsb_score``, ``f1``, ``pq``, ``sq``, ``rq``, ``matched_iou`` (the IoU of
    each matched pair at 0.5), ``match`` (for each true label, the predicted label it matches
    at 0.5, or 0) and, for the predicted objects in ``predicted_labels`` order, ``predicted_match``
    (the true label each matches at 0.5, or 0) and ``predicted_iou`` (its highest IoU with a true
    object, 0 if it overlaps none).
    """
    found = overlaps(true, predicted)
    true_labels, predicted_labels, iou = found["true_labels"], found["predicted_labels"], found["iou"]
    objects_true, objects_predicted = len(true_labels), len(predicted_labels)
    tp = np.array([np.count_nonzero(iou > t) for t in THRESHOLDS], dtype=np.int64)  # > 0.5: one to one
    fp, fn = objects_predicted - tp, objects_true - tp
    matched = iou > 0.5
    rows, cols, matched_iou = found["rows"][matched], found["cols"][matched], iou[matched]
    best = np.zeros(objects_predicted)
    np.maximum.at(best, found["cols"], iou)
    match = dict.fromkeys(true_labels.tolist(), 0)
    match.update(zip(true_labels[rows].tolist(), predicted_labels[cols].tolist()))
    predicted_match = np.zeros(objects_predicted, dtype=np.int64)
    predicted_match[cols] = true_labels[rows]
    result: dict[str, Any] = {
        "objects_true": objects_true, "objects_predicted": objects_predicted,
        "tp": tp.tolist(), "fp": fp.tolist(), "fn": fn.tolist(), "matched_iou": matched_iou.tolist(), "match": match,
        "predicted_labels": predicted_labels, "predicted_match": predicted_match,
        "predicted_iou": best,
    }
    if objects_true == 0 and objects_predicted == 0:
        return {**result, **dict.fromkeys(("dsb_score", "f1", "pq", "sq", "rq"), float("nan"))}
    first = tp[0]
    rq = first / (first + 0.5 * fp[0] + 0.5 * fn[0])
    sq = float(matched_iou.mean()) if first else float("nan")
    return {
        **result,
        "dsb_score": float(np.mean(tp / (tp + fp + fn))),
        "f1": float(2 * first / (2 * first + fp[0] + fn[0])),
        "rq": float(rq), "sq": sq, "pq": float(sq * rq) if first else 0.0,
    }


def class_scores(true: np.ndarray, true_class: np.ndarray, predicted: np.ndarray, predicted_class: np.ndarray,
                 num_classes: int) -> dict[str, list[Any]]:
    """Return the instance metrics of one image per class, as lists indexed by class like ``dice``.

    ``true``/``predicted`` are label images and ``*_class`` map each label to its class (index 0,
    the background label, maps to 0). Each class is scored on the objects of that class alone;
    the background's entries are NaN (0 counts). Keys: ``objects_true``, ``objects_predicted``,
    ``dsb_score``, ``f1``, ``pq``, and ``tp``/``fp``/``fn`` (per class, a list over :data:`THRESHOLDS`);
    plus ``predicted_match`` and ``predicted_iou``, arrays indexed by predicted label: the true
    label of the same class each object matches (0 if none) and its highest IoU with a true object
    of its class (see :func:`instance_scores`).
    """
    names = ("objects_true", "objects_predicted", "dsb_score", "f1", "pq", "tp", "fp", "fn")
    result: dict[str, Any] = {name: [] for name in names}
    result["predicted_match"] = np.zeros(len(predicted_class), dtype=np.int64)
    result["predicted_iou"] = np.zeros(len(predicted_class), dtype=np.float64)
    nan, zeros = float("nan"), [0] * len(THRESHOLDS)
    for class_index in range(num_classes):
        if class_index == 0:
            for name, value in zip(names, (0, 0, nan, nan, nan, zeros, zeros, zeros)):
                result[name].append(value)
            continue
        scores = instance_scores(np.where(true_class[true] == class_index, true, 0),
                                 np.where(predicted_class[predicted] == class_index, predicted, 0))
        for name in names:
            result[name].append(scores[name])
        result["predicted_match"][scores["predicted_labels"]] = scores["predicted_match"]
        result["predicted_iou"][scores["predicted_labels"]] = scores["predicted_iou"]
    return result
