"""Inferers: one class per way an image meets the model (resize, windows, whole).

An inferer is built once on the driver from the run's frozen :class:`~pipeline.segment.tiling.Tiling`
and the model's info (:func:`inferer_for`), travels to every stage with the plan, and owns the
three things a mode decides:

- **prepare** (the CPU stage, :mod:`pipeline.segment.prepare`): what each image becomes before
  the model, and how rows are grouped into blocks;
- **predict** (the model's actors, :mod:`pipeline.segment.predictor`): what the actor does with a
  block, given the traced ``forward`` (float32 ``(n, h, w, C)`` input to ``(n, h, w, K)`` probabilities);
- **finish** (the finish stage, :mod:`pipeline.segment.write`): how an image's model output becomes
  its mask (and, for objects, each pixel's confidence) at the image's size.

The stages ask the inferer and never test the mode. K-means and imported models fit every mode
through ``forward``. A new mode is one new class here and one line in :data:`INFERERS`
(MONAI's ``SimpleInferer`` / ``SlidingWindowInferer`` and nnU-Net's predictor are the models).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import numpy as np

from pipeline import imaging
from pipeline.model import ModelInfo
from pipeline.segment import prepare
from pipeline.segment.tiling import Tiling, segment_in_windows
from pipeline.windows import padded_to_tile

Forward = Callable[[np.ndarray], np.ndarray]  # float32 (n, h, w, C) -> probabilities (n, h, w, K)
Decision = tuple[np.ndarray, "np.ndarray | None"]  # (uint8 mask, uint8 confidence or None) at the image's size


class Inferer:
    """How images meet the model in one mode; see the module docstring for the three stages."""

    mode: ClassVar[str]

    def __init__(self, tiling: Tiling, info: ModelInfo, batch_size: int) -> None:
        self.tiling = tiling
        self.info = info
        self.batch_size = batch_size
        self.counts = {"batches": 0, "windows": 0}  # model calls and windows run by this copy (the actor's)

    # -- the driver ---------------------------------------------------------------------------
    def block_bytes(self) -> int:
        """Return Ray Data's target block size for the run."""
        raise NotImplementedError

    @property
    def images_per_call(self) -> int | None:
        """Return how many images the model's stage takes per call (None: a block as it comes)."""
        raise NotImplementedError

    def model_problem(self, model_url: str) -> str | None:
        """Return why the model cannot run in this mode (naming the setting to change), else None."""
        return None

    # -- the model's actor: how the traced call is shaped -----------------------------------------
    def free_size(self) -> bool:
        """Return whether the model runs through a copy with free spatial dimensions (the same weights)."""
        return False

    def traced_shape(self) -> tuple[Any, Any]:
        """Return the spatial shape of the traced call's input signature (None: any size)."""
        return tuple(self.info.spec.input_size)

    def warmup_shape(self) -> tuple[int, int]:
        """Return the spatial shape of the input the call is traced with, once, at start-up."""
        return tuple(self.info.spec.input_size)

    # -- the three stages ----------------------------------------------------------------------
    def prepare(self, rows: list[dict], max_image_pixels: int | None,
                tiff_page: int | None) -> Iterator[dict[str, np.ndarray]]:
        """Yield blocks of prepared rows (see :mod:`pipeline.segment.prepare` for the columns)."""
        raise NotImplementedError

    def predict(self, batch: dict[str, np.ndarray], usable: np.ndarray, forward: Forward,
                confidence: bool) -> dict[str, np.ndarray]:
        """Return the block with the prepared input replaced by what :meth:`finish` needs."""
        raise NotImplementedError

    def finish(self, item: dict[str, Any], confidence: bool) -> Decision:
        """Return one image's mask (and with ``confidence``, its confidence plane) at its size."""
        raise NotImplementedError

    def model_input(self, image: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
        """Return a cut of an image (own type and channels) as float32 model input."""
        return imaging.normalise(imaging.match_channels(image, self.info.spec.channels), self.info.normalization,
                                 value_range)


class ResizeInferer(Inferer):
    """Each image resized to the model's tile and its scores brought back to the image's size.

    prepare: the tile in the image's own type (:func:`pipeline.segment.prepare.prepare_batch`);
    predict: uint8 probability levels ``scores`` at the tile; finish: the scores resized to the
    image and decided (:func:`pipeline.imaging.mask_and_confidence_at_size`).
    """

    mode = "resize"

    def block_bytes(self) -> int:
        """One batch of tiles (uint8, as they travel), at least 1 MiB: results stream a batch at a time."""
        spec = self.info.spec
        return max(1024**2, self.batch_size * spec.input_size[0] * spec.input_size[1] * spec.channels)

    @property
    def images_per_call(self) -> int | None:
        return self.batch_size

    def prepare(self, rows: list[dict], max_image_pixels: int | None,
                tiff_page: int | None) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, len(rows), self.batch_size):
            yield prepare.prepare_batch(prepare.columns_of(rows[start:start + self.batch_size]), self.info,
                                        max_image_pixels, tiff_page)

    def predict(self, batch: dict[str, np.ndarray], usable: np.ndarray, forward: Forward,
                confidence: bool) -> dict[str, np.ndarray]:
        scores = np.zeros((len(usable), *self.info.spec.input_size, self.info.spec.output_channels), dtype=np.uint8)
        if usable.any():
            pixels = (batch["pixels"][usable] if "pixels" in batch else  # float32 input given as such
                      prepare.tile_pixels(batch, usable, self.info.normalization))
            scores[usable] = imaging.quantise_scores(forward(pixels))
            self.counts["batches"] += 1
        for name in ("pixels", *prepare.TILE_COLUMNS):
            batch.pop(name, None)
        batch["scores"] = scores
        return batch

    def finish(self, item: dict[str, Any], confidence: bool) -> Decision:
        height, width = int(item["height"]), int(item["width"])
        if confidence:
            return imaging.mask_and_confidence_at_size(item["scores"], height, width, self.info.threshold)
        return imaging.mask_at_size(item["scores"], height, width, self.info.threshold), None


