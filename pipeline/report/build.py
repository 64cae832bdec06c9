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
* Objects (a run segmented with ``--objects``): instance metrics per class, defined in
  :mod:`pipeline.report.objects` and in ``summary.json`` under ``objects.definitions``.

Numbers that are undefined (no images to average) are ``null`` in JSON.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import schema
from pipeline.config import ReportConfig
from pipeline.io import layout, storage
from pipeline.metrics import dice_from_counts, foreground_mean, iou_from_counts
from pipeline.report.aggregate import Aggregator, finite_or_none, json_safe, value_stats
from pipeline.report.objects import objects_section
from pipeline.report.reading import ReportError, RunFiles, locate_run, metric_batches

log = logging.getLogger(__name__)


REPORT_FORMAT = "segpipe-report/1"


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
    "pixel_accuracy": "correctly labelled pixels / labelled pixels, over images with ground truth",
    "predicted_fraction": "predicted pixels of the class / all pixels, over ok images",
    "true_fraction": "ground-truth pixels of the class / labelled pixels, over images with ground truth",
    "ignored": "ground-truth pixels the label map declares not labelled (labels.ignore, COCO crowd regions): "
               "left out of TP, FP, FN and every metric; ignored_fraction = ignored / all pixels with ground truth",
    "null": "a value with nothing to average (no images, or all NaN) is null",
    "objects": "instance metrics of a run segmented with objects: see objects.definitions",
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
                 "pixel_accuracy", "worst", "errors", "errors_truncated", "truth_errors", "report"],
    "properties": {
        "format": {"const": "segpipe-report/1"},
        "definitions": {"type": "object", "additionalProperties": {"type": "string"}},
        "run": {"type": "object", "required": ["url", "run_id", "status", "partial", "started", "ended", "model_id",
                                                "images_per_second", "image_seconds", "config", "versions"]},
        "counts": {
            "type": "object",
            "required": ["images", "ok", "errors", "errors_by_kind", "truth_errors", "truth_errors_by_kind",
                         "with_ground_truth", "without_ground_truth", "ignored_pixels", "ignored_fraction",
                         "distinct_keys", "shards", "committed_shards", "metrics_files"],
            "properties": {"errors_by_kind": {"type": "object", "additionalProperties": {"type": "integer"}},
                           "truth_errors_by_kind": {"type": "object", "additionalProperties": {"type": "integer"}}},
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
        "truth_errors": {"type": "array", "items": {"type": "object", "required": ["key", "source", "kind", "error"]}},
        "baseline": {"type": "object", "required": ["url", "classes", "foreground", "pixel_accuracy", "images_matched",
                                                    "only_in_run", "only_in_baseline", "most_worse"]},
        "report": {"type": "object", "required": ["generated", "worst", "bootstrap_resamples", "seed"]},
        "objects": {"type": "object", "required": ["definitions", "thresholds", "match", "images", "with_ground_truth",
                                                   "truth_instances", "methods", "classes", "scatter", "worst"],
                    "properties": {"classes": {"type": "array", "items": {
                        "type": "object", "required": ["index", "name", "objects_predicted", "area"],
                        "properties": {"dsb_score": STATS_SCHEMA, "f1": STATS_SCHEMA, "pq": STATS_SCHEMA}}}}},
    },
}


