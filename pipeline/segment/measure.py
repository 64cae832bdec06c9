"""The objects of one finished image: labelled, written, measured, and scored against the true objects.

With objects asked for (``segment --objects``), the finish stage (:mod:`pipeline.segment.write`)
hands each image's predicted mask here: its objects are labelled (:func:`pipeline.objects.label_objects`),
the label image is written to ``instances/<key>.png`` (``.tif`` beyond 65,535 objects), every
object is measured (:func:`pipeline.objects.object_rows`) and, with ground truth, scored against
the true objects (:func:`pipeline.instances.class_scores`).

The true objects are the instance label image an input carries (``truth_instances: labels``),
each given the class its pixels hold most in the ground-truth mask (a two-class model needs no
mask: every object is class 1), else the connected components of the ground-truth mask with the
run's connectivity (``components``), never split.
"""

from __future__ import annotations

import io
import logging
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline import imaging, instances, metrics, objects, schema
from pipeline.config import ObjectsConfig, StorageConfig
from pipeline.io import layout, storage

log = logging.getLogger(__name__)

INSTANCE_METRICS = {"objects_true": "objects_true", "dsb_score": "dsb_score", "f1": "object_f1", "pq": "pq",
                    "tp": "object_tp", "fp": "object_fp", "fn": "object_fn"}  # class_scores key -> metrics column


def true_objects(truth: np.ndarray | None, labels: np.ndarray | None, num_classes: int,
                 connectivity: int) -> tuple[np.ndarray, np.ndarray, str] | None:
    """Return ``(labels, label_class, source)`` of the true objects, or None when they cannot be known.

    ``labels`` is the input's instance label image (``source`` ``"labels"``), ``truth`` its class
    mask; without labels the mask's connected components are the objects (``"components"``).
    Instance labels without a mask name no classes: for a two-class model every object is class
    1, for more classes None (the objects' classes are unknown).
    """
    if labels is not None:
        relabelled, _, _ = objects.relabelled(labels)
        count = int(relabelled.max()) if relabelled.size else 0
        if truth is None:
            if num_classes != 2:
                return None
            return relabelled.astype(np.int32), np.array([0] + [1] * count, dtype=np.int32), "labels"
        votes = np.bincount(relabelled.ravel().astype(np.int64) * num_classes + truth.ravel(),
                            minlength=(count + 1) * num_classes).reshape(count + 1, num_classes)
        label_class = votes.argmax(axis=1).astype(np.int32)
        label_class[0] = 0
        return relabelled.astype(np.int32), label_class, "labels"
    if truth is None:
        return None
    found, label_class = objects.label_objects(truth, num_classes, connectivity=connectivity)
    return found, label_class, "components"


def object_method(config: ObjectsConfig, borders: bool, model_diameter: float | None,
                  predicted: np.ndarray, num_classes: int) -> tuple[str, int]:
    """Return how an image's objects are found: the split (``none``, ``watershed`` or ``borders``;
    ``auto`` is borders for a border model, else watershed) and the smallest object kept (the
    given ``min_size``, else speckle for the objects' diameter: :func:`pipeline.objects.speckle_size`)."""
    split = config.split if config.split != "auto" else ("borders" if borders else "watershed")
    if config.min_size is not None:
        return split, config.min_size
    diameter = (config.diameter or model_diameter
                or objects.typical_diameter(objects.fold_borders(predicted, num_classes) if borders else predicted,
                                            num_classes))
    return split, objects.speckle_size(diameter)


METHOD_NAMES = {"none": "components", "watershed": "watershed", "borders": "borders"}  # objects_method's values


def image_objects(key: str, shard: str, predicted: np.ndarray, confidence: np.ndarray | None, truth: np.ndarray | None,
                  truth_labels: np.ndarray | None, num_classes: int, config: ObjectsConfig, output: str,
                  storage_config: StorageConfig | None, borders: bool = False,
                  model_diameter: float | None = None) -> tuple[dict[str, Any], pa.Table]:
    """Return the metrics fields of one image's objects and its rows of :data:`pipeline.schema.OBJECTS_SCHEMA`.

    Writes ``instances/<shard>/<key>.<png|tif>`` under ``output``. ``predicted`` is the decided mask:
    for a border model (``borders``), with its borders (the value ``num_classes``). ``confidence``
    ``(h, w)`` gives each object's ``mean_score``; ``truth`` (class mask) and ``truth_labels``
    (instance labels), either or both None, the true objects (:func:`true_objects`).
    ``model_diameter``: the model's training objects' median diameter, where it records one.
    """
    split, min_size = object_method(config, borders, model_diameter, predicted, num_classes)
    if borders and split != "borders":
        predicted = objects.fold_borders(predicted, num_classes)
    labels, label_class = objects.label_objects(predicted, num_classes, config.connectivity, min_size, split,
                                                config.diameter or None)
    data, extension = imaging.encode_instances(labels)
    uri = layout.instances_url(output, shard, key, extension)
    storage.write_bytes(uri, data, storage_config)
    if confidence is not None and confidence.dtype == np.uint8:
        confidence = confidence / imaging.SCORE_LEVELS
    rows: dict[str, Any] = objects.object_rows(labels, label_class, confidence=confidence)
    record: dict[str, Any] = {
        "instances_uri": uri, "objects_method": METHOD_NAMES[split],
        "objects_predicted": np.bincount(label_class[1:], minlength=num_classes)[:num_classes].tolist(),
    }
    truth_objects = true_objects(truth, truth_labels, num_classes, config.connectivity)
    if truth_objects is not None:
        true_found, true_class, source = truth_objects
        scores = instances.class_scores(true_found, true_class, labels, label_class, num_classes)
        record.update({column: scores[name] for name, column in INSTANCE_METRICS.items()},
                      truth_instances=source,
                      mean_dsb_score=metrics.foreground_mean(np.asarray(scores["dsb_score"], dtype=np.float64)),
                      mean_pq=metrics.foreground_mean(np.asarray(scores["pq"], dtype=np.float64)))
        rows["true_label"] = scores["predicted_match"][rows["label"]].astype(np.int32)
        rows["true_iou"] = scores["predicted_iou"][rows["label"]]
    elif truth_labels is not None:
        log.warning("%s: instance labels without a mask name no classes for a model of %d classes; its instance "
                    "metrics are left out (give the mask too)", key, num_classes)
    rows["key"] = [key] * len(rows["label"])
    return record, schema.objects_table(rows)


def table_bytes(table: pa.Table) -> bytes:
    """Return a table as Arrow IPC stream bytes (how an image's objects travel to the driver)."""
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def table_from_bytes(data: bytes) -> pa.Table:
    """Return the table :func:`table_bytes` wrote."""
    return pa.ipc.open_stream(data).read_all()
