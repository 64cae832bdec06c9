"""The configurations of the commands around runs: sample data, report, inspect, export and model import."""

from __future__ import annotations

import dataclasses

from pipeline.config.loading import ConfigError, check_choices, option
from pipeline.config.runs import CocoConfig, LabelsConfig, StorageConfig, check_reading


@dataclasses.dataclass(frozen=True)
class SampleDataConfig:
    """Synthetic labelled shards for the demo, tests and benchmarks."""

    output: str = option("", flag="--output", default_text="required", help="URL to write the shards under")
    num_images: int = option(64, flag="--num-images", help="images to write")
    num_shards: int = option(4, flag="--num-shards", help="shards to split them into")
    num_classes: int = option(3, flag="--num-classes", help="classes including background (2..8)")
    min_size: int = option(48, flag="--min-size", help="smallest image side")
    max_size: int = option(96, flag="--max-size", help="largest image side")
    seed: int = option(0, flag="--seed", help="random seed")
    layout: str = option("tar", flag="--layout", choices=("tar", "folder", "parquet", "coco"),
                         help="input shape to write (coco: the images and an annotations.json of their objects as RLE)")
    scale: str = option("resize", flag="--scale", choices=("resize", "native"),
                        help="resize: objects sized with the image (5-20% of its side); native: objects of a fixed "
                             "pixel size (--object-size), as many as the image's area holds, for large images")
    object_size: float = option(16.0, flag="--object-size", help="with --scale native: objects' typical width in pixels")
    instances: bool = option(False, flag="--instances",
                             help="also write each image's objects as a 16-bit instance label image (<key>.instances.png, "
                                  "instances/<key>.png or an instances column)")
    storage: StorageConfig = option(default_factory=StorageConfig, help="object storage access")

    def __post_init__(self) -> None:
        check_choices(self)
        if not 4 <= self.object_size <= 512:
            raise ConfigError(f"object_size={self.object_size}: objects' width in pixels, 4 to 512")
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

    run: str = option("", positional=True, default_text="required",
                      help="URL of a segmentation run's output (what segment --output wrote)")
    baseline: str | None = option(None, flag="--baseline", help="URL of an earlier run to compare with")
    output: str | None = option(None, flag="--output", default_text="<run>/report",
                                help="URL to write summary.json and report.html under")
    worst: int = option(12, flag="--worst", help="how many worst images to show as overlays (0..200)")
    partial: bool = option(False, flag="--partial",
                           help="report on the committed shards of an unfinished run instead of refusing")
    bootstrap_resamples: int = option(1000, help="bootstrap resamples for the 95% intervals (at least 100)")
    seed: int = option(0, help="seed of the bootstrap")
    storage: StorageConfig = option(default_factory=StorageConfig, help="object storage access")

    def __post_init__(self) -> None:
        if not self.run:
            raise ConfigError("'run' is not set; give the URL of a segmentation run's output")
        if not 0 <= self.worst <= 200:
            raise ConfigError(f"worst={self.worst}: show 0..200 worst images")
        if self.bootstrap_resamples < 100:
            raise ConfigError(f"bootstrap_resamples={self.bootstrap_resamples}: at least 100")


