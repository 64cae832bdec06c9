"""The report's objects section: instance metrics per class over the run, and the objects' areas.

Read in a second pass over the committed metrics files (only the object columns) and over
``objects/<shard>.parquet`` (only ``class`` and ``area``), keeping sums, one float per image and
metric, a sample of per-image counts for the scatter, and a histogram of areas per class:
memory stays bounded whatever the number of objects.

Definitions (also in ``summary.json``, ``objects.definitions``):

* Matching: a predicted and a true object of the same class match when their IoU is greater
  than ``t`` (strictly, as the 2018 Data Science Bowl defines it), one to one, at
  ``t = 0.50, 0.55, ..., 0.95``.
* Per image and class: ``dsb_score`` = mean over ``t`` of ``TP / (TP + FP + FN)``, ``f1`` =
  ``2TP / (2TP + FP + FN)`` at 0.5, ``pq`` = ``SQ x RQ`` at 0.5; NaN when the class has no object on
  either side (excluded from the macro means, counted in ``nan_images``).
* Macro: the mean over images (95% bootstrap interval). Pooled (``micro``): the same formula on
  TP, FP, FN summed over the images, and for PQ the matched IoUs summed too
  (``sum IoU / (TP + FP/2 + FN/2)``); each image's sum of matched IoU is ``pq x (TP + FP/2 + FN/2)``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.config import StorageConfig
from pipeline.instances import THRESHOLDS
from pipeline.io import layout, storage
from pipeline.report.aggregate import WorstRows, finite_or_none, list_matrix, value_stats
from pipeline.report.reading import RunFiles, metric_batches

OBJECT_COLUMNS = ("key", "source", "status", "height", "width", "mask_uri", "instances_uri", "objects_method", "truth_instances",
                  "objects_predicted", "objects_true", "dsb_score", "object_f1", "pq", "object_tp", "object_fp",
                  "object_fn", "mean_dsb_score")
SCATTER_IMAGES = 2000  # per-image count pairs kept for the scatter (the first images read)
AREA_BINS_PER_OCTAVE = 4
AREA_OCTAVES = 40  # areas up to 2**40 pixels

DEFINITIONS = {
    "match": "a predicted and a true object of the same class match when IoU > t (strictly), one to one, "
             f"at t = {', '.join(f'{t:.2f}' for t in THRESHOLDS)}",
    "dsb_score": "per image and class: mean over t of TP/(TP+FP+FN) (2018 Data Science Bowl); NaN when the class has "
                 "no object on either side",
    "f1": "per image and class: 2TP/(2TP+FP+FN) at t = 0.5",
    "pq": "per image and class: panoptic quality SQ x RQ at t = 0.5, SQ = mean IoU of the matched pairs, "
          "RQ = TP/(TP+FP/2+FN/2)",
    "macro": "mean over images, NaN excluded, with a 95% bootstrap interval",
    "micro": "pooled: the formula on TP, FP, FN (and, for PQ, matched IoU) summed over images with ground truth",
    "by_threshold": "TP/(TP+FP+FN) at each t: pooled over images, and the macro mean over images",
    "methods": "how touching objects were told apart, images per method: components (none split), watershed (a "
               "size-aware watershed of the predicted mask), borders (a border model's interiors grown back)",
    "truth_instances": "where the true objects came from: labels (instance label images) or components (connected "
                       "components of the ground-truth mask)",
    "area": "object areas in pixels, from objects/*.parquet; quantiles are read from a histogram of "
            f"{AREA_BINS_PER_OCTAVE} bins per doubling (within 19%)",
    "count_error": "per image: predicted objects minus true objects",
}


def ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Return ``numerator / denominator``, NaN where the denominator is 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, numerator / np.maximum(denominator, 1e-300), np.nan)


def nested_counts(column: pa.Array, rows: pa.Array, width: int) -> np.ndarray:
    """Return a ``list<list<int>>`` column (class, threshold) at ``rows`` as ``(n, width, thresholds)``."""
    selected = column.filter(rows)
    if len(selected) == 0:
        return np.zeros((0, width, len(THRESHOLDS)), dtype=np.int64)
    flat = pc.fill_null(pc.list_flatten(pc.list_flatten(selected)), 0).to_numpy(zero_copy_only=False)
    return flat.astype(np.int64).reshape(-1, width, len(THRESHOLDS))


class ObjectAggregator:
    """Streams the object columns of metric batches into per-class sums, per-image values and the worst images."""

    def __init__(self, num_classes: int, worst: int) -> None:
        self.width = num_classes
        self.worst_n = worst
        shape = (num_classes, len(THRESHOLDS))
        self.sums = {name: np.zeros(shape, dtype=np.int64) for name in ("tp", "fp", "fn")}
        self.matched_iou = np.zeros(num_classes)
        self.curve_sum, self.curve_images = np.zeros(shape), np.zeros(shape, dtype=np.int64)
        self.predicted_total = np.zeros(num_classes, dtype=np.int64)
        self.true_total = np.zeros(num_classes, dtype=np.int64)
        self.chunks: dict[str, list[np.ndarray]] = {name: [] for name in ("dsb_score", "object_f1", "pq", "error")}
        self.scatter: list[tuple[list[int], list[int]]] = []
        self.sources: dict[str, int] = {}
        self.methods: dict[str, int] = {}
        self.images = 0
        self.with_truth = 0
        self.worst = WorstRows(worst, ("key", "source", "mask_uri", "instances_uri", "height", "width", "dsb_score",
                                       "mean_dsb_score", "objects_predicted", "objects_true"))

    def add(self, batch: pa.RecordBatch) -> None:
        """Fold one record batch (:data:`OBJECT_COLUMNS`) into the aggregates."""
        ok = pc.fill_null(pc.and_(pc.equal(batch.column("status"), "ok"), batch.column("objects_predicted").is_valid()),
                          False)
        predicted = list_matrix(batch.column("objects_predicted"), ok, self.width, np.int64)
        self.images += len(predicted)
        for item in pc.value_counts(batch.column("objects_method").filter(ok)).to_pylist():
            if item["values"] is not None:
                self.methods[item["values"]] = self.methods.get(item["values"], 0) + item["counts"]
        self.predicted_total += predicted.sum(axis=0)
        truth = pc.fill_null(pc.and_(ok, batch.column("objects_true").is_valid()), False)
        true_counts = list_matrix(batch.column("objects_true"), truth, self.width, np.int64)
        if not len(true_counts):
            return
        self.with_truth += len(true_counts)
        for item in pc.value_counts(batch.column("truth_instances").filter(truth)).to_pylist():
            self.sources[item["values"]] = self.sources.get(item["values"], 0) + item["counts"]
        self.true_total += true_counts.sum(axis=0)
        predicted_truth = list_matrix(batch.column("objects_predicted"), truth, self.width, np.int64)
        self.chunks["error"].append((predicted_truth - true_counts).astype(np.float64))
        for p, t in zip(predicted_truth, true_counts):
            if len(self.scatter) >= SCATTER_IMAGES:
                break
            self.scatter.append((p.tolist(), t.tolist()))
        counts = {name: nested_counts(batch.column(f"object_{name}"), truth, self.width) for name in ("tp", "fp", "fn")}
        for name, values in counts.items():
            self.sums[name] += values.sum(axis=0)
        per_threshold = ratio(counts["tp"], counts["tp"] + counts["fp"] + counts["fn"])
        self.curve_sum += np.nansum(per_threshold, axis=0)
        self.curve_images += (~np.isnan(per_threshold)).sum(axis=0)
        for name in ("dsb_score", "object_f1", "pq"):
            self.chunks[name].append(list_matrix(batch.column(name), truth, self.width, np.float64))
        first = {name: values[:, :, 0] for name, values in counts.items()}
        pq = np.nan_to_num(self.chunks["pq"][-1])
        self.matched_iou += (pq * (first["tp"] + 0.5 * first["fp"] + 0.5 * first["fn"])).sum(axis=0)
        if self.worst_n:
            self.collect_worst(batch.filter(truth))

    def collect_worst(self, rows: pa.RecordBatch) -> None:
        """Keep the ``worst_n`` rows of lowest ``mean_dsb_score`` (NaN never worst; ties by key)."""
        self.worst.add(rows, pc.fill_null(rows.column("mean_dsb_score"), math.nan).to_numpy(zero_copy_only=False))

    def values(self, name: str) -> np.ndarray:
        """Return the per-image values of ``name`` as ``(images, classes)``."""
        chunks = self.chunks[name]
        return np.concatenate(chunks) if chunks else np.zeros((0, self.width))


class AreaHistogram:
    """Object areas per class in log-spaced bins (:data:`AREA_BINS_PER_OCTAVE` per doubling), with exact count,
    sum, minimum and maximum."""

    def __init__(self, num_classes: int) -> None:
        self.edges = 2.0 ** (np.arange(AREA_OCTAVES * AREA_BINS_PER_OCTAVE + 1) / AREA_BINS_PER_OCTAVE)
        self.counts = np.zeros((num_classes, len(self.edges) - 1), dtype=np.int64)
        self.total = np.zeros(num_classes, dtype=np.int64)
        self.sum = np.zeros(num_classes, dtype=np.float64)
        self.low = np.full(num_classes, np.inf)
        self.high = np.zeros(num_classes)

    def add(self, classes: np.ndarray, areas: np.ndarray) -> None:
        """Add objects of ``classes`` with ``areas`` (pixels)."""
        bins = np.clip(np.searchsorted(self.edges, areas, side="right") - 1, 0, self.counts.shape[1] - 1)
        np.add.at(self.counts, (classes, bins), 1)
        self.total += np.bincount(classes, minlength=len(self.total))[: len(self.total)]
        self.sum += np.bincount(classes, weights=areas, minlength=len(self.total))[: len(self.total)]
        for index in np.unique(classes).tolist():
            chosen = areas[classes == index]
            self.low[index] = min(self.low[index], float(chosen.min()))
            self.high[index] = max(self.high[index], float(chosen.max()))

    def quantile(self, index: int, q: float) -> float | None:
        """Return the ``q`` quantile of class ``index``'s areas, read from the histogram (geometric bin centre)."""
        if not self.total[index]:
            return None
        position = int(np.searchsorted(np.cumsum(self.counts[index]), q * self.total[index], side="left"))
        return float(np.clip(math.sqrt(self.edges[position] * self.edges[position + 1]), self.low[index], self.high[index]))

    def entry(self, index: int) -> dict[str, Any]:
        """Return the area statistics of class ``index`` (histogram trimmed to its occupied bins)."""
        if not self.total[index]:
            return {"objects": 0, "mean": None, "min": None, "max": None, "median": None, "p05": None, "p95": None,
                    "histogram": {"edges": [], "counts": []}}
        occupied = np.flatnonzero(self.counts[index])
        first, last = int(occupied[0]), int(occupied[-1]) + 1
        return {"objects": int(self.total[index]), "mean": finite_or_none(self.sum[index] / self.total[index]),
                "min": float(self.low[index]), "max": float(self.high[index]), "median": self.quantile(index, 0.5),
                "p05": self.quantile(index, 0.05), "p95": self.quantile(index, 0.95),
                "histogram": {"edges": [round(float(e), 3) for e in self.edges[first:last + 1]],
                              "counts": self.counts[index, first:last].tolist()}}


