"""bfloat16 against float32: the same trained models segment the same held-out images in both.

    python jobs/benchmarks/precision.py --run unet=compare-output/isbi/unet/model:compare-output/isbi/data/val \\
        --run dsb=plain-output/dsb/model:plain-output/dsb/held-out

Each ``--run NAME=MODEL:INPUT`` segments INPUT (labelled, held out of the model's training) with
``segpipe segment`` twice on the local Ray: ``--precision float32`` and ``--precision
mixed_bfloat16``. Printed per run: the pixel agreement of the two runs' masks (equal pixels over
all pixels), foreground Dice and IoU against the ground truth for each (micro: the counts summed
over the images; macro: the mean of the images' ``mean_dice``), the per-image Dice change
(bfloat16 minus float32) with its 95% interval, and each run's steady images/s. The models come
from ``compare_models.py`` (one per architecture, ISBI 2012) and ``plain_command.py dsb``.
``precision: auto`` takes bfloat16 only for the architectures whose change is within noise
(:data:`pipeline.model.precision.BFLOAT16_AGREES`). Writes ``<workdir>/precision.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from pipeline.config import SegmentConfig
from pipeline.segment.run import run_segmentation

PRECISIONS = ("float32", "mixed_bfloat16")


def foreground_scores(output: Path) -> tuple[dict[str, float], dict[str, float]]:
    """Return the run's foreground Dice and IoU (micro and macro) and each image's mean Dice, by key."""
    table = pq.read_table(output / "metrics").to_pylist()
    rows = [row for row in table if row["status"] == "ok" and row.get("mean_dice") is not None]
    tp, fp, fn = (sum(sum(row[count][1:]) for row in rows) for count in ("tp", "fp", "fn"))  # foreground classes
    scores = {"dice_micro": 2 * tp / max(1, 2 * tp + fp + fn), "iou_micro": tp / max(1, tp + fp + fn),
              "dice_macro": float(np.mean([row["mean_dice"] for row in rows])),
              "iou_macro": float(np.mean([row["mean_iou"] for row in rows]))}
    return scores, {row["key"]: float(row["mean_dice"]) for row in rows}


def agreement(first: Path, second: Path) -> float:
    """Return the share of pixels on which two runs' masks agree, over every mask of the first."""
    equal = total = 0
    for path in sorted((first / "masks").rglob("*.png")):
        a = np.asarray(Image.open(path))
        b = np.asarray(Image.open(second / "masks" / path.relative_to(first / "masks")))
        equal += int((a == b).sum())
        total += a.size
    return equal / max(1, total)


def compare(name: str, model: str, data: str, workdir: Path) -> dict[str, Any]:
    """Segment ``data`` with ``model`` in both precisions; return the figures."""
    runs, per_image = {}, {}
    for precision in PRECISIONS:
        output = workdir / f"{name}-{precision}"
        summary = run_segmentation(SegmentConfig(input=data, model=model, output=str(output), overwrite=True,
                                                 precision=precision))
        scores, per_image[precision] = foreground_scores(output)
        runs[precision] = {**scores, "images": summary.images, "steady_images_per_second": summary.steady_images_per_second}
    keys = sorted(set(per_image["float32"]) & set(per_image["mixed_bfloat16"]))
    change = np.array([per_image["mixed_bfloat16"][k] - per_image["float32"][k] for k in keys])
    half = 1.96 * float(change.std(ddof=1)) / math.sqrt(len(change)) if len(change) > 1 else float("nan")
    return {"name": name, "model": model, "input": data, "runs": runs,
            "pixel_agreement": agreement(workdir / f"{name}-float32", workdir / f"{name}-mixed_bfloat16"),
            "dice_change_mean": float(change.mean()) if len(change) else float("nan"), "dice_change_ci95": half,
            "images_compared": len(keys)}


