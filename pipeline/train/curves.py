"""A training run's curves: TensorBoard event files under the model output's ``logs/``, and
``training.html`` beside ``model.json``.

The rank-0 worker writes each epoch's scalars (:func:`epoch_scalars`) with ``tf.summary`` as the
epoch ends (:class:`EventLog`), so ``tensorboard --logdir <output>/logs`` shows the run while it
trains; a resumed run adds a new event file to the same folder. The driver writes
``training.html`` at the end from the history model.json keeps (:func:`training_html`).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
from typing import Any

from pipeline.config import StorageConfig
from pipeline.figures import figure_uri, pyplot
from pipeline.io import storage

log = logging.getLogger(__name__)

LOGS = "logs"
TRAINING_PAGE = "training.html"


def epoch_scalars(record: dict[str, Any], class_names: tuple[str, ...]) -> dict[str, float]:
    """Return an epoch's scalars by TensorBoard tag: the training loss, learning rate, windows/s and
    seconds, and with validation the mean Dice/IoU, pixel error and each class's Dice/IoU."""
    scalars = {"loss/train": record.get("loss"), "learning_rate": record.get("learning_rate"),
               "throughput/windows_per_second": record.get("train_images_per_second"),
               "time/epoch_seconds": record.get("seconds", record.get("epoch_seconds")),
               "val/mean_dice": record.get("val_mean_dice"), "val/mean_iou": record.get("val_mean_iou"),
               "val/pixel_error": record.get("val_pixel_error")}
    for metric in ("dice", "iou"):
        for name, value in zip(class_names, record.get(f"val_{metric}") or ()):
            scalars[f"val_{metric}/{name}"] = value
    return {tag: float(value) for tag, value in scalars.items()
            if isinstance(value, (int, float)) and math.isfinite(value)}


class EventLog:
    """TensorBoard event files of a run's epochs under ``<output>/logs`` (the rank-0 worker's).

    TensorFlow writes them to a local folder: the output's own where the output is local, else a
    temporary one whose files are copied to the output after each epoch. A failed write is a
    warning, never a failed run.
    """

    def __init__(self, output: str, storage_config: StorageConfig | None, class_names: tuple[str, ...]) -> None:
        import tensorflow as tf

        self.url = storage.join_url(output, LOGS)
        self.storage_config = storage_config
        self.class_names = class_names
        filesystem, path = storage.filesystem_for(self.url, storage_config)
        self.copied = not storage.is_local(filesystem)
        self.folder = tempfile.mkdtemp(prefix="segpipe-logs-") if self.copied else path
        os.makedirs(self.folder, exist_ok=True)
        self.writer = tf.summary.create_file_writer(self.folder)
        self.failed = False

    def write(self, record: dict[str, Any]) -> None:
        """Write one finished epoch's scalars (step: the epoch counted from 1)."""
        import tensorflow as tf
        from tensorflow.core.framework import summary_pb2

        # TensorBoard's scalar summary, written as the tensorboard package's tf.summary.scalar writes it
        # (a float32 tensor whose metadata names the "scalars" plugin): training needs no TensorBoard install
        scalar = summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))
        try:
            with self.writer.as_default():
                for tag, value in epoch_scalars(record, self.class_names).items():
                    tf.summary.write(tag, tf.constant(value, tf.float32), step=int(record["epoch"]) + 1, metadata=scalar)
            self.writer.flush()
            if self.copied:
                for name in os.listdir(self.folder):
                    with open(os.path.join(self.folder, name), "rb") as handle:
                        storage.write_bytes(storage.join_url(self.url, name), handle.read(), self.storage_config)
        except Exception as exc:  # noqa: BLE001 - curves are a view of the run, never its cause of failure
            if not self.failed:
                log.warning("the TensorBoard curves under %s could not be written (%s); training goes on", self.url, exc)
            self.failed = True

    def close(self) -> None:
        """Close the writer; remove the temporary folder of an object-storage output (its files are copied)."""
        self.writer.close()
        if self.copied:
            shutil.rmtree(self.folder, ignore_errors=True)


