"""Label maps on real data: a VOC-style ignore band, and the COCO path, on the DSB 2018 nuclei.

    python jobs/benchmarks/labels_dsb.py                       # 2 x 12 min of training, about 35 minutes in all
    python jobs/benchmarks/labels_dsb.py --minutes 1 --every 20   # smoke run

Data: ``../shared/datasets/dsb2018-nuclei-train`` (or ``--dataset``). Its ids in sorted order; every
5th (position % 5 == 4) is held out for validation, the rest train.

1. **Ignore band.** PASCAL VOC draws a void band (255) along every object's boundary. Here every
   training mask gets a 2-px band of 255 along each nucleus boundary, between touching nuclei too
   (``skimage.segmentation.find_boundaries``, mode ``thick``), and two models train for the same
   time budget: one reading the masks through ``labels.yaml`` with ``ignore: [255]`` (the band
   counts in no loss), one with the band taken as background (what a user without ignore labels
   does). Both validate on the held-out images' full masks.
2. **COCO path.** The held-out images and their nucleus instances are converted to a COCO
   instances file (:mod:`jobs.benchmarks.dsb_coco`); each model segments it with ``--objects``
   (connected components) through ``--input .../annotations.json``; the run is exported with
   ``segpipe export --format coco`` and scored by pycocotools' COCOeval (segm AP), beside
   segpipe's own object metrics on the same run (DSB score, F1 and PQ at 0.5) and pixel IoU.

Prints a table and writes ``<workdir>/labels_dsb.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without installing

from jobs.benchmarks.dsb_coco import DEFAULT_DATASET, dsb_ids, write_coco
from pipeline.config import (
    ExportConfig,
    ModelConfig,
    ObjectsConfig,
    ReportConfig,
    SegmentConfig,
    TrainConfig,
    load_config,
)
from pipeline.imaging import IGNORE
from pipeline.report.build import build_report
from pipeline.report.export import export_run
from pipeline.segment.run import run_segmentation
from pipeline.train.run import run_training

log = logging.getLogger("labels_dsb")
BAND = 2  # pixels: find_boundaries' thick mode marks the pixels on both sides of a boundary


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/segpipe-labels-dsb"))
    parser.add_argument("--minutes", type=float, default=12.0, help="training budget of each model (default 12)")
    parser.add_argument("--every", type=int, default=1, help="use every Nth id only (smoke runs)")
    parser.add_argument("--input-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def banded(instances: np.ndarray) -> np.ndarray:
    """Return the class mask (0/1) of an instance label image with a 2-px band of 255 on every boundary."""
    from skimage.segmentation import find_boundaries

    mask = (instances > 0).astype(np.uint8)
    mask[find_boundaries(instances, mode="thick")] = IGNORE
    return mask


def write_folders(dataset: Path, ids: list[str], work: Path) -> dict[str, Path]:
    """Write the training folders (banded, band as background) and the validation folder (full masks)."""
    held_out = [image_id for index, image_id in enumerate(ids) if index % 5 == 4]
    training = [image_id for image_id in ids if image_id not in set(held_out)]
    folders = {name: work / name for name in ("ignored", "background", "val")}
    for folder in folders.values():
        shutil.rmtree(folder, ignore_errors=True)
        for part in ("images", "masks"):
            (folder / part).mkdir(parents=True)
    band_pixels = labelled = 0
    for image_id in ids:
        instances = np.array(Image.open(dataset / "instances" / f"{image_id}.png"))
        targets = ("val",) if image_id in held_out else ("ignored", "background")
        for name in targets:
            os.symlink((dataset / "images" / f"{image_id}.png").resolve(), folders[name] / "images" / f"{image_id}.png")
        if image_id in held_out:
            Image.fromarray((instances > 0).astype(np.uint8)).save(folders["val"] / "masks" / f"{image_id}.png")
            continue
        mask = banded(instances)
        band_pixels += int((mask == IGNORE).sum())
        labelled += mask.size
        Image.fromarray(mask).save(folders["ignored"] / "masks" / f"{image_id}.png")
        Image.fromarray(np.where(mask == IGNORE, 0, mask).astype(np.uint8)).save(
            folders["background"] / "masks" / f"{image_id}.png")
    (folders["ignored"] / "labels.yaml").write_text("classes: [background, nucleus]\nignore: [255]\n")
    log.info("%d training images (band: %.1f %% of their pixels), %d held out", len(training),
             100 * band_pixels / max(1, labelled), len(held_out))
    write_coco(dataset, held_out, work / "val-coco")
    return {**folders, "coco": work / "val-coco" / "annotations.json"}


def train(data: Path, val: Path, output: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Train a 2-class native-scale U-Net on ``data`` for the budget; return its best validation metrics."""
    shutil.rmtree(output, ignore_errors=True)
    cfg = load_config(TrainConfig, options={
        "data": str(data), "val_data": str(val), "output": str(output), "num_workers": 1,
        "epochs": 1000, "max_minutes": args.minutes, "scale": "native", "seed": args.seed,
        "model": ModelConfig(input_size=args.input_size, channels=1, num_classes=2, depth=4, base_filters=16),
        "optim.batch_size": 8, "loader.normalization": "minmax"})
    started = time.perf_counter()
    summary = run_training(cfg)
    return {"epochs": summary.epochs, "seconds": round(time.perf_counter() - started, 1),
            "val_iou": summary.best_metrics.get("val_iou"), "val_macro_iou": summary.best_metrics.get("val_macro_iou")}