def print_row(row: dict[str, Any]) -> None:
    f32, bf16 = row["runs"]["float32"], row["runs"]["mixed_bfloat16"]
    print(f"{row['name']}: pixel agreement {row['pixel_agreement']:.5f} over {row['images_compared']} images; "
          f"foreground Dice micro {f32['dice_micro']:.4f} -> {bf16['dice_micro']:.4f}, macro {f32['dice_macro']:.4f} -> "
          f"{bf16['dice_macro']:.4f}; IoU micro {f32['iou_micro']:.4f} -> {bf16['iou_micro']:.4f}; per-image Dice change "
          f"{row['dice_change_mean']:+.5f} ± {row['dice_change_ci95']:.5f}; steady images/s "
          f"{f32['steady_images_per_second']:.1f} -> {bf16['steady_images_per_second']:.1f}")


def training_speed(size: int, depth: int, filters: int, batch: int, seconds: float, xla: bool = True) -> dict[str, float]:
    """Return training windows/s of segpipe's U-Net step (forward, loss, backward, Adam; XLA as training
    compiles it) in float32 and in mixed_bfloat16, in this process, on random windows."""
    import keras
    import tensorflow as tf

    from pipeline.model import ModelSpec, build_model, configure_tensorflow
    from pipeline.train.step import adam, per_example_loss

    configure_tensorflow(2)
    spec = ModelSpec(input_size=(size, size), channels=1, num_classes=2, depth=depth, base_filters=filters)
    rng = np.random.default_rng(0)
    pixels = tf.constant(rng.random((batch, size, size, 1), dtype=np.float32))
    labels = tf.constant(rng.integers(0, 2, (batch, size, size)).astype(np.int32))
    rates = {}
    for precision in PRECISIONS:
        keras.mixed_precision.set_global_policy(precision)
        try:
            model = build_model(spec)
        finally:
            keras.mixed_precision.set_global_policy("float32")
        optimizer = adam(1e-3, 0.0, model)

        @tf.function(jit_compile=xla)
        def gradients(pixels: Any, labels: Any) -> Any:
            with tf.GradientTape() as tape:
                probabilities = tf.cast(model(pixels, training=True), tf.float32)
                loss = tf.reduce_mean(per_example_loss(labels, probabilities, spec, "ce+dice"))
            return loss, tape.gradient(loss, model.trainable_variables)

        def step() -> None:
            loss, grads = gradients(pixels, labels)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            float(loss)

        for _ in range(3):
            step()  # trace and warm up
        import time

        started, steps = time.perf_counter(), 0
        while time.perf_counter() - started < seconds:
            step()
            steps += 1
        rates[precision] = steps * batch / (time.perf_counter() - started)
    return rates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="append", default=[], metavar="NAME=MODEL:INPUT")
    parser.add_argument("--workdir", type=Path, default=Path("bench-output") / "precision")
    parser.add_argument("--training-speed", action="store_true",
                        help="also time the training step in both precisions, with and without XLA (U-Net, 128-px "
                             "windows, batch 16)")
    args = parser.parse_args(argv)
    runs = []
    for item in args.run:
        name, _, rest = item.partition("=")
        model, _, data = rest.partition(":")
        if not (Path(model) / "model.json").exists() or not Path(data).exists():
            print(f"skipped {name}: no model at {model} or no data at {data}", file=sys.stderr)
            continue
        runs.append((name, model, data))
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, model, data in runs:
        rows.append(compare(name, model, data, args.workdir))
        print_row(rows[-1])
    speed = {}
    if args.training_speed:
        for xla in (True, False):
            name = f"unet-128px-depth4-16f-{'xla' if xla else 'graph'}"
            speed[name] = rates = training_speed(128, 4, 16, 16, 30.0, xla=xla)
            print(f"training step, U-Net 128 px depth 4 16 filters, batch 16, {'XLA' if xla else 'no XLA'}: windows/s "
                  f"float32 {rates['float32']:.1f}, mixed_bfloat16 {rates['mixed_bfloat16']:.1f} "
                  f"({rates['mixed_bfloat16'] / rates['float32']:.2f}x)")
    (args.workdir / "precision.json").write_text(json.dumps({"runs": rows, "training_speed": speed}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
