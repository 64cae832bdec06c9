"""Pretrained encoders: the encoder on its own, its weights from ImageNet or a file, and which of a
network's layers belong to it (to freeze them).

A weights file is one Keras writes for the encoder alone: ``keras.applications.VGG16(include_top=False)``
or ``MobileNetV2(include_top=False, alpha=...)`` (``.weights.h5``, or Keras' own ``..._notop.h5``
downloads), or :func:`encoder_model`'s ``save_weights`` at another width. It is loaded into
:func:`encoder_model`, which fails on a file of another architecture or shape, then copied into
the network layer by layer, by name.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from pipeline.model.architectures import VGG_FAMILY
from pipeline.model.spec import ModelSpec

WEIGHT_SUFFIXES = (".weights.h5", ".h5", ".hdf5", ".keras")


class EncoderWeightsError(ValueError):
    """Encoder weights cannot be had or do not fit; the message names the source and the fix."""


def encoder_model(spec: ModelSpec) -> Any:
    """Return the encoder of ``spec``'s architecture on its own, with random weights and free input size:
    VGG16's convolutional blocks at ``spec.base_filters`` (Keras' VGG16 at 64), or MobileNetV2 at ``spec.width``."""
    import keras

    from pipeline.model.networks import mobilenet_v2, vgg16_blocks

    inputs = keras.Input(shape=(None, None, spec.channels), name="image")
    if spec.architecture in VGG_FAMILY:
        _, pooled = vgg16_blocks(inputs, spec.base_filters)
        return keras.Model(inputs, pooled[-1], name="vgg16")
    if spec.architecture == "deeplabv3plus":
        return mobilenet_v2(inputs, spec)
    raise EncoderWeightsError(f"architecture {spec.architecture} has no pretrainable encoder")


def encoder_layer_names(spec: ModelSpec) -> set[str]:
    """Return the names of the network's layers that belong to its encoder (SegNet's batch norms included)."""
    names = {layer.name for layer in encoder_model(spec).layers if layer.weights}
    if spec.architecture == "segnet":
        names |= {f"{name}_bn" for name in names}
    return names


def set_encoder_trainable(model: Any, spec: ModelSpec, trainable: bool) -> int:
    """Set the encoder layers of ``model`` trainable or frozen; return how many layers that touched."""
    names = encoder_layer_names(spec)
    touched = 0
    for layer in model.layers:
        if layer.name in names:
            layer.trainable = trainable
            touched += 1
    return touched


def imagenet_weights(spec: ModelSpec, folder: str) -> str:
    """Return the path of a ``.weights.h5`` file of the encoder's ImageNet weights, written under ``folder``.

    Keras downloads them (or finds them in its cache, ``~/.keras/models``). Without a network the
    message names the file to fetch elsewhere and the key to point at it.
    """
    import keras

    vgg = spec.architecture in VGG_FAMILY
    name = ("vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5" if vgg
            else f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{spec.width:g}_224_no_top.h5")
    try:
        if vgg:
            encoder = keras.applications.VGG16(include_top=False, weights="imagenet", input_shape=(None, None, 3))
        else:
            encoder = keras.applications.MobileNetV2(include_top=False, weights="imagenet", alpha=spec.width,
                                                     input_shape=(224, 224, 3))
    except Exception as exc:  # a failed download raises Exception itself, with the URL in its message
        raise EncoderWeightsError(
            f"model.encoder_weights=imagenet: Keras could not download the ImageNet weights ({exc}). Without a "
            f"network, copy Keras' file {name} from a machine that has "
            "one (it lands in ~/.keras/models) to storage this machine reads, and set model.encoder_weights to its URL"
        ) from exc
    path = os.path.join(folder, "imagenet.weights.h5")
    encoder.save_weights(path)
    return path


def weights_path(data: bytes, url: str, folder: str) -> str:
    """Return a local path under ``folder`` holding ``data`` with the suffix Keras reads its format from."""
    suffix = next((s for s in WEIGHT_SUFFIXES if url.lower().endswith(s)), None)
    if suffix is None:
        raise EncoderWeightsError(f"model.encoder_weights={url}: a Keras weights file ends in "
                                  f"{', '.join(WEIGHT_SUFFIXES)}; rename it so its format is known")
    path = os.path.join(folder, "encoder" + suffix)
    with open(path, "wb") as handle:
        handle.write(data)
    return path


def load_encoder(spec: ModelSpec, path: str, source: str) -> Any:
    """Return :func:`encoder_model` with the weights of the file at ``path`` (named ``source`` in errors)."""
    import warnings

    import numpy as np

    encoder = encoder_model(spec)
    # NaN everywhere first: Keras skips, with a warning, parts of a model that a file lacks, so a
    # weight still NaN after loading is one the file did not hold.
    encoder.set_weights([np.full(w.shape, np.nan, dtype=w.dtype) for w in encoder.get_weights()])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=UserWarning)
            encoder.load_weights(path)
        missing = [layer.name for layer in encoder.layers if any(np.isnan(w).any() for w in layer.get_weights())]
        if missing:
            raise ValueError(f"the file holds no weights for {', '.join(missing[:4])}"
                             + (f" and {len(missing) - 4} more layers" if len(missing) > 4 else ""))
    except Exception as exc:  # Keras raises ValueError, KeyError or OSError for a file that does not fit
        kind = ("VGG16 convolutional blocks with base_filters=" + str(spec.base_filters)
                if spec.architecture in VGG_FAMILY else f"MobileNetV2 at width {spec.width:g}")
        raise EncoderWeightsError(
            f"model.encoder_weights={source} does not fit the encoder of {spec.architecture} ({kind}, "
            f"{spec.channels} channel(s)): {type(exc).__name__}: {exc}. Give the weights of that encoder without its "
            "classifier (include_top=False), or change model.base_filters / model.width / model.channels to match"
        ) from exc
    return encoder


def copy_encoder_weights(model: Any, encoder: Any) -> int:
    """Copy every weighted layer of ``encoder`` into the layer of ``model`` with its name (those the
    network uses: DeepLabv3+ stops inside MobileNetV2); return how many."""
    used = {layer.name for layer in model.layers}
    copied = 0
    for layer in encoder.layers:
        if layer.weights and layer.name in used:
            model.get_layer(layer.name).set_weights(layer.get_weights())
            copied += 1
    return copied


def encoder_weights_bytes(spec: ModelSpec, source: str, read: Any) -> tuple[bytes, str]:
    """Return ``(bytes of a checked weights file, its file name)`` for ``source``: ``imagenet`` or a URL
    (read with ``read(url) -> bytes``). Raises EncoderWeightsError if it cannot be had or does not fit."""
    with tempfile.TemporaryDirectory() as folder:
        if source == "imagenet":
            path = imagenet_weights(spec, folder)
        else:
            try:
                data = read(source)
            except FileNotFoundError as exc:
                raise EncoderWeightsError(f"model.encoder_weights={source}: no such file") from exc
            path = weights_path(data, source, folder)
        load_encoder(spec, path, source)
        with open(path, "rb") as handle:
            return handle.read(), os.path.basename(path)


def apply_encoder_weights(model: Any, spec: ModelSpec, data: bytes, name: str) -> int:
    """Load weights file bytes (from :func:`encoder_weights_bytes`) into ``model``'s encoder; return the layers set."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, name)
        with open(path, "wb") as handle:
            handle.write(data)
        return copy_encoder_weights(model, load_encoder(spec, path, name))
