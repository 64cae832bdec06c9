"""Stream a run's metric rows into the sums, per-image values and statistics a report needs.

Only per-class sums, one float per image and metric (for medians, percentiles and the
bootstrap), the worst N rows and the first errors are kept; never a table of the whole run.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import schema
from pipeline.report.reading import ReportError

KEPT_ERRORS = 200
EXACT_BOOTSTRAP_LIMIT = 10_000  # above this many values the bootstrap resamples a fine histogram
BOOTSTRAP_BINS = 1 << 14
HISTOGRAM_BINS = 20


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
        self.truth_error_kinds: Counter[str] = Counter()  # ok rows whose ground truth could not be used
        self.truth_errors: list[dict[str, Any]] = []
        self.model_ids: Counter[str] = Counter()
        self.run_ids: Counter[str] = Counter()
        self.keys: list[pa.Array] = []
        self.chunks: dict[str, list[np.ndarray]] = {name: [] for name in ("dice", "iou", "mean_dice", "mean_iou", "seconds")}
        self.worst = WorstRows(worst, ("key", "source", "mask_uri", "dice", "iou", "mean_dice", "mean_iou", "height",
                                       "width"))
        self.sums: dict[str, np.ndarray] = {}
        self.truth_pixels = 0
        self.all_pixels = 0  # the labelled pixels of the images with ground truth
        self.ignored_pixels = 0  # their pixels the label map declares not labelled
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
        self.collect_truth_errors(batch.filter(pc.and_(ok, batch.column("truth_error_kind").is_valid())))
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
        ignored = int(pc.sum(batch.column("ignored_pixels").filter(truth)).as_py() or 0)
        self.ignored_pixels += ignored
        self.all_pixels += int(truth_area.sum()) - ignored
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

    def collect_truth_errors(self, rows: pa.RecordBatch) -> None:
        """Count segmented rows whose ground truth was unusable, by kind, and keep the first :data:`KEPT_ERRORS`."""
        for key, source, message, kind in zip(*(rows.column(c).to_pylist()
                                                for c in ("key", "source", "truth_error", "truth_error_kind"))):
            self.truth_error_kinds[kind] += 1
            if len(self.truth_errors) < KEPT_ERRORS:
                self.truth_errors.append({"key": key, "source": source, "kind": kind, "error": message})

    def collect_worst(self, rows: pa.RecordBatch, scores: np.ndarray) -> None:
        """Keep the ``worst_n`` rows of lowest foreground mean Dice (NaN rows are never "worst"); ties by key."""
        self.worst.add(rows, scores)

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


class WorstRows:
    """Keeps the ``count`` rows of lowest score seen (NaN is never "worst"; ties by key), as ``columns`` of each."""

    def __init__(self, count: int, columns: tuple[str, ...]) -> None:
        self.count = count
        self.columns = columns
        self.heap: list[tuple[float, str, int, dict[str, Any]]] = []  # (-score, key, seq, row), count at most
        self.sequence = 0

    def add(self, rows: pa.RecordBatch, scores: np.ndarray) -> None:
        """Consider ``rows`` with their ``scores``."""
        finite = np.flatnonzero(~np.isnan(scores))
        if not finite.size or not self.count:
            return
        if finite.size > self.count:
            finite = finite[np.argpartition(scores[finite], self.count - 1)[: self.count]]
        keys = rows.column("key").to_pylist()
        for index in finite.tolist():
            entry = (-float(scores[index]), keys[index])
            if len(self.heap) < self.count or entry > (self.heap[0][0], self.heap[0][1]):
                record = {name: rows.column(name)[index].as_py() for name in self.columns}
                self.sequence += 1  # a repeated key with the same score must never compare the records
                item = (entry[0], entry[1], self.sequence, record)
                if len(self.heap) < self.count:
                    heapq.heappush(self.heap, item)
                else:
                    heapq.heapreplace(self.heap, item)

    def rows(self) -> list[dict[str, Any]]:
        """Return the kept rows, lowest score first (ties by key)."""
        return [item[3] for item in sorted(self.heap, key=lambda item: (-item[0], item[1], item[2]))]


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
