"""Run configuration: frozen dataclasses, loaded from YAML with ``key=value`` overrides.

There is one configuration system. A config file (YAML) gives a nested mapping; command-line
overrides are dotted ``key=value`` strings (``actors.max=4``, ``batch_size=32``) whose values are
parsed as YAML scalars. Unknown keys and wrongly typed values stop the run before any work starts,
with a message that names the key and the fix.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

# The checks before a run (input listing, model, output probe) make few, short attempts, so an
# unreachable or stalled endpoint stops the run within seconds (StorageConfig.for_checks).
CHECK_RETRIES = 2
CHECK_CONNECT_TIMEOUT = 3.0
CHECK_READ_TIMEOUT = 5.0
MAX_LABEL_OFFSET = 4.0  # pixels; a larger label_offset_rows/cols is a unit mistake, not an annotation habit


class ConfigError(ValueError):
    """A run configuration that cannot be used; the message names the key and the fix."""


@dataclasses.dataclass(frozen=True)
class StorageConfig:
    """How to reach object storage.

    Every field left unset falls back to the standard AWS environment (``AWS_ACCESS_KEY_ID``,
    ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, ``AWS_DEFAULT_REGION``), which s3fs and botocore
    read themselves. ``key`` and ``secret`` are never logged or written to outputs (see
    :meth:`redacted`).
    """

    endpoint_url: str | None = None
    key: str | None = None
    secret: str | None = None
    region: str | None = None
    anon: bool = False
    retries: int = 10
    connect_timeout: float = 10.0  # seconds to open a connection before botocore retries it
    read_timeout: float = 60.0  # seconds a response may stall

    def __post_init__(self) -> None:
        if self.retries < 1:
            raise ConfigError(f"storage.retries={self.retries}: attempts per request, at least 1")
        for name in ("connect_timeout", "read_timeout"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"storage.{name}={getattr(self, name)}: seconds, must be positive")

    def for_checks(self) -> StorageConfig:
        """Return this config with the few, short attempts the checks before a run use.

        An unreachable endpoint then fails the run in seconds, not after the minutes that
        ``retries`` attempts with backoff take; the run itself keeps ``retries``.
        """
        return dataclasses.replace(self, retries=min(self.retries, CHECK_RETRIES),
                                   connect_timeout=min(self.connect_timeout, CHECK_CONNECT_TIMEOUT),
                                   read_timeout=min(self.read_timeout, CHECK_READ_TIMEOUT))

    def fsspec_options(self, protocol: str) -> dict[str, Any]:
        """Return keyword arguments for ``fsspec.filesystem(protocol, ...)``; empty for local files."""
        if protocol not in ("s3", "s3a"):
            return {}
        options: dict[str, Any] = {}
        endpoint = self.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get(
            "AWS_ENDPOINT_URL"
        )
        if endpoint:
            options["endpoint_url"] = endpoint
        if self.key:
            options["key"] = self.key
        if self.secret:
            options["secret"] = self.secret
        if self.region:
            options["client_kwargs"] = {"region_name": self.region}
        if self.anon:
            options["anon"] = True
        # transient failures (5xx, throttling, dropped connections) are retried with backoff by botocore
        options["config_kwargs"] = {"retries": {"max_attempts": self.retries, "mode": "standard"},
                                    "connect_timeout": self.connect_timeout, "read_timeout": self.read_timeout}
        return options

    def redacted(self) -> dict[str, Any]:
        """Return the fields as a dict with credentials replaced by ``"***"`` (safe to log and save)."""
        values = dataclasses.asdict(self)
        for name in ("key", "secret"):
            if values[name]:
                values[name] = "***"
        return values

    def __repr__(self) -> str:  # never print credentials, even by accident
        return f"StorageConfig({self.redacted()})"


@dataclasses.dataclass(frozen=True)
class ActorConfig:
    """The prediction actor pool: each actor holds one model replica.

    ``cpus=None`` means automatic: with GPUs, one CPU per actor; without, the node's CPUs divided
    among the actors, less a small share left for the reading and writing stages.
    """

    min: int = 1
    max: int = 1
    cpus: float | None = None
    gpus: float = 0.0
    memory_gb: float | None = None

    def __post_init__(self) -> None:
        if self.min < 1:
            raise ConfigError(f"actors.min={self.min}: the pool needs at least one actor; set actors.min=1 or more")
        if self.max < self.min:
            raise ConfigError(
                f"actors.max={self.max} is below actors.min={self.min}; set actors.max >= actors.min"
            )
        if self.cpus is not None and self.cpus <= 0:
            raise ConfigError(f"actors.cpus={self.cpus}: must be positive, or null for automatic")
        if self.gpus < 0:
            raise ConfigError(f"actors.gpus={self.gpus}: must be 0 (CPU) or positive")


@dataclasses.dataclass(frozen=True)
class SegmentConfig:
    """Everything a segmentation run needs; saved (credentials redacted) in ``<output>/run.json``."""

    input: str = ""
    model: str = ""
    output: str = ""
    address: str | None = None
    batch_size: int = 16
    folder_shard_size: int = 256
    stage_cpus: float = 0.25
    run_id: str | None = None
    report: bool = False
    overwrite: bool = False
    progress_seconds: float = 30.0
    tta: bool = False  # test-time augmentation: average the scores over the flips and turns the model was trained on
    max_image_pixels: int = 16384 * 16384  # larger images (by their header) become image_too_large error rows
    actors: ActorConfig = dataclasses.field(default_factory=ActorConfig)
    storage: StorageConfig = dataclasses.field(default_factory=StorageConfig)

    def __post_init__(self) -> None:
        for name in ("input", "model", "output"):
            if not getattr(self, name):
                raise ConfigError(f"'{name}' is not set; give --{name} URL or '{name}: URL' in the config file")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size={self.batch_size}: must be at least 1")
        if self.folder_shard_size < 1:
            raise ConfigError(f"folder_shard_size={self.folder_shard_size}: must be at least 1")
        if not 0 < self.stage_cpus <= 64:
            raise ConfigError(f"stage_cpus={self.stage_cpus}: must be a positive CPU share such as 0.25")
        if self.progress_seconds <= 0:
            raise ConfigError(f"progress_seconds={self.progress_seconds}: must be positive (seconds between progress lines)")
        if self.max_image_pixels < 1:
            raise ConfigError(f"max_image_pixels={self.max_image_pixels}: the most pixels (width x height) an image "
                              "may have, e.g. 268435456 (16384 x 16384)")

    def to_public_dict(self) -> dict[str, Any]:
        """Return the config as plain data with credentials redacted (for run.json and logs)."""
        return public_dict(self)


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    """U-Net architecture for training: square tiles of ``input_size`` pixels."""

    input_size: int = 64
    channels: int = 3
    num_classes: int = 3
    depth: int = 3
    base_filters: int = 16
    batch_norm: bool = True
    dropout: float = 0.0
    output_activation: str = "softmax"
    class_names: str = ""  # comma-separated; default background, class_1, class_2, ...

    def __post_init__(self) -> None:
        step = 2**self.depth
        if self.input_size < step or self.input_size % step:
            raise ConfigError(f"unet.input_size={self.input_size} must be a multiple of 2**unet.depth = {step}")
        if self.output_activation not in ("softmax", "sigmoid"):
            raise ConfigError(f"unet.output_activation={self.output_activation!r}: choose softmax or sigmoid")
        if self.output_activation == "sigmoid" and self.num_classes != 2:
            raise ConfigError("unet.output_activation=sigmoid needs unet.num_classes=2; use softmax for more classes")
        if self.num_classes < 2:
            raise ConfigError(f"unet.num_classes={self.num_classes}: background plus at least one class")
        if self.channels not in (1, 3):
            raise ConfigError(f"unet.channels={self.channels}: 1 (gray) or 3 (RGB)")
        names = self.names()
        if len(names) != self.num_classes:
            raise ConfigError(f"unet.class_names gives {len(names)} names for unet.num_classes={self.num_classes}")

    def names(self) -> tuple[str, ...]:
        """Return the class names: ``class_names`` split at commas, or background, class_1, ..."""
        if self.class_names:
            return tuple(name.strip() for name in self.class_names.split(","))
        return ("background", *(f"class_{index}" for index in range(1, self.num_classes)))


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs; recorded (credentials redacted) in the model artifact."""

    data: str = ""
    output: str = ""
    val_data: str | None = None
    address: str | None = None
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float | None = None
    epochs: int = 10
    passes_per_epoch: int = 1  # passes over the training data between two validations/checkpoints
    batch_size: int = 8
    learning_rate: float = 1e-3
    lr_schedule: str = "constant"  # constant | cosine (decays to 0 over the epochs, set per epoch)
    loss: str = "ce+dice"
    augment: bool = True
    crop: bool = False  # augment with random crops (80-100 % of each side) resized to the tile
    warp: bool = False  # augment with a random warp (any rotation, zoom, shift, elastic) instead of flips + 90° turns
    flips: bool = True  # flips and 90° turns; off where the labels are not symmetric under them (e.g. offset)
    quarter_turns: bool = True  # with flips: 90° turns too (off: flips and half turns only, rows stay rows)
    label_offset_rows: float = 0.0  # where the labels sit relative to their objects (pixels down); flips keep it
    label_offset_cols: float = 0.0  # the same, pixels right
    patch_size: int = 0  # train on random patch_size x patch_size windows of the tiles (0: whole tiles)
    ema: float = 0.0  # validate and keep a moving average of the weights with this momentum per step (0: off)
    normalization: str = "scale"
    folder_shard_size: int = 256
    stage_cpus: float = 0.25
    decoded_cache_mb: float = 256.0  # decoded training samples each data-stage process keeps for the next pass (0: none)
    seed: int = 0
    resume: bool = True
    xla: bool = True
    unet: UNetConfig = dataclasses.field(default_factory=UNetConfig)
    storage: StorageConfig = dataclasses.field(default_factory=StorageConfig)

    def __post_init__(self) -> None:
        for name in ("data", "output"):
            if not getattr(self, name):
                raise ConfigError(f"'{name}' is not set; give --{name.replace('_', '-')} URL")
        if self.num_workers < 1:
            raise ConfigError(f"num_workers={self.num_workers}: at least 1")
        if self.epochs < 1:
            raise ConfigError(f"epochs={self.epochs}: at least 1")
        if self.passes_per_epoch < 1:
            raise ConfigError(f"passes_per_epoch={self.passes_per_epoch}: at least 1")
        if self.batch_size < self.num_workers or self.batch_size % self.num_workers:
            raise ConfigError(
                f"batch_size={self.batch_size} is the global batch: it must be a multiple of num_workers={self.num_workers}"
            )
        if self.loss not in ("ce", "dice", "ce+dice"):
            raise ConfigError(f"loss={self.loss!r}: choose ce, dice or ce+dice")
        if self.normalization not in ("scale", "minmax"):
            raise ConfigError(f"normalization={self.normalization!r}: choose scale or minmax")
        if self.learning_rate <= 0:
            raise ConfigError(f"learning_rate={self.learning_rate}: must be positive")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ConfigError(f"lr_schedule={self.lr_schedule!r}: choose constant or cosine")
        if self.decoded_cache_mb < 0:
            raise ConfigError(f"decoded_cache_mb={self.decoded_cache_mb}: MB of decoded samples to keep per data-stage "
                              "process, 0 or more (0 decodes every time)")
        for name in ("label_offset_rows", "label_offset_cols"):
            if not abs(getattr(self, name)) <= MAX_LABEL_OFFSET:
                raise ConfigError(f"{name}={getattr(self, name)}: the labels' offset from their objects in pixels, "
                                  f"at most {MAX_LABEL_OFFSET:g} either way (e.g. -0.5: half a pixel up or left)")
        if not 0 <= self.ema < 1:
            raise ConfigError(f"ema={self.ema}: a momentum in [0, 1) such as 0.99 (0 turns the average off)")
        step = 2**self.unet.depth
        if self.patch_size and not (0 < self.patch_size <= self.unet.input_size and self.patch_size % step == 0):
            raise ConfigError(
                f"patch_size={self.patch_size}: a multiple of 2**depth = {step} up to input_size={self.unet.input_size}, "
                "or 0 to train on whole tiles"
            )

    def to_public_dict(self) -> dict[str, Any]:
        """Return the config as plain data with credentials redacted."""
        return public_dict(self)


