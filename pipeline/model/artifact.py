"""A model artifact: a folder holding ``model.keras`` and ``model.json`` (the K-means baseline: model.json alone).

``model.json`` records everything inference needs besides the weights: format version,
architecture and its parameters, input tile size, channels, class names, output activation,
normalisation, the encoder's input preprocessing, decision threshold, and what the model was
trained on. Models are loaded with Keras ``safe_mode=True``, so an artifact cannot run arbitrary
code through lambda layers; segpipe's own layers (:mod:`pipeline.model.layers`) are registered classes.
Format 1 (U-Net only, before the architectures) still loads.

TensorFlow is imported inside the functions that need it: the driver and CPU stages stay light.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import io
import json
import logging
import os
import tempfile
from typing import Any

from pipeline.config import StorageConfig
from pipeline.imaging import LabelMap
from pipeline.io import storage
from pipeline.model.spec import PREPROCESSING, ModelSpec

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)  # format 1: U-Net only, no preprocessing
MODEL_FILE = "model.keras"
INFO_FILE = "model.json"
SCALES = ("resize", "native")


class ModelArtifactError(RuntimeError):
    """A model artifact is missing or invalid; the message names the URL and the fix."""


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """The content of ``model.json``."""

    spec: ModelSpec
    class_names: tuple[str, ...]
    normalization: dict[str, Any] = dataclasses.field(default_factory=lambda: {"mode": "scale"})
    threshold: float = 0.5
    training: dict[str, Any] = dataclasses.field(default_factory=lambda: {"trained": False})
    name: str = ""
    created: str = ""
    scale: str = "resize"  # what the model was trained on: whole images resized to the tile, or native-scale windows
    preprocessing: str = "none"  # the encoder's input preprocessing (pipeline.model.spec.encoder_input)
    kmeans: dict[str, Any] | None = None  # the K-means baseline's clusters (pipeline.model.kmeans)
    model_sha256: str = ""  # the sha256 of model.keras as saved beside this model.json ("" before it was recorded)
    label_map: LabelMap | None = None  # how its training data stored the classes, where it declared that (labels.yaml)
    plan: list[dict[str, Any]] | None = None  # the training plan's choices (pipeline.train.plan), where it had one
    objects: dict[str, Any] | None = None  # its training data's objects: diameter (median, px), area, border_width

    @property
    def diameter(self) -> float | None:
        """Return the median diameter (pixels) of the objects the model was trained on, where recorded."""
        return float((self.objects or {}).get("diameter") or 0) or None

    def truth_labels(self) -> LabelMap:
        """Return the label map ground truth is read through: the one given for the run (set on this info
        by the run), else the training data's, else plain class indices of the model's classes."""
        return self.label_map if self.label_map is not None else LabelMap(num_classes=self.spec.num_classes,
                                                                          names=self.class_names)

    def to_json(self) -> dict[str, Any]:
        """Return the JSON-ready mapping written as ``model.json``."""
        data = {
            "format_version": FORMAT_VERSION,
            "name": self.name or self.spec.architecture,
            "architecture": self.spec.architecture,
            "parameters": self.spec.parameters(),
            "input_size": list(self.spec.input_size),
            "channels": self.spec.channels,
            "num_classes": self.spec.num_classes,
            "class_names": list(self.class_names),
            "normalization": self.normalization,
            "preprocessing": self.preprocessing,
            "threshold": self.threshold,
            "scale": self.scale,
            "training": self.training,
            "created": self.created or dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        if self.kmeans is not None:
            data["kmeans"] = self.kmeans
        if self.model_sha256:
            data["model_sha256"] = self.model_sha256
        if self.label_map is not None and self.label_map.declared:
            data["labels"] = self.label_map.to_json()
        if self.plan is not None:
            data["plan"] = self.plan
        if self.objects is not None:
            data["objects"] = self.objects
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any], url: str) -> ModelInfo:
        """Return the info read from a ``model.json`` mapping; raise ModelArtifactError naming ``url``."""
        if data.get("format_version") not in READABLE_FORMATS:
            raise ModelArtifactError(
                f"{url}/{INFO_FILE}: format_version {data.get('format_version')!r} is not one of "
                f"{', '.join(map(str, READABLE_FORMATS))}; re-export the model with this version of segpipe"
            )
        try:
            architecture = str(data.get("architecture", "unet"))
            spec = ModelSpec(
                architecture=architecture,
                input_size=tuple(data["input_size"]),
                channels=int(data["channels"]),
                num_classes=int(data["num_classes"]),
                **data["parameters"],
            )
            info = cls(
                spec=spec,
                class_names=tuple(data["class_names"]),
                normalization=dict(data["normalization"]),
                threshold=float(data["threshold"]),
                training=dict(data.get("training", {})),
                name=str(data.get("name", architecture)),
                created=str(data.get("created", "")),
                scale=str(data.get("scale", "resize")),
                preprocessing=str(data.get("preprocessing", "none")),
                kmeans=data.get("kmeans"),
                model_sha256=str(data.get("model_sha256", "")),
                label_map=LabelMap.from_mapping(data["labels"], "labels").with_classes(spec.num_classes)
                if data.get("labels") else None,
                plan=data.get("plan"), objects=data.get("objects"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelArtifactError(f"{url}/{INFO_FILE} is invalid ({type(exc).__name__}: {exc})") from exc
        if info.scale not in SCALES:
            raise ModelArtifactError(f"{url}/{INFO_FILE}: scale {info.scale!r} is not one of {', '.join(SCALES)}")
        if info.preprocessing not in PREPROCESSING:
            raise ModelArtifactError(f"{url}/{INFO_FILE}: preprocessing {info.preprocessing!r} is not one of "
                                     f"{', '.join(PREPROCESSING)}")
        if len(info.class_names) != spec.num_classes:
            raise ModelArtifactError(
                f"{url}/{INFO_FILE}: {len(info.class_names)} class_names for num_classes={spec.num_classes}"
            )
        if spec.architecture == "kmeans" and not info.kmeans:
            raise ModelArtifactError(f"{url}/{INFO_FILE}: a kmeans model without its clusters (the 'kmeans' section)")
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
        return f"{self.info.name or self.info.spec.architecture}-{self.sha256[:12]}"


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


def load_keras_file(path: str) -> Any:
    """Return the Keras model saved at ``path``, loaded with ``safe_mode=True`` and segpipe's layers registered."""
    import keras

    import pipeline.model.layers  # noqa: F401 - registers segpipe's layers, which SegNet and DeepLabv3+ hold

    return keras.saving.load_model(path, compile=False, safe_mode=True)


