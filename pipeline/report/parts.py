"""Pieces both report pages draw with: number formatting, figures as data URIs, and overlays of the
worst images with their truth (green) and prediction (magenta) outlined."""

from __future__ import annotations

import html
from collections import defaultdict
from typing import Any

import numpy as np
from PIL import Image

from pipeline import imaging
from pipeline.config import StorageConfig
from pipeline.figures import figure_uri, png_data_uri, pyplot  # noqa: F401 - the report's modules take them from here
from pipeline.io.readers import read_samples

OVERLAY_SIDE = 320  # longest side of an overlay in the report, pixels
TRUTH_COLOUR = (0, 200, 0)
PREDICTION_COLOUR = (230, 0, 230)


def fmt(value: Any, digits: int = 4) -> str:
    """Return a number for display (``n/a`` for None)."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def esc(value: Any) -> str:
    """Return ``value`` as HTML-escaped text."""
    return html.escape(str(value), quote=True)


def display_image(image: np.ndarray) -> np.ndarray:
    """Return a decoded image as uint8 RGB for display (16-bit stretched to its own range)."""
    if image.dtype != np.uint8:
        pixels = image.astype(np.float32)
        low, high = float(pixels.min()), float(pixels.max())
        image = ((pixels - low) / (high - low) * 255 if high > low else np.zeros_like(pixels)).astype(np.uint8)
    return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image


def outline(mask: np.ndarray) -> np.ndarray:
    """Return the pixels where the class label changes to a neighbour that is not background-to-background."""
    edge = np.zeros(mask.shape, dtype=bool)
    horizontal = mask[:, 1:] != mask[:, :-1]
    vertical = mask[1:, :] != mask[:-1, :]
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    edge[1:, :] |= vertical
    edge[:-1, :] |= vertical
    return edge & (mask > 0) if mask.max() > 0 else edge


def overlay(image: np.ndarray, truth: np.ndarray | None, predicted: np.ndarray | None, side: int = OVERLAY_SIDE) -> bytes:
    """Return a PNG of the image scaled to ``side`` (longest side) with truth (green) and prediction
    (magenta) outlines; masks (class masks or instance labels) are scaled nearest-neighbour before their
    outlines are drawn."""
    rgb = display_image(image)
    height, width = rgb.shape[:2]
    scale = side / max(height, width)  # small images are enlarged so their outlines stay readable
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    canvas = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR)).copy()
    for mask, colour in ((truth, TRUTH_COLOUR), (predicted, PREDICTION_COLOUR)):
        if mask is None:
            continue
        small = np.asarray(Image.fromarray(mask.astype(np.int32)).resize(size, Image.Resampling.NEAREST))
        canvas[outline(small)] = colour
    return imaging.encode_png(canvas)


def worst_samples(worst: list[dict[str, Any]], storage_config: StorageConfig | None
                  ) -> tuple[dict[tuple[str, str], tuple[bytes, bytes | None, bytes | None]], dict[str, str]]:
    """Return the input samples of the ``worst`` rows by ``(source, key)``, and why a source could not be read."""
    wanted: dict[str, set[str]] = defaultdict(set)
    for row in worst:
        wanted[row["source"]].add(row["key"])
    samples: dict[tuple[str, str], tuple[bytes, bytes | None, bytes | None]] = {}
    problems: dict[str, str] = {}
    for source, keys in wanted.items():
        try:
            for key, sample in read_samples(source, keys, storage_config).items():
                samples[(source, key)] = sample
        except Exception as exc:  # an overlay is a convenience: say why it is missing, never fail the report
            problems[source] = f"{type(exc).__name__}: {exc}"
    return samples, problems


def cards_of(worst: list[dict[str, Any]], layers: Any, storage_config: StorageConfig | None) -> list[dict[str, Any]]:
    """Return each row of ``worst`` with its overlay of ``layers(row, sample)`` = ``(image, truth, predicted)``
    (or the reason there is none); reads only those rows' input samples."""
    samples, problems = worst_samples(worst, storage_config)
    cards = []
    for row in worst:
        card = dict(row)
        sample = samples.get((row["source"], row["key"]))
        if sample is None:
            card["overlay_error"] = problems.get(row["source"], f"{row['key']} not found in {row['source']}")
            cards.append(card)
            continue
        try:
            card["overlay"] = png_data_uri(overlay(*layers(row, sample)))
        except Exception as exc:
            card["overlay_error"] = f"{type(exc).__name__}: {exc}"
        cards.append(card)
    return cards


def stats_cells(stats: dict[str, Any] | None) -> str:
    """Return table cells: macro [CI], median, p05, micro, NaN images."""
    if not stats:
        return "<td>n/a</td>" * 5
    ci = stats.get("ci95")
    interval = f" <span class=muted>[{fmt(ci[0])}, {fmt(ci[1])}]</span>" if ci else ""
    return (f"<td>{fmt(stats.get('macro'))}{interval}</td><td>{fmt(stats.get('median'))}</td>"
            f"<td>{fmt(stats.get('p05'))}</td><td>{fmt(stats.get('micro'))}</td><td>{stats.get('nan_images', 0)}</td>")


def label_map_of(summary: dict[str, Any]) -> imaging.LabelMap:
    """Return the label map the run read its ground truth through (run.json's model info), else plain indices."""
    recorded = summary["run"].get("labels")
    count = len(summary["classes"])
    return imaging.LabelMap.from_mapping(recorded).with_classes(count) if recorded else imaging.LabelMap(num_classes=count)