def curve_panels(history: list[dict[str, Any]], class_names: tuple[str, ...]) -> list[tuple[str, dict[str, list]]]:
    """Return the page's panels: (title, {line label: (epochs, values)}) for loss, validation Dice and
    IoU (mean and per class), learning rate and windows/s; panels without a value are left out."""
    def series(pick: Any) -> tuple[list[int], list[float]]:
        points = [(int(r["epoch"]) + 1, pick(r)) for r in history]
        points = [(e, float(v)) for e, v in points if isinstance(v, (int, float)) and math.isfinite(v)]
        return [e for e, _ in points], [v for _, v in points]

    def per_class(metric: str) -> dict[str, Any]:
        lines = {"mean (foreground)": series(lambda r: r.get(f"val_mean_{metric}"))}
        for index, name in enumerate(class_names):
            lines[name] = series(lambda r, i=index: dict(enumerate(r.get(f"val_{metric}") or ())).get(i))
        return lines

    panels = [("training loss", {"loss": series(lambda r: r.get("loss"))}),
              ("validation Dice", per_class("dice")), ("validation IoU", per_class("iou")),
              ("learning rate", {"learning rate": series(lambda r: r.get("learning_rate"))}),
              ("windows/s", {"windows/s": series(lambda r: r.get("train_images_per_second"))})]
    return [(title, {label: line for label, line in lines.items() if line[0]})
            for title, lines in panels if any(line[0] for line in lines.values())]


def training_html(history: list[dict[str, Any]], class_names: tuple[str, ...], title: str,
                  best_epoch: int | None) -> str:
    """Return training.html: the curves of every epoch and a table of them, one self-contained file."""
    from html import escape

    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    panels = curve_panels(history, class_names)
    figure, axes = plt.subplots(1, max(1, len(panels)), figsize=(3.6 * max(1, len(panels)), 3.0), squeeze=False)
    for axis, (name, lines) in zip(axes[0], panels):
        for label, (epochs, values) in lines.items():
            axis.plot(epochs, values, marker="o" if len(epochs) < 30 else None, markersize=3, label=label)
        if best_epoch is not None:
            axis.axvline(best_epoch + 1, color="#999999", linewidth=0.8, linestyle="--")
        axis.set_title(name, fontsize=10)
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
        if len(lines) > 1:
            axis.legend(fontsize=7)
    figure.tight_layout()
    image = figure_uri(figure)
    rows = "".join(
        f"<tr><td>{int(r['epoch']) + 1}{' (best)' if r['epoch'] == best_epoch else ''}</td><td>{r.get('loss', math.nan):.4f}</td>"
        f"<td>{r.get('val_mean_dice', math.nan):.3f}</td><td>{r.get('val_mean_iou', math.nan):.3f}</td>"
        f"<td>{r.get('learning_rate', math.nan):.2e}</td><td>{r.get('train_images_per_second', math.nan):.1f}</td></tr>"
        for r in history)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title><style>"
            "body{font-family:system-ui,sans-serif;margin:24px auto;max-width:1400px;color:#1d2430}"
            "table{border-collapse:collapse;font-size:0.9em}td,th{border:1px solid #d0d7de;padding:3px 8px;text-align:right}"
            "img{max-width:100%}</style></head><body>"
            f"<h1>{escape(title)}</h1><p>{len(history)} epochs; the dashed line marks the best epoch (kept as the model). "
            "TensorBoard shows the same curves: <code>tensorboard --logdir logs</code> in this folder.</p>"
            f"<img alt='training curves' src='{image}'>"
            "<table><tr><th>epoch</th><th>loss</th><th>val Dice</th><th>val IoU</th><th>learning rate</th>"
            f"<th>windows/s</th></tr>{rows}</table></body></html>")


def write_training_page(output: str, storage_config: StorageConfig | None, history: list[dict[str, Any]],
                        class_names: tuple[str, ...], best_epoch: int | None) -> str:
    """Write ``<output>/training.html``; return its URL."""
    url = storage.join_url(output, TRAINING_PAGE)
    page = training_html(history, class_names, f"training of {output}", best_epoch)
    storage.write_bytes(url, page.encode(), storage_config)
    return url
