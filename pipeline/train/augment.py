"""Training pairs: an image and its mask brought to the model's tile, with optional augmentation.

At native scale (``scale: native``) the pair is not resized: windows of the tile are cut from it
at its own resolution (:func:`native_windows`), as many per pass as the image holds tiles of
area, and each window is augmented as below; an image smaller than the tile is padded by
reflection and its padding labelled :data:`IGNORE`, so it counts in no loss and no metric.

The data stage brings each pair to the tile through segmentation's own resize chain
(:meth:`pipeline.train.data.DecodedSamples.decode`), so objects keep the scale, and pixels the
values, the model meets at inference; :func:`resize_pair` here serves the random crop. Augmentation then flips both and turns them by a multiple of
90 degrees (exact: no pixel is resampled) and jitters the image's brightness and contrast (the
mask is left alone).

Optionally (``crop``) the pair is first cut to a random window spanning 80-100 % of each side,
resized to the tile: a zoom of up to x1.25 and a shift. Inference resizes the whole image to the
tile, so this trains at scales the model does not meet there; on the ISBI membranes a short run
trained to a higher error with it (see README), hence off by default.

Optionally (``warp``) both go instead through one random warp: a flip, a rotation by any angle, a mild zoom
(x0.9..1.1, centred on the inference scale), a shift, and a smooth elastic deformation as in the
U-Net paper (random displacements on a coarse 3x3 grid, interpolated bicubically), with mirrored
borders; the image is sampled bilinearly and the mask by nearest neighbour, so class indices stay
class indices. The warp resamples, which blurs thin structures a little; on the ISBI membranes a
short run did as well with it as with flips and turns, within noise (see README).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from pipeline.config import AugmentConfig
from pipeline.imaging import IGNORE, resize_channels
from pipeline.symmetry import move, offset_correction
from pipeline.windows import padded_to_tile, window_grid

BRIGHTNESS = 0.1  # added to the normalised image, uniform in [-0.1, 0.1]
CONTRAST = 0.2  # contrast factor uniform in [0.8, 1.2], around the image mean
MAX_ZOOM = 1.1  # zoom factor log-uniform in [1/1.1, 1.1]
MAX_SHIFT = 0.25  # the warp's centre moves up to this fraction of each side
ELASTIC_GRID = 3  # control points per side of the elastic displacement grid
ELASTIC_STD = 0.02  # their displacement's standard deviation, as a fraction of the tile side (10 px at 512)
MIN_CROP = 0.8  # a random crop keeps at least this fraction of each side


def resize_pair(image: np.ndarray, mask: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Return ``image`` (float32, bilinear) and ``mask`` (uint8, nearest) resized to ``(height, width)``."""
    resized_image = resize_channels(image.astype(np.float32, copy=False), height, width, Image.Resampling.BILINEAR)
    resized_mask = resize_channels(mask[:, :, np.newaxis], height, width, Image.Resampling.NEAREST)[:, :, 0]
    return resized_image, resized_mask


def mirror(coordinates: np.ndarray, size: int) -> np.ndarray:
    """Return ``coordinates`` folded into ``[0, size - 1]`` by mirroring at the borders (no repeated edge)."""
    if size == 1:
        return np.zeros_like(coordinates)
    period = 2 * (size - 1)
    folded = np.mod(coordinates, period)
    return np.where(folded > size - 1, period - folded, folded)


