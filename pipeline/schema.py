"""The per-image metrics table written to ``<output>/metrics/<shard>.parquet``.

One row per input image, success or failure. Per-class columns are lists indexed by class
(``dice[1]`` is class 1), so the schema is the same for every model; they are null when the image
has no ground truth (``tp``, ``fp``, ``fn``, ``dice``, ``iou``) or failed (all of them).
``class_pixels`` counts predicted pixels per class, with or without ground truth.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow as pa

STATUS_OK = "ok"
STATUS_ERROR = "error"

METRICS_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("height", pa.int32()),
        pa.field("width", pa.int32()),
        pa.field("mask_uri", pa.string()),
        pa.field("class_pixels", pa.list_(pa.int64())),
        pa.field("tp", pa.list_(pa.int64())),
        pa.field("fp", pa.list_(pa.int64())),
        pa.field("fn", pa.list_(pa.int64())),
        pa.field("dice", pa.list_(pa.float64())),
        pa.field("iou", pa.list_(pa.float64())),
        pa.field("mean_dice", pa.float64()),
        pa.field("mean_iou", pa.float64()),
        pa.field("model_id", pa.string(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("seconds", pa.float64()),
    ],
    metadata={
        "metric_conventions": (
            "dice=2TP/(2TP+FP+FN), iou=TP/(TP+FP+FN) per class; NaN when TP+FP+FN=0; "
            "mean_dice/mean_iou average foreground classes 1..C-1 skipping NaN; "
            "per-class lists are null without ground truth"
        )
    },
)

METRIC_COLUMNS = ("class_pixels", "tp", "fp", "fn", "dice", "iou", "mean_dice", "mean_iou")


def metrics_table(rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Return the rows as a table with :data:`METRICS_SCHEMA` (missing columns become null)."""
    names = METRICS_SCHEMA.names
    return pa.Table.from_pylist([{name: row.get(name) for name in names} for row in rows], schema=METRICS_SCHEMA)
