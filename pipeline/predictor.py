"""The actor that holds one U-Net replica and predicts batches.

Ray Data creates one instance per actor in the pool (``map_batches(SegmentationPredictor,
compute=ActorPoolStrategy(...))``); ``__init__`` loads the artifact once, ``__call__`` maps a
batch to a batch. The actor does nothing but run the model: decoding and writing happen in CPU
stages around it (:mod:`pipeline.stages`).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import numpy as np

from pipeline.config import StorageConfig
from pipeline.model import load_artifact
from pipeline.preprocess import quantise_scores

log = logging.getLogger(__name__)


def configure_tensorflow(threads: int) -> None:
    """Limit TensorFlow to ``threads`` intra-op threads (1 inter-op) and turn on GPU memory growth.

    Takes effect only before TensorFlow executes anything in the process. On a GPU node Ray has already set
    ``CUDA_VISIBLE_DEVICES`` to the GPU(s) it assigned this actor, so TensorFlow sees only those;
    memory growth stops it from reserving a whole GPU at start-up.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        for gpu in tf.config.list_physical_devices("GPU"):
            tf.config.experimental.set_memory_growth(gpu, True)
    except RuntimeError:  # TensorFlow already ran in this process (an in-process caller): keep its settings
        log.debug("TensorFlow is already initialised; thread and memory settings left as they are")


def dihedral_mean(forward: Any, pixels: Any, square: bool) -> Any:
    """Return ``forward``'s scores averaged over the flips and 90° rotations of ``pixels`` ``(n, h, w, C)``.

    Each variant's scores are turned back before averaging, so the result is aligned with the
    input. Square tiles use all 8 symmetries of the square; other tiles the 4 that keep their
    shape (identity, the two flips, the 180° rotation). A TensorFlow function of TensorFlow tensors.
    """
    import tensorflow as tf

    turns = (0, 1, 2, 3) if square else (0, 2)
    total = None
    for k in turns:
        for flip in (False, True):
            variant = tf.image.rot90(pixels, k)
            if flip:
                variant = tf.reverse(variant, axis=[2])
            scores = forward(variant)
            if flip:
                scores = tf.reverse(scores, axis=[2])
            scores = tf.image.rot90(scores, (4 - k) % 4)
            total = scores if total is None else total + scores
    return total / (2 * len(turns))


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
        square = spec.input_size[0] == spec.input_size[1]

        def call(pixels: Any) -> Any:
            if tta:
                return dihedral_mean(lambda x: self.model(x, training=False), pixels, square)
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
