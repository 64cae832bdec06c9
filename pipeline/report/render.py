"""Render a report summary as one self-contained HTML file (figures embedded as PNG data URIs).

Plots use matplotlib (Agg backend, no display needed): the well-kept standard for static
scientific figures, with error bars and histograms built in. Overlays are drawn with NumPy and
Pillow: the image, its ground truth outlined in green and the prediction outlined in magenta.
"""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import numpy as np
from PIL import Image

from pipeline import imaging
from pipeline.config import StorageConfig
from pipeline.io import storage
from pipeline.report.parts import (
    PREDICTION_COLOUR,
    TRUTH_COLOUR,
    cards_of,
    esc,
    figure_uri,
    fmt,
    label_map_of,
    pyplot,
    stats_cells,
)

log = logging.getLogger(__name__)

BAR_COLOURS = ("#1f5fa8", "#e07b00")  # macro, micro
HIST_COLOUR = "#2a9d8f"
STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1180px;color:#1d2430}
h1{font-size:1.5em;margin-bottom:4px}h2{font-size:1.15em;margin-top:32px;border-bottom:1px solid #d0d7de;padding-bottom:4px}
table{border-collapse:collapse;margin:8px 0;font-size:0.92em}td,th{border:1px solid #d0d7de;padding:4px 8px;text-align:right}
th{background:#f3f5f7}td.l,th.l{text-align:left}.muted{color:#5d6775}.bad{color:#b42318}.good{color:#067647}
.gallery{display:flex;flex-wrap:wrap;gap:14px}.card{border:1px solid #d0d7de;border-radius:6px;padding:6px;width:330px}
.card img{max-width:320px;display:block}.card code,.card .src{word-break:break-all}.row{display:flex;flex-wrap:wrap;gap:12px}img.plot{max-width:100%}
pre{background:#f6f8fa;padding:8px;overflow:auto;font-size:0.85em;max-height:360px}
.legend span{display:inline-block;width:12px;height:12px;margin:0 4px -1px 10px}
"""


def ci_error(stats: dict[str, Any]) -> tuple[float, float]:
    """Return the (below, above) error-bar lengths of a macro mean's 95% CI (0 where undefined)."""
    mean, interval = stats.get("macro"), stats.get("ci95")
    if mean is None or not interval or None in interval:
        return 0.0, 0.0
    return max(0.0, mean - interval[0]), max(0.0, interval[1] - mean)


def class_bar_chart(summary: dict[str, Any], metric: str) -> str | None:
    """Return a bar chart of macro (with 95% CI) and micro ``metric`` per class and foreground."""
    rows = [(c["name"], c.get(metric) or {}) for c in summary["classes"]]
    if summary.get("foreground"):
        rows.append(("foreground", summary["foreground"][metric]))
    rows = [(name, stats) for name, stats in rows if stats.get("macro") is not None or stats.get("micro") is not None]
    if not rows:
        return None
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(max(4.5, 1.3 * len(rows) + 2), 3.2))
    positions = np.arange(len(rows))
    macro = [stats.get("macro") or 0.0 for _, stats in rows]
    errors = np.array([ci_error(stats) for _, stats in rows]).T
    micro = [stats.get("micro") or 0.0 for _, stats in rows]
    axis.bar(positions - 0.2, macro, 0.4, yerr=errors, capsize=4, color=BAR_COLOURS[0], label="macro (95% CI)")
    axis.bar(positions + 0.2, micro, 0.4, color=BAR_COLOURS[1], label="micro")
    axis.set_xticks(positions, [name for name, _ in rows])
    axis.set_ylim(0, 1.05)
    axis.set_ylabel(metric.capitalize() if metric == "dice" else "IoU")
    axis.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, fontsize=8, frameon=False)
    axis.grid(axis="y", alpha=0.3)
    return figure_uri(figure)


def histograms(summary: dict[str, Any]) -> str | None:
    """Return one histogram of per-image Dice per class (from the summary's histogram counts)."""
    entries = [(c["name"], c["dice"]["histogram"]) for c in summary["classes"] if c.get("dice")]
    if not entries:
        return None
    plt = pyplot()
    figure, axes = plt.subplots(1, len(entries), figsize=(3.2 * len(entries), 2.6), squeeze=False)
    for axis, (name, histogram) in zip(axes[0], entries):
        edges = np.linspace(*histogram["range"], histogram["bins"] + 1)
        axis.bar(edges[:-1], histogram["counts"], width=np.diff(edges), align="edge", color=HIST_COLOUR, edgecolor="white")
        axis.set_title(name, fontsize=10)
        axis.set_xlabel("per-image Dice")
        axis.set_xlim(0, 1)
    axes[0][0].set_ylabel("images")
    figure.tight_layout()
    return figure_uri(figure)


def baseline_chart(comparison: dict[str, Any]) -> str | None:
    """Return a bar chart of per-class macro Dice deltas (run minus baseline)."""
    rows = [(c["name"], c["dice_macro"]["delta"]) for c in comparison["classes"]]
    rows.append(("foreground", comparison["foreground"]["dice_macro"]["delta"]))
    rows = [(name, value) for name, value in rows if value is not None]
    if not rows:
        return None
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(max(4.5, 1.1 * len(rows) + 2), 2.8))
    values = [value for _, value in rows]
    axis.bar(range(len(rows)), values, color=["#067647" if v >= 0 else "#b42318" for v in values])
    axis.axhline(0, color="black", linewidth=0.8)
    axis.set_xticks(range(len(rows)), [name for name, _ in rows])
    axis.set_ylabel("macro Dice change")
    axis.grid(axis="y", alpha=0.3)
    return figure_uri(figure)


# ----------------------------------------------------------------------------------- overlays


def overlay_cards(summary: dict[str, Any], storage_config: StorageConfig | None) -> list[dict[str, Any]]:
    """Return, for each worst row, its overlay (or the reason there is none); reads only those images."""
    labels = label_map_of(summary)

    def layers(row: dict[str, Any], sample: tuple[bytes, ...]) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        image = imaging.decode_image(sample[0])
        truth = imaging.decode_mask(sample[1], labels, image.shape[:2]) if sample[1] else None
        return image, truth, np.asarray(Image.open(io.BytesIO(storage.read_bytes(row["mask_uri"], storage_config))))

    return cards_of(summary.get("worst") or [], layers, storage_config)


# ----------------------------------------------------------------------------------- HTML


def headline(summary: dict[str, Any]) -> str:
    """Return the headline table."""
    counts = summary["counts"]
    fg = summary.get("foreground") or {}
    rows = [("images", counts["images"]), ("ok", counts["ok"]), ("errors", counts["errors"]),
            ("with ground truth", counts["with_ground_truth"]), ("without ground truth", counts["without_ground_truth"])]
    if fg:
        dice, iou = fg["dice"], fg["iou"]
        ci = dice.get("ci95") or [None, None]
        rows += [("foreground Dice, macro [95% CI]", f"{fmt(dice.get('macro'))} [{fmt(ci[0])}, {fmt(ci[1])}]"),
                 ("foreground Dice, micro", fmt(dice.get("micro"))),
                 ("foreground IoU, macro / micro", f"{fmt(iou.get('macro'))} / {fmt(iou.get('micro'))}"),
                 ("pixel accuracy", fmt(summary.get("pixel_accuracy")))]
    if counts.get("ignored_pixels"):
        rows.append(("ground truth not labelled (ignored)",
                     f"{counts['ignored_pixels']:,} pixels ({100 * (counts.get('ignored_fraction') or 0):.2f} %)"))
    run = summary["run"]
    rows += [("model", run.get("model_id") or "unknown"),
             ("throughput", f"{fmt(run.get('images_per_second'), 2)} images/s" if run.get("images_per_second") else "n/a")]
    body = "".join(f"<tr><th class=l>{esc(name)}</th><td class=l>{esc(value)}</td></tr>" for name, value in rows)
    return f"<table>{body}</table>"


def class_table(summary: dict[str, Any]) -> str:
    """Return the per-class table (Dice and IoU statistics, pixel fractions)."""
    head = ("<tr><th class=l rowspan=2>class</th><th colspan=5>Dice</th><th colspan=5>IoU</th>"
            "<th rowspan=2>predicted<br>fraction</th><th rowspan=2>true<br>fraction</th><th rowspan=2>images<br>present</th></tr>"
            + "<tr>" + "<th>macro [95% CI]</th><th>median</th><th>p05</th><th>micro</th><th>NaN</th>" * 2 + "</tr>")
    rows = []
    entries = list(summary["classes"])
    if summary.get("foreground"):
        entries.append({"name": "foreground (mean)", **summary["foreground"]})
    for entry in entries:
        rows.append(f"<tr><td class=l>{esc(entry['name'])}</td>{stats_cells(entry.get('dice'))}{stats_cells(entry.get('iou'))}"
                    f"<td>{fmt(entry.get('predicted_fraction'))}</td><td>{fmt(entry.get('true_fraction'))}</td>"
                    f"<td>{esc(entry.get('images_present', ''))}</td></tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def gallery(cards: list[dict[str, Any]]) -> str:
    """Return the worst-images gallery."""
    if not cards:
        return "<p class=muted>No images with ground truth and a defined foreground Dice.</p>"
    items = []
    for card in cards:
        dice = ", ".join(fmt(v, 3) for v in (card.get("dice") or []))
        picture = (f"<img alt='{esc(card['key'])}' src='{card['overlay']}'>" if card.get("overlay")
                   else f"<p class=bad>overlay unavailable: {esc(card.get('overlay_error', ''))}</p>")
        items.append(f"<div class=card>{picture}<div><code>{esc(card['key'])}</code></div>"
                     f"<div>mean Dice <b>{fmt(card.get('mean_dice'))}</b>, IoU {fmt(card.get('mean_iou'))}</div>"
                     f"<div class=muted>Dice per class: {dice}</div><div class='muted src'>{esc(card.get('source'))}</div></div>")
    legend = (f"<p class=legend>outlines:<span style='background:rgb{TRUTH_COLOUR}'></span>ground truth"
              f"<span style='background:rgb{PREDICTION_COLOUR}'></span>prediction</p>")
    return legend + f"<div class=gallery>{''.join(items)}</div>"


def error_table(summary: dict[str, Any]) -> str:
    """Return the error counts by kind and the kept error rows, then the images whose ground truth was
    unusable and what changed in the input between attempts."""
    return image_errors(summary) + truth_errors(summary) + input_notes(summary["run"])


def truth_errors(summary: dict[str, Any]) -> str:
    """Return the segmented images whose ground truth could not be used (not scored), by kind and the kept rows."""
    counts = summary["counts"]
    if not counts.get("truth_errors"):
        return ""
    kinds = ", ".join(f"{esc(kind)} {count}" for kind, count in counts["truth_errors_by_kind"].items())
    rows = "".join(f"<tr><td class=l>{esc(e['kind'])}</td><td class=l><code>{esc(e['key'])}</code></td>"
                   f"<td class=l>{esc(e['error'])}</td></tr>" for e in summary.get("truth_errors", []))
    return (f"<p class=bad>{counts['truth_errors']} image(s) were segmented, but their ground truth could not be used, "
            f"so they are not scored ({kinds}):</p>"
            f"<table><tr><th class=l>kind</th><th class=l>key</th><th class=l>ground truth problem</th></tr>{rows}</table>")


def input_notes(run: dict[str, Any]) -> str:
    """Return what the run record says about the input across attempts: repeated keys, changed and removed shards."""
    notes = []
    repeated = run.get("repeated_keys") or {}
    if repeated.get("count"):
        examples = "; ".join(f"<code>{esc(e['key'])}</code> in {esc(', '.join(e['shards']))}"
                             for e in repeated.get("examples", [])[:5])
        notes.append(f"{repeated['count']} key(s) are held by more than one shard; each image was segmented and kept "
                     f"under its shard's folder (e.g. {examples}).")
    if run.get("changed_shards"):
        notes.append(f"{len(run['changed_shards'])} shard(s) changed since an earlier attempt committed them and were "
                     f"segmented again: {esc(', '.join(run['changed_shards'][:10]))}.")
    if run.get("removed_shards"):
        notes.append(f"{len(run['removed_shards'])} committed shard(s) are no longer in the input; their rows are still "
                     f"counted here: {esc(', '.join(run['removed_shards'][:10]))}.")
    return "".join(f"<p class=muted>{note}</p>" for note in notes)


def image_errors(summary: dict[str, Any]) -> str:
    """Return the error counts by kind and the kept error rows."""
    counts = summary["counts"]
    if not counts["errors"]:
        return "<p class=good>No errors: every input image was segmented.</p>"
    kinds = "".join(f"<tr><td class=l>{esc(kind)}</td><td>{count}</td></tr>" for kind, count in counts["errors_by_kind"].items())
    rows = "".join(f"<tr><td class=l>{esc(e['kind'])}</td><td class=l><code>{esc(e['key'])}</code></td>"
                   f"<td class=l>{esc(e['error'])}</td><td class=l class=muted>{esc(e['source'])}</td></tr>"
                   for e in summary["errors"])
    more = (f"<p class=muted>{summary['errors_truncated']} more error rows are in metrics/*.parquet (status = 'error').</p>"
            if summary.get("errors_truncated") else "")
    return (f"<table><tr><th class=l>kind</th><th>rows</th></tr>{kinds}</table>"
            f"<table><tr><th class=l>kind</th><th class=l>key</th><th class=l>error</th><th class=l>source</th></tr>{rows}</table>{more}")


def baseline_section(comparison: dict[str, Any] | None) -> str:
    """Return the run-vs-baseline section."""
    if not comparison:
        return ""

    def cell(entry: dict[str, Any]) -> str:
        change = entry.get("delta")
        tone = "" if change is None else (" class=good" if change > 0 else " class=bad" if change < 0 else "")
        sign = "" if change is None or change < 0 else "+"
        return f"<td>{fmt(entry.get('baseline'))}</td><td>{fmt(entry.get('run'))}</td><td{tone}>{sign}{fmt(change)}</td>"

    head = ("<tr><th class=l rowspan=2>class</th><th colspan=3>Dice macro</th><th colspan=3>Dice micro</th>"
            "<th colspan=3>IoU macro</th></tr><tr>" + "<th>baseline</th><th>run</th><th>change</th>" * 3 + "</tr>")
    rows = [f"<tr><td class=l>{esc(c['name'])}</td>{cell(c['dice_macro'])}{cell(c['dice_micro'])}{cell(c['iou_macro'])}</tr>"
            for c in comparison["classes"]]
    fg = comparison["foreground"]
    rows.append(f"<tr><td class=l>foreground</td>{cell(fg['dice_macro'])}{cell(fg['dice_micro'])}{cell(fg['iou_macro'])}</tr>")
    worse = "".join(f"<tr><td class=l><code>{esc(w['key'])}</code></td><td>{fmt(w['baseline_mean_dice'])}</td>"
                    f"<td>{fmt(w['mean_dice'])}</td><td class=bad>{fmt(w['delta'])}</td></tr>" for w in comparison["most_worse"])
    chart = baseline_chart(comparison)
    return (f"<h2>Against baseline</h2><p>baseline <code>{esc(comparison['url'])}</code> (model "
            f"{esc(comparison.get('model_id'))}); {comparison['images_matched']} images matched by key, "
            f"{comparison['only_in_run']} only in this run, {comparison['only_in_baseline']} only in the baseline.</p>"
            f"<table>{head}{''.join(rows)}</table>"
            + (f"<img class=plot alt='macro Dice change per class' src='{chart}'>" if chart else "")
            + "<h3>Images that got most worse (foreground mean Dice)</h3>"
            + (f"<table><tr><th class=l>key</th><th>baseline</th><th>run</th><th>change</th></tr>{worse}</table>"
               if worse else "<p class=good>No image got worse.</p>"))


def render_html(summary: dict[str, Any], storage_config: StorageConfig | None = None) -> str:
    """Return the report as one HTML document that needs nothing but a browser."""
    run = summary["run"]
    title = f"Segmentation report: {run.get('run_id') or run['url']}"
    parts = [(f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{esc(title)}</title>"
             f"<style>{STYLE}</style></head><body><h1>{esc(title)}</h1>"
             f"<p class=muted>{esc(run['url'])} &middot; status {esc(run.get('status'))}"
             f"{' &middot; <b class=bad>PARTIAL: committed shards only</b>' if run.get('partial') else ''}"
             f" &middot; {esc(run.get('started') or '?')} to {esc(run.get('ended') or '?')}</p>"),
             "<h2>Headline</h2>", headline(summary)]
    if summary.get("ground_truth"):
        parts += ["<h2>Per class</h2>", class_table(summary), "<div class=row>"]
        for metric in ("dice", "iou"):
            chart = class_bar_chart(summary, metric)
            if chart:
                parts.append(f"<img class=plot alt='{metric} per class' src='{chart}'>")
        parts.append("</div>")
        chart = histograms(summary)
        if chart:
            parts += ["<h2>Per-image Dice</h2>", f"<img class=plot alt='per-image Dice histograms' src='{chart}'>"]
        parts += [f"<h2>Worst {len(summary.get('worst') or [])} images (foreground mean Dice)</h2>",
                  gallery(overlay_cards(summary, storage_config))]
    else:
        parts += ["<h2>Predicted classes (no ground truth in this run)</h2>", class_table(summary)]
    from pipeline.report.render_objects import objects_html

    parts += [objects_html(summary, storage_config), baseline_section(summary.get("baseline")), "<h2>Errors</h2>",
              error_table(summary)]
    metadata = {key: run.get(key) for key in ("run_id", "model_id", "model_url", "status", "started", "ended",
                                              "wall_seconds", "startup_seconds", "images_per_second",
                                              "steady_images_per_second", "image_seconds", "model_ids_in_rows")}
    parts += ["<h2>Run</h2>", f"<pre>{esc(json.dumps(metadata, indent=2))}</pre>",
              ("<details><summary>configuration and versions</summary>"
               f"<pre>{esc(json.dumps({'config': run.get('config'), 'versions': run.get('versions')}, indent=2))}</pre></details>"),
              "<h2>Definitions</h2><table>"
              + "".join(f"<tr><th class=l>{esc(k)}</th><td class=l>{esc(v)}</td></tr>" for k, v in summary["definitions"].items())
              + "</table></body></html>"]
    return "".join(parts)
