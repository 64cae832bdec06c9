"""The objects section of report.html: instance metrics per class, the metric against the IoU
threshold, predicted against true counts, object areas, and the worst images by DSB score with
each object outlined."""

from __future__ import annotations

from typing import Any

import numpy as np

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

LINE_COLOURS = ("#1f5fa8", "#e07b00", "#2a9d8f", "#9b2226", "#6a4c93", "#588157", "#bc6c25")


def foreground_classes(objects: dict[str, Any]) -> list[dict[str, Any]]:
    """Return the objects section's class entries."""
    return list(objects.get("classes") or [])


def objects_table(objects: dict[str, Any]) -> str:
    """Return the per-class table: DSB score, F1 and PQ (macro [CI], median, p05, pooled, NaN), counts, areas."""
    head = ("<tr><th class=l rowspan=2>class</th><th colspan=5>DSB score</th><th colspan=2>F1 at 0.5</th>"
            "<th colspan=2>PQ</th><th rowspan=2>objects<br>predicted</th><th rowspan=2>objects<br>true</th>"
            "<th rowspan=2>count error<br>mean / |mean|</th><th rowspan=2>area<br>median [p05, p95]</th></tr><tr>"
            "<th>macro [95% CI]</th><th>median</th><th>p05</th><th>pooled</th><th>NaN</th>"
            + "<th>macro [95% CI]</th><th>pooled</th>" * 2 + "</tr>")
    rows = []
    for entry in foreground_classes(objects):
        error, area = entry.get("count_error") or {}, entry.get("area") or {}
        rows.append(f"<tr><td class=l>{esc(entry['name'])}</td>{stats_cells(entry.get('dsb_score'))}"
                    f"{short_cells(entry.get('f1'))}{short_cells(entry.get('pq'))}"
                    f"<td>{entry.get('objects_predicted', 0)}</td><td>{esc(entry.get('objects_true', 'n/a'))}</td>"
                    f"<td>{fmt(error.get('mean'), 2)} / {fmt(error.get('mean_absolute'), 2)}</td>"
                    f"<td>{fmt(area.get('median'), 1)} [{fmt(area.get('p05'), 1)}, {fmt(area.get('p95'), 1)}]</td></tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def short_cells(stats: dict[str, Any] | None) -> str:
    """Return two table cells: macro [CI] and pooled."""
    if not stats:
        return "<td>n/a</td>" * 2
    ci = stats.get("ci95")
    interval = f" <span class=muted>[{fmt(ci[0])}, {fmt(ci[1])}]</span>" if ci else ""
    return f"<td>{fmt(stats.get('macro'))}{interval}</td><td>{fmt(stats.get('micro'))}</td>"


def threshold_chart(objects: dict[str, Any]) -> str | None:
    """Return TP/(TP+FP+FN) against the IoU threshold per class (pooled solid, macro dashed)."""
    entries = [e for e in foreground_classes(objects) if e.get("by_threshold")]
    if not entries:
        return None
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(5.2, 3.2))
    for number, entry in enumerate(entries):
        colour = LINE_COLOURS[number % len(LINE_COLOURS)]
        for kind, style in (("pooled", "-"), ("macro", "--")):
            values = [np.nan if v is None else v for v in entry["by_threshold"][kind]]
            axis.plot(objects["thresholds"], values, style, color=colour, marker="o", markersize=3,
                      label=f"{entry['name']} ({kind})")
    axis.set_xlabel("IoU threshold t (match: IoU > t)")
    axis.set_ylabel("TP / (TP + FP + FN)")
    axis.set_ylim(0, 1.02)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, frameon=False)
    figure.tight_layout()
    return figure_uri(figure)


def count_scatter(objects: dict[str, Any]) -> str | None:
    """Return predicted against true object counts per image (the sampled images), one colour per class."""
    scatter = objects.get("scatter") or {}
    if not scatter.get("images"):
        return None
    predicted, true = np.asarray(scatter["predicted"]), np.asarray(scatter["true"])
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(3.8, 3.6))
    top = 1
    for number, entry in enumerate(foreground_classes(objects)):
        index = entry["index"]
        axis.scatter(true[:, index], predicted[:, index], s=8, alpha=0.5, color=LINE_COLOURS[number % len(LINE_COLOURS)],
                     label=entry["name"])
        top = max(top, int(true[:, index].max()), int(predicted[:, index].max()))
    axis.plot([0, top], [0, top], color="#888", linewidth=1)
    axis.set_xlabel("true objects per image")
    axis.set_ylabel("predicted objects per image")
    axis.legend(fontsize=7, frameon=False)
    figure.tight_layout()
    return figure_uri(figure)