def elastic_field(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Return a smooth random displacement of each pixel, float32 ``(h, w)``, in pixels.

    Displacements drawn on an ``ELASTIC_GRID`` x ``ELASTIC_GRID`` grid with standard deviation
    ``ELASTIC_STD`` of the longer side, interpolated bicubically to the full size.
    """
    height, width = shape
    coarse = rng.normal(0.0, ELASTIC_STD * max(height, width), (ELASTIC_GRID, ELASTIC_GRID)).astype(np.float32)
    return np.asarray(Image.fromarray(coarse, mode="F").resize((width, height), Image.Resampling.BICUBIC))


def warp_coordinates(shape: tuple[int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Return the source ``(rows, cols)`` of each output pixel of a random warp, float32 ``(h, w)`` each.

    The warp is a flip, a rotation by any angle, a zoom, a shift and an elastic deformation (see
    the module docstring); coordinates are already mirrored into the source.
    """
    height, width = shape
    angle = rng.uniform(0.0, 2.0 * math.pi)
    zoom = math.exp(rng.uniform(-math.log(MAX_ZOOM), math.log(MAX_ZOOM)))
    centre_row = (height - 1) / 2 + rng.uniform(-MAX_SHIFT, MAX_SHIFT) * height
    centre_col = (width - 1) / 2 + rng.uniform(-MAX_SHIFT, MAX_SHIFT) * width
    rows, cols = np.meshgrid(np.arange(height, dtype=np.float32) - (height - 1) / 2,
                             np.arange(width, dtype=np.float32) - (width - 1) / 2, indexing="ij")
    if rng.random() < 0.5:
        cols = -cols
    cos, sin = math.cos(angle) / zoom, math.sin(angle) / zoom
    source_rows = cos * rows - sin * cols + centre_row + elastic_field(shape, rng)
    source_cols = sin * rows + cos * cols + centre_col + elastic_field(shape, rng)
    return mirror(source_rows, height), mirror(source_cols, width)


def sample_bilinear(image: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Return float32 ``(h, w, C)``: ``image`` (``(H, W, C)``) read at fractional ``rows``/``cols`` in range."""
    top = np.floor(rows).astype(np.intp)
    left = np.floor(cols).astype(np.intp)
    bottom = np.minimum(top + 1, image.shape[0] - 1)
    right = np.minimum(left + 1, image.shape[1] - 1)
    down = (rows - top)[:, :, np.newaxis]
    across = (cols - left)[:, :, np.newaxis]
    upper = image[top, left] * (1 - across) + image[top, right] * across
    lower = image[bottom, left] * (1 - across) + image[bottom, right] * across
    return (upper * (1 - down) + lower * down).astype(np.float32)


def random_crop(image: np.ndarray, mask: np.ndarray, tile: tuple[int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Return both cut to the same random window (``MIN_CROP``..100 % of each side) and resized to ``tile``."""
    height, width = mask.shape
    crop_h = max(1, round(height * rng.uniform(MIN_CROP, 1.0)))
    crop_w = max(1, round(width * rng.uniform(MIN_CROP, 1.0)))
    top = int(rng.integers(0, height - crop_h + 1))
    left = int(rng.integers(0, width - crop_w + 1))
    window = (slice(top, top + crop_h), slice(left, left + crop_w))
    return resize_pair(image[window], mask[window], *tile)


def random_patch(image: np.ndarray, mask: np.ndarray, patch: tuple[int, int],
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Return both cut to the same random ``patch``-sized window, at their own scale (no resampling)."""
    height, width = mask.shape
    if height < patch[0] or width < patch[1]:
        raise ValueError(f"patch {patch} is larger than the {height}x{width} tile")
    top = int(rng.integers(0, height - patch[0] + 1))
    left = int(rng.integers(0, width - patch[1] + 1))
    return image[top:top + patch[0], left:left + patch[1]], mask[top:top + patch[0], left:left + patch[1]]


def padded_pair(image: np.ndarray, mask: np.ndarray, tile: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Return both padded at the bottom and right to at least ``tile``: the image by reflection, the
    mask with :data:`IGNORE` (the padding is no object of any class)."""
    rows, cols = max(0, tile[0] - mask.shape[0]), max(0, tile[1] - mask.shape[1])
    if not rows and not cols:
        return image, mask
    return padded_to_tile(image, tile), np.pad(mask, ((0, rows), (0, cols)), constant_values=IGNORE)


def window_count(height: int, width: int, tile: tuple[int, int], rng: np.random.Generator) -> int:
    """Return how many windows to cut from an image this pass: its area in tiles, rounded at random
    (so that every pixel of a data set of mixed sizes is drawn equally often on average)."""
    expected = height * width / (tile[0] * tile[1])
    return int(expected) + int(rng.random() < expected - int(expected))


def native_windows(image: np.ndarray, mask: np.ndarray, tile: tuple[int, int], rng: np.random.Generator | None,
                   settings: AugmentConfig = AugmentConfig()) -> list[tuple[np.ndarray, np.ndarray]]:
    """Return the training windows of one pair at native scale, each ``tile`` sized and augmented.

    With ``rng``: :func:`window_count` windows at random places, each augmented as
    :func:`training_pair` says (the window takes the place of the resized image). Without (for
    validation): the windows that tile the image, evenly placed and flush with its edges, as is.
    """
    count = None if rng is None else window_count(*mask.shape, tile, rng)  # of the image's own area
    image, mask = padded_pair(image, mask, tile)
    if count is None:
        return [(image[top:top + tile[0], left:left + tile[1]], mask[top:top + tile[0], left:left + tile[1]])
                for top, left in window_grid(*mask.shape, tile, 0.0)]
    windows = []
    for _ in range(count):
        cut = random_patch(image, mask, tile, rng)
        windows.append(training_pair(*cut, tile, rng, settings))
    return windows


def random_warp(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Return ``image`` (float32 ``(h, w, C)``) and ``mask`` (uint8 ``(h, w)``) moved through one random warp."""
    rows, cols = warp_coordinates(mask.shape, rng)
    warped_mask = mask[np.rint(rows).astype(np.intp), np.rint(cols).astype(np.intp)]
    return sample_bilinear(image, rows, cols), warped_mask


def flip_and_rotate(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
                    label_offset: tuple[float, float] = (0.0, 0.0),
                    quarter_turns: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Return both flipped left-right at random and turned by a random multiple of 90°.

    Half turns only if the pair is not square or ``quarter_turns`` is off: then the four draws are
    the identity, the left-right flip, the up-down flip (a flip and a half turn) and the half turn,
    which keep rows rows and columns columns (for labels whose offset differs between the axes).

    ``label_offset`` is where the labels sit relative to the objects they mark, in pixels (rows
    down, columns right). A flip or turn moves that offset with the image (half a pixel up becomes
    half a pixel down), so the mask is then moved by the whole pixels that bring it nearest to the
    offset again: the model sees the labels where annotators would have drawn them on the new image.
    """
    flipped = rng.random() < 0.5
    if flipped:
        image, mask = image[:, ::-1], mask[:, ::-1]
    square = mask.shape[0] == mask.shape[1]
    turns = int(rng.integers(0, 4)) if square and quarter_turns else 2 * int(rng.integers(0, 2))
    mask = np.rot90(mask, turns)
    if any(label_offset):
        mask = move(mask, *offset_correction(label_offset, flipped, turns))
    return np.ascontiguousarray(np.rot90(image, turns)), np.ascontiguousarray(mask)


def jitter_intensity(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Return the normalised image with random contrast (around its mean) and brightness."""
    contrast = 1.0 + rng.uniform(-CONTRAST, CONTRAST)
    brightness = rng.uniform(-BRIGHTNESS, BRIGHTNESS)
    mean = image.mean()
    return ((image - mean) * contrast + mean + brightness).astype(np.float32)


def training_pair(image: np.ndarray, mask: np.ndarray, tile: tuple[int, int], rng: np.random.Generator | None,
                  settings: AugmentConfig = AugmentConfig()) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(image, mask)`` at ``tile`` size: float32 ``(h, w, C)`` and uint8 ``(h, w)``.

    ``image`` is already normalised float32. Both are resized to the tile as inference does; with
    ``rng`` the pair is then augmented as ``settings`` say: flips and 90° turns (or, with ``warp``,
    a random warp; neither with ``flips`` off and no ``warp``; only half turns without
    ``quarter_turns``; the flips and turns keep the label offset, see :func:`flip_and_rotate`),
    then (with ``invert``) half the images inverted, then intensity jitter; with ``crop`` as well, a random window is resized to the tile instead
    of the whole pair.
    """
    if rng is None:
        return resize_pair(image, mask, *tile)
    image, mask = random_crop(image, mask, tile, rng) if settings.crop else resize_pair(image, mask, *tile)
    if settings.warp:
        image, mask = random_warp(image, mask, rng)
    elif settings.flips:
        image, mask = flip_and_rotate(image, mask, rng, settings.label_offset, settings.quarter_turns)
    if settings.invert and rng.random() < 0.5:
        image = 1.0 - image  # the normalised range is [0, 1]: bright-on-dark becomes dark-on-bright
    return jitter_intensity(image, rng), mask
