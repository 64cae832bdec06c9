"""The training plan: what to train and how, chosen from the data's fingerprint and the cluster.

A user who gives no model options gets a model configured for their data, as nnU-Net configures
itself: every key left at its "planned" default (``docs/configuration.md``) is set here by a
rule that reads the fingerprint (:mod:`pipeline.fingerprint`) and the hardware, and each choice
carries its reason. A key the user gave keeps its value and is listed as given. The plan is
printed, recorded in model.json (``plan``), and ``segpipe train --plan-only`` stops after it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from pipeline import objects
from pipeline.config import DEFAULT_CLASSES, TrainConfig

GREY_SHARE = 0.75  # one channel where at least this share of the images is grey
RARE_CLASS = 0.2  # a class under this share of the labelled pixels is rare: Dice joins the loss
VALIDATION_SHARE = 0.2  # held out without --val-data ...
MIN_IMAGES_TO_SPLIT = 10  # ... from this many images
OBJECTS_PER_TILE = 6  # a tile spans about this many objects' diameters
TILE_CAP = {False: 128, True: 256}  # the largest planned tile on CPU and on GPU
PIXELS_PER_STEP = {False: 8 * 128 * 128, True: 32 * 256 * 256}  # a step's pixels: batch x tile^2
FILTERS = {False: 16, True: 32}  # a planned U-Net's first-level filters
MEGAPIXELS_PER_MINUTE = {False: 2.5, True: 25.0}  # the planned budget: a minute per this much training data ...
BUDGET_MINUTES = (5, 240)  # ... within these bounds
EPOCH_STEPS = (25, 250)  # a planned epoch: about a pass over the data, within these bounds
MIN_PASS_STEPS = 4  # a planned batch leaves a pass over a small data set at least this many steps
BFLOAT16_TRAINING = "unet"  # the architecture whose bfloat16 training was measured (docs/benchmarks.md)


@dataclasses.dataclass(frozen=True)
class Hardware:
    """What the cluster offers training: GPUs, nodes with CPUs."""

    gpus: int
    nodes: int
    bfloat16: str = ""  # the bfloat16 flag every CPU node has (AVX512_BF16, AMX), "" where one has none

    @classmethod
    def of_cluster(cls) -> Hardware:
        """Return the connected Ray cluster's hardware."""
        import ray

        from pipeline.cluster import on_every_cpu_node
        from pipeline.model.precision import cpu_bfloat16_flag

        alive = [node for node in ray.nodes() if node.get("Alive")]
        flags = on_every_cpu_node(cpu_bfloat16_flag)
        return cls(gpus=int(ray.cluster_resources().get("GPU", 0)),
                   nodes=max(1, sum(node["Resources"].get("CPU", 0) >= 1 for node in alive)),
                   bfloat16=min(flags) if flags and all(flags) else "")


@dataclasses.dataclass(frozen=True)
class Choice:
    """One key of the plan: its value and why (or that the user gave it)."""

    key: str
    value: Any
    reason: str
    given: bool = False

    def line(self) -> str:
        """Return the choice as the plan prints it."""
        shown = str(self.value).lower() if isinstance(self.value, bool) else self.value
        return f"{self.key:<24} {shown!s:<10} {'given' if self.given else self.reason}"


@dataclasses.dataclass(frozen=True)
class TrainingPlan:
    """The choices of a training run, in the order they were made."""

    choices: tuple[Choice, ...]

    def lines(self) -> list[str]:
        """Return the plan as printed: one line per key, its value and reason."""
        return ["training plan (each key planned from the data unless given):", *(f"  {c.line()}" for c in self.choices)]

    def brief_lines(self) -> list[str]:
        """Return the plan as a run logs it: the planned keys, each with its value and reason, and the
        given ones counted (``--plan-only``, ``-v`` and model.json list every key)."""
        planned = [choice for choice in self.choices if not choice.given]
        head = f"training plan: {len(planned)} key(s) planned from the data, {len(self.choices) - len(planned)} given"
        return [head + (":" if planned else ""), *(f"  {choice.line()}" for choice in planned)]

    def to_json(self) -> list[dict[str, Any]]:
        """Return the plan as recorded in model.json."""
        return [dataclasses.asdict(choice) for choice in self.choices]

    def value(self, key: str) -> Any:
        """Return the planned (or given) value of ``key``."""
        return next(choice.value for choice in self.choices if choice.key == key)


# The keys the plan sets, with the value that means "not given, plan it".
PLANNED_KEYS = {
    "model.num_classes": 0, "use_gpu": None, "num_workers": 0, "model.channels": 0, "loader.normalization": "", "model.input_size": 0,
    "model.depth": 0, "model.base_filters": 0, "scale": "", "optim.batch_size": 0, "optim.loss": "",
    "augment.invert": None, "val_fraction": None, "optim.lr_schedule": "", "max_minutes": 0.0,
    "loader.steps_per_epoch": None, "model.target": "", "model.border_width": 0, "optim.precision": "", "optim.xla": None,
}
NEEDS_NO_DATA = {"use_gpu", "num_workers", "model.base_filters", "optim.lr_schedule", "optim.precision", "optim.xla"}