def objects_files(run: RunFiles, storage_config: StorageConfig | None) -> list[str]:
    """Return the objects files of the run's committed shards."""
    committed = {layout.shard_of(url) for url in run.metrics_files}
    found = storage.list_files(layout.folder_url(run.url, layout.OBJECTS), (".parquet",), storage_config)
    return [url for url in found if layout.shard_of(url) in committed]


def read_areas(files: list[str], num_classes: int, storage_config: StorageConfig | None) -> AreaHistogram:
    """Return the area histogram of every object in ``files`` (two columns read, batch by batch)."""
    import pyarrow.parquet as pq

    histogram = AreaHistogram(num_classes)
    for url in files:
        fs, path = storage.filesystem_for(url, storage_config)
        with fs.open(path, "rb") as handle:
            for batch in pq.ParquetFile(handle).iter_batches(batch_size=262_144, columns=["class", "area"]):
                classes = batch.column("class").to_numpy(zero_copy_only=False).astype(np.int64)
                keep = (classes >= 0) & (classes < num_classes)
                histogram.add(classes[keep], batch.column("area").to_numpy(zero_copy_only=False)[keep].astype(np.float64))
    return histogram


def objects_section(run: RunFiles, num_classes: int, names: list[str], worst: int, resamples: int,
                    rng: np.random.Generator, storage_config: StorageConfig | None) -> dict[str, Any]:
    """Return the summary's ``objects`` section of a run segmented with objects."""
    agg = ObjectAggregator(num_classes, worst)
    for batch in metric_batches(run.metrics_files, storage_config, OBJECT_COLUMNS):
        agg.add(batch)
    files = objects_files(run, storage_config)
    areas = read_areas(files, num_classes, storage_config)
    values = {name: agg.values(name) for name in ("dsb_score", "object_f1", "pq", "error")}
    tp, fp, fn = agg.sums["tp"], agg.sums["fp"], agg.sums["fn"]
    pooled_curve = ratio(tp, tp + fp + fn)
    pooled = {
        "dsb_score": pooled_curve.mean(axis=1),  # a class with any object has every threshold defined
        "object_f1": ratio(2 * tp[:, 0], 2 * tp[:, 0] + fp[:, 0] + fn[:, 0]),
        "pq": ratio(agg.matched_iou, tp[:, 0] + 0.5 * fp[:, 0] + 0.5 * fn[:, 0]),
    }
    classes = []
    for index in range(1, num_classes):
        entry: dict[str, Any] = {"index": index, "name": names[index],
                                 "objects_predicted": int(agg.predicted_total[index]), "area": areas.entry(index)}
        if agg.with_truth:
            error = values["error"][:, index]
            entry.update(objects_true=int(agg.true_total[index]),
                         count_error={"mean": finite_or_none(error.mean()) if error.size else None,
                                      "mean_absolute": finite_or_none(np.abs(error).mean()) if error.size else None,
                                      "exact_images": int((error == 0).sum())},
                         pooled={"tp": tp[index].tolist(), "fp": fp[index].tolist(), "fn": fn[index].tolist()},
                         by_threshold={"pooled": [finite_or_none(v) for v in pooled_curve[index]],
                                       "macro": [finite_or_none(v) for v in ratio(agg.curve_sum[index],
                                                                                  agg.curve_images[index])]})
            for name, key in (("dsb_score", "dsb_score"), ("object_f1", "f1"), ("pq", "pq")):
                entry[key] = value_stats(values[name][:, index], pooled[name][index], resamples, rng)
        classes.append(entry)
    return {
        "definitions": DEFINITIONS, "thresholds": list(THRESHOLDS), "match": "iou > t",
        "images": agg.images, "with_ground_truth": agg.with_truth, "truth_instances": dict(sorted(agg.sources.items())),
        "methods": dict(sorted(agg.methods.items())),
        "objects_files": len(files), "classes": classes,
        "scatter": {"images": len(agg.scatter), "predicted": [p for p, _ in agg.scatter],
                    "true": [t for _, t in agg.scatter]},
        "worst": agg.worst.rows(),
    }
