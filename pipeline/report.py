"""Dataset-level metric report of a segmentation run: ``report/summary.json`` and ``report/report.html``.

The report streams over the run's ``metrics/*.parquet`` files batch by batch (pyarrow), keeping
only per-class sums, one float per image and metric (for medians, percentiles and the bootstrap),
the worst N rows and the first errors; it never builds one table of the whole run. Overlays read
only the N images they show.

Metric definitions (also written into ``summary.json`` under ``definitions``):

* Per image and class: ``Dice = 2TP / (2TP + FP + FN)``, ``IoU = TP / (TP + FP + FN)``; NaN when
  ``TP + FP + FN = 0`` (class absent from prediction and ground truth). See :mod:`pipeline.metrics`.
* Macro: the mean over images of the per-image value, NaN excluded; ``nan_images`` counts the
  excluded images. ``ci95`` is a 95% percentile bootstrap interval of that mean; ``median`` and
  ``p05`` are the 50th and 5th percentiles of the per-image values.
* Micro: the same formula on TP, FP and FN summed over all images with ground truth.
* Foreground: macro uses each image's ``mean_dice``/``mean_iou`` (mean over classes 1..C-1, NaN
  skipped); micro is the mean of the per-class micro values over classes 1..C-1.
* Pixel accuracy: correctly labelled pixels / all pixels, over the images with ground truth.

Numbers that are undefined (no images to average) are ``null`` in JSON.
"""

from __future__ import annotations

import dataclasses
import heapq
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import schema, storage
from pipeline.config import ReportConfig, StorageConfig
from pipeline.metrics import dice_from_counts, foreground_mean, iou_from_counts
from pipeline.resume import marker_urls, shard_of

log = logging.getLogger(__name__)

REPORT_FORMAT = "segpipe-report/1"
KEPT_ERRORS = 200
EXACT_BOOTSTRAP_LIMIT = 10_000  # above this many values the bootstrap resamples a fine histogram
BOOTSTRAP_BINS = 1 << 14
HISTOGRAM_BINS = 20
READ_COLUMNS = ("key", "source", "status", "error", "error_kind", "height", "width", "mask_uri", "class_pixels",
                "tp", "fp", "fn", "dice", "iou", "mean_dice", "mean_iou", "model_id", "run_id", "seconds")

DEFINITIONS = {
    "dice": "per image and class: 2TP/(2TP+FP+FN); NaN (excluded from means, counted in nan_images) when TP+FP+FN=0",
    "iou": "per image and class: TP/(TP+FP+FN); NaN when TP+FP+FN=0",
    "macro": "mean over images of the per-image value, NaN excluded",
    "ci95": "95% percentile bootstrap interval of the macro mean (resampling images)",
    "median": "50th percentile of the per-image values, NaN excluded",
    "p05": "5th percentile of the per-image values, NaN excluded",
    "micro": "the formula applied to TP, FP, FN summed over all images with ground truth",
    "foreground": "classes 1..C-1 (class 0 is background): macro over each image's mean_dice/mean_iou, "
                  "micro = mean of the per-class micro values",
    "pixel_accuracy": "correctly labelled pixels / all pixels, over images with ground truth",
    "predicted_fraction": "predicted pixels of the class / all pixels, over ok images",
    "true_fraction": "ground-truth pixels of the class / all pixels, over images with ground truth",
    "null": "a value with nothing to average (no images, or all NaN) is null",
}