def summary_document(agg: Aggregator, run: RunFiles, cfg: ReportConfig, class_names: list[str]) -> dict[str, Any]:
    """Return the summary document (see the module docstring and docs/report.md for its keys)."""
    rng = np.random.default_rng(cfg.seed)
    width = int(agg.num_classes or 0)
    names = class_names if len(class_names) == width else [f"class_{i}" for i in range(width)]
    sums = agg.sums or {k: np.zeros(width, dtype=np.int64) for k in ("tp", "fp", "fn", "class_pixels")}
    with_truth = int(agg.values("mean_dice").size)
    micro_dice = dice_from_counts(sums["tp"], sums["fp"], sums["fn"])
    micro_iou = iou_from_counts(sums["tp"], sums["fp"], sums["fn"])
    classes = class_entries(agg, names, sums, (micro_dice, micro_iou), cfg.bootstrap_resamples, rng)
    document: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "definitions": DEFINITIONS,
        "run": run_section(agg, run),
        "counts": {
            "images": agg.rows, "ok": agg.ok, "errors": agg.rows - agg.ok,
            "errors_by_kind": dict(sorted(agg.error_kinds.items())),
            "truth_errors": sum(agg.truth_error_kinds.values()),
            "truth_errors_by_kind": dict(sorted(agg.truth_error_kinds.items())),
            "with_ground_truth": with_truth, "without_ground_truth": agg.without_truth,
            "ignored_pixels": agg.ignored_pixels,
            "ignored_fraction": finite_or_none(agg.ignored_pixels / (agg.all_pixels + agg.ignored_pixels)
                                               if agg.all_pixels + agg.ignored_pixels else None),
            "distinct_keys": agg.distinct_keys(), "shards": run.shards, "committed_shards": run.committed,
            "metrics_files": len(run.metrics_files),
        },
        "ground_truth": with_truth > 0,
        "classes": classes,
        "foreground": None,
        "pixel_accuracy": finite_or_none(agg.truth_pixels / agg.all_pixels if agg.all_pixels else None),
        "worst": agg.worst.rows(),
        "errors": agg.errors,
        "errors_truncated": max(0, (agg.rows - agg.ok) - len(agg.errors)),
        "truth_errors": agg.truth_errors,
    }
    if with_truth:
        document["foreground"] = {
            "dice": value_stats(agg.values("mean_dice"), foreground_mean(micro_dice), cfg.bootstrap_resamples, rng),
            "iou": value_stats(agg.values("mean_iou"), foreground_mean(micro_iou), cfg.bootstrap_resamples, rng),
        }
    return document


