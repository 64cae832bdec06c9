"""Short in-process ISBI training runs to compare training choices at the same CPU budget.

    python jobs/benchmarks/ablation_isbi.py --minutes 12 --base-filters 16                   # flips/turns, ce+dice
    python jobs/benchmarks/ablation_isbi.py --minutes 12 --base-filters 16 --augment warp
    python jobs/benchmarks/ablation_isbi.py --minutes 12 --base-filters 16 --loss ce
    python jobs/benchmarks/ablation_isbi.py --minutes 12 --base-filters 16 --patch 256

Each run trains the U-Net on ISBI slices 0-24 for ``--minutes`` of training-step time (the
learning rate follows a cosine over that budget), in this process with no Ray (the same model,
training step, loss and augmentation code as ``segpipe train``), and prints the pixel error of
slices 25-29 every two minutes, then the final pixel error on the validation and on the (not
augmented) training slices: a training error no lower than the validation error says the model
underfits. One JSON line per run is appended to ``<workdir>/ablation.jsonl``. The figures that
count are ``jobs/benchmarks/quality_isbi.py``'s; this is for choosing what to run there.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from jobs.benchmarks.quality_isbi import DEFAULT_DATASET, TRAIN_SLICES, VAL_SLICES, read_slice
from pipeline import imaging, metrics
from pipeline.config import AugmentConfig
from pipeline.model import ModelSpec, build_unet, configure_tensorflow
from pipeline.train import augment
from pipeline.train.step import adam, make_train_step, patch_twin

EVAL_EVERY_SECONDS = 120


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Return the run's arguments."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("--workdir", type=Path, default=Path("quality-output"))
    parser.add_argument("--minutes", type=float, default=12.0, help="training-step time (default 12)")
    parser.add_argument("--base-filters", type=int, default=16)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--loss", choices=("ce", "dice", "ce+dice"), default="ce+dice")
    parser.add_argument("--augment", choices=("none", "jitter", "flips", "crop", "warp"), default="flips",
                        help="jitter: intensity jitter only; flips: flips and 90-degree turns (and jitter); crop: "
                        "random crops, then flips and turns; warp: random warps (all with jitter; none: nothing)")
    parser.add_argument("--no-quarter-turns", dest="quarter_turns", action="store_false",
                        help="with --augment flips or crop: flips and half turns only, no 90-degree turns")
    parser.add_argument("--label-offset-rows", type=float, default=0.0,
                        help="with --augment flips or crop: the labels' offset (pixels down) that flips and turns keep")
    parser.add_argument("--label-offset-cols", type=float, default=0.0, help="the same, pixels right")
    parser.add_argument("--patch", type=int, default=0,
                        help="train on random PATCHxPATCH windows of the slices at native scale (0: whole slices)")
    parser.add_argument("--ema", type=float, default=0.0,
                        help="evaluate an exponential moving average of the weights with this momentum (0: off)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def load_slices(dataset: Path, slices: range) -> list[tuple[np.ndarray, np.ndarray]]:
    """Return ``(image, mask)`` pairs as the pipeline reads them: float32 ``(512, 512, 1)`` in [0, 1], uint8 classes."""
    if not (dataset / "images").is_dir():
        raise SystemExit(f"ISBI data not found at {dataset}: expected images/ and masks/; pass --dataset")
    pairs = [read_slice(dataset, index) for index in slices]
    return [(imaging.normalise(image, {"mode": "scale"}), mask) for image, mask in pairs]


def pixel_error(model: Any, pairs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[float, float]:
    """Return ``(pixel error, membrane Dice)`` of ``model`` on ``pairs`` (argmax; Dice from summed counts)."""
    wrong = total = 0
    tp = fp = fn = np.zeros(2, dtype=np.int64)
    for image, mask in pairs:
        predicted = np.argmax(model(image[np.newaxis], training=False).numpy()[0], axis=-1)
        wrong += int((predicted != mask).sum())
        total += mask.size
        counts = metrics.confusion_counts(predicted, mask, 2)
        tp, fp, fn = tp + counts[0], fp + counts[1], fn + counts[2]
    return wrong / total, float(metrics.dice_from_counts(tp, fp, fn)[0])


def training_batch(pairs: list[tuple[np.ndarray, np.ndarray]], args: argparse.Namespace,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(pixels, labels, weights)`` of ``--batch-size`` random slices (or ``--patch`` windows), augmented as asked."""
    chosen = [pairs[i] for i in rng.integers(0, len(pairs), args.batch_size)]
    settings = AugmentConfig(warp=args.augment == "warp", crop=args.augment == "crop",
                             flips=args.augment in ("flips", "crop"), label_offset_rows=args.label_offset_rows,
                             label_offset_cols=args.label_offset_cols, quarter_turns=args.quarter_turns)
    tiles = [augment.training_pair(image, mask, mask.shape, None if args.augment == "none" else rng, settings)
             for image, mask in chosen]
    if args.patch:  # as pipeline.train.data.training_batch cuts them
        tiles = [augment.random_patch(image, mask, (args.patch, args.patch), rng) for image, mask in tiles]
    return (np.stack([t[0] for t in tiles]), np.stack([t[1] for t in tiles]),
            np.ones(args.batch_size, dtype=np.float32))