NUMBER = {"type": ["number", "null"]}
STATS_SCHEMA = {
    "type": "object",
    "required": ["images", "nan_images", "macro", "ci95", "median", "p05", "micro", "histogram"],
    "properties": {
        "images": {"type": "integer"}, "nan_images": {"type": "integer"}, "macro": NUMBER, "median": NUMBER,
        "p05": NUMBER, "micro": NUMBER,
        "ci95": {"anyOf": [{"type": "null"}, {"type": "array", "items": NUMBER, "minItems": 2, "maxItems": 2}]},
        "histogram": {"type": "object", "required": ["bins", "range", "counts"]},
    },
}
SUMMARY_SCHEMA: dict[str, Any] = {  # the documented keys of summary.json (README, "Report")
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["format", "definitions", "run", "counts", "ground_truth", "classes", "foreground",
                 "pixel_accuracy", "worst", "errors", "errors_truncated", "report"],
    "properties": {
        "format": {"const": "segpipe-report/1"},
        "definitions": {"type": "object", "additionalProperties": {"type": "string"}},
        "run": {"type": "object", "required": ["url", "run_id", "status", "partial", "started", "ended", "model_id",
                                                "images_per_second", "image_seconds", "config", "versions"]},
        "counts": {
            "type": "object",
            "required": ["images", "ok", "errors", "errors_by_kind", "with_ground_truth", "without_ground_truth",
                         "distinct_keys", "shards", "committed_shards", "metrics_files"],
            "properties": {"errors_by_kind": {"type": "object", "additionalProperties": {"type": "integer"}}},
        },
        "ground_truth": {"type": "boolean"},
        "classes": {"type": "array", "items": {
            "type": "object",
            "required": ["index", "name", "predicted_fraction", "mean_image_fraction", "images_present"],
            "properties": {"dice": STATS_SCHEMA, "iou": STATS_SCHEMA, "true_fraction": NUMBER,
                           "predicted_fraction": NUMBER, "name": {"type": "string"}},
        }},
        "foreground": {"anyOf": [{"type": "null"}, {"type": "object", "required": ["dice", "iou"],
                                                    "properties": {"dice": STATS_SCHEMA, "iou": STATS_SCHEMA}}]},
        "pixel_accuracy": NUMBER,
        "worst": {"type": "array", "items": {"type": "object", "required": ["key", "source", "mask_uri", "mean_dice", "dice"]}},
        "errors": {"type": "array", "items": {"type": "object", "required": ["key", "source", "kind", "error"]}},
        "errors_truncated": {"type": "integer"},
        "baseline": {"type": "object", "required": ["url", "classes", "foreground", "pixel_accuracy", "images_matched",
                                                    "only_in_run", "only_in_baseline", "most_worse"]},
        "report": {"type": "object", "required": ["generated", "worst", "bootstrap_resamples", "seed"]},
    },
}

class ReportError(RuntimeError):
    """The run's outputs cannot be reported on; the message names the URL and the fix."""


# ----------------------------------------------------------------------------------- reading the run


@dataclasses.dataclass(frozen=True)
class RunFiles:
    """A run's metadata and the metrics files the report reads."""

    url: str
    run_json: dict[str, Any]
    metrics_files: list[str]
    shards: int
    committed: int
    partial: bool


def locate_run(url: str, storage_config: StorageConfig | None, allow_partial: bool = False) -> RunFiles:
    """Return the run's files; raise ReportError if it is not a run, holds no metrics, or is unfinished."""
    url = url.rstrip("/")
    run_url = storage.join_url(url, "run.json")
    try:
        run_json = json.loads(storage.read_bytes(run_url, storage_config))
    except FileNotFoundError:
        run_json = None
    except Exception as exc:
        raise ReportError(f"{run_url} cannot be read ({type(exc).__name__}: {exc}); check the URL and credentials") from exc
    metrics = storage.list_files(storage.join_url(url, "metrics"), (".parquet",), storage_config)
    if run_json is None and not metrics:
        raise ReportError(f"{url} holds no run.json and no metrics/*.parquet: not a segmentation run's output; "
                          "pass the --output URL of a 'segpipe segment' run")
    if not metrics:
        raise ReportError(f"{url} has no metrics/*.parquet yet (run status: {run_json.get('status', 'unknown')}); "
                          "wait for the run to commit shards, or resume it with the same segment command")
    markers = {shard_of(u) for u in marker_urls(url, storage_config)}
    committed = [m for m in metrics if shard_of(m) in markers]
    run_json = run_json or {}
    shards = int(run_json.get("shards") or len(metrics))
    status = run_json.get("status", "unknown")
    complete = status == "finished" and len(committed) == len(metrics) and len(markers) >= shards
    if not complete and not allow_partial:
        raise ReportError(
            f"run {url} is incomplete (status {status}, {len(markers)} of {shards} shards committed, "
            f"{len(metrics) - len(committed)} metrics file(s) without a commit marker); finish or resume it by "
            f"re-running the same segment command, or pass --partial to report on the {len(committed)} committed shard(s)"
        )
    if not committed:
        raise ReportError(f"run {url} has no committed shards (no _done/<shard>.json marker yet); nothing to report")
    return RunFiles(url, run_json, committed, shards, len(markers), partial=not complete)


