"""The configuration of a training run, grouped as its YAML reads: the model, its augmentation,
the optimisation and the data stage.

::

    data: s3://labelled/shards/
    epochs: 50
    model: {architecture: unet, input_size: 256, depth: 4, base_filters: 32}
    augment: {flips: true, quarter_turns: false, label_offset_rows: -0.5}
    optim: {batch_size: 64, learning_rate: 0.001, lr_schedule: cosine}
    loader: {patch_size: 128, passes_per_epoch: 4}

The flat keys of earlier versions (``batch_size``, ``flips``, ``augment: false``, ...) still work:
:data:`TrainConfig.ALIASES` reads each as its grouped key.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from pipeline.config.loading import ConfigError, check_choices, option, public_dict
from pipeline.config.runs import CocoConfig, LabelsConfig, StorageConfig

DEFAULT_CLASSES = 3  # a model's classes when nothing says: neither --num-classes, a label map nor a plan
PLANNED = "planned from the data"  # the default text of keys the training plan sets (pipeline.train.plan)
MAX_LABEL_OFFSET = 4.0  # pixels; a larger label offset is a unit mistake, not an annotation habit


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The model to train: its architecture, square tiles of ``input_size`` pixels, its classes and encoder."""

    architecture: str = option("unet", flag="--architecture",
                               help="unet; unet-vgg16 (a U-Net decoder on VGG16's convolutional blocks); fcn8 (FCN-8s "
                                    "on VGG16); segnet (VGG16-style encoder with batch norm, decoder upsampling with the "
                                    "encoder's pooling indices); deeplabv3plus (ASPP at rates 6/12/18 plus image pooling "
                                    "and a low-level skip, on MobileNetV2 at output stride 16); kmeans (the classical "
                                    "baseline: K-means on pixel features, each cluster mapped to its majority class)")
    input_size: int = option(0, flag="--input-size", default_text=PLANNED,
                             help="square tile size in pixels, a multiple of 2**depth (unet), 32 (VGG16-based) or 16 "
                                  "(deeplabv3plus); planned: several objects across, at most the images' size")
    channels: int = option(0, flag="--channels", choices=(1, 3), default_text=PLANNED,
                           help="image channels the model takes; planned: 1 where most images are grey, else 3")
    num_classes: int = option(0, flag="--num-classes", default_text="the label map's, else the masks'",
                              help="classes including background; unset, the training data's label map (labels.* or "
                                   "its labels.yaml, or COCO's categories) decides, else the classes its masks hold")
    depth: int = option(0, flag="--depth", default_text=PLANNED,
                        help="U-Net levels (unet); planned: the bottom level's cells about an object across")
    base_filters: int = option(0, flag="--base-filters", default_text="16 for unet (32 on GPUs), 64 for the VGG16-based",
                               help="filters of the first level, doubled at each level (VGG16-based: its first block; "
                                    "64 is VGG16 itself, which pretrained weights need)")
    batch_norm: bool = option(True, help="batch normalisation after each convolution (unet; unet-vgg16's decoder)")
    dropout: float = option(0.0, help="dropout rate at the bottom of the U (unet, unet-vgg16) or after fc6/fc7 (fcn8)")
    fc_filters: int = option(1024, help="filters of fcn8's fc6 (7x7) and fc7 (1x1) convolutions (the paper: 4096)")
    width: float = option(1.0, help="deeplabv3plus: MobileNetV2's width multiplier (ImageNet weights exist for "
                                    "0.35, 0.5, 0.75, 1, 1.3, 1.4)")
    aspp_filters: int = option(256, help="deeplabv3plus: filters of the ASPP branches and the decoder")
    encoder_weights: str = option("none", flag="--encoder-weights",
                                  help="the encoder's initial weights (VGG16-based and deeplabv3plus): none (random), "
                                       "imagenet (Keras' download, where the network allows), or the URL of a Keras "
                                       "weights file of the encoder (.weights.h5 or .h5, local or s3://); the encoder's "
                                       "input preprocessing is then recorded in model.json and applied")
    encoder_trainable_after: int = option(0, flag="--encoder-trainable-after",
                                          help="keep the encoder frozen for the first N epochs (0: trained from the start)")
    clusters: int = option(8, help="kmeans: clusters")
    features: str = option("colour", help="kmeans: pixel features, comma-separated from colour, position, texture "
                                          "(local mean and spread of intensity over 7x7 pixels)")
    output_activation: str = option("softmax", choices=("softmax", "sigmoid"),
                                    help="softmax, or sigmoid for two classes (one output channel)")
    class_names: str = option("", default_text="background, class_1, ...", help="comma-separated class names")
    target: str = option("", choices=("classes", "borders"), default_text=PLANNED,
                         help="what the network learns: classes; or borders, the classes plus the borders where one "
                              "object meets another as a class of their own, from the training data's instance labels "
                              "(segmentation folds them back into the objects' classes, and --objects grows each "
                              "predicted interior back over its object); planned: borders where the training data "
                              "holds instance labels")
    border_width: int = option(0, default_text=PLANNED,
                               help="border targets: an object's pixels within this many pixels of another object are "
                                    "border; planned: 0.15 of the objects' median diameter, 1 to 4")

    def __post_init__(self) -> None:
        check_choices(self, "model.")
        # What needs the architecture registry (shapes, encoders, features) is checked by
        # pipeline.model.architectures.check_model_config, before any training work.
        names = self.names()
        if self.num_classes and len(names) != self.num_classes:
            raise ConfigError(f"model.class_names gives {len(names)} names for model.num_classes={self.num_classes}")
        if self.target == "borders" and (self.architecture == "kmeans" or self.output_activation != "softmax"):
            raise ConfigError(f"model.target=borders: {'kmeans' if self.architecture == 'kmeans' else 'a sigmoid output'} "
                              "cannot predict borders; use model.target=classes, or a softmax network")
        if self.border_width < 0:
            raise ConfigError(f"model.border_width={self.border_width}: pixels, 0 (planned) or more")
        if self.encoder_trainable_after < 0:
            raise ConfigError(f"model.encoder_trainable_after={self.encoder_trainable_after}: epochs, 0 or more")
        if self.architecture == "kmeans" and not 2 <= self.clusters <= 256:
            raise ConfigError(f"model.clusters={self.clusters}: 2 to 256")

    def feature_list(self) -> tuple[str, ...]:
        """Return kmeans' pixel features."""
        return tuple(name.strip() for name in self.features.split(",") if name.strip())

    def names(self) -> tuple[str, ...]:
        """Return the class names: ``class_names`` split at commas, or background, class_1, ..."""
        if self.class_names:
            return tuple(name.strip() for name in self.class_names.split(","))
        return ("background", *(f"class_{index}" for index in range(1, self.class_count())))

    def class_count(self) -> int:
        """Return the classes: ``num_classes``, else as many as ``class_names`` names, else :data:`DEFAULT_CLASSES`."""
        if self.num_classes:
            return self.num_classes
        return len(self.class_names.split(",")) if self.class_names else DEFAULT_CLASSES


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """How each training pair is augmented (docs/training.md explains when each helps)."""

    enabled: bool = option(True, flag="--no-augment", help="augment at all (flips, turns, crops, warps, jitter)")
    flips: bool = option(True, flag="--no-flips",
                         help="flips and 90-degree turns; off for labels that sit off the objects' centre in a fixed "
                              "direction, which flips would teach the model to ignore (the rest of the augmentation stays)")
    quarter_turns: bool = option(True, flag="--no-quarter-turns",
                                 help="with flips, 90-degree turns too; off: flips (left-right, up-down) and half turns "
                                      "only, so rows stay rows (for labels whose offset differs between the axes)")
    label_offset_rows: float = option(0.0, flag="--label-offset-rows",
                                      help="where the labels sit relative to the objects they mark, in pixels down "
                                           "(negative: up), e.g. -0.5; flips and turns then move each mask back to it")
    label_offset_cols: float = option(0.0, flag="--label-offset-cols", help="the same, in pixels right (negative: left)")
    crop: bool = option(False, flag="--crop",
                        help="random crops (80-100% of each side, the same window for image and mask) resized to the tile")
    invert: bool | None = option(None, flag="--invert", default_text=PLANNED,
                                 help="invert the intensities of half the training images (1 - value, after normalisation), "
                                      "so bright-on-dark objects are learnt as dark-on-bright too; planned: on where the "
                                      "data mixes both")
    warp: bool = option(False, flag="--warp",
                        help="a random warp (rotation by any angle, zoom x0.9-1.1, shift, elastic deformation; mirrored "
                             "borders) instead of flips and 90-degree turns")

    def __post_init__(self) -> None:
        for name in ("label_offset_rows", "label_offset_cols"):
            if not abs(getattr(self, name)) <= MAX_LABEL_OFFSET:
                raise ConfigError(f"augment.{name}={getattr(self, name)}: the labels' offset from their objects in "
                                  f"pixels, at most {MAX_LABEL_OFFSET:g} either way (e.g. -0.5: half a pixel up or left)")

    @property
    def label_offset(self) -> tuple[float, float]:
        """Return ``(rows, columns)``: where the labels sit relative to their objects."""
        return self.label_offset_rows, self.label_offset_cols


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """The optimisation: batch, loss, learning rate and its schedule, weight averaging, compilation."""

    batch_size: int = option(0, flag="--batch-size", default_text=PLANNED,
                             help="global batch, split across the workers; planned from the tile and the hardware")
    loss: str = option("", flag="--loss", choices=("ce", "dice", "ce+dice"), default_text=PLANNED,
                       help="cross-entropy, soft Dice, or their sum; planned: ce+dice where a class is rare, else ce")
    learning_rate: float = option(1e-3, flag="--learning-rate", help="Adam's learning rate")
    lr_schedule: str = option("", flag="--lr-schedule", choices=("constant", "cosine"), default_text="cosine",
                              help="constant, or cosine decay towards 0 over the run: over the time budget "
                                   "(--max-minutes, set every step), else over the epochs (set per epoch)")
    ema: float = option(0.0, flag="--ema",
                        help="validate, keep and save a moving average of the weights with this momentum per step, "
                             "e.g. 0.99 (0: the weights as trained)")
    xla: bool | None = option(None, flag="--no-xla", default_text=PLANNED,
                              help="compile the forward and backward pass with XLA (about 1.5x faster on CPU in float32); "
                                   "planned: on, off under mixed_bfloat16 on CPU (XLA's CPU code gains nothing from bfloat16)")
    precision: str = option("", flag="--precision", choices=("float32", "mixed_bfloat16"), default_text=PLANNED,
                            help="the training step's arithmetic: float32, or mixed_bfloat16 (bfloat16 compute, "
                                 "float32 weights and optimizer); planned: mixed_bfloat16 for a U-Net on CPUs with "
                                 "AVX512_BF16 or AMX (about 1.4x the windows per second at the same quality), else "
                                 "float32; the artifact is float32 either way")

    def __post_init__(self) -> None:
        if self.batch_size < 0:
            raise ConfigError(f"optim.batch_size={self.batch_size}: at least 1 (0: planned)")
        check_choices(self, "optim.")
        if self.learning_rate <= 0:
            raise ConfigError(f"optim.learning_rate={self.learning_rate}: must be positive")
        if not 0 <= self.ema < 1:
            raise ConfigError(f"optim.ema={self.ema}: a momentum in [0, 1) such as 0.99 (0 turns the average off)")


