"""The actor that holds one model replica and runs it on blocks, as the run's inferer says.

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

from pipeline import console
from pipeline.config import ConfigError, StorageConfig
from pipeline.model import ModelInfo, build_model, encoder_input, load_artifact
from pipeline.segment.inferers import Inferer, inferer_for
from pipeline.segment.telemetry import send_events
from pipeline.segment.tiling import Tiling
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
    """Callable actor that loads the model once and runs it on each block through the run's inferer
    (:mod:`pipeline.segment.inferers`): ``resize`` replaces the tiles by ``scores`` at the tile;
    ``windows`` and ``whole`` add ``predicted`` (each image's mask at its size) and, with
    ``confidence`` (objects asked for), ``confidence`` (each pixel's probability of its class,
    uint8 levels). ``tiling`` defaults to resize at the model's tile.
    """

    def __init__(self, model_url: str, storage_config: StorageConfig | None = None, threads: int = 1,
                 tta: bool = False, tiling: Tiling | None = None, batch_size: int = 16,
                 confidence: bool = False, precision: str = "float32", telemetry_channel: str = "") -> None:
        started = time.perf_counter()
        console.forward_worker_warnings()
        self.telemetry_channel = telemetry_channel
        self.events: dict[str, float] | None = {"actor_started": time.time()}
        self.confidence = confidence
        self.precision = precision
        loaded = load_artifact(model_url, storage_config, tensorflow_threads=threads, events=self.events)
        self.info = loaded.info
        spec = loaded.info.spec
        tiling = tiling or Tiling(mode="resize", window=tuple(spec.input_size))
        self.inferer: Inferer = inferer_for(tiling, loaded.info, batch_size)
        if spec.keras:
            self.scores = self.traced_forward(loaded, model_url, tta)
        else:
            self.scores = loaded.model.scores  # the K-means baseline: NumPy and SciPy, no TensorFlow
        self.events["traced"] = time.time()
        log.info("predictor ready (%s, %s) with %d thread(s) in %.1f s", spec.architecture, tiling.mode, threads,
                 time.perf_counter() - started)

    @property
    def counts(self) -> dict[str, int]:
        """Return the model calls (``batches``) and windows this actor has run."""
        return self.inferer.counts

    def traced_forward(self, loaded: Any, model_url: str, tta: bool) -> Any:
        """Return ``pixels -> scores`` (NumPy) through a traced call of the Keras model, traced once now.

        The call applies the encoder's preprocessing and, for a model returning logits, the
        activation. A network segpipe builds runs through a copy with free spatial dimensions
        where the inferer asks for one (the same weights), and is rebuilt under another precision.
        """
        import tensorflow as tf

        info, spec, model = loaded.info, loaded.info.spec, loaded.model
        free = self.inferer.free_size()
        if (free or self.precision != "float32") and spec.architecture != "imported":
            import keras

            keras.mixed_precision.set_global_policy(self.precision)  # float16 compute, float32 weights
            try:  # the same weights, for inputs of another size or in another precision
                model = build_model(spec, free_size=free)
                model.set_weights(loaded.model.get_weights())
            finally:
                keras.mixed_precision.set_global_policy("float32")
        self.model = model
        signature = tf.TensorSpec((None, *self.inferer.traced_shape(), spec.channels), tf.float32)
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
        forward(tf.zeros((1, *self.inferer.warmup_shape(), spec.channels)))
        return lambda pixels: forward(pixels).numpy()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        """Return the block with its model input replaced by the model's output; rows with an error get zeros."""
        started = time.perf_counter()
        called = time.time()
        usable = np.array([not e for e in batch["error"]], dtype=bool)
        batch = self.inferer.predict(batch, usable, self.scores, self.confidence)
        batch["seconds"] = batch["seconds"] + (time.perf_counter() - started) / max(1, len(usable))
        if self.events is not None and len(usable):  # the actor's start-up, once, with its first batch
            send_events(self.telemetry_channel, {**self.events, "first_called": called, "first_predicted": time.time()})
            self.events = None
        return batch
