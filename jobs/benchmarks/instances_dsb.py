"""Objects on real nuclei: connected components, the size-aware watershed, and a border model.

    python jobs/benchmarks/instances_dsb.py --minutes 30                    # trains the border model (about 35 min)
    python jobs/benchmarks/instances_dsb.py --minutes 30 --classes-model M  # and compares a class model M
    python jobs/benchmarks/instances_dsb.py --cost-only                     # the object stage's cost alone

The DSB 2018 training set is split as ``plain_command.py dsb`` splits it (every 5th id in sorted
order held out), with its instance labels on both sides. ``segpipe train --data TRAIN --output M
--max-minutes N`` plans a border model there (the data holds instance labels). The held-out images
are segmented with ``--objects`` under each split the model takes (``none``, ``watershed``, and
``borders`` for the border model) and reported; a class model given by ``--classes-model`` (or
trained with ``model.target=classes`` by ``--train-classes``) is segmented under ``none`` and
``watershed``. Printed and written to ``<workdir>/instances_dsb.json``: the instance score (the
competition's: mean over IoU thresholds 0.50-0.95 of TP/(TP+FP+FN), mean over images), F1 at 0.5,
objects found against true, and the pixel IoU of the foreground.

The cost of each way, per image (milliseconds of :func:`pipeline.objects.label_objects` on the
held-out images' true masks, and their border targets for ``borders``) and on one 4,096-px image
tiled from them, is measured in one process.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from jobs.benchmarks.plain_command import DATASETS, segpipe

SPLITS = {"classes": ("none", "watershed"), "borders": ("none", "watershed", "borders")}


def split_folders(source: Path, work: Path) -> tuple[Path, Path]:
    """Write training and held-out folders (images, masks, instances) of links into ``source``."""
    names = sorted(path.name for path in (source / "images").glob("*.png"))
    parts = {"train": [n for i, n in enumerate(names) if i % 5 != 4], "held-out": [n for i, n in enumerate(names) if i % 5 == 4]}
    for part, chosen in parts.items():
        for folder in ("images", "masks", "instances"):
            target = work / part / folder
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir(parents=True)
            for name in chosen:
                (target / name).symlink_to((source / folder / name).resolve())
    return work / "train", work / "held-out"


def evaluate(model: Path, held: Path, work: Path, split: str) -> dict:
    """Segment the held-out images with objects by ``split``; return the report's figures."""
    run = work / f"run-{model.name}-{split}"
    shutil.rmtree(run, ignore_errors=True)
    started = time.perf_counter()
    segpipe("segment", "--input", str(held), "--model", str(model), "--output", str(run), "--objects", "--split", split)
    seconds = time.perf_counter() - started
    segpipe("report", str(run))
    summary = json.loads(next(run.rglob("summary.json")).read_text())
    nucleus = summary["objects"]["classes"][0]
    foreground = [entry for entry in summary["classes"] if entry["name"] != "background"][0]
    return {"model": model.name, "split": split, "images": summary["objects"]["images"],
            "methods": summary["objects"]["methods"], "instance_score": nucleus["dsb_score"]["macro"],
            "f1": nucleus["f1"]["macro"], "objects_predicted": nucleus["objects_predicted"],
            "objects_true": nucleus["objects_true"], "iou_pooled": foreground["iou"]["micro"],
            "iou_per_image": foreground["iou"]["macro"], "segment_seconds": round(seconds, 1)}


def object_costs(held: Path, repeats: int = 1) -> dict[str, dict[str, float]]:
    """Return milliseconds per image of each way to find objects, on the held-out true masks, and on one large image."""
    from PIL import Image

    from pipeline import objects

    labels = [np.asarray(Image.open(path)).astype(np.int32) for path in sorted((held / "instances").glob("*.png"))]
    inputs = {"none": [(lab > 0).astype(np.uint8) for lab in labels]}
    inputs["watershed"] = inputs["none"]
    inputs["borders"] = [objects.border_target((lab > 0).astype(np.uint8), lab, 2, 2) for lab in labels]
    costs: dict[str, dict[str, float]] = {}
    for split, masks in inputs.items():
        started = time.perf_counter()
        for _ in range(repeats):
            for mask in masks:
                objects.label_objects(mask, 2, split=split)
        per_image = (time.perf_counter() - started) * 1000 / (repeats * len(masks))
        tiles = [mask for mask in masks if mask.shape == (256, 256)][:256]
        large = np.block([[tiles[(row * 16 + col) % len(tiles)] for col in range(16)] for row in range(16)])
        started = time.perf_counter()
        found = objects.label_objects(large, 2, split=split)[0].max()
        costs[split] = {"ms_per_image": round(per_image, 1), "large_image_seconds": round(time.perf_counter() - started, 2),
                        "large_image_objects": int(found), "large_image_side": int(large.shape[0])}
    return costs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0, help="the training budget of each model")
    parser.add_argument("--source", type=Path, default=DATASETS / "dsb2018-nuclei-train")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/segpipe-instances"))
    parser.add_argument("--classes-model", type=Path, help="a class model trained on the same training ids")
    parser.add_argument("--train-classes", action="store_true", help="also train a class model (model.target=classes)")
    parser.add_argument("--borders-model", type=Path, help="a border model already trained: evaluate it only")
    parser.add_argument("--cost-only", action="store_true")
    args = parser.parse_args(argv)
    if not (args.source / "instances").is_dir():
        print(f"skipped: no DSB 2018 data with instance labels at {args.source}")
        return 0
    train, held = split_folders(args.source, args.workdir)
    results: dict = {"minutes": args.minutes, "costs": object_costs(held)}
    if not args.cost_only:
        models = {}
        for target in ("borders", "classes"):
            given = args.borders_model if target == "borders" else args.classes_model
            if given is not None:
                models[target] = given
            elif target == "borders" or args.train_classes:
                model = args.workdir / f"model-{target}"
                shutil.rmtree(model, ignore_errors=True)
                segpipe("train", "--data", str(train), "--output", str(model), "--max-minutes", f"{args.minutes:g}",
                        f"model.target={target}")
                models[target] = model
        results["runs"] = [evaluate(model, held, args.workdir, split)
                           for target, model in models.items() for split in SPLITS[target]]
    (args.workdir / "instances_dsb.json").write_text(json.dumps(results, indent=2))
    print("| model | objects by | instance score | F1 at 0.5 | objects found / true | pixel IoU pooled / per image |")
    print("|---|---|---|---|---|---|")
    for run in results.get("runs", []):
        print(f"| {run['model']} | {run['split']} | {run['instance_score']:.3f} | {run['f1']:.3f} | "
              f"{run['objects_predicted']} / {run['objects_true']} | {run['iou_pooled']:.3f} / {run['iou_per_image']:.3f} |")
    print("\n| objects by | ms per image (held-out true masks) | one image of 4,096 px: seconds, objects |")
    print("|---|---|---|")
    for split, cost in results["costs"].items():
        print(f"| {split} | {cost['ms_per_image']} | {cost['large_image_seconds']} s, {cost['large_image_objects']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
