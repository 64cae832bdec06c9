"""The U-Net and its artifact: a folder holding ``model.keras`` and ``model.json``.

``model.json`` records everything inference needs besides the weights: format version,
architecture and its parameters, input tile size, channels, class names, output activation,
normalisation, decision threshold, and what the model was trained on. Models are loaded with
Keras ``safe_mode=True``, so an artifact cannot run arbitrary code through lambda layers.

TensorFlow is imported inside the functions that need it: the driver and CPU stages stay light.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import tempfile
from typing import Any

from pipeline.config import StorageConfig
from pipeline.config.training import unet_problem
from pipeline.io import storage

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MODEL_FILE = "model.keras"
BATCH_NORM_MOMENTUM = 0.9
INFO_FILE = "model.json"
SCALES = ("resize", "native")


class ModelArtifactError(RuntimeError):
    """A model artifact is missing or invalid; the message names the URL and the fix."""


@dataclasses.dataclass(frozen=True)
class UNetSpec:
    """U-Net architecture. ``input_size`` must be divisible by ``2**depth``.

    ``output_activation="sigmoid"`` needs ``num_classes == 2`` and gives one output channel
    (probability of class 1); ``"softmax"`` gives ``num_classes`` channels.
    """

    input_size: tuple[int, int] = (64, 64)
    channels: int = 3
    num_classes: int = 2
    depth: int = 3
    base_filters: int = 8
    batch_norm: bool = True
    dropout: float = 0.0
    output_activation: str = "softmax"

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_size", tuple(int(v) for v in self.input_size))
        problem = unet_problem(self.input_size, self.channels, self.num_classes, self.depth, self.output_activation)
        if problem:
            raise ValueError(problem)

    @property
    def output_channels(self) -> int:
        """Return the number of model output channels (1 for sigmoid, ``num_classes`` for softmax)."""
        return 1 if self.output_activation == "sigmoid" else self.num_classes


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """The content of ``model.json``."""

    unet: UNetSpec
    class_names: tuple[str, ...]
    normalization: dict[str, Any] = dataclasses.field(default_factory=lambda: {"mode": "scale"})
    threshold: float = 0.5
    training: dict[str, Any] = dataclasses.field(default_factory=lambda: {"trained": False})
    name: str = "unet"
    created: str = ""
    scale: str = "resize"  # what the model was trained on: whole images resized to the tile, or native-scale windows

    def to_json(self) -> dict[str, Any]:
        """Return the JSON-ready mapping written as ``model.json``."""
        unet = dataclasses.asdict(self.unet)
        return {
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "architecture": "unet",
            "parameters": {k: unet[k] for k in ("depth", "base_filters", "batch_norm", "dropout", "output_activation")},
            "input_size": list(self.unet.input_size),
            "channels": self.unet.channels,
            "num_classes": self.unet.num_classes,
            "class_names": list(self.class_names),
            "normalization": self.normalization,
            "threshold": self.threshold,
            "scale": self.scale,
            "training": self.training,
            "created": self.created or dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], url: str) -> ModelInfo:
        """Return the info read from a ``model.json`` mapping; raise ModelArtifactError naming ``url``."""
        if data.get("format_version") != FORMAT_VERSION:
            raise ModelArtifactError(
                f"{url}/{INFO_FILE}: format_version {data.get('format_version')!r} is not {FORMAT_VERSION}; "
                "re-export the model with this version of segpipe"
            )
        try:
            unet = UNetSpec(
                input_size=tuple(data["input_size"]),
                channels=int(data["channels"]),
                num_classes=int(data["num_classes"]),
                **data["parameters"],
            )
            info = cls(
                unet=unet,
                class_names=tuple(data["class_names"]),
                normalization=dict(data["normalization"]),
                threshold=float(data["threshold"]),
                training=dict(data.get("training", {})),
                name=str(data.get("name", "unet")),
                created=str(data.get("created", "")),
                scale=str(data.get("scale", "resize")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelArtifactError(f"{url}/{INFO_FILE} is invalid ({type(exc).__name__}: {exc})") from exc
        if info.scale not in SCALES:
            raise ModelArtifactError(f"{url}/{INFO_FILE}: scale {info.scale!r} is not one of {', '.join(SCALES)}")
        if len(info.class_names) != unet.num_classes:
            raise ModelArtifactError(
                f"{url}/{INFO_FILE}: {len(info.class_names)} class_names for num_classes={unet.num_classes}"
            )
        return info


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A loaded artifact: the Keras model, its info, and its identity."""

    model: Any
    info: ModelInfo
    sha256: str

    @property
    def model_id(self) -> str:
        """Return ``<name>-<first 12 hex digits of the sha256 of model.keras>``."""
        return f"{self.info.name}-{self.sha256[:12]}"


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


