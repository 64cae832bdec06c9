"""Instances from perfect pixel masks of touching objects: connected components against the watershed split.

    python jobs/benchmarks/objects_split.py                  # 200 images of 128 x 128, a few seconds

Each synthetic image holds discs of radius 5-10 px dropped at random, many touching or
overlapping a little (a later disc's pixels are its own), as nuclei lie in a crowded field.
The ground-truth class mask (every disc's pixels, class 1) goes through
:func:`pipeline.objects.label_objects` with ``split: none`` and with ``split: watershed``, and each
result is scored against the true discs with :func:`pipeline.instances.instance_scores`. This is
what the instance stage can do at best: any pixel error of a model comes on top.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from pipeline.instances import instance_scores
from pipeline.objects import label_objects


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--discs", type=int, default=24, help="discs dropped per image")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    results: dict[str, list[dict]] = {"none": [], "watershed": []}
    touching = 0
    for _ in range(args.images):
        truth = touching_discs(rng, args.size, args.discs)
        mask = (truth > 0).astype(np.uint8)
        for split in results:
            labels, _ = label_objects(mask, 2, split=split)
            results[split].append(instance_scores(truth, labels))
        touching += int(truth.max()) - int(label_objects(mask, 2)[0].max())
    objects = sum(r["objects_true"] for r in results["none"])
    print(f"{args.images} images of {args.size} px, {objects} true objects; connected components merge "
          f"{touching} of them into neighbours")
    print("| split | DSB score (image mean) | F1 at 0.5 | PQ | objects found / true |")
    print("|---|---|---|---|---|")
    for split, rows in results.items():
        found = sum(r["objects_predicted"] for r in rows)
        print(f"| {split} | {np.nanmean([r['dsb_score'] for r in rows]):.3f} | {np.nanmean([r['f1'] for r in rows]):.3f} | "
              f"{np.nanmean([r['pq'] for r in rows]):.3f} | {found / objects:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
