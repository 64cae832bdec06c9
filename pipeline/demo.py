"""The end-to-end demo on embedded defaults: sample shards, a model artifact, a local segmentation run.

Until training lands, the demo's model is an untrained U-Net (random weights): the run exercises
every stage and writes real outputs, but its masks and scores are not meaningful.
"""

from __future__ import annotations

import dataclasses
import logging
import os

from pipeline import storage
from pipeline.config import SampleDataConfig, SegmentConfig
from pipeline.inference import RunSummary, run_segmentation
from pipeline.model import ModelInfo, UNetSpec, build_unet, save_artifact
from pipeline.sample_data import write_sample_data

log = logging.getLogger(__name__)

DEMO_CLASSES = ("background", "disc", "stripes")
DEMO_UNET = UNetSpec(input_size=(64, 64), channels=3, num_classes=len(DEMO_CLASSES), depth=3, base_filters=8)


@dataclasses.dataclass(frozen=True)
class DemoResult:
    """Where the demo wrote its data, model and run, and the run's summary."""

    data: str
    model: str
    run: str
    summary: RunSummary

    def lines(self) -> list[str]:
        """Return the lines the CLI prints at the end of the demo."""
        return [
            f"sample data:  {self.data}",
            f"model:        {self.model} (untrained U-Net: masks are not meaningful until training lands)",
            f"segmentation: {self.summary.line()}",
            f"masks:        {storage.join_url(self.run, 'masks')}/",
            f"metrics:      {storage.join_url(self.run, 'metrics')}/*.parquet",
            f"run record:   {storage.join_url(self.run, 'run.json')}",
        ]


def build_untrained_artifact(url: str, spec: UNetSpec = DEMO_UNET, class_names: tuple[str, ...] = DEMO_CLASSES) -> str:
    """Write an untrained U-Net artifact to ``url`` and return ``url``."""
    import keras

    keras.utils.set_random_seed(0)
    info = ModelInfo(unet=spec, class_names=class_names, training={"trained": False, "note": "random initial weights"})
    save_artifact(build_unet(spec), info, url)
    return url


def run_demo(workdir: str = "demo-output", num_images: int = 64) -> DemoResult:
    """Generate sample shards and a model under ``workdir``, segment them on local Ray, return the result."""
    workdir = os.path.abspath(workdir)
    data = os.path.join(workdir, "data")
    model = os.path.join(workdir, "model")
    run = os.path.join(workdir, "run")
    write_sample_data(SampleDataConfig(output=data, num_images=num_images, num_shards=4, num_classes=len(DEMO_CLASSES)))
    build_untrained_artifact(model)
    log.info("demo: data in %s, model in %s", data, model)
    summary = run_segmentation(SegmentConfig(input=data, model=model, output=run, batch_size=16))
    return DemoResult(data=data, model=model, run=run, summary=summary)