def class_entries(agg: Aggregator, names: list[str], sums: dict[str, np.ndarray], micro: tuple[np.ndarray, np.ndarray],
                  resamples: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    """Return the summary's ``classes``: per class its Dice and IoU statistics (with ground truth) and pixel shares."""
    with_truth = agg.values("mean_dice").size
    dice, iou = agg.values("dice"), agg.values("iou")
    ok_pixels = int(sums["class_pixels"].sum())
    classes = []
    for index, name in enumerate(names):
        entry: dict[str, Any] = {"index": index, "name": name}
        if with_truth:
            entry["dice"] = value_stats(dice[:, index], micro[0][index], resamples, rng)
            entry["iou"] = value_stats(iou[:, index], micro[1][index], resamples, rng)
            entry["true_fraction"] = finite_or_none((sums["tp"][index] + sums["fn"][index]) / agg.all_pixels
                                                    if agg.all_pixels else None)
        entry["predicted_fraction"] = finite_or_none(sums["class_pixels"][index] / ok_pixels if ok_pixels else None)
        entry["mean_image_fraction"] = finite_or_none(agg.fraction_sum[index] / agg.ok
                                                      if agg.ok and agg.fraction_sum is not None else None)
        entry["images_present"] = int(agg.present[index]) if agg.present is not None else 0
        classes.append(entry)
    return classes


def run_section(agg: Aggregator, run: RunFiles) -> dict[str, Any]:
    """Return the summary's ``run``: what run.json records, and the per-image seconds."""
    seconds = agg.values("seconds")
    seconds = seconds[~np.isnan(seconds)]
    run_json = run.run_json
    recorded = run_json.get("summary") or {}
    model = run_json.get("model") or {}
    return {
        "url": run.url, "run_id": run_json.get("run_id"), "status": run_json.get("status", "unknown"),
        "partial": run.partial, "started": run_json.get("started"), "ended": run_json.get("ended"),
        "model_id": model.get("id"), "model_url": model.get("url"),
        "model_ids_in_rows": dict(agg.model_ids), "run_ids_in_rows": dict(agg.run_ids),
        "wall_seconds": recorded.get("wall_seconds"), "startup_seconds": recorded.get("startup_seconds"),
        "images_per_second": recorded.get("images_per_second"),
        "steady_images_per_second": recorded.get("steady_images_per_second"),
        "image_seconds": {"mean": finite_or_none(seconds.mean()) if seconds.size else None,
                          "median": finite_or_none(np.median(seconds)) if seconds.size else None,
                          "p95": finite_or_none(np.percentile(seconds, 95)) if seconds.size else None},
        "config": run_json.get("config"), "versions": run_json.get("versions"),
        "repeated_keys": recorded.get("repeated_keys") or {"count": 0, "examples": []},
        "labels": ((model.get("info") or {}).get("labels")) or None,
        "changed_shards": run_json.get("changed_shards") or [],
        "removed_shards": run_json.get("removed_shards") or [],
    }


def class_names_of(run_json: dict[str, Any]) -> list[str]:
    """Return the model's class names recorded in run.json (empty if absent)."""
    info = (run_json.get("model") or {}).get("info") or {}
    return [str(name) for name in info.get("class_names") or []]


def num_classes_of(run_json: dict[str, Any]) -> int | None:
    """Return the model's class count recorded in run.json, or None."""
    info = (run_json.get("model") or {}).get("info") or {}
    count = info.get("num_classes") or len(info.get("class_names") or [])
    return int(count) if count else None


def aggregate_run(cfg: ReportConfig, url: str, worst: int) -> tuple[dict[str, Any], RunFiles]:
    """Return the summary document of the run at ``url`` and its files."""
    run = locate_run(url, cfg.storage, cfg.partial)
    agg = Aggregator(num_classes_of(run.run_json), worst)
    for batch in metric_batches(run.metrics_files, cfg.storage):
        agg.add(batch)
    if agg.rows == 0:
        raise ReportError(f"run {run.url} has metrics files but no rows (every shard was empty); nothing to report")
    summary = summary_document(agg, run, cfg, class_names_of(run.run_json))
    if ((run.run_json.get("config") or {}).get("objects") or {}).get("enabled") and agg.num_classes:
        names = [entry["name"] for entry in summary["classes"]]
        summary["objects"] = objects_section(run, int(agg.num_classes), names, worst, cfg.bootstrap_resamples,
                                             np.random.default_rng(cfg.seed + 1), cfg.storage)
    return summary, run


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
        for entry in (self.summary.get("objects") or {}).get("classes", []):
            if entry.get("dsb_score"):
                score += f", {entry['name']} DSB score macro {entry['dsb_score'].get('macro')}"
        return (f"report: {counts['images']} images ({counts['ok']} ok, {counts['errors']} errors){score}; "
                f"{self.html_url}")


def build_report(cfg: ReportConfig) -> ReportResult:
    """Write ``summary.json`` and ``report.html`` for ``cfg.run`` (into ``cfg.output`` or ``<run>/report``)."""
    from pipeline.report.render import render_html

    started = time.perf_counter()
    summary, run = aggregate_run(cfg, cfg.run, cfg.worst)
    if cfg.baseline:
        base, base_run = aggregate_run(dataclasses.replace(cfg, partial=True), cfg.baseline, 0)
        summary["baseline"] = compare(summary, base, run, base_run, cfg)
    output = (cfg.output or layout.report_url(cfg.run.rstrip("/"))).rstrip("/")
    summary["report"] = {"generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "worst": cfg.worst,
                         "bootstrap_resamples": cfg.bootstrap_resamples, "seed": cfg.seed}
    summary = json_safe(summary)
    html = render_html(summary, cfg.storage)
    summary_url = storage.join_url(output, "summary.json")
    html_url = storage.join_url(output, "report.html")
    storage.write_bytes(summary_url, json.dumps(summary, indent=2, allow_nan=False).encode(), cfg.storage)
    storage.write_bytes(html_url, html.encode(), cfg.storage)
    result = ReportResult(summary_url, html_url, summary, time.perf_counter() - started)
    log.debug("%s", result.line())  # the command line prints it
    return result
