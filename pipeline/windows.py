"""Where windows of a tile sit on an image, and the padding of images smaller than the tile.

Shared by segmentation in windows (:mod:`pipeline.segment.tiling`) and training at native scale
(:mod:`pipeline.train.augment`), so both cut an image the same way.
"""

from __future__ import annotations

import math

import numpy as np


def window_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Return the first index of each window along an axis of ``length`` pixels.

    Windows of ``tile`` pixels, evenly spaced, the first at 0 and the last at ``length - tile``
    (flush with the edge), as few as keep neighbours overlapping by at least ``overlap * tile``
    pixels. One window at 0 if ``length <= tile`` (the image is padded to the tile).
    """
    if length <= tile:
        return [0]
    stride = max(1, math.floor(tile * (1.0 - overlap)))
    count = math.ceil((length - tile) / stride) + 1
    return [round(index * (length - tile) / (count - 1)) for index in range(count)]


def window_grid(height: int, width: int, tile: tuple[int, int], overlap: float) -> list[tuple[int, int]]:
    """Return the ``(top, left)`` of every window over a ``height`` x ``width`` image, row by row."""
    return [(top, left) for top in window_starts(height, tile[0], overlap)
            for left in window_starts(width, tile[1], overlap)]


def padded_to_tile(image: np.ndarray, tile: tuple[int, int]) -> np.ndarray:
    """Return ``image`` ``(h, w, C)`` padded at the bottom and right by reflection to at least ``tile``."""
    rows, cols = max(0, tile[0] - image.shape[0]), max(0, tile[1] - image.shape[1])
    if not rows and not cols:
        return image
    return np.pad(image, ((0, rows), (0, cols), (0, 0)), mode=reflection(image.shape[:2]))


def reflection(size: tuple[int, int]) -> str:
    """Return numpy's padding mode that mirrors an image of ``size``: ``reflect`` needs two pixels to mirror at."""
    return "symmetric" if min(size) == 1 else "reflect"
