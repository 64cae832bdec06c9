"""Instances from perfect pixel masks of touching objects: connected components against the watershed split.

    python jobs/benchmarks/objects_split.py                  # 200 images of 128 x 128, a few seconds
    python jobs/benchmarks/objects_split.py --diameter 12    # the same, the objects' diameter given
    python jobs/benchmarks/objects_split.py --dsb            # the DSB 2018 training ids' true masks (a minute)

Each synthetic image holds discs of radius 5-10 px dropped at random, many touching or
overlapping a little (a later disc's pixels are its own), as nuclei lie in a crowded field.
The ground-truth class mask (every disc's pixels, class 1) goes through
:func:`pipeline.objects.label_objects` with ``split: none`` and with ``split: watershed``, and each
result is scored against the true discs with :func:`pipeline.instances.instance_scores`. This is
what the instance stage can do at best: any pixel error of a model comes on top.

With ``--dsb`` the masks are the true nuclei of the DSB 2018 images that ``plain_command.py dsb``
and ``instances_dsb.py`` train on (every 5th id in sorted order left out: those are held out), and
the truth their instance labels; a border model's best case is added (``borders``: the border
targets of :func:`pipeline.objects.border_target`, 2 px wide, taken as the prediction).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from jobs.benchmarks.plain_command import DATASETS
from pipeline.instances import instance_scores
from pipeline.objects import border_target, label_objects


def touching_discs(rng: np.random.Generator, size: int, count: int) -> np.ndarray:
    """Return a label image of ``count`` discs at random centres (a later disc over an earlier one)."""
    rows, cols = np.mgrid[0:size, 0:size]
    labels = np.zeros((size, size), np.int32)
    for label in range(1, count + 1):
        radius = rng.uniform(5, 10)
        centre = rng.uniform(radius, size - radius, 2)
        labels[(rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2] = label
    # a disc covered whole by later ones is gone: renumber what is left
    present = np.unique(labels[labels > 0])
    lookup = np.zeros(count + 1, np.int32)
    lookup[present] = np.arange(1, len(present) + 1)
    return lookup[labels]


def synthetic_truths(args: argparse.Namespace) -> Iterator[np.ndarray]:
    """Yield the label images of the synthetic crowded discs."""
    rng = np.random.default_rng(args.seed)
    for _ in range(args.images):
        yield touching_discs(rng, args.size, args.discs)


def dsb_truths(source: Path) -> Iterator[np.ndarray]:
    """Yield the instance label images of the DSB 2018 training ids (every 5th id, held out elsewhere, left out)."""
    from PIL import Image

    names = sorted(path.name for path in (source / "instances").glob("*.png"))
    for index, name in enumerate(names):
        if index % 5 != 4:
            yield np.asarray(Image.open(source / "instances" / name)).astype(np.int32)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--discs", type=int, default=24, help="discs dropped per image")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--diameter", type=float, help="the objects' typical diameter (unset: measured on each image)")
    parser.add_argument("--dsb", action="store_true", help="the DSB 2018 training ids' true masks instead")
    args = parser.parse_args(argv)
    source = DATASETS / "dsb2018-nuclei-train"
    if args.dsb and not (source / "instances").is_dir():
        print(f"skipped: no DSB 2018 instance labels at {source}")
        return 0
    results: dict[str, list[dict]] = {"none": [], "watershed": [], **({"borders": []} if args.dsb else {})}
    touching = images = 0
    for truth in (dsb_truths(source) if args.dsb else synthetic_truths(args)):
        mask = (truth > 0).astype(np.uint8)
        images += 1
        for split in results:
            given = border_target(mask, truth, 2, 2) if split == "borders" else mask
            labels, _ = label_objects(given, 2, split=split, diameter=args.diameter)
            results[split].append(instance_scores(truth, labels))
        touching += int(len(np.unique(truth)) - 1) - int(label_objects(mask, 2)[0].max())
    objects = sum(r["objects_true"] for r in results["none"])
    print(f"{images} images, {objects} true objects; connected components merge {touching} of them into neighbours")
    print("| split | DSB score (image mean) | F1 at 0.5 | PQ | objects found / true |")
    print("|---|---|---|---|---|")
    for split, rows in results.items():
        found = sum(r["objects_predicted"] for r in rows)
        print(f"| {split} | {np.nanmean([r['dsb_score'] for r in rows]):.3f} | {np.nanmean([r['f1'] for r in rows]):.3f} | "
              f"{np.nanmean([r['pq'] for r in rows]):.3f} | {found / objects:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