class NativeInferer(Inferer):
    """Images at their own size: decoded in the CPU stage, decided at their size by the model's actor.

    prepare: :func:`pipeline.segment.prepare.prepare_native_batch`, image by image, blocks of
    about two batches of windows; predict: :meth:`segment` adds ``predicted`` (and
    ``confidence``); finish: takes them as they are.
    """

    def block_bytes(self) -> int:
        """Decoded images (uint8) of about two batches of windows, 4 MiB to 256 MiB.

        The model's stage runs a block's windows ``batch_size`` at a time, so a block must hold
        several batches (only a call's last batch can be short), yet few enough images that
        results stream: a 2000-px RGB image is a block of its own for 256-px tiles in batches of 32.
        """
        spec = self.info.spec
        tile = spec.input_size[0] * spec.input_size[1] * spec.channels
        return min(256 * 1024**2, max(4 * 1024**2, 2 * self.batch_size * tile))

    @property
    def images_per_call(self) -> int | None:
        return None

    def prepare(self, rows: list[dict], max_image_pixels: int | None,
                tiff_page: int | None) -> Iterator[dict[str, np.ndarray]]:
        # image by image, so a few huge images never sit in one task together
        pending: list[dict[str, np.ndarray]] = []
        size = 0
        limit = self.block_bytes()
        for row in rows:
            pending.append(prepare.prepare_native_batch(prepare.columns_of([row]), self.info, max_image_pixels,
                                                        tiff_page))
            size += pending[-1]["image"][0].nbytes
            if len(pending) == self.batch_size or size >= limit:
                yield prepare.concatenate(pending)
                pending, size = [], 0
        if pending:
            yield prepare.concatenate(pending)

    def predict(self, batch: dict[str, np.ndarray], usable: np.ndarray, forward: Forward,
                confidence: bool) -> dict[str, np.ndarray]:
        stored, bits = batch.pop("image"), batch.pop("bits")
        images = [prepare.stored_image(stored[i], bits[i]) if usable[i] else None for i in range(len(usable))]
        ranges = [(float(low), float(high)) for low, high in zip(batch.pop("value_low"), batch.pop("value_high"))]
        decisions = self.segment(images, ranges, forward, confidence)
        empty = np.zeros((1, 1), dtype=np.uint8)
        predicted, planes = np.empty(len(usable), dtype=object), np.empty(len(usable), dtype=object)
        for index, decision in enumerate(decisions):
            mask, plane = decision if decision is not None else (empty, None)
            predicted[index], planes[index] = mask, empty if plane is None else plane
        batch["predicted"] = predicted
        if confidence:
            batch["confidence"] = planes
        return batch

    def finish(self, item: dict[str, Any], confidence: bool) -> Decision:
        plane = item.get("confidence") if confidence else None
        return np.asarray(item["predicted"], dtype=np.uint8), plane

    def segment(self, images: list[np.ndarray | None], ranges: list[tuple[float, float]], forward: Forward,
                confidence: bool) -> list[Decision | None]:
        """Return each image's decision at its size (None for an image that is None)."""
        raise NotImplementedError

    def in_windows(self, images: list[np.ndarray | None], ranges: list[tuple[float, float]], forward: Forward,
                   confidence: bool) -> list[Decision | None]:
        """Return each image's decision from blended windows (:func:`pipeline.segment.tiling.segment_in_windows`)."""
        tiling = self.tiling
        results, counts = segment_in_windows(
            images, forward, lambda index, window: self.model_input(window, ranges[index]), tiling.window,
            self.info.spec.output_channels, self.batch_size, tiling.overlap, tiling.blend, self.info.threshold,
            confidence=confidence)
        for name, value in counts.items():
            self.counts[name] += value
        return [None if result is None else (result if confidence else (result, None)) for result in results]


