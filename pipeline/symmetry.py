"""Flips, turns and the labels' offset: what training's augmentation and test-time augmentation share.

Labels can sit a fixed sub-pixel distance from the objects they mark (ISBI's membranes: half a
pixel up). A flip or turn moves that offset with the image, so after one the mask is moved by
the whole pixels that bring the labels nearest to the offset again (training), and the scores of
a flipped or turned image are moved back by the same (test-time augmentation).
"""

from __future__ import annotations

import numpy as np


def offset_correction(offset: tuple[float, float], flipped: bool, turns: int) -> tuple[int, int]:
    """Return the whole-pixel move (rows, columns) that brings labels drawn at ``offset`` from their
    objects nearest to it again after a left-right flip (if ``flipped``), then ``turns`` quarter
    turns counterclockwise (``np.rot90``)."""
    rows, cols = offset
    if flipped:
        cols = -cols
    for _ in range(turns % 4):
        rows, cols = -cols, rows  # np.rot90 takes the offset (r, c) from the centre to (-c, r)
    return round(offset[0] - rows), round(offset[1] - cols)


def move(mask: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Return ``mask`` moved ``rows`` down and ``cols`` right (negative: up, left), its edge repeated."""
    height, width = mask.shape
    source_rows = np.clip(np.arange(height) - rows, 0, height - 1)
    source_cols = np.clip(np.arange(width) - cols, 0, width - 1)
    return mask[np.ix_(source_rows, source_cols)]