@dataclasses.dataclass(frozen=True)
class SampleDataConfig:
    """Synthetic labelled shards for the demo, tests and benchmarks."""

    output: str = ""
    num_images: int = 64
    num_shards: int = 4
    num_classes: int = 3
    min_size: int = 48
    max_size: int = 96
    seed: int = 0
    layout: str = "tar"
    storage: StorageConfig = dataclasses.field(default_factory=StorageConfig)

    def __post_init__(self) -> None:
        if self.layout not in ("tar", "folder", "parquet"):
            raise ConfigError(f"layout={self.layout!r}: choose tar, folder or parquet")
        if not self.output:
            raise ConfigError("'output' is not set; give --output URL")
        if self.num_images < 1 or self.num_shards < 1:
            raise ConfigError("num_images and num_shards must be at least 1")
        if not 2 <= self.num_classes <= 8:
            raise ConfigError(f"num_classes={self.num_classes}: sample data supports 2..8 classes")
        if not 16 <= self.min_size <= self.max_size:
            raise ConfigError(f"min_size={self.min_size}, max_size={self.max_size}: need 16 <= min_size <= max_size")


@dataclasses.dataclass(frozen=True)
class ReportConfig:
    """A report over one segmentation run's outputs, optionally compared with a baseline run."""

    run: str = ""
    baseline: str | None = None
    output: str | None = None  # default: <run>/report
    worst: int = 12
    partial: bool = False
    bootstrap_resamples: int = 1000
    seed: int = 0
    storage: StorageConfig = dataclasses.field(default_factory=StorageConfig)

    def __post_init__(self) -> None:
        if not self.run:
            raise ConfigError("'run' is not set; give the URL of a segmentation run's output")
        if not 0 <= self.worst <= 200:
            raise ConfigError(f"worst={self.worst}: show 0..200 worst images")
        if self.bootstrap_resamples < 100:
            raise ConfigError(f"bootstrap_resamples={self.bootstrap_resamples}: at least 100")


