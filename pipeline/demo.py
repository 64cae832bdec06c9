"""The end-to-end demo on embedded defaults: sample shards, training, segmentation, on a local Ray.

It writes labelled synthetic training and validation shards, trains a small U-Net on the
training shards (a few minutes on two CPU cores), then segments the validation shards twice:
with the trained model and with an untrained one of the same architecture, so the printed Dice
shows what training bought. It ends with the report of the trained run, compared against the
untrained run as its baseline.
"""

from __future__ import annotations

import dataclasses
import logging
import os

from pipeline.config import (
    AugmentConfig,
    LoaderConfig,
    ModelConfig,
    OptimConfig,
    ReportConfig,
    SampleDataConfig,
    SegmentConfig,
    TrainConfig,
)
from pipeline.io import layout
from pipeline.model import ModelInfo, ModelSpec, build_unet, save_artifact
from pipeline.report.build import ReportResult, build_report
from pipeline.sample_data import write_sample_data
from pipeline.segment.record import RunSummary
from pipeline.segment.run import run_segmentation
from pipeline.train.run import model_spec, run_training
from pipeline.train.summary import TrainSummary

log = logging.getLogger(__name__)

DEMO_UNET = ModelConfig(input_size=64, channels=3, num_classes=3, depth=3, base_filters=8,
                       class_names="background,disc,stripes")


@dataclasses.dataclass(frozen=True)
class DemoResult:
    """Where the demo wrote its data, models and runs, and what they measured."""

    workdir: str
    training: TrainSummary
    trained: RunSummary
    untrained: RunSummary
    trained_dice: float
    untrained_dice: float
    report: ReportResult

    def lines(self) -> list[str]:
        """Return the lines the CLI prints at the end of the demo."""
        run = self.trained.output
        return [
            f"sample data:   {self.workdir}/data/train (training), {self.workdir}/data/val (validation)",
            f"training:      {self.training.line()}",
            f"segmentation:  {self.trained.line()}",
            f"validation mean Dice (foreground classes, mean over images): trained {self.trained_dice:.3f}, "
            f"untrained {self.untrained_dice:.3f}",
            f"masks:         {layout.folder_url(run, layout.MASKS)}/",
            f"metrics:       {layout.folder_url(run, layout.METRICS)}/*.parquet",
            f"run record:    {layout.run_record_url(run)}",
            f"report:        {self.report.html_url} (open it in a browser; summary.json beside it)",
        ]


def build_untrained_artifact(url: str, spec: ModelSpec, class_names: tuple[str, ...]) -> str:
    """Write an untrained U-Net artifact (random initial weights) to ``url`` and return ``url``."""
    import keras

    keras.utils.set_random_seed(0)
    info = ModelInfo(spec=spec, class_names=class_names, training={"trained": False, "note": "random initial weights"})
    save_artifact(build_unet(spec), info, url)
    return url


def run_demo(workdir: str = "demo-output", epochs: int = 12) -> DemoResult:
    """Generate data, train, segment with the trained and an untrained model under ``workdir``; return the result."""
    workdir = os.path.abspath(workdir)
    data = os.path.join(workdir, "data")
    common = {"num_classes": DEMO_UNET.num_classes, "min_size": 64, "max_size": 96}
    write_sample_data(SampleDataConfig(output=f"{data}/train", num_images=160, num_shards=4, seed=0, **common))
    write_sample_data(SampleDataConfig(output=f"{data}/val", num_images=32, num_shards=1, seed=1, **common))
    # the demo's own recipe, given in full, so it takes minutes (a plain run plans all this from the data)
    training = run_training(TrainConfig(
        data=f"{data}/train", val_data=f"{data}/val", output=os.path.join(workdir, "model"), num_workers=1,
        use_gpu=False, epochs=epochs, scale="resize", model=DEMO_UNET,
        optim=OptimConfig(batch_size=8, learning_rate=3e-3, loss="ce+dice", lr_schedule="constant"),
        loader=LoaderConfig(normalization="scale", steps_per_epoch=0), augment=AugmentConfig(invert=False),
    ))
    untrained_model = build_untrained_artifact(os.path.join(workdir, "model-untrained"), model_spec(DEMO_UNET),
                                               DEMO_UNET.names())
    # overwrite: a second demo in the same folder replaces its runs (the re-saved artifacts hash differently)
    trained = run_segmentation(SegmentConfig(input=f"{data}/val", model=training.artifact, output=os.path.join(workdir, "run"),
                                             overwrite=True))
    untrained = run_segmentation(SegmentConfig(input=f"{data}/val", model=untrained_model,
                                               output=os.path.join(workdir, "run-untrained"), overwrite=True))
    untrained_report = build_report(ReportConfig(run=untrained.output, worst=4))
    report = build_report(ReportConfig(run=trained.output, baseline=untrained.output, worst=8))
    return DemoResult(
        workdir=workdir, training=training, trained=trained, untrained=untrained,
        trained_dice=foreground_macro_dice(report), untrained_dice=foreground_macro_dice(untrained_report), report=report,
    )


def foreground_macro_dice(report: ReportResult) -> float:
    """Return a report's foreground macro Dice (mean over images of each image's mean_dice), NaN if undefined."""
    value = ((report.summary.get("foreground") or {}).get("dice") or {}).get("macro")
    return float("nan") if value is None else float(value)
