"""Metrics on hand-made masks whose scores can be checked by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.metrics import confusion_counts, dice_from_counts, foreground_mean, image_metrics, iou_from_counts


def test_counts_on_a_2x2_binary_mask() -> None:
    truth = np.array([[1, 1], [0, 0]])
    prediction = np.array([[1, 0], [1, 0]])
    tp, fp, fn = confusion_counts(prediction, truth, 2)
    # class 1: TP at (0,0); FP at (1,0); FN at (0,1). class 0: TP at (1,1); FP at (0,1); FN at (1,0)
    assert tp.tolist() == [1, 1]
    assert fp.tolist() == [1, 1]
    assert fn.tolist() == [1, 1]
    assert dice_from_counts(tp, fp, fn).tolist() == [0.5, 0.5]  # 2*1 / (2+1+1)
    assert iou_from_counts(tp, fp, fn).tolist() == pytest.approx([1 / 3, 1 / 3])


def test_perfect_prediction_scores_one() -> None:
    truth = np.array([[0, 1], [2, 2]])
    result = image_metrics(truth.copy(), truth, 3)
    assert result["dice"].tolist() == [1.0, 1.0, 1.0]
    assert result["iou"].tolist() == [1.0, 1.0, 1.0]
    assert result["mean_dice"] == 1.0


def test_class_absent_from_both_is_nan_not_one_or_zero() -> None:
    truth = np.zeros((4, 4), dtype=np.uint8)
    prediction = np.zeros((4, 4), dtype=np.uint8)
    result = image_metrics(prediction, truth, 2)
    assert result["dice"][0] == 1.0  # background: all 16 pixels agree
    assert math.isnan(result["dice"][1]) and math.isnan(result["iou"][1])
    assert math.isnan(result["mean_dice"])  # the only foreground class is undefined


def test_class_missed_entirely_scores_zero() -> None:
    truth = np.zeros((4, 4), dtype=np.uint8)
    truth[0, 0] = 1
    prediction = np.zeros((4, 4), dtype=np.uint8)
    result = image_metrics(prediction, truth, 2)
    assert result["tp"].tolist() == [15, 0]
    assert result["fn"].tolist() == [0, 1]
    assert result["dice"][1] == 0.0 and result["iou"][1] == 0.0


def test_false_positive_on_empty_truth_scores_zero() -> None:
    truth = np.zeros((2, 2), dtype=np.uint8)
    prediction = np.array([[0, 1], [0, 0]])
    result = image_metrics(prediction, truth, 2)
    assert result["fp"].tolist() == [0, 1]
    assert result["dice"][1] == 0.0


def test_4x4_three_classes_by_hand() -> None:
    truth = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 2, 2], [0, 0, 2, 2]])
    prediction = np.array([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 2, 2], [0, 0, 0, 0]])
    result = image_metrics(prediction, truth, 3)
    # class 1: TP 3, FP 1 (0,2), FN 1 (1,1) -> dice 6/8, iou 3/5
    # class 2: TP 2, FP 0, FN 2 -> dice 4/6, iou 2/4
    assert result["tp"].tolist()[1:] == [3, 2]
    assert result["dice"][1] == pytest.approx(0.75)
    assert result["iou"][1] == pytest.approx(0.6)
    assert result["dice"][2] == pytest.approx(2 / 3)
    assert result["iou"][2] == pytest.approx(0.5)
    assert result["mean_dice"] == pytest.approx((0.75 + 2 / 3) / 2)
    assert result["mean_iou"] == pytest.approx((0.6 + 0.5) / 2)


def test_foreground_mean_skips_nan_and_background() -> None:
    assert foreground_mean(np.array([0.1, np.nan, 0.5])) == 0.5
    assert math.isnan(foreground_mean(np.array([1.0, np.nan])))


def test_shape_mismatch_is_refused() -> None:
    with pytest.raises(ValueError, match="shape"):
        confusion_counts(np.zeros((2, 2)), np.zeros((2, 3)), 2)


def test_counts_over_many_chunks_match_a_plain_bincount(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline import metrics

    monkeypatch.setattr(metrics, "COUNT_CHUNK", 7)  # many chunks, the last one short
    rng = np.random.default_rng(1)
    prediction, truth = rng.integers(0, 3, (9, 11), dtype=np.uint8), rng.integers(0, 3, (9, 11), dtype=np.uint8)
    tp, fp, fn = metrics.confusion_counts(prediction, truth, 3)
    assert tp.tolist() == [int(((prediction == c) & (truth == c)).sum()) for c in range(3)]
    assert fp.tolist() == [int(((prediction == c) & (truth != c)).sum()) for c in range(3)]
    assert fn.tolist() == [int(((prediction != c) & (truth == c)).sum()) for c in range(3)]
    assert metrics.class_counts(prediction, 3).tolist() == np.bincount(prediction.ravel(), minlength=3).tolist()