def evaluated_weights(model: Any, trained: Any, optimizer: Any) -> None:
    """Copy ``trained``'s weights into ``model``, then the optimizer's moving averages if it keeps them."""
    model.set_weights(trained.get_weights())
    optimizer.finalize_variable_values(model.trainable_variables)


def main(argv: list[str] | None = None) -> int:
    """Run one comparison run; return the exit status."""
    args = parse_args(argv)
    configure_tensorflow(args.threads)
    import keras
    import tensorflow as tf

    train, val = load_slices(args.dataset, TRAIN_SLICES), load_slices(args.dataset, VAL_SLICES)
    spec = ModelSpec(input_size=(512, 512), channels=1, num_classes=2, depth=args.depth,
                    base_filters=args.base_filters)
    keras.utils.set_random_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    model = build_unet(spec)
    trained = patch_twin(spec, args.patch or spec.input_size[0])
    optimizer = adam(args.learning_rate, args.ema, trained)
    step = make_train_step(tf.distribute.get_strategy(), trained, optimizer, spec, args.loss, args.batch_size)
    budget, spent, steps, history = args.minutes * 60, 0.0, 0, []
    next_eval = EVAL_EVERY_SECONDS
    while spent < budget:
        optimizer.learning_rate.assign(args.learning_rate * 0.5 * (1 + math.cos(math.pi * spent / budget)))
        started = time.perf_counter()
        loss = float(step(*training_batch(train, args, rng)))
        spent += time.perf_counter() - started
        steps += 1
        if spent >= next_eval:
            evaluated_weights(model, trained, optimizer)
            error, dice = pixel_error(model, val)
            history.append({"seconds": round(spent), "steps": steps, "loss": round(loss, 4), "val_pixel_error": round(error, 4)})
            print(f"{spent:5.0f} s  step {steps:4d}  loss {loss:.4f}  val pixel error {error:.4f}  membrane Dice {dice:.4f}",
                  flush=True)
            next_eval += EVAL_EVERY_SECONDS
    evaluated_weights(model, trained, optimizer)
    val_error, val_dice = pixel_error(model, val)
    train_error, _ = pixel_error(model, train)
    result = {"command": "python jobs/benchmarks/ablation_isbi.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "steps": steps, "images": steps * args.batch_size, "val_pixel_error": val_error,
              "val_membrane_dice": val_dice, "train_pixel_error": train_error, "history": history}
    args.workdir.mkdir(parents=True, exist_ok=True)
    with open(args.workdir / "ablation.jsonl", "a") as handle:
        handle.write(json.dumps(result) + "\n")
    print(f"{result['command']}: {steps} steps ({result['images']} images) in {args.minutes:g} min; "
          f"pixel error validation {val_error:.4f} (membrane Dice {val_dice:.4f}), training slices {train_error:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
