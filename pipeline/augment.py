"""Training pairs: an image and its mask brought to the model's tile, with optional augmentation.

Geometric changes (random crop, flips, 90° rotations) are applied identically to image and
mask; brightness and contrast jitter touch the image only. Masks are resized with nearest
neighbour so class indices stay class indices.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from pipeline.preprocess import resize_channels

BRIGHTNESS = 0.1  # added to the normalised image, uniform in [-0.1, 0.1]
CONTRAST = 0.2  # contrast factor uniform in [0.8, 1.2], around the image mean
MIN_CROP = 0.8  # a random crop keeps at least this fraction of each side


def resize_pair(image: np.ndarray, mask: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Return ``image`` (float32, bilinear) and ``mask`` (uint8, nearest) resized to ``(height, width)``."""
    resized_image = resize_channels(image.astype(np.float32, copy=False), height, width, Image.Resampling.BILINEAR)
    resized_mask = resize_channels(mask[:, :, np.newaxis], height, width, Image.Resampling.NEAREST)[:, :, 0]
    return resized_image, resized_mask


def random_crop(image: np.ndarray, mask: np.ndarray, tile: tuple[int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Return a random crop of both, resized to ``tile``.

    The crop spans ``MIN_CROP``..100 % of each side, so objects keep about the scale inference
    gives them (inference resizes the whole image to the tile), give or take a zoom of 1/MIN_CROP.
    """
    height, width = mask.shape
    crop_h = max(1, int(round(height * rng.uniform(MIN_CROP, 1.0))))
    crop_w = max(1, int(round(width * rng.uniform(MIN_CROP, 1.0))))
    top = int(rng.integers(0, height - crop_h + 1))
    left = int(rng.integers(0, width - crop_w + 1))
    return resize_pair(image[top:top + crop_h, left:left + crop_w], mask[top:top + crop_h, left:left + crop_w], *tile)


def flip_and_rotate(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Return both flipped left-right and up-down at random, and rotated by a random multiple of 90° if square."""
    if rng.random() < 0.5:
        image, mask = image[:, ::-1], mask[:, ::-1]
    if rng.random() < 0.5:
        image, mask = image[::-1], mask[::-1]
    if mask.shape[0] == mask.shape[1]:
        turns = int(rng.integers(0, 4))
        image, mask = np.rot90(image, turns), np.rot90(mask, turns)
    return np.ascontiguousarray(image), np.ascontiguousarray(mask)


def jitter_intensity(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Return the normalised image with random contrast (around its mean) and brightness."""
    contrast = 1.0 + rng.uniform(-CONTRAST, CONTRAST)
    brightness = rng.uniform(-BRIGHTNESS, BRIGHTNESS)
    mean = image.mean()
    return ((image - mean) * contrast + mean + brightness).astype(np.float32)


def training_pair(
    image: np.ndarray, mask: np.ndarray, tile: tuple[int, int], rng: np.random.Generator | None
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(image, mask)`` at ``tile`` size: float32 ``(h, w, C)`` and uint8 ``(h, w)``.

    ``image`` is already normalised float32. With ``rng`` the pair is augmented (random crop,
    flips, rotations, intensity jitter); without, both are resized to the tile, as inference does.
    """
    if rng is None:
        return resize_pair(image, mask, *tile)
    image, mask = random_crop(image, mask, tile, rng)
    image, mask = flip_and_rotate(image, mask, rng)
    return jitter_intensity(image, rng), mask
