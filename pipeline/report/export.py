"""A run's predicted objects in other tools' formats: ``segpipe export RUN --format coco --output FILE``.

COCO: a results file (a JSON list, what ``pycocotools.COCO.loadRes`` and ``COCOeval`` read), one
entry per predicted object of a run segmented with ``--objects``: ``image_id``, ``category_id``,
``segmentation`` (compressed RLE of the object's pixels in its instance label image), ``score``
(the mean probability of its class over its pixels) and ``bbox``/``area``. Where the run's input
was a COCO annotations file, image ids and category ids are that file's; otherwise images are
numbered 1, 2, ... in key order and each class index is its category id (the file then says so).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from pipeline import imaging, schema
from pipeline.config import ExportConfig, StorageConfig
from pipeline.io import layout, storage
from pipeline.io.formats.coco import category_classes, image_key, read_coco
from pipeline.report.reading import ReportError, locate_run

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ExportSummary:
    """What an export wrote."""

    output: str
    images: int
    objects: int
    coco_ids: bool  # image and category ids are the input COCO file's

    def line(self) -> str:
        """Return the one line the command prints."""
        ids = "the input's image and category ids" if self.coco_ids else "images numbered in key order, class = category"
        return f"exported {self.objects} objects of {self.images} images to {self.output} ({ids})"


def export_run(cfg: ExportConfig) -> ExportSummary:
    """Write the run's predicted objects as a COCO results file; ReportError where the run has no objects."""
    run = locate_run(cfg.run, cfg.storage, cfg.partial)
    config = run.run_json.get("config") or {}
    if not (config.get("objects") or {}).get("enabled"):
        raise ReportError(f"run {cfg.run} was segmented without objects, so it has no instances to export; "
                          "segment with --objects")
    image_ids, categories = coco_ids(str(config.get("input", "")), cfg.storage)
    results: list[dict[str, Any]] = []
    images = 0
    for url in run.metrics_files:
        shard = layout.shard_of(url)
        rows = shard_rows(url, cfg.storage)
        objects = shard_objects(cfg.run, shard, cfg.storage) if rows else {}
        for key, instances_uri in rows:
            images += 1
            if not objects.get(key):
                continue
            data = storage.read_bytes(instances_uri, cfg.storage)
            labels = imaging.decode_instances(data, instances_shape(data))
            results.extend(object_results(labels, objects[key], image_ids.get(key, 0), categories, key))
    if not image_ids:  # another input: images numbered in key order
        numbers = {key: index for index, key in enumerate(sorted({entry["key"] for entry in results}), start=1)}
        for entry in results:
            entry["image_id"] = numbers[entry["key"]]
    for entry in results:
        del entry["key"]
    storage.write_bytes(cfg.output, json.dumps(results).encode(), cfg.storage)
    summary = ExportSummary(cfg.output, images, len(results), bool(image_ids))
    log.debug("%s", summary.line())  # the command line prints it
    return summary


def shard_rows(url: str, storage_config: StorageConfig | None) -> list[tuple[str, str]]:
    """Return ``(key, instances URL)`` of each ok row of a metrics file that has instances."""
    fs, path = storage.filesystem_for(url, storage_config)
    with fs.open(path, "rb") as handle:
        table = pq.read_table(handle, columns=["key", "status", "instances_uri"])
    return [(key, uri) for key, status, uri in zip(*(table.column(name).to_pylist()
                                                     for name in ("key", "status", "instances_uri")))
            if status == schema.STATUS_OK and uri]


def shard_objects(run: str, shard: str, storage_config: StorageConfig | None) -> dict[str, list[tuple[int, int, float]]]:
    """Return ``key -> [(label, class, mean score)]`` of a shard's object rows."""
    url = layout.objects_url(run, shard)
    fs, path = storage.filesystem_for(url, storage_config)
    if not fs.exists(path):
        return {}
    with fs.open(path, "rb") as handle:
        table = pq.read_table(handle, columns=["key", "label", "class", "mean_score"])
    objects: dict[str, list[tuple[int, int, float]]] = {}
    for key, label, class_index, score in zip(*(table.column(name).to_pylist()
                                                for name in ("key", "label", "class", "mean_score"))):
        objects.setdefault(key, []).append((int(label), int(class_index), float(score if score is not None else 1.0)))
    return objects


def instances_shape(data: bytes) -> tuple[int, int]:
    """Return an instance label image's ``(height, width)`` from its header."""
    if imaging.is_tiff(data):
        import io

        import tifffile

        with tifffile.TiffFile(io.BytesIO(data)) as tiff:
            return tuple(tiff.pages[0].shape[:2])  # type: ignore[return-value]
    from pipeline.imaging.codecs import open_header

    picture = open_header(data, "instance label image", max_pixels=None)
    return picture.height, picture.width


def coco_ids(input_url: str, storage_config: StorageConfig | None) -> tuple[dict[str, int], dict[int, int]]:
    """Return ``(key -> image id, class -> category id)`` of a COCO input, or two empty maps for another input."""
    if not input_url.lower().endswith(".json"):
        return {}, {}
    data = read_coco(input_url, storage_config)
    classes = category_classes(data, input_url)
    return ({image_key(entry): int(entry["id"]) for entry in data["images"] if isinstance(entry, dict) and "id" in entry},
            {index: category for category, index in classes.items()})


def object_results(labels: np.ndarray, objects: list[tuple[int, int, float]], image_id: int,
                   categories: dict[int, int], key: str = "") -> list[dict[str, Any]]:
    """Return the COCO result entries of one image's objects (label, class, score) in its label image
    (each with its ``key`` too, which the export drops once the image ids are settled)."""
    from pycocotools import mask as coco_mask

    entries = []
    for label, class_index, score in objects:
        pixels = np.asfortranarray((labels == label).astype(np.uint8))
        rle = coco_mask.encode(pixels)
        entries.append({"key": key, "image_id": image_id, "category_id": categories.get(class_index, class_index),
                        "segmentation": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode()},
                        "score": round(score, 6), "area": float(coco_mask.area(rle)),
                        "bbox": [round(float(v), 2) for v in coco_mask.toBbox(rle)]})
    return entries
