"""Compare the model families for the same CPU budget: ISBI 2012 membranes and the synthetic sample data.

    python jobs/benchmarks/compare_models.py                          # both sets, 3 minutes of training each
    python jobs/benchmarks/compare_models.py --minutes 1 --sets synthetic --architectures unet,kmeans   # smoke run

Every network (unet, unet-vgg16, fcn8, segnet, deeplabv3plus) trains through ``segpipe train`` for
``--minutes`` of training (``max_minutes``: the run stops after the first epoch past it, and the
best epoch by validation Dice is the artifact), from random weights, at the widths in ``WIDTHS``
(the VGG16-based at a quarter of VGG16's width, so that several epochs fit a CPU budget). The
K-means baseline is fitted on the same training images. Each artifact then segments the validation
images with ``segpipe segment`` and the figures come from that run's report, as a user gets them.

- ISBI 2012 (``../shared/datasets/isbi2012-membrane`` or ``--dataset``): slices 0-24 train, 25-29
  validate, as ``quality_isbi.py`` does; gray, two classes; trained on native-scale 128-px windows
  (``scale: native``) and segmented in windows; K-means on intensity and texture.
- Synthetic: ``segpipe sample-data`` RGB images with three classes, 64-px tiles (``scale: resize``);
  K-means on colour.

Printed per set: parameters, training throughput (windows or tiles/s, the mean over epochs),
inference throughput (the bare traced model call on batches of 16 tiles, tiles/s), the epochs
that fit, validation pixel error and foreground Dice (micro, over the validation images at their
own resolution). Writes ``<workdir>/compare_models.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from jobs.benchmarks.quality_isbi import DEFAULT_DATASET, split_dataset
from pipeline.config import ModelConfig, ReportConfig, SampleDataConfig, SegmentConfig, TrainConfig, load_config
from pipeline.model import load_artifact
from pipeline.model.architectures import ARCHITECTURES
from pipeline.report.build import build_report
from pipeline.sample_data import write_sample_data
from pipeline.segment.run import run_segmentation
from pipeline.train.run import run_training

log = logging.getLogger("compare_models")

WIDTHS: dict[str, dict[str, Any]] = {
    "unet": {"depth": 4, "base_filters": 16},
    "unet-vgg16": {"base_filters": 16},
    "fcn8": {"base_filters": 16, "fc_filters": 256},
    "segnet": {"base_filters": 16},
    "deeplabv3plus": {"width": 0.5, "aspp_filters": 64},
    "kmeans": {"clusters": 8},
}
SETS = {
    "isbi": {"input_size": 128, "channels": 1, "num_classes": 2, "class_names": "membrane,cell", "scale": "native",
             "passes_per_epoch": 2, "features": "colour,texture", "batch_size": 8},
    "synthetic": {"input_size": 64, "channels": 3, "num_classes": 3, "class_names": "background,disc,stripes",
                  "scale": "resize", "passes_per_epoch": 4, "features": "colour", "batch_size": 16},
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET, help="the ISBI 2012 folder (images/, masks/)")
    parser.add_argument("--workdir", type=Path, default=Path("compare-output"))
    parser.add_argument("--minutes", type=float, default=3.0, help="training budget of each network on each set")
    parser.add_argument("--architectures", default=",".join(ARCHITECTURES))
    parser.add_argument("--sets", default="isbi,synthetic")
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--precision", default="float32", choices=("float32", "mixed_bfloat16"),
                        help="the training step's arithmetic (optim.precision)")
    parser.add_argument("--no-xla", dest="xla", action="store_false", help="train without XLA (optim.xla false)")
    return parser.parse_args(argv)


def synthetic_data(workdir: Path) -> tuple[str, str]:
    """Write the synthetic training (96 images) and validation (32) sets; return their URLs."""
    common = {"num_classes": 3, "min_size": 48, "max_size": 96}
    train, val = workdir / "data" / "train", workdir / "data" / "val"
    write_sample_data(SampleDataConfig(output=str(train), num_images=96, num_shards=4, seed=1, **common))
    write_sample_data(SampleDataConfig(output=str(val), num_images=32, num_shards=2, seed=2, **common))
    return str(train), str(val)


def train_config(architecture: str, settings: dict[str, Any], train: str, val: str, output: Path, minutes: float,
                 workers: int, precision: str = "float32", xla: bool = True) -> TrainConfig:
    """Return the training config of one architecture on one set."""
    model = ModelConfig(architecture=architecture, input_size=settings["input_size"], channels=settings["channels"],
                        num_classes=settings["num_classes"], class_names=settings["class_names"],
                        **({"features": settings["features"]} if architecture == "kmeans" else {}),
                        **WIDTHS[architecture])
    return load_config(TrainConfig, options={
        "data": train, "val_data": val, "output": str(output), "model": model, "epochs": 1000, "max_minutes": minutes,
        "scale": settings["scale"], "passes_per_epoch": settings["passes_per_epoch"],
        "batch_size": settings["batch_size"], "learning_rate": 1e-3, "num_workers": workers,
        "label_offset_rows": -0.5 if settings["channels"] == 1 else 0.0,
        "label_offset_cols": -0.25 if settings["channels"] == 1 else 0.0, "quarter_turns": settings["channels"] == 3,
        "precision": precision, "xla": xla,
    })


def inference_rate(artifact: Path, tile: int, channels: int, batch: int = 16, seconds: float = 6.0) -> float:
    """Return tiles/s of the bare traced model call on batches of ``batch`` tiles (the K-means baseline: its NumPy call)."""
    loaded = load_artifact(str(artifact))
    pixels = np.random.default_rng(0).random((batch, tile, tile, channels), dtype=np.float32)
    if loaded.info.spec.keras:
        import tensorflow as tf

        traced = tf.function(lambda x: loaded.model(x, training=False))
        call = lambda: traced(pixels).numpy()  # noqa: E731
    else:
        call = lambda: loaded.model.scores(pixels)  # noqa: E731
    call()
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        call()
        done += batch
    return done / (time.perf_counter() - started)


def evaluate(artifact: Path, val: str, output: Path) -> dict[str, Any]:
    """Segment the validation images with the artifact (default tiling) and return the report's figures."""
    run_segmentation(SegmentConfig(input=val, model=str(artifact), output=str(output), overwrite=True, run_id="compare"))
    summary = build_report(ReportConfig(run=str(output), worst=0)).summary
    foreground = [c["dice"]["micro"] for c in summary["classes"][1:]]
    return {"pixel_error": 1.0 - summary["pixel_accuracy"], "foreground_dice": float(np.mean(foreground)),
            "images": summary["counts"]["ok"]}


