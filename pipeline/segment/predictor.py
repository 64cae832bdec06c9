"""The actor that holds one U-Net replica and predicts batches.

Ray Data creates one instance per actor in the pool (``map_batches(SegmentationPredictor,
compute=ActorPoolStrategy(...))``); ``__init__`` loads the artifact once, ``__call__`` maps a
batch to a batch. The actor does nothing but run the model: decoding and writing happen in CPU
stages around it (:mod:`pipeline.segment.prepare`, :mod:`pipeline.segment.write`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from pipeline.config import ConfigError, StorageConfig
from pipeline.model import ModelInfo, configure_tensorflow, load_artifact
from pipeline.preprocess import quantise_scores
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
    config = info.training.get("config", {})
    # the augmentation section of the training config; artifacts of earlier versions kept its keys flat
    trained = config["augment"] if isinstance(config.get("augment"), dict) else config
    warp = bool(trained.get("warp", False))  # flips and turns by any angle, keeping no label offset
    if not trained.get("flips", True) and not warp:
        raise ConfigError(f"model {model_url} was trained without flips (augment.flips: false), so its predictions are not "
                          "symmetric under them and test-time augmentation would undo what it learnt: segment "
                          "without --tta (tta: false)")
    square = info.unet.input_size[0] == info.unet.input_size[1]
    turns = (0, 1, 2, 3) if square and (warp or trained.get("quarter_turns", True)) else (0, 2)
    offset = (0.0, 0.0) if warp else (float(trained.get("label_offset_rows", 0.0)),
                                      float(trained.get("label_offset_cols", 0.0)))
    return [(flip, k, offset_correction(offset, flip, k)) for k in turns for flip in (False, True)]


def moved(scores: Any, rows: int, cols: int) -> Any:
    """Return ``scores`` ``(n, h, w, K)`` moved ``rows`` down and ``cols`` right, the edge repeated
    (:func:`pipeline.symmetry.move` for a TensorFlow batch)."""
    import tensorflow as tf

    height, width = scores.shape[1], scores.shape[2]
    scores = tf.gather(scores, np.clip(np.arange(height) - rows, 0, height - 1), axis=1)
    return tf.gather(scores, np.clip(np.arange(width) - cols, 0, width - 1), axis=2)


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
    """Callable actor: adds ``scores`` (uint8 probability levels ``(n, h, w, K)``) to a batch holding ``pixels``."""

    def __init__(self, model_url: str, storage_config: StorageConfig | None = None, threads: int = 1,
                 tta: bool = False) -> None:
        started = time.perf_counter()
        configure_tensorflow(threads)
        import tensorflow as tf

        loaded = load_artifact(model_url, storage_config)
        self.model = loaded.model
        spec = loaded.info.unet
        signature = tf.TensorSpec((None, *spec.input_size, spec.channels), tf.float32)
        symmetries = tta_symmetries(loaded.info, model_url) if tta else []

        def call(pixels: Any) -> Any:
            if tta:
                return dihedral_mean(lambda x: self.model(x, training=False), pixels, symmetries)
            return self.model(pixels, training=False)

        # A traced function with a fixed signature avoids Model.predict's per-call set-up cost.
        self.forward = tf.function(call, input_signature=[signature])
        self.output_shape = (*spec.input_size, spec.output_channels)
        self.forward(tf.zeros((1, *spec.input_size, spec.channels)))  # trace once before the first batch
        log.info("predictor ready with %d thread(s) in %.1f s", threads, time.perf_counter() - started)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        """Return the batch with ``pixels`` replaced by ``scores``; rows with an error get zeros."""
        started = time.perf_counter()
        pixels = batch.pop("pixels")
        usable = np.array([not e for e in batch["error"]], dtype=bool)
        scores = np.zeros((len(usable), *self.output_shape), dtype=np.uint8)
        if usable.any():
            scores[usable] = quantise_scores(self.forward(pixels[usable]).numpy())
        batch["scores"] = scores
        batch["seconds"] = batch["seconds"] + (time.perf_counter() - started) / max(1, len(usable))
        return batch
