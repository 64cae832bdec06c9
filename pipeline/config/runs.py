"""The configuration of a segmentation run, its sections, and object storage (shared by every command)."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, ClassVar

from pipeline.config.loading import ConfigError, check_choices, option, public_dict

# The checks before a run (input listing, model, output probe) make few, short attempts, so an
# unreachable or stalled endpoint stops the run within seconds (StorageConfig.for_checks).
CHECK_RETRIES = 2
CHECK_CONNECT_TIMEOUT = 3.0
CHECK_READ_TIMEOUT = 5.0


@dataclasses.dataclass(frozen=True)
class StorageConfig:
    """How to reach object storage.

    Every field left unset falls back to the standard AWS environment (``AWS_ACCESS_KEY_ID``,
    ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, ``AWS_DEFAULT_REGION``), which s3fs and botocore
    read themselves. ``key`` and ``secret`` are never logged or written to outputs (see
    :meth:`redacted`).
    """

    endpoint_url: str | None = option(None, flag="--endpoint-url", default_text="$AWS_ENDPOINT_URL",
                                      help="S3 endpoint URL, for S3-compatible stores")
    key: str | None = option(None, default_text="$AWS_ACCESS_KEY_ID", help="access key id (never logged or saved)")
    secret: str | None = option(None, default_text="$AWS_SECRET_ACCESS_KEY", help="secret key (never logged or saved)")
    region: str | None = option(None, default_text="$AWS_DEFAULT_REGION", help="region of the bucket")
    anon: bool = option(False, help="read a public bucket without credentials")
    retries: int = option(10, help="attempts per object-storage request; transient errors (5xx, throttling) "
                                   "back off and retry")
    connect_timeout: float = option(10.0, help="seconds to open a connection, per attempt")
    read_timeout: float = option(60.0, help="seconds a response may stall, per attempt")

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
    """The prediction actor pool: each actor holds one model replica."""

    min: int = option(1, flag="--min-actors", help="smallest actor pool")
    max: int = option(1, flag="--max-actors", help="largest actor pool")
    cpus: float | None = option(None, flag="--cpus-per-actor", default_text="automatic",
                                help="CPUs per actor (TensorFlow gets ceil of it as threads); automatic: one per GPU "
                                     "actor, else the node's CPUs shared among the actors less a share for the stages "
                                     "around them")
    gpus: float = option(0.0, flag="--gpus-per-actor", help="GPUs per actor; each actor sees only the GPU Ray gives it, "
                                                           "with memory growth on")
    memory_gb: float | None = option(None, help="memory Ray reserves per actor, GB")

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
class ObjectsConfig:
    """Objects from the predicted masks: instances, one row per object, and instance metrics."""

    enabled: bool = option(False, flag="--objects",
                           help="label the objects of every foreground class of each predicted mask: writes "
                                "instances/<key>.png (16-bit labels; 32-bit TIFF beyond 65,535 objects), "
                                "objects/<shard>.parquet (one row per object) and the instance metrics (DSB score, "
                                "PQ) against ground-truth instances")
    min_size: int | None = option(None, flag="--min-object-size", default_text="speckle for the objects' size",
                                  help="objects of fewer pixels are dropped (left as background); unset: the area of a "
                                       "disc a quarter of the objects' typical diameter across (the diameter given, "
                                       "else the model's training objects', else the image's own)")
    split: str = option("auto", flag="--split", choices=("auto", "none", "watershed", "borders"),
                        help="how touching objects are told apart. none: each connected component is an object; "
                             "watershed: components larger than 1.5 typical objects are split along the valleys of "
                             "their distance transform, at peaks that rise a twentieth of the typical diameter; "
                             "borders: a border model's predicted interiors grown back over their objects (a "
                             "marker-controlled watershed); auto: borders for a model trained on border targets, "
                             "else watershed")
    diameter: float = option(0.0, help="the objects' typical diameter in pixels, which the watershed and the speckle size "
                                       "follow; 0: measured on each image (the watershed) and the model's training "
                                       "objects (the speckle size)")
    connectivity: int = option(8, flag="--connectivity", choices=(4, 8),
                               help="the neighbours that join pixels into one object: 4 (edges) or 8 (edges and corners)")

    def __post_init__(self) -> None:
        if self.min_size is not None and self.min_size < 0:
            raise ConfigError(f"objects.min_size={self.min_size}: pixels, 0 or more")
        if self.diameter < 0:
            raise ConfigError(f"objects.diameter={self.diameter}: pixels, 0 (measured) or more")
        check_choices(self, "objects.")


@dataclasses.dataclass(frozen=True)
class LabelsConfig:
    """How the input's masks store their classes (its label map); unset: the input's ``labels.yaml``,
    else plain class indices (docs/segmentation.md, "Label maps")."""

    classes: Any = option(None, default_text="the model's", help="class names in index order, background first "
                                                                   "(a list, or comma-separated)")
    values: Any = option(None, default_text="the class indices",
                         help="stored mask value -> class (index or name), e.g. {0: 0, 38: 1}; any other value is an error")
    colors: Any = option(None, help="colour -> class for colour masks (RGB or palette PNGs), e.g. {'128,0,0': 1}")
    ignore: Any = option(None, help="stored values (or 'R,G,B' colours) that mean 'not labelled', e.g. 255 (PASCAL "
                                    "VOC): left out of every loss, metric and count")

    def given(self) -> dict[str, Any]:
        """Return the keys that are set, as a label map mapping."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)
                if getattr(self, field.name) not in (None, "", [], {})}