def save_artifact(model: Any, info: ModelInfo, url: str, storage_config: StorageConfig | None = None) -> str:
    """Write ``model.keras`` and ``model.json`` under ``url``; return the sha256 of ``model.keras``.

    A K-means model (``model`` None) is ``model.json`` alone, and the sha256 is that file's.
    """
    described = json.dumps(info.to_json(), indent=2).encode()
    if model is None:
        storage.write_bytes(storage.join_url(url, INFO_FILE), described, storage_config)
        return hashlib.sha256(described).hexdigest()
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, MODEL_FILE)
        model.save(local)
        with open(local, "rb") as handle:
            data = handle.read()
    return write_artifact_files(data, info, url, storage_config)


def write_artifact_files(data: bytes, info: ModelInfo, url: str, storage_config: StorageConfig | None = None) -> str:
    """Write ``model.keras`` (``data``) and then ``model.json`` recording its sha256 under ``url``; return the sha256."""
    digest = hashlib.sha256(data).hexdigest()
    described = json.dumps(dataclasses.replace(info, model_sha256=digest).to_json(), indent=2).encode()
    storage.write_bytes(storage.join_url(url, MODEL_FILE), data, storage_config)
    storage.write_bytes(storage.join_url(url, INFO_FILE), described, storage_config)
    return digest


def checked_sha256(data: bytes, info: ModelInfo, url: str) -> str:
    """Return the sha256 of ``model.keras``'s bytes; raise ModelArtifactError if model.json records another.

    Artifacts written before model.json recorded it (no ``model_sha256``) are taken as they are.
    """
    digest = hashlib.sha256(data).hexdigest()
    if info.model_sha256 and digest != info.model_sha256:
        raise ModelArtifactError(
            f"{url}/{MODEL_FILE} has sha256 {digest[:12]}…, but {INFO_FILE} was written for {info.model_sha256[:12]}…: "
            f"the weights were replaced after the model was saved, so {INFO_FILE} (classes, normalisation, training "
            f"history) describes another model; put back the {MODEL_FILE} saved with it, or train or import the "
            "model again")
    return digest


