"""Model scores to masks: one decision for every tiling mode.

Scores are ``(h, w, K)`` class probabilities with ``K = 1`` (sigmoid, probability of class 1) or
``K = num_classes`` (softmax), as floats in [0, 1] or uint8 levels (see :func:`quantise_scores`).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from pipeline.imaging.resize import resize_plane

SCORE_LEVELS = 255  # scores travel between stages as uint8: probability * 255, rounded


def quantise_scores(probabilities: np.ndarray) -> np.ndarray:
    """Return probabilities in [0, 1] as uint8 levels ``round(p * 255)`` (4x smaller than float32)."""
    return np.rint(np.clip(probabilities, 0.0, 1.0) * SCORE_LEVELS).astype(np.uint8)


def mask_from_scores(scores: np.ndarray, threshold: float) -> np.ndarray:
    """Return uint8 ``(H, W)`` class indices from ``(H, W, K)`` scores: ``p >= threshold`` for K=1, argmax otherwise.

    Scores are probabilities, as floats in [0, 1] or uint8 levels (see :func:`quantise_scores`).
    """
    if scores.shape[-1] == 1:
        level = threshold * SCORE_LEVELS if scores.dtype == np.uint8 else threshold
        return (scores[:, :, 0] >= level).astype(np.uint8)
    return np.argmax(scores, axis=-1).astype(np.uint8)


def decided(scores: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(mask, confidence)`` from ``(H, W, K)`` scores: the class indices of :func:`mask_from_scores`
    and, as uint8 levels (see :func:`quantise_scores`), the probability of each pixel's own class
    (``p`` or ``1 - p`` for one sigmoid channel, the highest probability otherwise)."""
    mask = mask_from_scores(scores, threshold)
    levels = scores if scores.dtype == np.uint8 else quantise_scores(scores)
    if scores.shape[-1] == 1:
        plane = levels[:, :, 0]
        return mask, np.where(mask == 1, plane, SCORE_LEVELS - plane).astype(np.uint8)
    return mask, levels.max(axis=-1)


def decide(scores: np.ndarray, threshold: float, confidence: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Return ``(mask, confidence)`` of scores at their own size: :func:`decided` with ``confidence``,
    else the mask of :func:`mask_from_scores` and None (the confidence plane costs a pass: only objects need it)."""
    return decided(scores, threshold) if confidence else (mask_from_scores(scores, threshold), None)


def mask_at_size(scores: np.ndarray, height: int, width: int, threshold: float) -> np.ndarray:
    """Return the class-index mask at ``(height, width)``: scores are resized bilinearly, then decided.

    One class plane is resized at a time and the argmax kept as it goes (ties to the lower class,
    as ``np.argmax``), so a large image costs a few bytes per pixel, not ``K`` float planes.
    """
    return mask_and_confidence_at_size(scores, height, width, threshold)[0]


def mask_and_confidence_at_size(scores: np.ndarray, height: int, width: int,
                                threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Return :func:`mask_at_size` and the confidence of :func:`decided` (uint8 levels) at ``(height, width)``."""
    if scores.shape[:2] == (height, width):
        return decided(scores, threshold)
    bilinear = Image.Resampling.BILINEAR
    if scores.shape[-1] == 1:
        return decided(resize_plane(scores[:, :, 0], height, width, bilinear)[:, :, np.newaxis], threshold)
    best = resize_plane(scores[:, :, 0], height, width, bilinear).copy()
    labels = np.zeros((height, width), dtype=np.uint8)
    for k in range(1, scores.shape[-1]):
        plane = resize_plane(scores[:, :, k], height, width, bilinear)
        higher = plane > best
        labels[higher] = k
        np.maximum(best, plane, out=best)
    return labels, best if best.dtype == np.uint8 else quantise_scores(best)