def segment_and_score(model: Path, coco: Path, output: Path) -> dict[str, Any]:
    """Segment the COCO file with objects, report, export and COCOeval; return the figures."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    run_segmentation(SegmentConfig(input=str(coco), model=str(model), output=str(output), overwrite=True,
                                   objects=ObjectsConfig(enabled=True)))
    summary = json.loads(Path(build_report(ReportConfig(run=str(output), worst=0)).summary_url).read_text())
    export_run(ExportConfig(run=str(output), output=str(output / "results.json")))
    results = json.loads((output / "results.json").read_text())
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO(str(coco))
        evaluation = COCOeval(truth, truth.loadRes(results), "segm")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    nucleus = summary["objects"]["classes"][0]
    return {"iou_pooled": summary["classes"][1]["iou"]["micro"], "iou_per_image": summary["classes"][1]["iou"]["macro"],
            "dsb_score": nucleus["dsb_score"]["macro"], "f1": nucleus["f1"]["macro"], "pq": nucleus["pq"]["macro"],
            "coco_ap": float(evaluation.stats[0]), "coco_ap50": float(evaluation.stats[1]),
            "coco_ap75": float(evaluation.stats[2]), "objects_predicted": nucleus["objects_predicted"],
            "objects_true": nucleus["objects_true"]}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not (args.dataset / "instances").is_dir():
        print(f"skipped: no DSB data at {args.dataset}", file=sys.stderr)
        return 0
    ids = [image_id for index, image_id in enumerate(dsb_ids(args.dataset)) if index % args.every == 0]
    folders = write_folders(args.dataset, ids, args.workdir)
    figures: dict[str, Any] = {"minutes": args.minutes, "images": len(ids)}
    for name in ("ignored", "background"):
        model = args.workdir / f"model-{name}"
        figures[name] = {"training": train(folders[name], folders["val"], model, args)}
        figures[name].update(segment_and_score(model, folders["coco"], args.workdir / f"seg-{name}"))
    (args.workdir / "labels_dsb.json").write_text(json.dumps(figures, indent=2))
    print(f"\n{len(ids)} DSB images, {args.minutes:g} min of training per model; held out: every 5th id")
    print("| band on the training masks | epochs | IoU pooled / per image | DSB score | F1@0.5 | PQ | COCO AP / AP50 / AP75 |")
    print("|---|---|---|---|---|---|---|")
    for name, label in (("ignored", "ignored (labels.ignore=255)"), ("background", "taken as background")):
        f = figures[name]
        print(f"| {label} | {f['training']['epochs']} | {f['iou_pooled']:.3f} / {f['iou_per_image']:.3f} | "
              f"{f['dsb_score']:.3f} | {f['f1']:.3f} | {f['pq']:.3f} | "
              f"{f['coco_ap']:.3f} / {f['coco_ap50']:.3f} / {f['coco_ap75']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