def read_info(url: str, storage_config: StorageConfig | None = None) -> ModelInfo:
    """Return the ModelInfo of the artifact at ``url``; raise ModelArtifactError if missing or invalid."""
    return read_info_and_bytes(url, storage_config)[0]


def read_info_and_bytes(url: str, storage_config: StorageConfig | None = None) -> tuple[ModelInfo, bytes]:
    """Return the ModelInfo of the artifact at ``url`` and the bytes of its ``model.json``."""
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
    return ModelInfo.from_json(data, url), raw


def read_model_file(url: str, storage_config: StorageConfig | None) -> bytes:
    """Return the bytes of the artifact's ``model.keras``; ModelArtifactError if it has none."""
    try:
        return storage.read_bytes(storage.join_url(url, MODEL_FILE), storage_config)
    except FileNotFoundError as exc:
        raise ModelArtifactError(f"model artifact {url} has no {MODEL_FILE}") from exc


def load_artifact(url: str, storage_config: StorageConfig | None = None,
                  tensorflow_threads: int | None = None, events: dict[str, float] | None = None) -> LoadedModel:
    """Return the model at ``url`` loaded with ``safe_mode=True`` and checked against its info.

    A K-means model is a :class:`pipeline.model.kmeans.KMeansSegmenter`, with no TensorFlow involved.
    With ``tensorflow_threads``, TensorFlow is configured (:func:`configure_tensorflow`) before a
    Keras model loads. ``events``, if given, receives when TensorFlow was imported
    (``tensorflow_imported``) and the model loaded (``model_loaded``), as ``time.time()``.
    """
    import time

    events = {} if events is None else events
    info, described = read_info_and_bytes(url, storage_config)
    if not info.spec.keras:
        from pipeline.model.kmeans import KMeansSegmenter

        loaded = LoadedModel(model=KMeansSegmenter.from_info(info), info=info,
                             sha256=hashlib.sha256(described).hexdigest())
        log.info("loaded model %s from %s", loaded.model_id, url)
        events["tensorflow_imported"] = events["model_loaded"] = time.time()
        return loaded
    if tensorflow_threads is not None:
        configure_tensorflow(tensorflow_threads)
    import keras  # noqa: F401 - imports TensorFlow: timed apart from the load

    events["tensorflow_imported"] = time.time()
    data = read_model_file(url, storage_config)
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, MODEL_FILE)
        with open(local, "wb") as handle:
            handle.write(data)
        try:
            model = load_keras_file(local)
        except Exception as exc:
            raise ModelArtifactError(
                f"{url}/{MODEL_FILE} cannot be loaded ({type(exc).__name__}: {exc}); "
                "it must be a Keras 3 .keras file saved without custom code"
            ) from exc
    check_shapes(model, info, url)
    events["model_loaded"] = time.time()
    loaded = LoadedModel(model=model, info=info, sha256=checked_sha256(data, info, url))
    log.info("loaded model %s from %s", loaded.model_id, url)
    return loaded


def inspect_artifact(url: str, storage_config: StorageConfig | None = None) -> LoadedModel:
    """Return the artifact at ``url`` described but not loaded (``model`` None): its info, its sha256,
    and its shapes checked from the ``.keras`` file's own ``config.json``, with no TensorFlow involved.

    What the driver of a run needs: the input shape is always checked, the output's channels where
    the file's last layer names them (a convolution's filters, or a shape-keeping layer after one);
    otherwise the predictor's full load (:func:`load_artifact`) checks them before any shard commits.
    """
    info, described = read_info_and_bytes(url, storage_config)
    if not info.spec.keras:
        return LoadedModel(model=None, info=info, sha256=hashlib.sha256(described).hexdigest())
    data = read_model_file(url, storage_config)
    digest = checked_sha256(data, info, url)
    got_in, channels = keras_file_shapes(data, url)
    size = (None, None) if info.spec.free_input else info.spec.input_size
    expected_in = (*size, info.spec.channels)
    if got_in != expected_in or channels not in (None, info.spec.output_channels):
        got = f"takes {got_in}" + (f" and gives {channels} channels" if channels is not None else "")
        raise ModelArtifactError(
            f"{url}: model.keras {got}, but model.json says {expected_in} -> {info.spec.output_channels} channels; "
            "the two files do not belong together")
    return LoadedModel(model=None, info=info, sha256=digest)


