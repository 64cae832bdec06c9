"""``segpipe model import``: a Keras model trained elsewhere, checked and written as an artifact.

The file must load with ``safe_mode=True`` and no code of its own (custom layers or lambdas are
refused: register nothing, run nothing from the file), take one image input ``(H, W, C)`` with C
1 or 3, or free height and width, and give one score channel per class (one for two classes with
sigmoid) at its input's size. Its bytes are copied unchanged into ``model.keras``; ``model.json``
records ``architecture: imported``, the class names, normalisation, preprocessing and whether its
output is logits, which the predictor then turns into probabilities.
"""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Any

from pipeline.config import ImportConfig
from pipeline.io import storage
from pipeline.model.artifact import (
    MODEL_FILE,
    ModelArtifactError,
    ModelInfo,
    check_shapes,
    write_artifact_files,
)
from pipeline.model.spec import ModelSpec

log = logging.getLogger(__name__)

FREE_SIZE_TILE = 256


def load_foreign(data: bytes, url: str) -> Any:
    """Return the Keras model in ``data`` loaded with ``safe_mode=True``; raise ModelArtifactError naming ``url``."""
    import keras

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, MODEL_FILE)
        with open(path, "wb") as handle:
            handle.write(data)
        try:
            return keras.saving.load_model(path, compile=False, safe_mode=True)
        except Exception as exc:  # Keras raises TypeError, ValueError or its own for unknown or unsafe objects
            text = str(exc)
            custom = any(word in text for word in ("Could not locate", "custom", "Lambda", "safe_mode"))
            why = ("it holds a custom layer, function or lambda that cannot be loaded without running code from the "
                   "file; rebuild it from Keras' built-in layers (or save the weights into such a model) and import "
                   "that" if custom else "it must be a Keras 3 .keras file")
            raise ModelArtifactError(f"{url} cannot be imported ({type(exc).__name__}: {text[:300]}): {why}") from exc


def imported_spec(model: Any, cfg: ImportConfig) -> ModelSpec:
    """Return the spec of an imported model from its shapes and the import settings; raise ModelArtifactError."""
    url, classes = cfg.keras, len(cfg.class_names())
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ModelArtifactError(f"{url}: the model has {len(model.inputs)} input(s) and {len(model.outputs)} "
                                 "output(s); segpipe runs models with one image in and one score map out")
    shape_in, shape_out = tuple(model.input_shape[1:]), tuple(model.output_shape[1:])
    if len(shape_in) != 3 or shape_in[2] not in (1, 3) or (shape_in[0] is None) != (shape_in[1] is None):
        raise ModelArtifactError(f"{url}: the model takes {shape_in}; segpipe needs (height, width, channels) with "
                                 "1 or 3 channels, or (None, None, channels) for any size")
    free = shape_in[0] is None
    single = cfg.activation == "sigmoid" or (cfg.activation == "logits" and shape_out[-1:] == (1,))
    wanted = 1 if single else classes
    if len(shape_out) != 3 or shape_out[2] != wanted:
        raise ModelArtifactError(
            f"{url}: the model gives {shape_out}, but {classes} classes ({cfg.classes}) with activation "
            f"{cfg.activation} need {wanted} score channel(s) last; give --classes one name per output channel"
            + (" (two for a single sigmoid channel)" if single or shape_out[-1:] == (1,) else ""))
    if single and classes != 2:
        raise ModelArtifactError(f"{url}: one sigmoid channel scores two classes, not {classes} ({cfg.classes})")
    tile = cfg.tile or (FREE_SIZE_TILE if free else 0)
    if not free and (shape_out[:2] != shape_in[:2] or (cfg.tile and cfg.tile != shape_in[0])):
        raise ModelArtifactError(f"{url}: the model takes {shape_in[:2]} and gives {shape_out[:2]}; segpipe needs the "
                                 "scores at the input's size" + (f", and --tile {cfg.tile} is not its input size"
                                                                 if cfg.tile and cfg.tile != shape_in[0] else ""))
    if free and tile % cfg.multiple_of:
        raise ModelArtifactError(f"--tile {tile} is not a multiple of --multiple-of {cfg.multiple_of}")
    size = (tile, tile) if free else shape_in[:2]
    return ModelSpec(architecture="imported", input_size=size, channels=int(shape_in[2]), num_classes=classes,
                     output_activation="sigmoid" if single else "softmax", from_logits=cfg.activation == "logits",
                     multiple=cfg.multiple_of if free else 1, free_input=free)


def check_output_size(model: Any, spec: ModelSpec, url: str) -> None:
    """Run the model once on a zero tile; raise ModelArtifactError if its scores are not at the tile's size."""
    import numpy as np

    try:
        out = np.asarray(model(np.zeros((1, *spec.input_size, spec.channels), dtype=np.float32), training=False))
    except Exception as exc:
        raise ModelArtifactError(f"{url}: the model fails on a {spec.input_size} tile ({type(exc).__name__}: {exc}); "
                                 "give --tile and --multiple-of that it takes") from exc
    if out.shape[1:3] != spec.input_size:
        raise ModelArtifactError(f"{url}: on a {spec.input_size} tile the model gives {out.shape[1:3]}; segpipe needs "
                                 "the scores at the input's size")


def import_model(cfg: ImportConfig) -> ModelInfo:
    """Check the Keras file ``cfg.keras`` and write it as an artifact under ``cfg.output``; return its info."""
    storage.check_apart(cfg.output, {"imported model": cfg.keras})
    try:
        data = storage.read_bytes(cfg.keras, cfg.storage)
    except FileNotFoundError as exc:
        raise ModelArtifactError(f"--keras {cfg.keras}: no such file") from exc
    model = load_foreign(data, cfg.keras)
    spec = imported_spec(model, cfg)
    check_output_size(model, spec, cfg.keras)
    scale = cfg.scale or ("native" if spec.free_input else "resize")
    info = ModelInfo(spec=spec, class_names=cfg.class_names(), normalization={"mode": cfg.normalization},
                     preprocessing=cfg.preprocessing, scale=scale, name=model.name or "imported",
                     training={"trained": True, "imported_from": cfg.keras})
    check_shapes(model, info, cfg.keras)
    storage.check_writable(cfg.output, cfg.storage)
    write_artifact_files(data, info, cfg.output, cfg.storage)
    log.info("imported %s as %s (%s, %d classes)", cfg.keras, cfg.output, "any size" if spec.free_input
             else f"{spec.input_size[0]}x{spec.input_size[1]}", spec.num_classes)
    return info