def compare(architecture: str, set_name: str, train: str, val: str, args: argparse.Namespace) -> dict[str, Any]:
    """Train, time and evaluate one architecture on one set; return its row."""
    settings = SETS[set_name]
    output = args.workdir / set_name / architecture
    shutil.rmtree(output, ignore_errors=True)
    started = time.perf_counter()
    summary = run_training(train_config(architecture, settings, train, val, output / "model", args.minutes,
                                        args.num_workers, args.precision, args.xla))
    loaded = load_artifact(str(output / "model"))
    centres = None if loaded.info.spec.keras else np.asarray(loaded.info.kmeans["centres"])
    params = int(loaded.model.count_params()) if centres is None else int(centres.size)
    rates = [h["train_images_per_second"] for h in summary.history if h.get("train_images_per_second")]
    row = {
        "architecture": architecture, "set": set_name, "parameters": params, "epochs": summary.epochs,
        "train_seconds": round(time.perf_counter() - started, 1),
        "train_per_second": float(np.mean(rates)) if rates else None,
        "inference_per_second": inference_rate(output / "model", settings["input_size"], settings["channels"]),
        **evaluate(output / "model", val, output / "segment"),
    }
    log.info("%s", row)
    return row


def print_table(rows: list[dict[str, Any]], minutes: float) -> None:
    """Print one table per set."""
    for set_name in dict.fromkeys(row["set"] for row in rows):
        unit = "windows" if SETS[set_name]["scale"] == "native" else "tiles"
        print(f"\n{set_name}: {minutes:g} min of training each, {SETS[set_name]['input_size']}-px {unit}")
        print(f"| architecture | parameters | training {unit}/s | inference {unit}/s | epochs | pixel error | "
              "foreground Dice |")
        print("|---|---|---|---|---|---|---|")
        for row in (r for r in rows if r["set"] == set_name):
            train = f"{row['train_per_second']:.1f}" if row["train_per_second"] else "(fit once)"
            print(f"| {row['architecture']} | {row['parameters']:,} | {train} | {row['inference_per_second']:.0f} | "
                  f"{row['epochs']} | {row['pixel_error']:.4f} | {row['foreground_dice']:.3f} |")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    architectures = [a.strip() for a in args.architectures.split(",") if a.strip()]
    rows = []
    for set_name in [s.strip() for s in args.sets.split(",") if s.strip()]:
        if set_name == "isbi":
            if not (args.dataset / "images").is_dir():
                print(f"skipping isbi: no ISBI 2012 data at {args.dataset} (pass --dataset)")
                continue
            train, val = split_dataset(args.dataset, args.workdir / "isbi")
        else:
            train, val = synthetic_data(args.workdir / "synthetic")
        rows += [compare(architecture, set_name, train, val, args) for architecture in architectures]
    args.workdir.mkdir(parents=True, exist_ok=True)
    (args.workdir / "compare_models.json").write_text(json.dumps({"minutes": args.minutes, "rows": rows}, indent=2))
    print_table(rows, args.minutes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
