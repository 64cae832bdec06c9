"""Per-image segmentation metrics from pixel counts.

Conventions (the report states the same):

* For an image and a class ``c``, ``TP`` counts pixels predicted ``c`` whose truth is ``c``,
  ``FP`` pixels predicted ``c`` whose truth is not ``c``, ``FN`` pixels of truth ``c`` predicted
  otherwise.
* ``Dice = 2TP / (2TP + FP + FN)`` and ``IoU = TP / (TP + FP + FN)``.
* When ``TP + FP + FN == 0`` (class absent from both prediction and truth) the value is **NaN**
  (undefined), as nnU-Net does; it is neither a perfect 1 nor a 0. Averages skip NaN and the
  report counts such cases.
* A truth pixel outside ``0..C-1`` (255: not labelled, as the data set's label map declares) is
  left out of TP, FP and FN whatever was predicted there; ``ignored_pixels`` counts them.
* The per-image ``mean_dice`` / ``mean_iou`` average the foreground classes ``1..C-1`` (class 0 is
  background), skipping NaN; with a single class they average class 0. They are NaN when every
  class they average is NaN.
"""

from __future__ import annotations

import numpy as np

COUNT_CHUNK = 1 << 22  # pixels per bincount: its int64 copy of the chunk stays at 32 MB for any image size


def class_counts(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """Return the pixels of each class ``0..num_classes-1`` in a class-index mask, int64 ``(num_classes,)``.

    Counted in chunks of :data:`COUNT_CHUNK` pixels, as ``np.bincount`` would count the whole mask.
    """
    flat = mask.reshape(-1)
    counts = np.zeros(num_classes, dtype=np.int64)
    for start in range(0, flat.size, COUNT_CHUNK):
        counts += np.bincount(flat[start:start + COUNT_CHUNK], minlength=num_classes)[:num_classes]
    return counts


def confusion_counts(prediction: np.ndarray, truth: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(tp, fp, fn)``, each int64 of shape ``(num_classes,)``, for two class-index masks.

    ``prediction`` and ``truth`` are integer arrays of the same shape with values in
    ``0..num_classes-1``; truth pixels beyond (255: not labelled) count nowhere. The pairs are
    counted in chunks, so the memory used does not grow with the image.
    """
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from truth shape {truth.shape}")
    truth_flat, prediction_flat = truth.reshape(-1), prediction.reshape(-1)
    matrix = np.zeros(num_classes * num_classes, dtype=np.int64)
    for start in range(0, truth_flat.size, COUNT_CHUNK):
        stop = start + COUNT_CHUNK
        truth_chunk, predicted_chunk = truth_flat[start:stop], prediction_flat[start:stop]
        labelled = truth_chunk < num_classes
        if not labelled.all():
            truth_chunk, predicted_chunk = truth_chunk[labelled], predicted_chunk[labelled]
        pairs = truth_chunk.astype(np.int64) * num_classes + predicted_chunk
        matrix += np.bincount(pairs, minlength=num_classes * num_classes)
    matrix = matrix.reshape(num_classes, num_classes)
    tp = np.diag(matrix).copy()
    fp = matrix.sum(axis=0) - tp  # predicted c, truth other
    fn = matrix.sum(axis=1) - tp  # truth c, predicted other
    return tp, fp, fn


def dice_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """Return Dice per entry, float64; NaN where ``tp + fp + fn == 0``."""
    tp, fp, fn = (np.asarray(a, dtype=np.float64) for a in (tp, fp, fn))
    denominator = 2 * tp + fp + fn
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, 2 * tp / denominator, np.nan)


def iou_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """Return IoU (Jaccard) per entry, float64; NaN where ``tp + fp + fn == 0``."""
    tp, fp, fn = (np.asarray(a, dtype=np.float64) for a in (tp, fp, fn))
    denominator = tp + fp + fn
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, tp / denominator, np.nan)


def foreground_mean(values: np.ndarray) -> float:
    """Return the NaN-skipping mean of ``values[1:]`` (or of ``values`` for one class); NaN if none defined."""
    values = np.asarray(values, dtype=np.float64)
    foreground = values[1:] if values.shape[-1] > 1 else values
    defined = foreground[~np.isnan(foreground)]
    return float(defined.mean()) if defined.size else float("nan")


def image_metrics(prediction: np.ndarray, truth: np.ndarray, num_classes: int) -> dict[str, np.ndarray | float]:
    """Return the per-image metric record: ``tp, fp, fn`` (int64), ``dice, iou`` (float64, per
    class), ``mean_dice, mean_iou`` (foreground means) and ``ignored_pixels`` (truth pixels not
    labelled, counted nowhere), following the module's conventions."""
    tp, fp, fn = confusion_counts(prediction, truth, num_classes)
    ignored = int(truth.size - (tp.sum() + fn.sum()))
    dice = dice_from_counts(tp, fp, fn)
    iou = iou_from_counts(tp, fp, fn)
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "dice": dice,
        "iou": iou,
        "mean_dice": foreground_mean(dice),
        "mean_iou": foreground_mean(iou),
        "ignored_pixels": ignored,
    }
