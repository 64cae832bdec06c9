"""Sliding windows at native resolution: where the windows sit, how their scores are weighted, and
how they are blended back into one mask, a band of rows at a time.

An image at least the model's tile in each direction is covered by windows of the tile placed
evenly along each axis, the first at the top-left edge and the last flush with the bottom-right
edge, neighbours overlapping by at least ``overlap`` of the tile; an image smaller than the tile
(in either direction) is first padded to the tile by reflection and cropped back after.
Each window's class scores are weighted by an importance map (a Gaussian with sigma = tile / 8,
or constant) and the weighted sums divided by the summed weights, so a window's edges, where the
model sees least context, count least and no seam shows.

:class:`WindowBlender` keeps only the rows that windows still to come can touch (at most twice
the tile's height, float32) and decides every other row as soon as its last window has been
added: an image of any size costs its ``uint8`` mask plus a band of ``2 x tile x width x classes``
floats, never a full-size float array.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np

from pipeline.imaging import decided, mask_from_scores
from pipeline.windows import padded_to_tile, window_grid

TILINGS = ("auto", "windows", "resize", "whole")
BLENDS = ("gaussian", "constant")
GAUSSIAN_SIGMA = 1 / 8  # of the tile's side, as nnU-Net and MONAI use
MIN_WEIGHT = 1e-6  # the Gaussian's corners, kept positive so that every pixel has a weight


@dataclasses.dataclass(frozen=True)
class Tiling:
    """How a run brings images to the model: ``mode`` ``windows``, ``resize`` or ``whole``.

    ``window`` is the model's tile ``(height, width)``; ``overlap`` and ``blend`` matter only for
    windows. ``requested`` is what the configuration asked for (``auto`` or the mode itself).
    """

    mode: str
    window: tuple[int, int]
    overlap: float = 0.25
    blend: str = "gaussian"
    requested: str = "auto"
    whole_max_pixels: int = 16 * 2**20

    def to_json(self) -> dict[str, Any]:
        """Return what run.json records and a resumed run must match."""
        record: dict[str, Any] = {"mode": self.mode, "requested": self.requested, "window": list(self.window)}
        if self.mode in ("windows", "whole"):  # whole: images above whole_max_pixels run in windows
            record.update(overlap=self.overlap, blend=self.blend)
        if self.mode == "whole":
            record["whole_max_pixels"] = self.whole_max_pixels
        return record


def resolve_tiling(requested: str, model_scale: str, tile: tuple[int, int], overlap: float = 0.25,
                   blend: str = "gaussian", window: int | None = None, whole_max_pixels: int = 16 * 2**20) -> Tiling:
    """Return the tiling a run uses: ``auto`` follows how the model was trained (``native`` scale:
    windows, ``resize``: the resize); any other value is taken as given. Windows are the model's
    ``tile``, or ``window`` pixels square."""
    mode = requested if requested != "auto" else ("windows" if model_scale == "native" else "resize")
    size = (window, window) if window and mode == "windows" else tuple(tile)
    return Tiling(mode=mode, window=size, overlap=overlap, blend=blend, requested=requested,
                  whole_max_pixels=whole_max_pixels)


def importance_map(tile: tuple[int, int], blend: str = "gaussian") -> np.ndarray:
    """Return the float32 ``tile`` weights of a window's scores: 1 at the centre, a Gaussian of sigma
    tile / 8 per axis falling towards the edges (at least ``MIN_WEIGHT``), or 1 everywhere (``constant``)."""
    if blend == "constant":
        return np.ones(tile, dtype=np.float32)
    if blend != "gaussian":
        raise ValueError(f"blend={blend!r}: choose {' or '.join(BLENDS)}")
    axes = []
    for side in tile:
        offsets = np.arange(side, dtype=np.float64) - (side - 1) / 2
        axes.append(np.exp(-0.5 * (offsets / (side * GAUSSIAN_SIGMA)) ** 2))
    weights = np.outer(axes[0], axes[1])
    return np.maximum(weights / weights.max(), MIN_WEIGHT).astype(np.float32)


class WindowBlender:
    """Blends the scores of one image's windows into its class-index mask, band by band.

    Windows must arrive in :func:`window_grid` order (row by row). ``height``/``width`` are the
    image's own size; windows lie on the image padded to the tile (:func:`padded_to_tile`), and
    :meth:`finish` returns the mask cropped back. ``threshold`` decides one-channel (sigmoid)
    scores; several channels take the class of highest blended score (ties to the lower class).
    With ``keep_scores`` the blended scores are kept too (float32, full size: for tests and small
    images); with ``keep_confidence``, :attr:`confidence` holds each pixel's probability of its class
    (uint8 levels, see :func:`pipeline.imaging.decided`).
    """

    def __init__(self, height: int, width: int, tile: tuple[int, int], weights: np.ndarray, channels: int,
                 threshold: float = 0.5, keep_scores: bool = False, keep_confidence: bool = False) -> None:
        self.size = (height, width)
        self.padded = (max(height, tile[0]), max(width, tile[1]))
        self.tile = tile
        self.weights = weights
        self.threshold = threshold
        self.mask = np.zeros(self.padded, dtype=np.uint8)
        self.confidence = np.zeros(self.padded, dtype=np.uint8) if keep_confidence else None
        self.band = np.zeros((2 * tile[0], self.padded[1], channels), dtype=np.float32)
        self.band_weight = np.zeros((2 * tile[0], self.padded[1]), dtype=np.float32)
        self.top = 0  # the image row that band row 0 holds; rows above it are decided
        self.scores = np.zeros((*self.padded, channels), dtype=np.float32) if keep_scores else None

    def add(self, top: int, left: int, scores: np.ndarray) -> None:
        """Add a window's ``(tile_h, tile_w, K)`` float scores at ``(top, left)`` of the padded image."""
        if top < self.top:
            raise ValueError(f"window at row {top} arrived after rows up to {self.top} were decided; "
                             "add windows row by row")
        if top > self.top:
            self.decide(top)
        row = top - self.top
        height, width = self.tile
        self.band[row:row + height, left:left + width] += scores * self.weights[:, :, np.newaxis]
        self.band_weight[row:row + height, left:left + width] += self.weights

    def decide(self, until: int) -> None:
        """Decide the mask's rows from ``self.top`` up to ``until`` and drop them from the band."""
        count = until - self.top
        with np.errstate(invalid="ignore", divide="ignore"):  # rows no window reached stay undecided (0)
            blended = self.band[:count] / self.band_weight[:count, :, np.newaxis]
        if self.scores is not None:
            self.scores[self.top:until] = blended
        if self.confidence is None:
            self.mask[self.top:until] = mask_from_scores(np.nan_to_num(blended), self.threshold)
        else:
            self.mask[self.top:until], self.confidence[self.top:until] = decided(np.nan_to_num(blended), self.threshold)
        keep = len(self.band) - count
        self.band[:keep] = self.band[count:].copy()
        self.band[keep:] = 0.0
        self.band_weight[:keep] = self.band_weight[count:].copy()
        self.band_weight[keep:] = 0.0
        self.top = until

    def finish(self) -> np.ndarray:
        """Decide the remaining rows; return the uint8 ``(height, width)`` mask."""
        self.decide(self.padded[0])
        height, width = self.size
        return self.mask[:height, :width]

    def finished_confidence(self) -> np.ndarray:
        """Return the confidence at the image's size (after :meth:`finish`)."""
        return self.confidence[:self.size[0], :self.size[1]]

    def blended_scores(self) -> np.ndarray:
        """Return the blended float32 scores at the image's size (only with ``keep_scores``, after :meth:`finish`)."""
        if self.scores is None:
            raise ValueError("blended scores are kept only with keep_scores=True")
        return self.scores[:self.size[0], :self.size[1]]