def check_schema(url: str, file_schema: pa.Schema) -> None:
    """Raise ReportError if a metrics file lacks a column of :data:`schema.METRICS_SCHEMA` or has another type."""
    missing = [name for name in READ_COLUMNS if name not in file_schema.names]
    problems = [f"column {name!r} is {file_schema.field(name).type}, expected {schema.METRICS_SCHEMA.field(name).type}"
                for name in READ_COLUMNS
                if name in file_schema.names and not file_schema.field(name).type.equals(schema.METRICS_SCHEMA.field(name).type)]
    if missing:
        problems.append(f"missing column(s) {', '.join(missing)}")
    if problems:
        raise ReportError(f"metrics file {url} has a different schema ({'; '.join(problems)}); "
                          "it was not written by this version of 'segpipe segment' - re-run the segmentation")


def metric_batches(files: list[str], storage_config: StorageConfig | None,
                   columns: tuple[str, ...] = READ_COLUMNS) -> Iterator[pa.RecordBatch]:
    """Yield record batches of ``columns`` from the metrics files, one file open at a time."""
    for url in files:
        fs, path = storage.filesystem_for(url, storage_config)
        try:
            with fs.open(path, "rb") as handle:
                parquet = pq.ParquetFile(handle)
                check_schema(url, parquet.schema_arrow)
                yield from parquet.iter_batches(batch_size=65_536, columns=list(columns))
        except ReportError:
            raise
        except Exception as exc:
            raise ReportError(f"metrics file {url} cannot be read ({type(exc).__name__}: {exc}); it may be "
                              "half-written: re-run the same segment command to redo its shard") from exc


# ----------------------------------------------------------------------------------- aggregation


def list_matrix(column: pa.Array, rows: pa.Array, width: int, dtype: Any) -> np.ndarray:
    """Return the fixed-width list ``column`` at the boolean ``rows`` as a ``(n, width)`` array (null items → NaN/0)."""
    selected = column.filter(rows)
    if len(selected) == 0:
        return np.zeros((0, width), dtype=dtype)
    lengths = pc.list_value_length(selected).to_numpy(zero_copy_only=False)
    if (lengths != width).any():
        raise ReportError(f"per-class columns hold {sorted(set(lengths.tolist()))} classes where {width} were expected; "
                          "the run mixes models with different class counts")
    flat = pc.fill_null(pc.list_flatten(selected), np.nan if dtype == np.float64 else 0)
    return flat.to_numpy(zero_copy_only=False).astype(dtype, copy=False).reshape(-1, width)


def image_areas(batch: pa.RecordBatch, rows: pa.Array) -> np.ndarray:
    """Return height * width (int64) of the ``rows`` of ``batch``."""
    height, width = (batch.column(name).filter(rows).to_numpy(zero_copy_only=False).astype(np.int64)
                     for name in ("height", "width"))
    return height * width


