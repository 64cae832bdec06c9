"""The plain command on real data: ``segpipe train --data D --output M --max-minutes N`` with nothing
else (the training plan chooses the rest), then ``segpipe segment`` and ``segpipe report`` of the
images held out, as a new user would run them.

    python jobs/benchmarks/plain_command.py dsb                 # 30 min of training, about 40 in all
    python jobs/benchmarks/plain_command.py isbi --minutes 30
    python jobs/benchmarks/plain_command.py synthetic --minutes 5
    python jobs/benchmarks/plain_command.py dsb -- augment.invert=false   # an ablation: KEY=VALUE given to train

Data sets and their held-out images:

- ``dsb``: ``../shared/datasets/dsb2018-nuclei-train``; its ids in sorted order, every 5th
  (position % 5 == 4) held out (106 of 531), the rest the training data (the plan carves its own
  validation share from them by key hash).
- ``isbi``: ``../shared/datasets/isbi2012-membrane``; slices 0-24 train, 25-29 held out.
- ``synthetic``: the demo's sample data (160 training images, 32 held out).

Prints the plan, then foreground IoU pooled (summed TP/FP/FN) and per image (mean), Dice, and
the pixel error of the held-out images, from the report; writes ``<workdir>/plain_<set>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATASETS = ROOT.parent / "shared" / "datasets"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=("dsb", "isbi", "synthetic"))
    parser.add_argument("--minutes", type=float, default=30.0, help="--max-minutes of the training (default 30)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/segpipe-plain"))
    parser.add_argument("--source", type=Path, help="the data set's folder (default: ../shared/datasets/...)")
    parser.add_argument("overrides", nargs="*", help="KEY=VALUE given to segpipe train (ablations)")
    return parser.parse_intermixed_args(argv)  # the overrides may follow the options


def linked_folder(pairs: list[tuple[Path, Path, str]], folder: Path) -> None:
    """Make ``folder/images`` and ``folder/masks`` of links to each ``(image, mask, name)``."""
    shutil.rmtree(folder, ignore_errors=True)
    for part in ("images", "masks"):
        (folder / part).mkdir(parents=True)
    for image, mask, name in pairs:
        os.symlink(image.resolve(), folder / "images" / name)
        os.symlink(mask.resolve(), folder / "masks" / name)


def split(dataset: str, source: Path, work: Path) -> tuple[Path, Path]:
    """Write the training and held-out folders of ``dataset``; return them."""
    train, held = work / "train", work / "held-out"
    if dataset == "synthetic":
        for folder, count, seed in ((train, 160, 0), (held, 32, 1)):
            shutil.rmtree(folder, ignore_errors=True)
            segpipe("sample-data", "--output", str(folder), "--num-images", str(count), "--num-shards",
                    "4" if folder == train else "1", f"seed={seed}", "num_classes=3", "min_size=64", "max_size=96")
        return train, held
    if not (source / "images").is_dir():
        raise SystemExit(f"skipped: no data at {source}")
    names = sorted(path.name for path in (source / "images").glob("*.png"))
    if dataset == "isbi":
        held_names = {f"{index}.png" for index in range(25, 30)}
    else:
        held_names = {name for index, name in enumerate(names) if index % 5 == 4}
    pairs = {name: (source / "images" / name, source / "masks" / name, name) for name in names}
    linked_folder([pairs[name] for name in names if name not in held_names], train)
    linked_folder([pairs[name] for name in names if name in held_names], held)
    return train, held


def segpipe(*args: str) -> str:
    """Run a segpipe command; return its standard output (its log goes to the console); stop on failure."""
    command = [sys.executable, "-m", "jobs.cli", *args]
    print("$ segpipe " + " ".join(args), flush=True)
    done = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    print(done.stdout, end="", flush=True)
    if done.returncode:
        raise SystemExit(f"segpipe {args[0]} failed with exit status {done.returncode}")
    return done.stdout


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    source = args.source or DATASETS / {"dsb": "dsb2018-nuclei-train", "isbi": "isbi2012-membrane"}.get(args.dataset, "")
    work = args.workdir / args.dataset
    train, held = split(args.dataset, source, work)
    model, run = work / "model", work / "run"
    shutil.rmtree(model, ignore_errors=True)
    started = time.perf_counter()
    plan = segpipe("train", "--data", str(train), "--output", str(model), "--plan-only", *args.overrides)
    segpipe("train", "--data", str(train), "--output", str(model), "--max-minutes", f"{args.minutes:g}", *args.overrides)
    trained = time.perf_counter() - started
    shutil.rmtree(run, ignore_errors=True)
    segpipe("segment", "--input", str(held), "--model", str(model), "--output", str(run))
    segpipe("report", str(run))
    summary = json.loads(next(run.rglob("summary.json")).read_text())
    info = json.loads((model / "model.json").read_text())
    history = info["training"]["history"]
    foreground = [entry for entry in summary["classes"] if entry["name"] != "background"]
    figures = {
        "dataset": args.dataset, "minutes": args.minutes, "overrides": args.overrides,
        "training_seconds": round(trained, 1), "epochs": len(history), "best_epoch": info["training"]["best_epoch"],
        "held_out_images": summary["counts"]["ok"], "pixel_error": 1.0 - summary["pixel_accuracy"],
        "classes": {entry["name"]: {"iou_pooled": entry["iou"]["micro"], "iou_per_image": entry["iou"]["macro"],
                                    "dice_pooled": entry["dice"]["micro"], "dice_per_image": entry["dice"]["macro"]}
                    for entry in foreground},
        "plan": info.get("plan"),
    }
    (work / f"plain_{args.dataset}.json").write_text(json.dumps(figures, indent=2))
    print(plan, end="")
    print(f"\n{args.dataset}: {figures['held_out_images']} held-out images; trained {len(history)} epochs "
          f"(best {figures['best_epoch']}) in {trained / 60:.1f} min with --max-minutes {args.minutes:g}")
    for name, entry in figures["classes"].items():
        print(f"  {name}: IoU pooled {entry['iou_pooled']:.4f} / per image {entry['iou_per_image']:.4f}; "
              f"Dice pooled {entry['dice_pooled']:.4f} / per image {entry['dice_per_image']:.4f}")
    print(f"  pixel error {figures['pixel_error']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