@dataclasses.dataclass
class Window:
    """One window of one image in a model batch."""

    image: int  # index of the image in the call
    top: int
    left: int
    last: bool  # the image's last window: its mask can be finished once this one is blended


def windows_of_images(sizes: list[tuple[int, int] | None], tile: tuple[int, int], overlap: float) -> Iterator[Window]:
    """Yield every window of every image, image by image, each image's row by row; ``None`` sizes are skipped."""
    for index, size in enumerate(sizes):
        if size is None:
            continue
        grid = window_grid(max(size[0], tile[0]), max(size[1], tile[1]), tile, overlap)
        for number, (top, left) in enumerate(grid):
            yield Window(index, top, left, number == len(grid) - 1)


def segment_in_windows(images: list[np.ndarray | None], forward: Any, prepare: Any, tile: tuple[int, int],
                       classes: int, batch_size: int, overlap: float = 0.25, blend: str = "gaussian",
                       threshold: float = 0.5, keep_scores: bool = False,
                       confidence: bool = False) -> tuple[list[Any], dict[str, int]]:
    """Return the mask of each image (``None`` stays ``None``) and counts of the model batches run.

    ``images`` are ``(h, w, C)`` arrays at their own size and type; ``prepare(index, window)``
    turns a cut ``(tile_h, tile_w, C)`` window of image ``index`` into float32 model input;
    ``forward`` maps a float32 ``(n, tile_h, tile_w, C)`` batch to ``(n, tile_h, tile_w, classes)``
    probabilities. The windows of all images run in batches of ``batch_size``: a batch can hold
    windows of several images, and a large image's windows span many batches; only the last
    batch of the call can be short. With ``keep_scores`` each entry is ``(mask, blended scores)``,
    with ``confidence`` ``(mask, confidence)`` (:attr:`WindowBlender.confidence`).
    """
    weights = importance_map(tile, blend)
    sizes = [None if image is None else image.shape[:2] for image in images]
    blenders: dict[int, WindowBlender] = {}
    padded: dict[int, np.ndarray] = {}
    results: list[Any] = [None] * len(images)
    pending: list[Window] = []
    batch: np.ndarray | None = None
    counts = {"batches": 0, "windows": 0}

    def run() -> None:
        scores = np.asarray(forward(batch[:len(pending)]), dtype=np.float32)
        counts["batches"] += 1
        counts["windows"] += len(pending)
        for window, window_scores in zip(pending, scores):
            blenders[window.image].add(window.top, window.left, window_scores)
            if window.last:
                blender = blenders.pop(window.image)
                mask = blender.finish()
                results[window.image] = ((mask, blender.blended_scores()) if keep_scores else
                                         (mask, blender.finished_confidence()) if confidence else mask)
        pending.clear()

    for window in windows_of_images(sizes, tile, overlap):
        if window.image not in blenders:
            padded = {window.image: padded_to_tile(images[window.image], tile)}  # the images before are cut
            blenders[window.image] = WindowBlender(*sizes[window.image], tile, weights, classes, threshold, keep_scores,
                                                   keep_confidence=confidence)
        source = padded[window.image]
        cut = prepare(window.image, source[window.top:window.top + tile[0], window.left:window.left + tile[1]])
        if batch is None:
            batch = np.zeros((batch_size, *cut.shape), dtype=np.float32)
        batch[len(pending)] = cut
        pending.append(window)
        if len(pending) == batch_size:
            run()
    if pending:
        run()
    return results, counts
