"""Convert the DSB 2018 nuclei (images/, instances/) to a COCO instances file, as COCO users keep data.

    python jobs/benchmarks/dsb_coco.py --output /tmp/dsb-coco                 # every image
    python jobs/benchmarks/dsb_coco.py --output /tmp/dsb-val --every 5 --offset 4   # every 5th id

Each nucleus of an image's 16-bit instance label image becomes one annotation of category 1
("nucleus") with its pixels as a compressed RLE, its area and its bounding box; images are linked
(not copied) beside ``<output>/annotations.json`` under ``images/``. The ids are taken in sorted
order and ``--every``/``--offset`` keep the ids whose position ``i`` has ``i % every == offset``
(the split :mod:`jobs.benchmarks.labels_dsb` uses).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image

DEFAULT_DATASET = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "dsb2018-nuclei-train"


def dsb_ids(dataset: Path) -> list[str]:
    """Return the data set's image ids in sorted order."""
    return sorted(path.stem for path in (dataset / "images").glob("*.png"))


def coco_document(dataset: Path, ids: list[str]) -> dict:
    """Return the COCO instances document of the images ``ids`` (file names ``images/<id>.png``)."""
    from pycocotools import mask as coco_mask

    images, annotations = [], []
    for number, image_id in enumerate(ids, start=1):
        labels = np.array(Image.open(dataset / "instances" / f"{image_id}.png"))
        height, width = labels.shape
        images.append({"id": number, "file_name": f"images/{image_id}.png", "height": height, "width": width})
        for label in np.unique(labels[labels > 0]):
            rle = coco_mask.encode(np.asfortranarray((labels == label).astype(np.uint8)))
            annotations.append({"id": len(annotations) + 1, "image_id": number, "category_id": 1, "iscrowd": 0,
                                "segmentation": {"size": [height, width], "counts": rle["counts"].decode()},
                                "area": float(coco_mask.area(rle)),
                                "bbox": [float(v) for v in coco_mask.toBbox(rle)]})
    return {"images": images, "annotations": annotations,
            "categories": [{"id": 1, "name": "nucleus", "supercategory": "cell"}]}


def write_coco(dataset: Path, ids: list[str], output: Path) -> Path:
    """Write ``<output>/annotations.json`` and link the images under ``<output>/images/``; return the file."""
    (output / "images").mkdir(parents=True, exist_ok=True)
    for image_id in ids:
        link = output / "images" / f"{image_id}.png"
        if not link.exists():
            os.symlink((dataset / "images" / f"{image_id}.png").resolve(), link)
    path = output / "annotations.json"
    path.write_text(json.dumps(coco_document(dataset, ids)))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--every", type=int, default=1)
    parser.add_argument("--offset", type=int, default=0)
    args = parser.parse_args(argv)
    if not (args.dataset / "instances").is_dir():
        print(f"no DSB data at {args.dataset} (images/, instances/); give --dataset", file=sys.stderr)
        return 2
    ids = [image_id for index, image_id in enumerate(dsb_ids(args.dataset)) if index % args.every == args.offset]
    path = write_coco(args.dataset, ids, args.output)
    print(f"wrote {len(ids)} images to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