SHAPE_KEEPING = ("Activation", "Softmax", "ReLU", "Rescaling", "Identity", "Dropout", "SpatialDropout2D",
                 "BatchNormalization", "LayerNormalization")


def keras_file_shapes(data: bytes, url: str) -> tuple[tuple[Any, ...], int | None]:
    """Return ``(input shape without the batch, output channels or None)`` from a ``.keras`` file's config."""
    import zipfile

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            config = json.loads(archive.read("config.json"))
        section = config["config"]
        layers = section["layers"]
    except (zipfile.BadZipFile, KeyError, ValueError, TypeError) as exc:
        raise ModelArtifactError(f"{url}/{MODEL_FILE} cannot be loaded: it is not a Keras 3 .keras file "
                                 f"({type(exc).__name__}: {exc}); save the model with model.save('model.keras')") from exc
    by_name = {layer.get("name") or layer.get("config", {}).get("name"): layer for layer in layers}

    def named(entries: Any) -> list[Any]:  # input_layers / output_layers: [name, 0, 0] or a list of them
        return [] if not entries else [entries] if not isinstance(entries[0], list) else list(entries)

    if config.get("class_name") == "Sequential":
        first, last, inputs = layers[0], layers[-1], 1
    else:
        entries_in, entries_out = named(section.get("input_layers")), named(section.get("output_layers"))
        inputs = len(entries_in)
        first = by_name.get(entries_in[0][0]) if entries_in else None
        last = by_name.get(entries_out[0][0]) if len(entries_out) == 1 else None
    settings = (first or {}).get("config", {})
    shape = settings.get("batch_shape") or settings.get("batch_input_shape")
    if inputs != 1 or not shape:
        raise ModelArtifactError(f"{url}/{MODEL_FILE}: the model must take one image input ((None, H, W, C)); "
                                 f"its config names {inputs} input(s)" + ("" if shape else " and no input shape"))
    if config.get("class_name") == "Sequential":  # no inbound nodes: walk back over the layers
        for layer in reversed(layers):
            found = output_channels(layer, {}) if layer.get("class_name") not in SHAPE_KEEPING else None
            if found is not None or layer.get("class_name") not in SHAPE_KEEPING:
                return tuple(shape[1:]), found
    return tuple(shape[1:]), output_channels(last, by_name)


def output_channels(layer: dict[str, Any] | None, by_name: dict[str, Any]) -> int | None:
    """Return the channels a layer of a ``.keras`` config gives: its filters or units, the channels
    of its input for a shape-keeping layer, else None (not known without building it)."""
    for _ in range(16):
        if layer is None:
            return None
        settings = layer.get("config", {})
        for key in ("filters", "units"):
            if isinstance(settings.get(key), int):
                return settings[key]
        if layer.get("class_name") not in SHAPE_KEEPING:
            return None
        try:
            tensor = layer["inbound_nodes"][0]["args"][0]["config"]
        except (KeyError, IndexError, TypeError):
            return None
        if isinstance(tensor.get("shape"), list) and tensor["shape"] and isinstance(tensor["shape"][-1], int):
            return tensor["shape"][-1]
        layer = by_name.get((tensor.get("keras_history") or [None])[0])
    return None


def check_shapes(model: Any, info: ModelInfo, url: str) -> None:
    """Raise ModelArtifactError if the Keras model's input/output shapes disagree with ``info``."""
    size = (None, None) if info.spec.free_input else info.spec.input_size
    expected_in = (*size, info.spec.channels)
    expected_out = (*size, info.spec.output_channels)
    got_in = tuple(model.input_shape[1:])
    got_out = tuple(model.output_shape[1:])
    if got_in != expected_in or got_out != expected_out:
        raise ModelArtifactError(
            f"{url}: model.keras takes {got_in} and gives {got_out}, but model.json says "
            f"{expected_in} -> {expected_out}; the two files do not belong together"
        )