def area_chart(objects: dict[str, Any]) -> str | None:
    """Return the distribution of object areas per class (log-spaced bins)."""
    entries = [e for e in foreground_classes(objects) if (e.get("area") or {}).get("objects")]
    if not entries:
        return None
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(5.2, 3.0))
    for number, entry in enumerate(entries):
        histogram = entry["area"]["histogram"]
        axis.stairs(histogram["counts"], histogram["edges"], color=LINE_COLOURS[number % len(LINE_COLOURS)],
                    label=entry["name"])
    axis.set_xscale("log", base=2)
    axis.set_xlabel("object area (pixels)")
    axis.set_ylabel("objects")
    axis.legend(fontsize=7, frameon=False)
    figure.tight_layout()
    return figure_uri(figure)


def worst_cards(objects: dict[str, Any], labels: imaging.LabelMap, storage_config: StorageConfig | None) -> list[dict[str, Any]]:
    """Return, for each worst image by DSB score, an overlay with every true and predicted object outlined."""

    def layers(row: dict[str, Any], sample: tuple[bytes, ...]) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        image = imaging.decode_image(sample[0])
        predicted = imaging.decode_instances(storage.read_bytes(row["instances_uri"], storage_config), image.shape[:2])
        return image, true_labels(sample, labels, image.shape[:2]), predicted

    return cards_of(objects.get("worst") or [], layers, storage_config)


def true_labels(sample: tuple[bytes, ...], labels: imaging.LabelMap, shape: tuple[int, int]) -> np.ndarray | None:
    """Return the sample's true objects as labels: its instance label image, else its mask's components."""
    if len(sample) > 2 and sample[2]:
        return imaging.decode_instances(sample[2], shape)
    if sample[1]:
        from pipeline.objects import label_objects

        return label_objects(imaging.decode_mask(sample[1], labels, shape), labels.num_classes)[0]
    return None


def objects_gallery(cards: list[dict[str, Any]]) -> str:
    """Return the gallery of the worst images by DSB score."""
    if not cards:
        return "<p class=muted>No images with ground truth and a defined DSB score.</p>"
    items = []
    for card in cards:
        scores = ", ".join(fmt(v, 3) for v in (card.get("dsb_score") or [])[1:])
        picture = (f"<img alt='{esc(card['key'])}' src='{card['overlay']}'>" if card.get("overlay")
                   else f"<p class=bad>overlay unavailable: {esc(card.get('overlay_error', ''))}</p>")
        counts = (f"{sum((card.get('objects_predicted') or [0])[1:])} predicted, "
                  f"{sum((card.get('objects_true') or [0])[1:])} true objects")
        items.append(f"<div class=card>{picture}<div><code>{esc(card['key'])}</code></div>"
                     f"<div>mean DSB score <b>{fmt(card.get('mean_dsb_score'))}</b></div>"
                     f"<div class=muted>per class: {scores}; {counts}</div>"
                     f"<div class='muted src'>{esc(card.get('source'))}</div></div>")
    legend = (f"<p class=legend>object outlines:<span style='background:rgb{TRUTH_COLOUR}'></span>ground truth"
              f"<span style='background:rgb{PREDICTION_COLOUR}'></span>prediction</p>")
    return legend + f"<div class=gallery>{''.join(items)}</div>"


def objects_html(summary: dict[str, Any], storage_config: StorageConfig | None) -> str:
    """Return the report's objects section (empty for a run segmented without objects)."""
    objects = summary.get("objects")
    if not objects:
        return ""
    sources = objects.get("truth_instances") or {}
    origin = ", ".join(f"{count} images from {'instance label images' if name == 'labels' else name + ' of the mask'}"
                       for name, count in sources.items()) or "no ground truth"
    methods = ", ".join(f"{name} ({count} image{'s' if count != 1 else ''})"
                        for name, count in (objects.get("methods") or {}).items())
    parts = ["<h2>Objects</h2>",
             f"<p>{objects['images']} images with objects, {objects['with_ground_truth']} scored against true objects "
             f"({esc(origin)}); a match is IoU &gt; t, one to one. Touching objects told apart by: "
             f"{esc(methods or 'not recorded')}.</p>",
             objects_table(objects), "<div class=row>"]
    for chart, alt in ((threshold_chart(objects), "metric against IoU threshold"),
                       (count_scatter(objects), "predicted against true counts"), (area_chart(objects), "object areas")):
        if chart:
            parts.append(f"<img class=plot alt='{alt}' src='{chart}'>")
    parts.append("</div>")
    if objects.get("scatter", {}).get("images"):
        parts.append(f"<p class=muted>counts of the first {objects['scatter']['images']} images read.</p>")
    if objects["with_ground_truth"]:
        parts += [f"<h3>Worst {len(objects.get('worst') or [])} images (mean DSB score)</h3>",
                  objects_gallery(worst_cards(objects, label_map_of(summary), storage_config))]
    return "".join(parts)
