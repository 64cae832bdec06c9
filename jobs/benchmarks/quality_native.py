"""Quality at native scale: a model trained on windows at the images' own resolution, segmenting in
windows, against a model of the same tile and training budget trained and run on resized images.

    python jobs/benchmarks/quality_native.py                   # about 22 minutes on 2 CPU cores
    python jobs/benchmarks/quality_native.py --epochs 2 --train-images 6 --val-images 2   # smoke run

Data: ``segpipe sample-data --scale native`` (objects about 16 px across, as many as the image's
area holds) on canvases of 600-1200 px, so resizing an image to the 64-px tile shrinks each object
to about a pixel. Both models are the same U-Net (64-px tile) trained for the same epochs on the
same number of windows: the native model on random 64-px windows of each image (as many per pass
as the image holds tiles of area), the resize model on the whole images resized to 64 px, passed
over as often as makes the same number of samples. Each segments the validation images with
``segpipe segment`` as a user would (``tiling: auto``: windows for the native model, the resize
for the other) and the foreground Dice (micro: summed over all pixels; macro: the mean of the
images' foreground Dice) is read from the runs' metrics. Also reports the native model with
``tiling: resize`` (what the resize does to it) and windows at overlap 0.5. Writes
``<workdir>/quality_native.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

from pipeline.config import ReportConfig, SampleDataConfig, SegmentConfig, TrainConfig, load_config
from pipeline.report.build import build_report
from pipeline.sample_data import sample_for_index, write_sample_data
from pipeline.segment.run import run_segmentation
from pipeline.train.run import run_training

log = logging.getLogger("quality_native")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Return the benchmark's arguments."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-images", type=int, default=16)
    parser.add_argument("--val-images", type=int, default=6)
    parser.add_argument("--min-size", type=int, default=600)
    parser.add_argument("--max-size", type=int, default=1200)
    parser.add_argument("--object-size", type=float, default=16.0)
    parser.add_argument("--tile", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workdir", default="bench-output/quality-native")
    return parser.parse_args(argv)


def foreground_dice(output: Path) -> dict[str, float]:
    """Return a run's foreground Dice, micro and macro, and its counts, from its report's summary."""
    summary = build_report(ReportConfig(run=str(output), worst=0)).summary
    dice = summary["foreground"]["dice"]
    return {"images": summary["counts"]["images"], "errors": summary["counts"]["errors"],
            "micro_dice": round(dice["micro"], 4), "macro_dice": round(dice["macro"], 4)}


def train(args: argparse.Namespace, data: str, val: str, output: Path, scale: str, passes: int) -> dict[str, Any]:
    """Train one model; return its summary's figures."""
    options = {"data": data, "val_data": val, "output": str(output), "epochs": args.epochs, "num_workers": 1,
               "batch_size": args.batch_size, "learning_rate": 0.003, "lr_schedule": "cosine", "scale": scale,
               "passes_per_epoch": passes, "unet": {"input_size": args.tile, "depth": 3, "base_filters": 16,
                                                     "num_classes": 3}}
    summary = run_training(load_config(TrainConfig, options=options))
    steps = [h["images"] for h in summary.history]
    return {"scale": scale, "passes_per_epoch": passes, "seconds": round(summary.seconds, 1),
            "samples_per_epoch": steps, "best_epoch": summary.best_epoch,
            "val_mean_dice_in_training": round(summary.best_metrics.get("val_mean_dice", float("nan")), 4)}


def segment(model: Path, val: str, output: Path, **settings: Any) -> dict[str, Any]:
    """Segment the validation images; return the figures and the tiling used."""
    started = time.perf_counter()
    run_segmentation(SegmentConfig(input=val, model=str(model), output=str(output), overwrite=True, **settings))
    record = json.loads((output / "run.json").read_text())
    return {**foreground_dice(output), "tiling": record["tiling"], "seconds": round(time.perf_counter() - started, 1)}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print and save its figures."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    workdir = Path(args.workdir)
    common = {"scale": "native", "min_size": args.min_size, "max_size": args.max_size,
              "object_size": args.object_size, "num_classes": 3}
    data, val = str(workdir / "train"), str(workdir / "val")
    train_cfg = SampleDataConfig(output=data, num_images=args.train_images, num_shards=2, seed=1, **common)
    write_sample_data(train_cfg)
    write_sample_data(SampleDataConfig(output=val, num_images=args.val_images, num_shards=1, seed=2, **common))
    area = sum(math.prod(sample_for_index(train_cfg, i)[1].shape) for i in range(args.train_images))
    passes = max(1, round(area / args.tile**2 / args.train_images))  # the resize model sees as many samples
    log.info("training images hold %.0f tiles of area: the resize model passes over them %d times an epoch",
             area / args.tile**2, passes)
    native = train(args, data, val, workdir / "native", "native", 1)
    resized = train(args, data, val, workdir / "resize", "resize", passes)
    results = {
        "setup": vars(args),
        "training": {"native": native, "resize": resized},
        "native_windows": segment(workdir / "native", val, workdir / "seg-native-windows"),
        "native_windows_overlap_0.5": segment(workdir / "native", val, workdir / "seg-native-windows-05", overlap=0.5),
        "native_model_resized": segment(workdir / "native", val, workdir / "seg-native-resize", tiling="resize"),
        "resize_model": segment(workdir / "resize", val, workdir / "seg-resize"),
    }
    (workdir / "quality_native.json").write_text(json.dumps(results, indent=2))
    print(f"\nnative-scale quality: {args.train_images} training / {args.val_images} validation images of "
          f"{args.min_size}-{args.max_size} px, objects ~{args.object_size:g} px, U-Net tile {args.tile}, "
          f"{args.epochs} epochs")
    for name, figures in results["training"].items():
        print(f"  trained {name:7s} {figures['seconds']:6.0f} s, samples per epoch {figures['samples_per_epoch'][0]}")
    for name in ("native_windows", "native_windows_overlap_0.5", "native_model_resized", "resize_model"):
        figures = results[name]
        print(f"  {name:28s} foreground Dice micro {figures['micro_dice']:.4f}, macro {figures['macro_dice']:.4f} "
              f"({figures['tiling']['mode']}, {figures['images']} images, {figures['errors']} errors, "
              f"{figures['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