def lookup(cfg: Any, key: str) -> Any:
    """Return the value of a dotted ``key`` of a config."""
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def replaced(cfg: Any, key: str, value: Any) -> Any:
    """Return the config with a dotted ``key`` set to ``value``."""
    head, _, rest = key.partition(".")
    if not rest:
        return dataclasses.replace(cfg, **{head: value})
    return dataclasses.replace(cfg, **{head: replaced(getattr(cfg, head), rest, value)})


def needs_fingerprint(cfg: TrainConfig) -> bool:
    """Return whether a key that the data decides is left to the plan."""
    unset = {key for key, planned in PLANNED_KEYS.items() if lookup(cfg, key) == planned}
    if cfg.epochs:
        unset.discard("max_minutes")
    if cfg.val_data:
        unset.discard("val_fraction")
    return bool(unset - NEEDS_NO_DATA)


def power_of_two_at_most(value: float) -> int:
    """Return the largest power of two not above ``value`` (at least 1)."""
    return 2 ** max(0, math.floor(math.log2(max(1.0, value))))


class Planner:
    """Makes the choices of one plan, in order; each rule sees the choices made before it."""

    def __init__(self, cfg: TrainConfig, fingerprint: dict[str, Any] | None, hardware: Hardware,
                 labels: tuple[int, str] | None = None) -> None:
        self.cfg, self.fingerprint, self.hardware, self.labels = cfg, fingerprint or {}, hardware, labels
        self.choices: list[Choice] = []

    def decide(self, key: str, rule: Any) -> Any:
        """Keep ``key``'s given value, or set it by ``rule() -> (value, reason)``; return the value."""
        current = lookup(self.cfg, key)
        if current != PLANNED_KEYS[key]:
            self.choices.append(Choice(key, current, "", given=True))
            return current
        value, reason = rule()
        self.cfg = replaced(self.cfg, key, value)
        self.choices.append(Choice(key, value, reason))
        return value

    def gpu(self) -> bool:
        return bool(self.cfg.use_gpu)

    def plan(self) -> tuple[TrainConfig, TrainingPlan]:
        """Return the config with every planned key set, and the plan."""
        self.decide("model.num_classes", self.classes)
        self.decide("use_gpu", self.use_gpu)
        self.decide("num_workers", self.workers)
        self.decide("model.channels", self.channels)
        self.decide("loader.normalization", self.normalization)
        self.decide("model.input_size", self.tile)
        if self.cfg.model.architecture == "unet":
            self.decide("model.depth", self.depth)
            self.decide("model.base_filters", lambda: (FILTERS[self.gpu()], "GPU" if self.gpu() else "CPU training"))
        else:
            self.decide("model.depth", lambda: (3, f"unused by {self.cfg.model.architecture}"))
        self.decide("scale", self.scale)
        self.decide("model.target", self.target)
        self.decide("model.border_width", self.border_width)
        self.decide("optim.batch_size", self.batch)
        self.decide("optim.loss", self.loss)
        self.decide("optim.precision", self.precision)
        self.decide("optim.xla", self.xla)
        self.decide("augment.invert", self.invert)
        self.decide("val_fraction", self.validation)
        self.decide("optim.lr_schedule", lambda: ("cosine", "decays to 0 as the run ends"))
        if not self.cfg.epochs:
            self.decide("max_minutes", self.budget)
        self.decide("loader.steps_per_epoch", self.epoch_steps)
        return self.cfg, TrainingPlan(tuple(self.choices))

    def classes(self) -> tuple[int, str]:
        if self.labels:
            return self.labels[0], f"the label map ({self.labels[1]})"
        if self.cfg.model.class_names:
            return self.cfg.model.class_count(), "model.class_names"
        measured = len(self.fingerprint.get("classes") or [])
        if measured:
            return max(2, measured), f"the masks hold classes 0..{measured - 1}"
        return DEFAULT_CLASSES, "no masks measured"

    def use_gpu(self) -> tuple[bool, str]:
        gpus, workers = self.hardware.gpus, self.cfg.num_workers
        if gpus and workers > gpus:
            return False, f"num_workers={workers} given, the cluster has {gpus} GPU(s): CPU workers"
        return gpus > 0, f"the cluster has {gpus} GPU(s)"

    def workers(self) -> tuple[int, str]:
        if self.gpu():
            return max(1, self.hardware.gpus), "one per GPU"
        return self.hardware.nodes, f"one per node ({self.hardware.nodes})"

    def channels(self) -> tuple[int, str]:
        doc = self.fingerprint
        ok = max(1, doc.get("ok", 0))
        grey = doc.get("channels", {}).get("1", 0) + doc.get("grey_stored_as_colour", 0)
        if grey >= GREY_SHARE * ok:
            return 1, f"{grey} of {ok} images are grey"
        return 3, f"{ok - grey} of {ok} images are in colour"

    def normalization(self) -> tuple[str, str]:
        doc = self.fingerprint
        intensity = doc.get("intensity", {})
        if len(doc.get("bits", {})) > 1:
            return "minmax", "bit depths differ across images"
        median = intensity.get("median") or {}
        if intensity.get("varies"):
            return "minmax", (f"per-image median intensity spans {median.get('p5', 0):.2f}..{median.get('p95', 0):.2f} "
                              "of full scale")
        return "scale", "intensities alike across images"

    def diameter(self) -> float | None:
        return (self.fingerprint.get("objects") or {}).get("median_diameter")

    def shorter_side(self) -> float | None:
        sizes = self.fingerprint.get("sizes") or {}
        if not sizes.get("width"):
            return None
        return min(sizes["width"]["p50"], sizes["height"]["p50"])

    def tile(self) -> tuple[int, str]:
        cap = TILE_CAP[self.gpu()]
        diameter, side = self.diameter(), self.shorter_side()
        wanted = 2 ** math.ceil(math.log2(OBJECTS_PER_TILE * diameter)) if diameter else cap
        tile = min(cap, max(32, wanted))
        reason = (f"{OBJECTS_PER_TILE} objects of {diameter:.0f} px across" if diameter else "no objects measured")
        if side and tile > side:
            tile = max(32, power_of_two_at_most(side))
            reason += f"; at most the median image's side ({side:.0f} px)"
        if wanted > cap and not (side and tile < cap):
            reason += f"; at most {cap} on {'GPU' if self.gpu() else 'CPU'}"
        return tile, reason

    def depth(self) -> tuple[int, str]:
        tile, diameter = self.cfg.model.input_size, self.diameter()
        deepest = min(5, int(math.log2(tile)) - 2)
        if not diameter:
            return max(2, min(4, deepest)), "no objects measured"
        depth = max(2, min(deepest, round(math.log2(diameter))))
        return depth, f"bottom cells of {2 ** depth} px for objects of {diameter:.0f} px (tile {tile})"

    def scale(self) -> tuple[str, str]:
        sizes = self.fingerprint.get("sizes") or {}
        tile = self.cfg.model.input_size
        largest = max((sizes.get("width") or {}).get("p100", 0), (sizes.get("height") or {}).get("p100", 0))
        if self.cfg.loader.patch_size or self.cfg.augment.crop:
            return "resize", "patches or crops of resized images asked for"
        if sizes.get("varies"):
            return "native", f"{sizes.get('distinct')} image sizes"
        if largest > tile:
            return "native", f"images of {largest:.0f} px exceed the {tile}-px tile"
        return "resize", f"every image is one size within the {tile}-px tile"

    def target(self) -> tuple[str, str]:
        sources = (self.fingerprint.get("objects") or {}).get("sources") or {}
        model = self.cfg.model
        if model.architecture == "kmeans" or model.output_activation != "softmax":
            return "classes", f"{model.architecture if model.architecture == 'kmeans' else 'a sigmoid output'} takes no borders"
        if sources.get("labels"):
            return "borders", (f"{sources['labels']} images with instance labels: the borders between touching objects "
                               "learnt as a class, for --objects")
        return "classes", "no instance labels"

    def border_width(self) -> tuple[int, str]:
        if self.cfg.model.target != "borders":
            return 0, "no border targets"
        diameter = self.diameter()
        width = objects.border_width(diameter)
        return width, (f"0.15 of the objects' median diameter ({diameter:.0f} px)" if diameter else "no objects measured")

    def batch(self) -> tuple[int, str]:
        tile, workers = self.cfg.model.input_size, self.cfg.num_workers
        batch = max(2, min(64 if not self.gpu() else 256, power_of_two_at_most(PIXELS_PER_STEP[self.gpu()] / tile ** 2)))
        reason = f"{tile}-px tiles on {'GPU' if self.gpu() else 'CPU'}, {workers} worker(s)"
        windows = self.pass_windows(share=1.0 - VALIDATION_SHARE)
        if windows and batch > windows / MIN_PASS_STEPS:
            batch = max(2, power_of_two_at_most(windows / MIN_PASS_STEPS))
            reason += f"; a pass of {windows:.0f} samples makes {MIN_PASS_STEPS} steps at least"
        return workers * math.ceil(batch / workers), reason

    def pass_windows(self, share: float | None = None) -> float:
        """Return the training samples of a pass: windows of the tile at native scale, else images (0: unknown)."""
        share = 1.0 - (self.cfg.val_fraction or 0.0) if share is None else share
        if self.cfg.scale == "native":
            return self.training_megapixels(share) * 1e6 / self.cfg.model.input_size ** 2
        return self.fingerprint.get("ok", 0) * share

    def loss(self) -> tuple[str, str]:
        classes = self.fingerprint.get("classes") or []
        foreground = [c for c in classes[1:] if c["pixel_share"] > 0]
        rarest = min(foreground, key=lambda c: c["pixel_share"], default=None)
        if rarest is None:
            return "ce+dice", "no class shares measured"
        if rarest["pixel_share"] < RARE_CLASS:
            return "ce+dice", f"{rarest['name']} holds {100 * rarest['pixel_share']:.1f} % of the pixels"
        return "ce", f"every class holds {100 * RARE_CLASS:.0f} % of the pixels or more"

    def precision(self) -> tuple[str, str]:
        architecture, flag = self.cfg.model.architecture, self.hardware.bfloat16
        if architecture == "kmeans":
            return "float32", "K-means is no network"
        if self.gpu():
            return "float32", "GPU training (mixed_bfloat16 on request)"
        if not flag:
            return "float32", "the CPUs have no bfloat16 arithmetic (AVX512_BF16 or AMX)"
        if architecture != BFLOAT16_TRAINING:
            return "float32", f"the CPUs have {flag.upper()}, but bfloat16 training was measured for the U-Net only"
        return "mixed_bfloat16", f"the CPUs have {flag.upper()}: about 1.4x the windows/s of float32, same quality"

    def xla(self) -> tuple[bool, str]:
        if self.cfg.optim.precision == "mixed_bfloat16" and not self.gpu():
            return False, "XLA's CPU code gains nothing from bfloat16"
        return True, "about 1.5x the speed of the plain graph"

    def invert(self) -> tuple[bool, str]:
        polarity = self.fingerprint.get("polarity") or {}
        bright, dark = polarity.get("bright_on_dark", 0), polarity.get("dark_on_bright", 0)
        if polarity.get("mixed"):
            return True, f"{bright} images bright-on-dark, {dark} dark-on-bright"
        return False, "one polarity"

    def validation(self) -> tuple[float, str]:
        if self.cfg.val_data:
            return 0.0, "--val-data given"
        images = self.fingerprint.get("ok", 0)
        if images < MIN_IMAGES_TO_SPLIT:
            return 0.0, f"{images} images: too few to hold some out"
        return VALIDATION_SHARE, f"no --val-data: {round(VALIDATION_SHARE * images)} of {images} images held out by key hash"

    def training_megapixels(self, share: float | None = None) -> float:
        doc = self.fingerprint
        sampled = doc.get("sampled") or {}
        scale = sampled["of"] / sampled["shards"] if sampled else 1.0
        share = 1.0 - (self.cfg.val_fraction or 0.0) if share is None else share
        return (doc.get("sizes") or {}).get("megapixels", 0.0) * scale * share

    def budget(self) -> tuple[float, str]:
        rate = MEGAPIXELS_PER_MINUTE[self.gpu()]
        megapixels = self.training_megapixels()
        minutes = float(min(BUDGET_MINUTES[1], max(BUDGET_MINUTES[0], math.ceil(megapixels / rate))))
        return minutes, (f"no --epochs or --max-minutes: a minute per {rate:g} megapixels of training images "
                         f"({megapixels:.0f})")

    def epoch_steps(self) -> tuple[int, str]:
        if self.cfg.loader.passes_per_epoch != 1:
            return 0, f"passes_per_epoch={self.cfg.loader.passes_per_epoch} given"
        batch, windows = self.cfg.optim.batch_size, self.pass_windows()
        steps = int(min(EPOCH_STEPS[1], max(EPOCH_STEPS[0], round(windows / batch))))
        reason = f"a pass is about {windows / batch:.0f} steps of {batch}"
        if 0 < windows / batch < steps:
            # each read of the data holds an epoch's steps: the stream's restart per read costs seconds
            reads = math.ceil(steps * batch / windows)
            self.cfg = replaced(self.cfg, "loader.passes_per_epoch", reads)
            reason += f"; the data read {reads} times over per pass of the stream"
        return steps, reason


def plan_training(cfg: TrainConfig, fingerprint: dict[str, Any] | None, hardware: Hardware,
                  labels: tuple[int, str] | None = None) -> tuple[TrainConfig, TrainingPlan]:
    """Return ``cfg`` with every key left to the plan set from ``fingerprint``, ``hardware`` and the data's
    label map (``(classes, where it was found)``), and the plan."""
    return Planner(cfg, fingerprint, hardware, labels).plan()
