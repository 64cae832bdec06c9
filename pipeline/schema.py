"""The per-image metrics table written to ``<output>/metrics/<shard>.parquet``.

One row per input image, success or failure. ``height`` and ``width`` are the image as displayed:
an EXIF ``orientation`` (1..8, recorded; 1 = as stored) is applied before anything else, to the
image and to its mask, and the predicted mask is in that orientation. ``snapped_pixels``: of a
mask saved in a lossy format (JPEG), the pixels moved back onto a class value (0 for a lossless
mask, null without one). ``ignored_pixels``: the mask's pixels its label map declares not
labelled (``labels.ignore``), left out of every count (null without a mask). Per-class columns are
lists indexed by class (``dice[1]`` is class 1), so the schema is the same for every model; they
are null when the image has no ground truth (``tp``, ``fp``, ``fn``, ``dice``, ``iou``) or failed (all of them).
``class_pixels`` counts predicted pixels per class, with or without ground truth; a run's files
name the classes in their schema metadata (``class_names``, a JSON list: the model's, or the
label map's where the model's are only numbered).

With objects (``segment --objects``) a row also carries ``instances_uri``, ``objects_method`` (how
touching objects were told apart: ``components``, ``watershed`` or ``borders``; see
:mod:`pipeline.objects`), ``objects_predicted`` per class and, with ground truth, the instance metrics per class (:mod:`pipeline.instances`):
``objects_true``, ``dsb_score``, ``object_f1``, ``pq`` and the counts ``object_tp`` /
``object_fp`` / ``object_fn`` (per class, a list over :data:`pipeline.instances.THRESHOLDS`), with
``truth_instances`` saying where the true objects came from: ``labels`` (an instance label
image) or ``components`` (the connected components of the ground-truth mask). Each object is a
row of ``objects/<shard>.parquet`` (:data:`OBJECTS_SCHEMA`).

An error row carries ``error`` (the human message, naming the key and the fix) and ``error_kind``
(one of :class:`pipeline.errors.ErrorKind`'s values, set where the error is raised), so reports count kinds from the
column, never from the wording. Ground truth that cannot be used (unreadable, another size,
unexpected class values) is not an image error: the row stays ``ok`` with its mask, its
``truth_error``/``truth_error_kind`` say why, and its ground-truth metrics are null.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
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
        pa.field("error_kind", pa.string()),
        pa.field("truth_error", pa.string()),
        pa.field("truth_error_kind", pa.string()),
        pa.field("height", pa.int32()),
        pa.field("width", pa.int32()),
        pa.field("orientation", pa.int8()),
        pa.field("snapped_pixels", pa.int64()),
        pa.field("ignored_pixels", pa.int64()),
        pa.field("mask_uri", pa.string()),
        pa.field("class_pixels", pa.list_(pa.int64())),
        pa.field("tp", pa.list_(pa.int64())),
        pa.field("fp", pa.list_(pa.int64())),
        pa.field("fn", pa.list_(pa.int64())),
        pa.field("dice", pa.list_(pa.float64())),
        pa.field("iou", pa.list_(pa.float64())),
        pa.field("mean_dice", pa.float64()),
        pa.field("mean_iou", pa.float64()),
        pa.field("instances_uri", pa.string()),
        pa.field("objects_method", pa.string()),
        pa.field("truth_instances", pa.string()),
        pa.field("objects_predicted", pa.list_(pa.int64())),
        pa.field("objects_true", pa.list_(pa.int64())),
        pa.field("dsb_score", pa.list_(pa.float64())),
        pa.field("object_f1", pa.list_(pa.float64())),
        pa.field("pq", pa.list_(pa.float64())),
        pa.field("object_tp", pa.list_(pa.list_(pa.int64()))),
        pa.field("object_fp", pa.list_(pa.list_(pa.int64()))),
        pa.field("object_fn", pa.list_(pa.list_(pa.int64()))),
        pa.field("mean_dsb_score", pa.float64()),
        pa.field("mean_pq", pa.float64()),
        pa.field("model_id", pa.string(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("seconds", pa.float64()),
    ],
    metadata={
        "metric_conventions": (
            "dice=2TP/(2TP+FP+FN), iou=TP/(TP+FP+FN) per class; NaN when TP+FP+FN=0; "
            "mean_dice/mean_iou average foreground classes 1..C-1 skipping NaN; "
            "per-class lists are null without ground truth; "
            "objects: a predicted and a true object match when IoU > t (strictly, one to one) at "
            "t = 0.50, 0.55, ..., 0.95; object_tp/fp/fn[class][threshold]; dsb_score = mean over t of "
            "TP/(TP+FP+FN); object_f1 = 2TP/(2TP+FP+FN) at 0.5; pq = SQ x RQ at 0.5; all NaN when a class "
            "has no object on either side; class 0 (background) NaN; mean_dsb_score/mean_pq average "
            "foreground classes skipping NaN"
        )
    },
)

OBJECTS_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("class", pa.int32(), nullable=False),
        pa.field("label", pa.int32(), nullable=False),
        pa.field("area", pa.int64(), nullable=False),
        pa.field("bbox_top", pa.int32()),
        pa.field("bbox_left", pa.int32()),
        pa.field("bbox_bottom", pa.int32()),
        pa.field("bbox_right", pa.int32()),
        pa.field("centroid_row", pa.float64()),
        pa.field("centroid_col", pa.float64()),
        pa.field("equivalent_diameter", pa.float64()),
        pa.field("eccentricity", pa.float64()),
        pa.field("solidity", pa.float64()),
        pa.field("mean_score", pa.float64()),
        pa.field("true_label", pa.int32()),
        pa.field("true_iou", pa.float64()),
    ],
    metadata={
        "object_conventions": (
            "label: the object's value in instances/<key>.png; area in pixels; bbox bottom/right exclusive; "
            "equivalent_diameter of the disc of the same area; eccentricity of the ellipse of the same second "
            "moments (0 = disc); solidity = area / convex hull area; mean_score = mean probability of the "
            "object's class over its pixels; true_label = the ground-truth object of the same class it matches "
            "(IoU > 0.5), 0 if none; true_iou = its IoU with the true object of its class it overlaps most, "
            "0 if none; both null without ground truth"
        )
    },
)


def objects_table(columns: Mapping[str, Any]) -> pa.Table:
    """Return object columns (name -> equal-length values; missing ones null) as a table with :data:`OBJECTS_SCHEMA`."""
    length = len(columns["key"]) if "key" in columns else 0
    arrays = [pa.array(columns[field.name], field.type) if field.name in columns else pa.nulls(length, field.type)
              for field in OBJECTS_SCHEMA]
    return pa.Table.from_arrays(arrays, schema=OBJECTS_SCHEMA)


def metrics_table(rows: Iterable[Mapping[str, Any]], class_names: Sequence[str] = ()) -> pa.Table:
    """Return the rows as a table with :data:`METRICS_SCHEMA` (missing columns become null); with
    ``class_names``, the schema's metadata names the classes the per-class lists are indexed by
    (``class_names``: a JSON list)."""
    names = METRICS_SCHEMA.names
    table = pa.Table.from_pylist([{name: row.get(name) for name in names} for row in rows], schema=METRICS_SCHEMA)
    if class_names:
        table = table.replace_schema_metadata({**METRICS_SCHEMA.metadata, b"class_names": json.dumps(list(class_names))})
    return table