@dataclasses.dataclass(frozen=True)
class InspectConfig:
    """A data set's fingerprint: ``segpipe inspect DATA``."""

    data: str = option("", positional=True, default_text="required",
                       help="URL of the data: tar shards, an images/ folder, Parquet files or a COCO annotations .json")
    output: str = option("fingerprint.json", flag="--output", help="URL of the fingerprint.json to write")
    max_images: int = option(2000, flag="--max-images",
                             help="read about this many images at most: a larger archive is sampled by shards spread "
                                  "evenly over it (the fingerprint says so)")
    address: str | None = option(None, flag="--address", default_text="$RAY_ADDRESS, else a local Ray",
                                 help="Ray cluster to run on")
    folder_shard_size: int = option(256, help="images per shard when the data is a folder or a COCO file")
    stage_cpus: float = option(0.5, help="CPU share of each read-and-measure task")
    labels: LabelsConfig = option(default_factory=LabelsConfig, help="how the data's masks store their classes")
    coco: CocoConfig = option(default_factory=CocoConfig, help="a COCO annotations file as the data")
    storage: StorageConfig = option(default_factory=StorageConfig, help="object storage access")

    def __post_init__(self) -> None:
        if not self.data:
            raise ConfigError("'data' is not set; give the URL of the data to inspect")
        if self.max_images < 1:
            raise ConfigError(f"max_images={self.max_images}: at least 1")
        check_reading(self.folder_shard_size, self.stage_cpus)


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """A run's predicted objects written in another tool's format."""

    run: str = option("", positional=True, default_text="required",
                      help="URL of a segmentation run's output, segmented with --objects")
    format: str = option("coco", flag="--format", choices=("coco",),
                         help="coco: a COCO results file (RLE segmentations, category ids, scores) for COCOeval")
    output: str = option("", flag="--output", default_text="required", help="URL of the file to write")
    partial: bool = option(False, flag="--partial", help="export the committed shards of an unfinished run")
    storage: StorageConfig = option(default_factory=StorageConfig, help="object storage access")

    def __post_init__(self) -> None:
        for name in ("run", "output"):
            if not getattr(self, name):
                raise ConfigError(f"'{name}' is not set; give the {'run URL' if name == 'run' else '--output FILE'}")
        check_choices(self)


@dataclasses.dataclass(frozen=True)
class ImportConfig:
    """A Keras model trained elsewhere, made into an artifact ``segpipe segment`` runs (``segpipe model import``)."""

    keras: str = option("", flag="--keras", default_text="required", help="URL of the .keras file to import")
    output: str = option("", flag="--output", default_text="required", help="URL of the model artifact to write")
    classes: str = option("", flag="--classes", default_text="required",
                          help="comma-separated class names, background first: one per output channel (two for a "
                               "single sigmoid channel)")
    normalization: str = option("scale", flag="--normalization", choices=("scale", "minmax"),
                                help="how images become the model's input in [0, 1]: scale (divide by the type's "
                                     "maximum) or minmax (each image's range)")
    preprocessing: str = option("none", flag="--preprocessing", choices=("none", "caffe", "tf", "torch"),
                                help="what the model expects after that: none, caffe (VGG/ResNet: BGR, 0-255 less the "
                                     "ImageNet mean), tf ([-1, 1]) or torch (ImageNet mean and standard deviation)")
    activation: str = option("softmax", flag="--activation", choices=("softmax", "sigmoid", "logits"),
                             help="what the model's last layer gives: softmax or sigmoid probabilities, or logits (the "
                                  "predictor then applies softmax, or sigmoid to a single channel)")
    tile: int = option(0, flag="--tile", default_text="the model's input size; 256 if it takes any size",
                       help="tile (and window) side in pixels")
    multiple_of: int = option(32, flag="--multiple-of",
                              help="for a model that takes any size: what its input sides must be multiples of")
    scale: str = option("", flag="--scale", default_text="resize for a fixed input size, native for any size",
                        choices=("resize", "native"),
                        help="resize: images resized to the tile; native: windows of the tile at the images' resolution")
    storage: StorageConfig = option(default_factory=StorageConfig, help="object storage access")

    def __post_init__(self) -> None:
        for name in ("keras", "output", "classes"):
            if not getattr(self, name):
                raise ConfigError(f"'{name}' is not set; give --{name} " + ("NAMES" if name == "classes" else "URL"))
        if len(self.class_names()) < 2:
            raise ConfigError(f"classes={self.classes!r}: background plus at least one class, comma-separated")
        if self.tile < 0 or self.multiple_of < 1:
            raise ConfigError(f"tile={self.tile}, multiple_of={self.multiple_of}: positive numbers of pixels")
        check_choices(self)

    def class_names(self) -> tuple[str, ...]:
        """Return the class names."""
        return tuple(name.strip() for name in self.classes.split(",") if name.strip())