@dataclasses.dataclass(frozen=True)
class CocoConfig:
    """A COCO input (``--input URL/annotations.json``)."""

    images: str = option("", default_text="the annotations file's folder",
                         help="URL the images' file_name entries are relative to")


def check_reading(folder_shard_size: int, stage_cpus: float) -> None:
    """Raise ConfigError for a reading stage that cannot work: shards of no image, or no CPU share."""
    if folder_shard_size < 1:
        raise ConfigError(f"folder_shard_size={folder_shard_size}: must be at least 1")
    if not 0 < stage_cpus <= 64:
        raise ConfigError(f"stage_cpus={stage_cpus}: must be a positive CPU share such as 0.25")


@dataclasses.dataclass(frozen=True)
class SegmentConfig:
    """Everything a segmentation run needs; saved (credentials redacted) in ``<output>/run.json``."""

    input: str = option("", flag="--input", default_text="required",
                        help="URL of tar shards, an images/ folder, Parquet files or a COCO annotations .json")
    model: str = option("", flag="--model", default_text="required",
                        help="URL of a model artifact (folder with model.keras + model.json)")
    output: str = option("", flag="--output", default_text="required",
                         help="URL to write masks/, metrics/, _done/ and run.json under; never inside the input")
    address: str | None = option(None, flag="--address", default_text="$RAY_ADDRESS, else a local Ray",
                                 help="Ray cluster to run on")
    batch_size: int = option(32, flag="--batch-size", help="images (or windows) per model batch; 32 measured best on CPU "
                                                           "actors (see docs/benchmarks.md), more suits a GPU")
    folder_shard_size: int = option(256, help="images per shard when the input is a folder")
    stage_cpus: float = option(0.25, help="CPU share of each read-and-prepare task and mask writer")
    run_id: str | None = option(None, flag="--run-id", default_text="the UTC start time",
                                help="run id recorded in every row")
    report: bool = option(False, flag="--report", help="write the dataset-level report (<output>/report/) when the "
                                                       "run ends")
    overwrite: bool = option(False, flag="--overwrite",
                             help="replace what the output holds from another run (by default a re-run continues the "
                                  "same run, skipping committed shards, and refuses an output of another input or model); "
                                  "also takes the output from a run that still holds it")
    progress_seconds: float = option(30.0, help="seconds between progress lines in the log")
    tta: bool = option(False, flag="--tta",
                       help="test-time augmentation: average each image's scores over the flips and 90-degree turns "
                            "the model was trained on (8 passes for square tiles, 4 for other tiles or a model trained "
                            "with --no-quarter-turns; that many times the model's work), each moved back by the "
                            "model's label offset; refused for a model trained with --no-flips")
    precision: str = option("auto", flag="--precision", choices=("auto", "float32", "mixed_float16", "mixed_bfloat16"),
                            help="the arithmetic of the model's forward pass, for the networks segpipe builds (weights "
                                 "and scores stay float32): mixed_bfloat16 (CPUs with AVX512_BF16 or AMX, GPUs of "
                                 "compute capability 8.0 or newer), mixed_float16 (GPUs with tensor cores; slow on "
                                 "CPUs), float32; auto: bfloat16 where the actors' hardware runs it fast, float16 on "
                                 "older GPUs, float32 otherwise and for imported and K-means models (a resumed run "
                                 "keeps the precision it began in)")
    tiling: str = option("auto", flag="--tiling", choices=("auto", "windows", "resize", "whole"),
                         help="how images meet the model: windows (overlapping windows of the model's tile at the "
                              "image's own resolution, blended), resize (each image resized to the tile and the scores "
                              "back), whole (one call on the whole image, padded; it must fit in memory); auto: windows "
                              "for a model trained with scale: native, resize otherwise")
    overlap: float = option(0.25, flag="--overlap", help="with windows: the least overlap of neighbouring windows, a "
                                                         "fraction of the tile (0 to 0.9)")
    window: int | None = option(None, flag="--window", default_text="the model's tile",
                                help="with windows: the window's side in pixels; the U-Net, fully convolutional, runs "
                                     "any multiple of 2**depth (e.g. a model of 512-px tiles trained on 128-px patches, "
                                     "in 128-px windows)")
    whole_max_pixels: int = option(16 * 2**20, flag="--whole-max-pixels",
                                   help="with whole: the largest padded image (width x height) run in one call; "
                                        "larger ones run in windows instead, since the activations grow with the "
                                        "image (about 300 bytes per pixel for a U-Net of 16 base filters)")
    blend: str = option("gaussian", flag="--blend", choices=("gaussian", "constant"),
                        help="with windows: how overlapping scores are weighted (gaussian: sigma = tile/8, the "
                             "window's centre counts most; constant: a plain mean)")
    max_image_pixels: int = option(16384 * 16384, flag="--max-image-pixels",
                                   help="largest image (width x height, read from its header before decoding) to "
                                        "segment; larger ones become image_too_large error rows")
    tiff_page: int | None = option(None, flag="--tiff-page", default_text="none: multi-page TIFFs are error rows",
                                   help="the page (0-based) to segment of each multi-page TIFF")
    objects: ObjectsConfig = option(default_factory=ObjectsConfig, help="objects and instance metrics")
    labels: LabelsConfig = option(default_factory=LabelsConfig, help="how the input's masks store their classes")
    coco: CocoConfig = option(default_factory=CocoConfig, help="a COCO annotations file as the input")
    actors: ActorConfig = option(default_factory=ActorConfig, help="the predictor actor pool")
    storage: StorageConfig = option(default_factory=StorageConfig, help="object storage access")

    ALIASES: ClassVar[dict[str, str]] = {"objects": "objects.enabled"}  # objects: true

    def __post_init__(self) -> None:
        for name in ("input", "model", "output"):
            if not getattr(self, name):
                raise ConfigError(f"'{name}' is not set; give --{name} URL or '{name}: URL' in the config file")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size={self.batch_size}: must be at least 1")
        check_reading(self.folder_shard_size, self.stage_cpus)
        if self.progress_seconds <= 0:
            raise ConfigError(f"progress_seconds={self.progress_seconds}: must be positive (seconds between progress lines)")
        check_choices(self)
        if not 0 <= self.overlap <= 0.9:
            raise ConfigError(f"overlap={self.overlap}: a fraction of the tile from 0 to 0.9, e.g. 0.25")
        if self.window is not None and self.window < 1:
            raise ConfigError(f"window={self.window}: the window's side in pixels, or unset for the model's tile")
        if self.whole_max_pixels < 1:
            raise ConfigError(f"whole_max_pixels={self.whole_max_pixels}: the most pixels one whole-image call may take")
        if self.tiff_page is not None and self.tiff_page < 0:
            raise ConfigError(f"tiff_page={self.tiff_page}: a 0-based page number, or unset")
        if self.max_image_pixels < 1:
            raise ConfigError(f"max_image_pixels={self.max_image_pixels}: the most pixels (width x height) an image "
                              "may have, e.g. 268435456 (16384 x 16384)")

    def to_public_dict(self) -> dict[str, Any]:
        """Return the config as plain data with credentials redacted (for run.json and logs)."""
        return public_dict(self)