class WindowsInferer(NativeInferer):
    """Overlapping windows of the tile (or of ``window``) at the image's own resolution, blended."""

    mode = "windows"

    def model_problem(self, model_url: str) -> str | None:
        spec, window = self.info.spec, self.tiling.window
        if spec.takes_size(window):
            return None
        if spec.architecture == "imported" and not spec.free_input:
            return (f"window={window[0]}: model {model_url} (imported) takes only its tile, "
                    f"{spec.input_size[0]}x{spec.input_size[1]}: leave window unset")
        return (f"window={window[0]}: model {model_url} ({spec.architecture}) takes sides that are a multiple of "
                f"{spec.stride}, so a window's side must be one")

    def free_size(self) -> bool:
        return self.tiling.window != tuple(self.info.spec.input_size)

    def traced_shape(self) -> tuple[Any, Any]:
        return tuple(self.tiling.window)

    def warmup_shape(self) -> tuple[int, int]:
        return tuple(self.tiling.window)

    def segment(self, images: list[np.ndarray | None], ranges: list[tuple[float, float]], forward: Forward,
                confidence: bool) -> list[Decision | None]:
        return self.in_windows(images, ranges, forward, confidence)


class WholeInferer(NativeInferer):
    """Each whole image in one model call, padded by reflection to a multiple of the model's stride;
    an image above ``whole_max_pixels`` once padded runs in windows of the tile instead."""

    mode = "whole"

    def model_problem(self, model_url: str) -> str | None:
        spec = self.info.spec
        if spec.architecture == "imported" and not spec.free_input:
            return (f"tiling=whole: model {model_url} is an imported model of fixed input size "
                    f"{spec.input_size[0]}x{spec.input_size[1]}; use tiling resize or windows")
        return None

    def free_size(self) -> bool:
        return True

    def traced_shape(self) -> tuple[Any, Any]:
        return (None, None)

    def segment(self, images: list[np.ndarray | None], ranges: list[tuple[float, float]], forward: Forward,
                confidence: bool) -> list[Decision | None]:
        step = self.info.spec.stride
        padded_sizes = [None if image is None else (image.shape[0] + -image.shape[0] % step,
                                                    image.shape[1] + -image.shape[1] % step) for image in images]
        too_large = [size is not None and size[0] * size[1] > self.tiling.whole_max_pixels for size in padded_sizes]
        decisions: list[Decision | None] = [None] * len(images)
        if any(too_large):
            in_windows = self.in_windows([image if large else None for image, large in zip(images, too_large)],
                                         ranges, forward, confidence)
            decisions = [decision if large else None for decision, large in zip(in_windows, too_large)]
        for index, (image, value_range) in enumerate(zip(images, ranges)):
            if image is None or too_large[index]:
                continue
            height, width = image.shape[:2]
            padded = padded_to_tile(image, padded_sizes[index])
            scores = forward(self.model_input(padded, value_range)[np.newaxis])[0, :height, :width]
            decisions[index] = imaging.decide(scores, self.info.threshold, confidence)
            self.counts["batches"] += 1
        return decisions


INFERERS: dict[str, type[Inferer]] = {cls.mode: cls for cls in (ResizeInferer, WindowsInferer, WholeInferer)}


def inferer_for(tiling: Tiling, info: ModelInfo, batch_size: int) -> Inferer:
    """Return the inferer of ``tiling.mode`` for a model ``info`` describes."""
    try:
        return INFERERS[tiling.mode](tiling, info, batch_size)
    except KeyError:
        raise ValueError(f"tiling mode {tiling.mode!r}: one of {', '.join(INFERERS)}") from None