def build_unet(spec: UNetSpec, free_size: bool = False) -> Any:
    """Return an uncompiled Keras U-Net for ``spec`` (encoder of ``depth`` levels, doubling filters).

    With ``free_size`` its input takes any height and width that are multiples of ``2**depth``
    (the same layers and weights: a fully convolutional copy for whole-image inference).
    """
    import keras
    from keras import layers

    def conv_block(x: Any, filters: int) -> Any:
        for _ in range(2):
            x = layers.Conv2D(filters, 3, padding="same", use_bias=not spec.batch_norm)(x)
            if spec.batch_norm:
                # Keras' default momentum (0.99) leaves the moving statistics far from the data after
                # the few hundred steps small training sets give; 0.9 (PyTorch's default) converges.
                x = layers.BatchNormalization(momentum=BATCH_NORM_MOMENTUM)(x)
            x = layers.Activation("relu")(x)
        return x

    inputs = keras.Input(shape=(*((None, None) if free_size else spec.input_size), spec.channels), name="image")
    x = inputs
    skips = []
    for level in range(spec.depth):
        x = conv_block(x, spec.base_filters * 2**level)
        skips.append(x)
        x = layers.MaxPooling2D(2)(x)
    x = conv_block(x, spec.base_filters * 2**spec.depth)
    if spec.dropout:
        x = layers.Dropout(spec.dropout)(x)
    for level in reversed(range(spec.depth)):
        x = layers.Conv2DTranspose(spec.base_filters * 2**level, 2, strides=2, padding="same")(x)
        x = layers.Concatenate()([x, skips[level]])
        x = conv_block(x, spec.base_filters * 2**level)
    outputs = layers.Conv2D(spec.output_channels, 1, activation=spec.output_activation, name="scores")(x)
    return keras.Model(inputs, outputs, name="unet")


def save_artifact(model: Any, info: ModelInfo, url: str, storage_config: StorageConfig | None = None) -> str:
    """Write ``model.keras`` and ``model.json`` under ``url``; return the sha256 of ``model.keras``."""
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, MODEL_FILE)
        model.save(local)
        with open(local, "rb") as handle:
            data = handle.read()
    storage.write_bytes(storage.join_url(url, MODEL_FILE), data, storage_config)
    storage.write_bytes(
        storage.join_url(url, INFO_FILE), json.dumps(info.to_json(), indent=2).encode(), storage_config
    )
    return hashlib.sha256(data).hexdigest()


def read_info(url: str, storage_config: StorageConfig | None = None) -> ModelInfo:
    """Return the ModelInfo of the artifact at ``url``; raise ModelArtifactError if missing or invalid."""
    info_url = storage.join_url(url, INFO_FILE)
    try:
        raw = storage.read_bytes(info_url, storage_config)
    except FileNotFoundError as exc:
        raise ModelArtifactError(
            f"model artifact {url} has no {INFO_FILE}; point --model at a folder holding {MODEL_FILE} and {INFO_FILE}"
        ) from exc
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ModelArtifactError(f"{info_url} is not valid JSON ({exc})") from exc
    return ModelInfo.from_json(data, url)


def load_artifact(url: str, storage_config: StorageConfig | None = None) -> LoadedModel:
    """Return the model at ``url`` loaded with ``safe_mode=True`` and checked against its info."""
    import keras

    info = read_info(url, storage_config)
    try:
        data = storage.read_bytes(storage.join_url(url, MODEL_FILE), storage_config)
    except FileNotFoundError as exc:
        raise ModelArtifactError(f"model artifact {url} has no {MODEL_FILE}") from exc
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, MODEL_FILE)
        with open(local, "wb") as handle:
            handle.write(data)
        try:
            model = keras.saving.load_model(local, compile=False, safe_mode=True)
        except Exception as exc:
            raise ModelArtifactError(
                f"{url}/{MODEL_FILE} cannot be loaded ({type(exc).__name__}: {exc}); "
                "it must be a Keras 3 .keras file saved without custom code"
            ) from exc
    check_shapes(model, info, url)
    loaded = LoadedModel(model=model, info=info, sha256=hashlib.sha256(data).hexdigest())
    log.info("loaded model %s from %s", loaded.model_id, url)
    return loaded


def check_shapes(model: Any, info: ModelInfo, url: str) -> None:
    """Raise ModelArtifactError if the Keras model's input/output shapes disagree with ``info``."""
    expected_in = (*info.unet.input_size, info.unet.channels)
    expected_out = (*info.unet.input_size, info.unet.output_channels)
    got_in = tuple(model.input_shape[1:])
    got_out = tuple(model.output_shape[1:])
    if got_in != expected_in or got_out != expected_out:
        raise ModelArtifactError(
            f"{url}: model.keras takes {got_in} and gives {got_out}, but model.json says "
            f"{expected_in} -> {expected_out}; the two files do not belong together"
        )