@dataclasses.dataclass(frozen=True)
class LoaderConfig:
    """The data stage: what a training sample is, how often the data is passed, what it keeps."""

    patch_size: int = option(0, flag="--patch-size",
                             help="train on random windows of this many pixels square cut from the tiles at their "
                                  "scale: more steps for the same compute on large tiles (0: whole tiles)")
    passes_per_epoch: int = option(1, flag="--passes-per-epoch",
                                   help="with steps_per_epoch 0: passes over the training data per epoch, i.e. between "
                                        "validations and checkpoints (more for small data sets); with steps: passes per "
                                        "read of the data (planned where a pass is shorter than an epoch)")
    steps_per_epoch: int | None = option(None, flag="--steps-per-epoch", default_text=PLANNED,
                                         help="training steps per epoch (between validations and checkpoints), the data "
                                              "streamed on across epochs; 0: an epoch is passes_per_epoch passes over "
                                              "the data; planned: about one pass, 25 to 250 steps")
    normalization: str = option("", choices=("scale", "minmax"), default_text=PLANNED,
                                help="scale: divide by the type's maximum; minmax: each image's range to [0, 1]; "
                                     "recorded in model.json so segmentation applies the same; planned: minmax where "
                                     "intensities or bit depths vary across images, else scale")
    folder_shard_size: int = option(256, help="images per shard when the data is a folder")
    stage_cpus: float = option(0.25, help="CPU share of each data-stage task")
    decoded_cache_mb: float = option(256.0, help="MB of decoded samples each data-stage process keeps for the next "
                                                 "pass (0 decodes every time)")

    def __post_init__(self) -> None:
        if self.passes_per_epoch < 1:
            raise ConfigError(f"loader.passes_per_epoch={self.passes_per_epoch}: at least 1")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 0:
            raise ConfigError(f"loader.steps_per_epoch={self.steps_per_epoch}: steps, 0 for passes over the data")
        check_choices(self, "loader.")
        if self.decoded_cache_mb < 0:
            raise ConfigError(f"loader.decoded_cache_mb={self.decoded_cache_mb}: MB of decoded samples to keep per "
                              "data-stage process, 0 or more (0 decodes every time)")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs; recorded (credentials redacted) in the model artifact."""

    GROUP_ALIASES: ClassVar[dict[str, str]] = {"unet": "model"}  # the model's group was named unet before
    ALIASES: ClassVar[dict[str, str]] = {
        "augment": "augment.enabled", **{k: f"augment.{k}" for k in (
            "flips", "invert", "quarter_turns", "label_offset_rows", "label_offset_cols", "crop", "warp")},
        **{k: f"optim.{k}" for k in ("batch_size", "loss", "learning_rate", "lr_schedule", "ema", "xla", "precision")},
        **{k: f"loader.{k}" for k in ("patch_size", "passes_per_epoch", "steps_per_epoch", "normalization", "folder_shard_size",
                                      "stage_cpus", "decoded_cache_mb")},
    }

    data: str = option("", flag="--data", default_text="required",
                       help="URL of the labelled training shards (or a COCO annotations .json)")
    output: str = option("", flag="--output", default_text="required",
                         help="URL of the model artifact to write (checkpoints go under it)")
    val_data: str | None = option(None, flag="--val-data", help="URL of labelled validation shards, validated every epoch")
    val_fraction: float | None = option(None, flag="--val-fraction", default_text=PLANNED,
                                        help="without --val-data: this share of the training images (chosen by a hash "
                                             "of each key, so the same ones every run and resume) is held out and "
                                             "validated every epoch instead of trained on (0: none); planned: 0.2 "
                                             "from 10 images")
    address: str | None = option(None, flag="--address", default_text="$RAY_ADDRESS, else a local Ray",
                                 help="Ray cluster to run on")
    num_workers: int = option(0, flag="--num-workers", default_text=PLANNED,
                              help="Ray Train workers; planned: one per GPU, else one per node")
    use_gpu: bool | None = option(None, flag="--use-gpu", default_text=PLANNED,
                                  help="one GPU per worker; planned: where the cluster has GPUs")
    cpus_per_worker: float | None = option(None, flag="--cpus-per-worker", default_text="automatic",
                                           help="CPUs per worker; automatic: the largest node's CPUs less a share for "
                                                "the data stage, divided among the workers (at most 4 each)")
    epochs: int = option(0, flag="--epochs", default_text="no limit with a time budget",
                         help="epochs to train (0: as many as --max-minutes allows)")
    max_minutes: float = option(0.0, flag="--max-minutes", default_text="planned without --epochs",
                                help="the time budget: training (validation included) stops within a step of this many "
                                     "minutes, resumes included, and the learning rate's cosine ends with it; with "
                                     "neither --epochs nor --max-minutes the plan sets it from the data's size; the "
                                     "best epoch becomes the artifact")
    plan_only: bool = option(False, flag="--plan-only",
                             help="measure the data, print the training plan (each choice and its reason) and stop")
    seed: int = option(0, help="random seed of the weights and the augmentation")
    scale: str = option("", flag="--scale", choices=("resize", "native"), default_text=PLANNED,
                        help="resize: each image resized to the tile, as segmentation's resize then does; native: "
                             "random windows of the tile cut from each image at its own resolution (as many per pass "
                             "as it holds tiles of area; images smaller than the tile padded, the padding left out of "
                             "the loss), which segmentation then runs in windows; recorded in model.json; planned: "
                             "native where the images' sizes vary or exceed the tile")
    resume: bool = option(True, flag="--resume",
                          help="continue from the latest checkpoint under the output (false refuses an output that "
                               "holds one)")
    model: ModelConfig = option(default_factory=ModelConfig, help="the model: architecture, tile, classes, encoder")
    augment: AugmentConfig = option(default_factory=AugmentConfig, help="the augmentation")
    optim: OptimConfig = option(default_factory=OptimConfig, help="the optimisation")
    loader: LoaderConfig = option(default_factory=LoaderConfig, help="the data stage")
    labels: LabelsConfig = option(default_factory=LabelsConfig, help="how the training data's masks store their classes")
    coco: CocoConfig = option(default_factory=CocoConfig, help="a COCO annotations file as the training data")
    storage: StorageConfig = option(default_factory=StorageConfig, help="object storage access")

    def __post_init__(self) -> None:
        for name in ("data", "output"):
            if not getattr(self, name):
                raise ConfigError(f"'{name}' is not set; give --{name.replace('_', '-')} URL")
        if self.num_workers < 0:
            raise ConfigError(f"num_workers={self.num_workers}: at least 1 (0: planned)")
        if self.epochs < 0:
            raise ConfigError(f"epochs={self.epochs}: at least 1 (0: as many as the time budget allows)")
        if self.val_fraction is not None and not 0 <= self.val_fraction < 1:
            raise ConfigError(f"val_fraction={self.val_fraction}: a share of the training images in [0, 1), e.g. 0.2")
        if self.max_minutes < 0:
            raise ConfigError(f"max_minutes={self.max_minutes}: minutes of training, 0 for no limit")
        batch = self.optim.batch_size
        if batch and self.num_workers and (batch < self.num_workers or batch % self.num_workers):
            raise ConfigError(f"optim.batch_size={batch} is the global batch: it must be a multiple of "
                              f"num_workers={self.num_workers}")
        check_choices(self)
        if self.scale == "native" and (self.loader.patch_size or self.augment.crop):
            raise ConfigError("scale=native trains on windows of the tile at the images' own resolution: leave "
                              "loader.patch_size at 0 and augment.crop off (the window already is the patch)")

    def to_public_dict(self) -> dict[str, Any]:
        """Return the config as plain data with credentials redacted."""
        return public_dict(self)