def public_dict(config: Any) -> dict[str, Any]:
    """Return a config dataclass with a ``storage`` field as plain data, credentials redacted."""
    values = dataclasses.asdict(config)
    values["storage"] = config.storage.redacted()
    return values


ConfigT = TypeVar("ConfigT")


def load_config(
    cls: type[ConfigT],
    path: str | Path | None = None,
    overrides: Iterable[str] = (),
    options: Mapping[str, Any] | None = None,
) -> ConfigT:
    """Return a ``cls`` built from an optional YAML file, then ``options`` (typed values by dotted
    key, e.g. from command-line flags), then dotted ``key=value`` override strings."""
    values: dict[str, Any] = {}
    if path is not None:
        values = read_yaml_mapping(path)
    for key, value in (options or {}).items():
        set_dotted(values, key, value)
    for item in overrides:
        key, value = parse_override(item)
        set_dotted(values, key, value)
    return build_dataclass(cls, values)


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """Return the mapping stored in a YAML file; an empty file is an empty mapping."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}; check the path") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values, not {type(data).__name__}")
    return data


class OverrideText(str):
    """The text of a ``KEY=VALUE`` override, parsed only once the key's type is known."""


def parse_override(item: str) -> tuple[str, OverrideText]:
    """Split ``"a.b=value"`` into the key and the raw value text."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} is not KEY=VALUE; write e.g. actors.max=4")
    return key.strip(), OverrideText(raw)


def override_value(text: OverrideText, kind: Any) -> Any:
    """Return override text as-is for a text key, else parsed as a YAML scalar (``4``, ``1.5``, ``true``, ``null``)."""
    if kind is str and text.strip() not in ("", "null", "~"):
        return str(text)
    try:
        return yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        return str(text)


def set_dotted(values: dict[str, Any], key: str, value: Any) -> None:
    """Set ``values["a"]["b"] = value`` for ``key="a.b"``, creating nested mappings as needed."""
    *parents, leaf = key.split(".")
    node = values
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {key}=...: '{part}' is a value, not a section")
        node = child
    node[leaf] = value


def build_dataclass(cls: type[ConfigT], values: Mapping[str, Any], prefix: str = "") -> ConfigT:
    """Return ``cls(**values)`` with nested sections built recursively and values type-checked."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"'{prefix.rstrip('.')}' must be a section (a mapping), got {values!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown config key '{prefix}{unknown[0]}'; known keys here: {', '.join(sorted(fields))}"
        )
    kwargs: dict[str, Any] = {}
    for name, raw in values.items():
        kind = hints[name]
        if dataclasses.is_dataclass(kind):
            kwargs[name] = build_dataclass(kind, raw or {}, f"{prefix}{name}.")
        else:
            kwargs[name] = coerce_value(f"{prefix}{name}", raw, kind)
    return cls(**kwargs)


def coerce_value(key: str, value: Any, kind: Any) -> Any:
    """Return ``value`` converted to the annotated ``kind`` or raise a ConfigError naming ``key``."""
    args = typing.get_args(kind)
    optional = type(None) in args and (typing.get_origin(kind) in (typing.Union, types.UnionType))
    if optional:
        kind = next(a for a in args if a is not type(None))
    if isinstance(value, OverrideText):
        value = override_value(value, kind)
    if value is None and optional:
        return None
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif kind is str:
        if isinstance(value, (dt.date, dt.datetime)):
            return value.isoformat()
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    else:
        return value
    raise ConfigError(f"config key '{key}' expects {kind.__name__}, got {value!r}")