class Aggregator:
    """Streams metric batches into the sums and per-image values the summary needs."""

    def __init__(self, num_classes: int | None, worst: int) -> None:
        self.num_classes = num_classes
        self.worst_n = worst
        self.rows = 0
        self.ok = 0
        self.without_truth = 0
        self.error_kinds: Counter[str] = Counter()
        self.errors: list[dict[str, Any]] = []
        self.model_ids: Counter[str] = Counter()
        self.run_ids: Counter[str] = Counter()
        self.keys: list[pa.Array] = []
        self.chunks: dict[str, list[np.ndarray]] = {name: [] for name in ("dice", "iou", "mean_dice", "mean_iou", "seconds")}
        self.worst: list[tuple[float, str, int, dict[str, Any]]] = []  # heap of (-score, key, seq, row), worst_n at most
        self.sequence = 0
        self.sums: dict[str, np.ndarray] = {}
        self.truth_pixels = 0
        self.all_pixels = 0
        self.fraction_sum: np.ndarray | None = None
        self.present: np.ndarray | None = None

    def start_classes(self, count: int) -> None:
        """Fix the class count (from run.json or the first list seen) and size the sums."""
        self.num_classes = count
        for name in ("tp", "fp", "fn", "class_pixels"):
            self.sums[name] = np.zeros(count, dtype=np.int64)
        self.fraction_sum = np.zeros(count, dtype=np.float64)
        self.present = np.zeros(count, dtype=np.int64)

    def add(self, batch: pa.RecordBatch) -> None:
        """Fold one record batch into the aggregates."""
        n = batch.num_rows
        self.rows += n
        self.keys.append(batch.column("key"))
        for column, counter in (("model_id", self.model_ids), ("run_id", self.run_ids)):
            counter.update({d["values"]: d["counts"] for d in pc.value_counts(batch.column(column)).to_pylist()})
        ok = pc.fill_null(pc.equal(batch.column("status"), schema.STATUS_OK), False)
        errors = pc.invert(ok)
        self.collect_errors(batch.filter(errors))
        self.ok += int(pc.sum(ok).as_py() or 0)
        latencies = batch.column("seconds").filter(ok).to_numpy(zero_copy_only=False)
        self.chunks["seconds"].append(np.asarray(latencies, dtype=np.float64))
        if self.num_classes is None:
            lengths = pc.list_value_length(batch.column("class_pixels").filter(ok)).drop_null()
            if len(lengths) == 0:
                return
            self.start_classes(int(lengths[0].as_py()))
        width = int(self.num_classes)
        if not self.sums:
            self.start_classes(width)
        has_pixels = pc.and_(ok, batch.column("class_pixels").is_valid())
        pixels = list_matrix(batch.column("class_pixels"), has_pixels, width, np.int64)
        area = image_areas(batch, has_pixels)
        self.sums["class_pixels"] += pixels.sum(axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            self.fraction_sum += np.nan_to_num(pixels / area[:, None]).sum(axis=0)
        self.present += (pixels > 0).sum(axis=0)
        truth = pc.and_(ok, batch.column("tp").is_valid())
        self.without_truth += int(pc.sum(pc.and_(ok, pc.invert(batch.column("tp").is_valid()))).as_py() or 0)
        counts = {name: list_matrix(batch.column(name), truth, width, np.int64) for name in ("tp", "fp", "fn")}
        for name, values in counts.items():
            self.sums[name] += values.sum(axis=0)
        truth_area = image_areas(batch, truth)
        self.all_pixels += int(truth_area.sum())
        self.truth_pixels += int(counts["tp"].sum())
        for name in ("dice", "iou"):
            self.chunks[name].append(list_matrix(batch.column(name), truth, width, np.float64))
        for name in ("mean_dice", "mean_iou"):
            values = pc.fill_null(batch.column(name).filter(truth), np.nan).to_numpy(zero_copy_only=False)
            self.chunks[name].append(np.asarray(values, dtype=np.float64))
        if self.worst_n:
            self.collect_worst(batch.filter(truth), self.chunks["mean_dice"][-1])

    def collect_errors(self, failed: pa.RecordBatch) -> None:
        """Count error rows by their ``error_kind`` and keep the first :data:`KEPT_ERRORS` of them."""
        for key, source, message, kind in zip(*(failed.column(c).to_pylist()
                                                for c in ("key", "source", "error", "error_kind"))):
            kind = kind or "other"
            self.error_kinds[kind] += 1
            if len(self.errors) < KEPT_ERRORS:
                self.errors.append({"key": key, "source": source, "kind": kind, "error": message})

    def collect_worst(self, rows: pa.RecordBatch, scores: np.ndarray) -> None:
        """Keep the ``worst_n`` rows of lowest foreground mean Dice (NaN rows are never "worst"); ties by key."""
        finite = np.flatnonzero(~np.isnan(scores))
        if not finite.size:
            return
        if finite.size > self.worst_n:
            finite = finite[np.argpartition(scores[finite], self.worst_n - 1)[: self.worst_n]]
        keys = rows.column("key").to_pylist()
        for index in finite.tolist():
            entry = (-float(scores[index]), keys[index])
            if len(self.worst) < self.worst_n or entry > (self.worst[0][0], self.worst[0][1]):
                record = {name: rows.column(name)[index].as_py() for name in
                          ("key", "source", "mask_uri", "dice", "iou", "mean_dice", "mean_iou", "height", "width")}
                self.sequence += 1  # a repeated key with the same score must never compare the records
                item = (entry[0], entry[1], self.sequence, record)
                if len(self.worst) < self.worst_n:
                    heapq.heappush(self.worst, item)
                else:
                    heapq.heapreplace(self.worst, item)

    def values(self, name: str) -> np.ndarray:
        """Return the concatenated per-image values of ``name`` (``(n, C)`` for dice/iou)."""
        chunks = self.chunks[name]
        if name in ("dice", "iou"):
            width = int(self.num_classes or 0)
            return np.concatenate(chunks) if chunks else np.zeros((0, width))
        return np.concatenate(chunks) if chunks else np.zeros(0)

    def distinct_keys(self) -> int:
        """Return how many distinct keys the rows hold."""
        if not self.keys:
            return 0
        return int(pc.count_distinct(pa.chunked_array(self.keys, type=pa.string())).as_py())


# ----------------------------------------------------------------------------------- statistics


def finite_or_none(value: float | None) -> float | None:
    """Return ``value`` rounded to 6 decimals, or None when it is None or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return round(float(value), 6)


def json_safe(value: Any) -> Any:
    """Return ``value`` with NaN and infinite floats replaced by None (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def bootstrap_ci(values: np.ndarray, resamples: int, rng: np.random.Generator) -> tuple[float, float]:
    """Return the 95% percentile bootstrap interval of the mean of ``values`` (finite, non-empty).

    Up to :data:`EXACT_BOOTSTRAP_LIMIT` values are resampled directly. Larger sets resample a
    :data:`BOOTSTRAP_BINS`-bin histogram (multinomial counts over bins), shifted by the exact mean
    minus the binned mean; with values in [0, 1] the binning moves a bound by at most 1/2**15.
    """
    n = values.size
    if n == 1:
        return float(values[0]), float(values[0])
    if n <= EXACT_BOOTSTRAP_LIMIT:
        means = np.empty(resamples)
        step = max(1, 2_000_000 // n)
        for start in range(0, resamples, step):
            stop = min(resamples, start + step)
            picks = rng.integers(0, n, size=(stop - start, n))
            means[start:stop] = values[picks].mean(axis=1)
    else:
        low, high = float(values.min()), float(values.max())
        counts, edges = np.histogram(values, bins=BOOTSTRAP_BINS, range=(low, high if high > low else low + 1.0))
        centres = (edges[:-1] + edges[1:]) / 2
        draws = rng.multinomial(n, counts / n, size=resamples)
        means = draws @ centres / n + (values.mean() - counts @ centres / n)
    lower, upper = np.percentile(means, [2.5, 97.5])
    return float(lower), float(upper)


def value_stats(values: np.ndarray, micro: float | None, resamples: int, rng: np.random.Generator) -> dict[str, Any]:
    """Return macro mean, its 95% CI, median, p05, counts and histogram of per-image values, plus ``micro``."""
    finite = values[~np.isnan(values)]
    stats: dict[str, Any] = {"images": int(values.size), "nan_images": int(values.size - finite.size),
                             "macro": None, "ci95": None, "median": None, "p05": None, "micro": finite_or_none(micro)}
    if finite.size:
        lower, upper = bootstrap_ci(finite, resamples, rng)
        median, p05 = np.percentile(finite, [50, 5])
        stats.update(macro=finite_or_none(finite.mean()), ci95=[finite_or_none(lower), finite_or_none(upper)],
                     median=finite_or_none(median), p05=finite_or_none(p05))
    counts, _ = np.histogram(finite, bins=HISTOGRAM_BINS, range=(0.0, 1.0))
    stats["histogram"] = {"bins": HISTOGRAM_BINS, "range": [0.0, 1.0], "counts": counts.tolist()}
    return stats


def summarise(agg: Aggregator, run: RunFiles, cfg: ReportConfig, class_names: list[str]) -> dict[str, Any]:
    """Return the summary document (see the module docstring and README for its keys)."""
    rng = np.random.default_rng(cfg.seed)
    width = int(agg.num_classes or 0)
    names = class_names if len(class_names) == width else [f"class_{i}" for i in range(width)]
    sums = agg.sums or {k: np.zeros(width, dtype=np.int64) for k in ("tp", "fp", "fn", "class_pixels")}
    with_truth = int(agg.values("mean_dice").size)
    micro_dice = dice_from_counts(sums["tp"], sums["fp"], sums["fn"])
    micro_iou = iou_from_counts(sums["tp"], sums["fp"], sums["fn"])
    dice, iou = agg.values("dice"), agg.values("iou")
    ok_pixels = int(sums["class_pixels"].sum())
    classes = []
    for index, name in enumerate(names):
        entry: dict[str, Any] = {"index": index, "name": name}
        if with_truth:
            entry["dice"] = value_stats(dice[:, index], micro_dice[index], cfg.bootstrap_resamples, rng)
            entry["iou"] = value_stats(iou[:, index], micro_iou[index], cfg.bootstrap_resamples, rng)
            entry["true_fraction"] = finite_or_none((sums["tp"][index] + sums["fn"][index]) / agg.all_pixels
                                                    if agg.all_pixels else None)
        entry["predicted_fraction"] = finite_or_none(sums["class_pixels"][index] / ok_pixels if ok_pixels else None)
        entry["mean_image_fraction"] = finite_or_none(agg.fraction_sum[index] / agg.ok
                                                      if agg.ok and agg.fraction_sum is not None else None)
        entry["images_present"] = int(agg.present[index]) if agg.present is not None else 0
        classes.append(entry)
    seconds = agg.values("seconds")
    seconds = seconds[~np.isnan(seconds)]
    run_json = run.run_json
    run_summary = run_json.get("summary") or {}
    model = run_json.get("model") or {}
    document: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "definitions": DEFINITIONS,
        "run": {
            "url": run.url, "run_id": run_json.get("run_id"), "status": run_json.get("status", "unknown"),
            "partial": run.partial, "started": run_json.get("started"), "ended": run_json.get("ended"),
            "model_id": model.get("id"), "model_url": model.get("url"),
            "model_ids_in_rows": dict(agg.model_ids), "run_ids_in_rows": dict(agg.run_ids),
            "wall_seconds": run_summary.get("wall_seconds"), "startup_seconds": run_summary.get("startup_seconds"),
            "images_per_second": run_summary.get("images_per_second"),
            "steady_images_per_second": run_summary.get("steady_images_per_second"),
            "image_seconds": {"mean": finite_or_none(seconds.mean()) if seconds.size else None,
                              "median": finite_or_none(np.median(seconds)) if seconds.size else None,
                              "p95": finite_or_none(np.percentile(seconds, 95)) if seconds.size else None},
            "config": run_json.get("config"), "versions": run_json.get("versions"),
        },
        "counts": {
            "images": agg.rows, "ok": agg.ok, "errors": agg.rows - agg.ok,
            "errors_by_kind": dict(sorted(agg.error_kinds.items())),
            "with_ground_truth": with_truth, "without_ground_truth": agg.without_truth,
            "distinct_keys": agg.distinct_keys(), "shards": run.shards, "committed_shards": run.committed,
            "metrics_files": len(run.metrics_files),
        },
        "ground_truth": with_truth > 0,
        "classes": classes,
        "foreground": None,
        "pixel_accuracy": finite_or_none(agg.truth_pixels / agg.all_pixels if agg.all_pixels else None),
        "worst": [item[3] for item in sorted(agg.worst, key=lambda item: (-item[0], item[1], item[2]))],
        "errors": agg.errors,
        "errors_truncated": max(0, (agg.rows - agg.ok) - len(agg.errors)),
    }
    if with_truth:
        document["foreground"] = {
            "dice": value_stats(agg.values("mean_dice"), foreground_mean(micro_dice), cfg.bootstrap_resamples, rng),
            "iou": value_stats(agg.values("mean_iou"), foreground_mean(micro_iou), cfg.bootstrap_resamples, rng),
        }
    return document


def class_names_of(run_json: dict[str, Any]) -> list[str]:
    """Return the model's class names recorded in run.json (empty if absent)."""
    info = (run_json.get("model") or {}).get("info") or {}
    return [str(name) for name in info.get("class_names") or []]


def num_classes_of(run_json: dict[str, Any]) -> int | None:
    """Return the model's class count recorded in run.json, or None."""
    info = (run_json.get("model") or {}).get("info") or {}
    names = info.get("class_names")
    unet = info.get("unet") or {}
    return int(unet.get("num_classes") or len(names)) if (unet.get("num_classes") or names) else None


def aggregate_run(cfg: ReportConfig, url: str, worst: int) -> tuple[dict[str, Any], RunFiles]:
    """Return the summary document of the run at ``url`` and its files."""
    run = locate_run(url, cfg.storage, cfg.partial)
    agg = Aggregator(num_classes_of(run.run_json), worst)
    for batch in metric_batches(run.metrics_files, cfg.storage):
        agg.add(batch)
    if agg.rows == 0:
        raise ReportError(f"run {run.url} has metrics files but no rows (every shard was empty); nothing to report")
    return summarise(agg, run, cfg, class_names_of(run.run_json)), run


# ----------------------------------------------------------------------------------- baseline


def compare(summary: dict[str, Any], base: dict[str, Any], run: RunFiles, base_run: RunFiles,
            cfg: ReportConfig) -> dict[str, Any]:
    """Return per-class deltas (run minus baseline) and the images whose mean Dice fell most."""

    def delta(a: float | None, b: float | None) -> float | None:
        return finite_or_none(a - b) if a is not None and b is not None else None

    classes = []
    base_classes = {c["name"]: c for c in base["classes"]}
    for entry in summary["classes"]:
        other = base_classes.get(entry["name"])
        row: dict[str, Any] = {"name": entry["name"]}
        for metric in ("dice", "iou"):
            for kind in ("macro", "micro"):
                now = (entry.get(metric) or {}).get(kind)
                before = ((other or {}).get(metric) or {}).get(kind)
                row[f"{metric}_{kind}"] = {"run": now, "baseline": before, "delta": delta(now, before)}
        classes.append(row)
    foreground = {}
    for metric in ("dice", "iou"):
        for kind in ("macro", "micro"):
            now = ((summary.get("foreground") or {}).get(metric) or {}).get(kind)
            before = ((base.get("foreground") or {}).get(metric) or {}).get(kind)
            foreground[f"{metric}_{kind}"] = {"run": now, "baseline": before, "delta": delta(now, before)}
    worse, matched, only_run, only_base = most_worse(run, base_run, cfg)
    return {
        "url": base_run.url, "run_id": base["run"]["run_id"], "model_id": base["run"]["model_id"],
        "classes": classes, "foreground": foreground,
        "pixel_accuracy": {"run": summary["pixel_accuracy"], "baseline": base["pixel_accuracy"],
                           "delta": delta(summary["pixel_accuracy"], base["pixel_accuracy"])},
        "images_matched": matched, "only_in_run": only_run, "only_in_baseline": only_base,
        "most_worse": worse,
    }


def key_scores(run: RunFiles, cfg: ReportConfig) -> pa.Table:
    """Return ``key, mean_dice`` of the run's ok rows with ground truth (two columns only)."""
    tables = []
    for batch in metric_batches(run.metrics_files, cfg.storage, ("key", "status", "mean_dice", "tp")):
        keep = pc.and_(pc.equal(batch.column("status"), schema.STATUS_OK), batch.column("tp").is_valid())
        tables.append(pa.table({"key": batch.column("key").filter(keep), "mean_dice": batch.column("mean_dice").filter(keep)}))
    return pa.concat_tables(tables) if tables else pa.table({"key": pa.array([], pa.string()), "mean_dice": pa.array([], pa.float64())})


def most_worse(run: RunFiles, base_run: RunFiles, cfg: ReportConfig) -> tuple[list[dict[str, Any]], int, int, int]:
    """Return the ``cfg.worst`` (at least 10) keys whose mean Dice dropped most, and the match counts."""
    now = key_scores(run, cfg)
    before = key_scores(base_run, cfg).rename_columns(["key", "baseline_mean_dice"])
    joined = now.join(before, keys="key", join_type="inner")
    matched = joined.num_rows
    only_run = now.num_rows - matched
    only_base = before.num_rows - matched
    change = pc.subtract(joined.column("mean_dice"), joined.column("baseline_mean_dice"))
    joined = joined.append_column("delta", change)
    finite = pc.invert(pc.is_nan(pc.fill_null(change, float("nan"))))
    joined = joined.filter(finite)
    count = max(10, cfg.worst)
    order = pc.select_k_unstable(joined, count, [("delta", "ascending"), ("key", "ascending")])
    worst = joined.take(order).to_pylist()
    return ([{k: (finite_or_none(v) if isinstance(v, float) else v) for k, v in item.items()} for item in worst if item["delta"] < 0],
            matched, only_run, only_base)


# ----------------------------------------------------------------------------------- entry point


@dataclasses.dataclass(frozen=True)
class ReportResult:
    """Where the report went and what it says at a glance."""

    summary_url: str
    html_url: str
    summary: dict[str, Any]
    seconds: float

    def line(self) -> str:
        """Return a one-line description for the console."""
        counts = self.summary["counts"]
        fg = (self.summary.get("foreground") or {}).get("dice") or {}
        score = f", foreground Dice macro {fg.get('macro')} / micro {fg.get('micro')}" if fg else ", no ground truth"
        return (f"report: {counts['images']} images ({counts['ok']} ok, {counts['errors']} errors){score}; "
                f"{self.html_url}")


def build_report(cfg: ReportConfig) -> ReportResult:
    """Write ``summary.json`` and ``report.html`` for ``cfg.run`` (into ``cfg.output`` or ``<run>/report``)."""
    from pipeline.report_render import render_html

    started = time.perf_counter()
    summary, run = aggregate_run(cfg, cfg.run, cfg.worst)
    if cfg.baseline:
        base, base_run = aggregate_run(dataclasses.replace(cfg, partial=True), cfg.baseline, 0)
        summary["baseline"] = compare(summary, base, run, base_run, cfg)
    output = (cfg.output or storage.join_url(cfg.run.rstrip("/"), "report")).rstrip("/")
    summary["report"] = {"generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "worst": cfg.worst,
                         "bootstrap_resamples": cfg.bootstrap_resamples, "seed": cfg.seed}
    summary = json_safe(summary)
    html = render_html(summary, cfg.storage)
    summary_url = storage.join_url(output, "summary.json")
    html_url = storage.join_url(output, "report.html")
    storage.write_bytes(summary_url, json.dumps(summary, indent=2, allow_nan=False).encode(), cfg.storage)
    storage.write_bytes(html_url, html.encode(), cfg.storage)
    result = ReportResult(summary_url, html_url, summary, time.perf_counter() - started)
    log.info("%s", result.line())
    return result
