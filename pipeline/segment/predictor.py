"""The actor that holds one model replica and predicts batches: at the tile, in windows, or whole.

Ray Data creates one instance per actor in the pool (``map_batches(SegmentationPredictor,
compute=ActorPoolStrategy(...))``); ``__init__`` loads the artifact once, ``__call__`` maps a
batch to a batch. The actor does nothing but run the model: decoding and writing happen in CPU
stages around it (:mod:`pipeline.segment.prepare`, :mod:`pipeline.segment.write`).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import numpy as np

from pipeline.config import ConfigError, StorageConfig
from pipeline.model import ModelInfo, build_model, encoder_input, load_artifact
from pipeline.preprocess import decided, mask_from_scores, match_channels, normalise, quantise_scores
from pipeline.segment.prepare import TILE_COLUMNS, stored_image, tile_pixels
from pipeline.segment.tiling import padded_to_tile, segment_in_windows
from pipeline.symmetry import offset_correction

log = logging.getLogger(__name__)


Symmetry = tuple[bool, int, tuple[int, int]]  # left-right flip, quarter turns, the labels' move (rows, columns)


def tta_symmetries(info: ModelInfo, model_url: str) -> list[Symmetry]:
    """Return the flips and turns test-time augmentation averages over for the model ``info`` describes.

    Those the model was trained on: all 8 symmetries of a square tile, or the 4 that keep rows
    rows (identity, the two flips, the half turn) for other tiles and for a model trained with
    ``quarter_turns: false``. A model trained with a label offset learnt to predict its labels
    that far from the objects in every flipped or turned image, moved to the nearest pixel
    (:func:`pipeline.train.augment.flip_and_rotate`); each variant records that move, which the average
    takes back. A model trained without flips learnt an asymmetry that flips would undo: ConfigError.
    """
    if not info.spec.keras:
        raise ConfigError(f"model {model_url} is the K-means baseline, which decides each pixel by its features alone: "
                          "test-time augmentation changes nothing; segment without --tta (tta: false)")
    config = info.training.get("config", {})
    # the augmentation section of the training config; artifacts of earlier versions kept its keys flat
    trained = config["augment"] if isinstance(config.get("augment"), dict) else config
    warp = bool(trained.get("warp", False))  # flips and turns by any angle, keeping no label offset
    if not trained.get("flips", True) and not warp:
        raise ConfigError(f"model {model_url} was trained without flips (augment.flips: false), so its predictions are not "
                          "symmetric under them and test-time augmentation would undo what it learnt: segment "
                          "without --tta (tta: false)")
    square = info.spec.input_size[0] == info.spec.input_size[1]
    turns = (0, 1, 2, 3) if square and (warp or trained.get("quarter_turns", True)) else (0, 2)
    offset = (0.0, 0.0) if warp else (float(trained.get("label_offset_rows", 0.0)),
                                      float(trained.get("label_offset_cols", 0.0)))
    return [(flip, k, offset_correction(offset, flip, k)) for k in turns for flip in (False, True)]


def moved(scores: Any, rows: int, cols: int) -> Any:
    """Return ``scores`` ``(n, h, w, K)`` moved ``rows`` down and ``cols`` right, the edge repeated
    (:func:`pipeline.symmetry.move` for a TensorFlow batch, of any spatial size)."""
    import tensorflow as tf

    height, width = tf.shape(scores)[1], tf.shape(scores)[2]
    scores = tf.gather(scores, tf.clip_by_value(tf.range(height) - rows, 0, height - 1), axis=1)
    return tf.gather(scores, tf.clip_by_value(tf.range(width) - cols, 0, width - 1), axis=2)


def dihedral_mean(forward: Any, pixels: Any, symmetries: list[Symmetry]) -> Any:
    """Return ``forward``'s scores averaged over ``symmetries`` of ``pixels`` ``(n, h, w, C)``.

    Each variant is the input flipped left-right (if asked), then turned counterclockwise, as
    training augments; its scores are moved back by the labels' move, then turned and flipped
    back, so the result is aligned with the input. A TensorFlow function of TensorFlow tensors.
    """
    import tensorflow as tf

    total = None
    for flip, k, (rows, cols) in symmetries:
        variant = tf.reverse(pixels, axis=[2]) if flip else pixels
        scores = forward(tf.image.rot90(variant, k))
        if rows or cols:
            scores = moved(scores, -rows, -cols)
        scores = tf.image.rot90(scores, (4 - k) % 4)
        if flip:
            scores = tf.reverse(scores, axis=[2])
        total = scores if total is None else total + scores
    return total / len(symmetries)


class SegmentationPredictor:
    """Callable actor that runs the model on a batch, as the run's tiling says (:mod:`pipeline.segment.tiling`).

    ``resize``: replaces the batch's tiles (:func:`pipeline.segment.prepare.prepare_batch`, normalised
    here; or float32 ``pixels`` given as such) by ``scores`` (uint8 probability levels ``(n, h, w, K)``
    at the tile). ``windows``: cuts every image of the batch (``image`` column) into windows of the tile, runs them ``batch_size`` at a time across images, blends their scores and adds
    ``predicted`` (each image's mask at its size). ``whole``: runs a copy of the model with free
    spatial dimensions on each whole image, padded by reflection to a multiple of the model's stride.
    With ``confidence`` (objects asked for), windows and whole also add ``confidence``: each pixel's
    probability of its class at the image's size, uint8 levels (:func:`pipeline.preprocess.decided`).
    """

    def __init__(self, model_url: str, storage_config: StorageConfig | None = None, threads: int = 1,
                 tta: bool = False, tiling: dict[str, Any] | None = None, batch_size: int = 16,
                 confidence: bool = False, precision: str = "float32") -> None:
        started = time.perf_counter()
        self.events: dict[str, float] | None = {"actor_started": time.time()}
        self.tiling = dict(tiling or {"mode": "resize"})
        self.batch_size = batch_size
        self.confidence = confidence
        self.precision = precision
        loaded = load_artifact(model_url, storage_config, tensorflow_threads=threads, events=self.events)
        self.info = loaded.info
        spec = loaded.info.spec
        self.window = tuple(self.tiling.get("window") or spec.input_size)
        self.output_shape = (*spec.input_size, spec.output_channels)
        if spec.keras:
            self.scores = self.traced_forward(loaded, model_url, tta)
        else:
            self.scores = loaded.model.scores  # the K-means baseline: NumPy and SciPy, no TensorFlow
        self.events["traced"] = time.time()
        self.counts = {"batches": 0, "windows": 0}
        log.info("predictor ready (%s, %s) with %d thread(s) in %.1f s", spec.architecture, self.tiling["mode"], threads,
                 time.perf_counter() - started)

    def traced_forward(self, loaded: Any, model_url: str, tta: bool) -> Any:
        """Return ``pixels -> scores`` (NumPy) through a traced call of the Keras model, traced once now.

        The call applies the encoder's preprocessing and, for a model returning logits, the
        activation. A network segpipe builds runs through a copy with free spatial dimensions
        when the windows differ from its tile or in whole mode (the same weights).
        """
        import tensorflow as tf

        info, spec, model = loaded.info, loaded.info.spec, loaded.model
        shape: tuple[Any, ...] = spec.input_size
        mode = self.tiling["mode"]
        free = mode == "whole" or (mode == "windows" and self.window != spec.input_size)
        if (free or self.precision != "float32") and spec.architecture != "imported":
            import keras

            keras.mixed_precision.set_global_policy(self.precision)  # float16 compute, float32 weights
            try:  # the same weights, for inputs of another size or in another precision
                model = build_model(spec, free_size=free)
                model.set_weights(loaded.model.get_weights())
            finally:
                keras.mixed_precision.set_global_policy("float32")
        if free:
            shape = (None, None) if mode == "whole" else self.window
        self.model = model
        signature = tf.TensorSpec((None, *shape, spec.channels), tf.float32)
        symmetries = tta_symmetries(info, model_url) if tta else []

        def once(pixels: Any) -> Any:
            scores = tf.cast(self.model(encoder_input(pixels, info.preprocessing), training=False), tf.float32)
            if spec.from_logits:
                scores = tf.sigmoid(scores) if spec.output_activation == "sigmoid" else tf.nn.softmax(scores, axis=-1)
            return scores

        def call(pixels: Any) -> Any:
            return dihedral_mean(once, pixels, symmetries) if tta else once(pixels)

        # A traced function with a fixed signature avoids Model.predict's per-call set-up cost.
        forward = tf.function(call, input_signature=[signature])
        forward(tf.zeros((1, *(self.window if mode == "windows" else spec.input_size), spec.channels)))
        return lambda pixels: forward(pixels).numpy()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        """Return the batch with its model input replaced by the model's output; rows with an error get zeros."""
        started = time.perf_counter()
        called = time.time()
        usable = np.array([not e for e in batch["error"]], dtype=bool)
        mode = self.tiling["mode"]
        if mode == "resize":
            scores = np.zeros((len(usable), *self.output_shape), dtype=np.uint8)
            if usable.any():
                pixels = (batch["pixels"][usable] if "pixels" in batch else  # float32 input given as such
                          tile_pixels(batch, usable, self.info.normalization))
                scores[usable] = quantise_scores(self.scores(pixels))
            for name in ("pixels", *TILE_COLUMNS):
                batch.pop(name, None)
            batch["scores"] = scores
        else:
            stored, bits = batch.pop("image"), batch.pop("bits")
            images = [stored_image(stored[i], bits[i]) if usable[i] else None for i in range(len(usable))]
            ranges = [(float(low), float(high)) for low, high in zip(batch.pop("value_low"), batch.pop("value_high"))]
            results = self.in_windows(images, ranges) if mode == "windows" else self.whole(images, ranges)
            empty = np.zeros((1, 1), dtype=np.uint8)
            predicted, confidence = np.empty(len(usable), dtype=object), np.empty(len(usable), dtype=object)
            for index, result in enumerate(results):  # (mask, confidence) only when confidence was asked for
                if result is None:
                    result = (empty, empty)
                predicted[index], confidence[index] = result if self.confidence else (result, empty)
            batch["predicted"] = predicted
            if self.confidence:
                batch["confidence"] = confidence
        batch["seconds"] = batch["seconds"] + (time.perf_counter() - started) / max(1, len(usable))
        if self.events is not None and len(usable):  # the actor's start-up, once, with its first batch
            events = np.array(batch.get("events", [""] * len(usable)), dtype=object)
            earlier = json.loads(events[0]) if events[0] else {}
            events[0] = json.dumps({**earlier, **self.events, "first_called": called, "first_predicted": time.time()})
            batch["events"] = events
            self.events = None
        return batch

    def model_input(self, image: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
        """Return a cut of an image (own type and channels) as float32 model input."""
        spec = self.info.spec
        return normalise(match_channels(image, spec.channels), self.info.normalization, value_range)

    def in_windows(self, images: list[np.ndarray | None], ranges: list[tuple[float, float]]) -> list[Any]:
        """Return each image's mask (with confidence asked for, ``(mask, confidence)``) from blended windows
        (:func:`pipeline.segment.tiling.segment_in_windows`)."""
        spec = self.info.spec
        masks, counts = segment_in_windows(
            images, self.scores,
            lambda index, window: self.model_input(window, ranges[index]), self.window, spec.output_channels,
            self.batch_size, float(self.tiling.get("overlap", 0.25)), str(self.tiling.get("blend", "gaussian")),
            self.info.threshold, confidence=self.confidence)
        for name, value in counts.items():
            self.counts[name] += value
        return masks

    def whole(self, images: list[np.ndarray | None], ranges: list[tuple[float, float]]) -> list[Any]:
        """Return each image's mask (or ``(mask, confidence)``, as :meth:`in_windows`) from one model call on the whole
        image, padded to a multiple of the model's stride;
        an image larger than ``whole_max_pixels`` once padded is segmented in windows of the tile instead."""
        step = self.info.spec.stride
        limit = int(self.tiling.get("whole_max_pixels", 16 * 2**20))
        padded_sizes = [None if image is None else (image.shape[0] + -image.shape[0] % step,
                                                    image.shape[1] + -image.shape[1] % step) for image in images]
        too_large = [size is not None and size[0] * size[1] > limit for size in padded_sizes]
        masks: list[Any] = [None] * len(images)
        if any(too_large):
            in_windows = self.in_windows([image if large else None for image, large in zip(images, too_large)], ranges)
            masks = [mask if large else None for mask, large in zip(in_windows, too_large)]
        for index, (image, value_range) in enumerate(zip(images, ranges)):
            if image is None or too_large[index]:
                continue
            height, width = image.shape[:2]
            padded = padded_to_tile(image, padded_sizes[index])
            scores = self.scores(self.model_input(padded, value_range)[np.newaxis])[0, :height, :width]
            masks[index] = (decided(scores, self.info.threshold) if self.confidence else
                            mask_from_scores(scores, self.info.threshold))
            self.counts["batches"] += 1
        return masks
