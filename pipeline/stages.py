"""The CPU stages around the model: prepare a batch for the actors, and finish what they return.

Both are plain functions of a Ray Data batch (``dict[str, np.ndarray]``) so they run as CPU
tasks apart from the actor pool: the actors only run the model. A sample that fails in either
stage keeps its row, with ``error`` saying what went wrong with which key.

Internal columns between stages: ``key, source, shard, shard_rows, error, error_kind`` (``""`` = none),
``mask`` (encoded ground truth, ``b""`` = none), ``height, width`` (original size), ``seconds``
(compute time spent on the row so far), ``pixels`` (model input) then ``scores`` (model output).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline import metrics, preprocess, schema, sources, storage
from pipeline.config import StorageConfig
from pipeline.model import ModelInfo

log = logging.getLogger(__name__)


def prepare_batch(batch: dict[str, np.ndarray], info: ModelInfo,
                  max_image_pixels: int | None = preprocess.DEFAULT_MAX_IMAGE_PIXELS) -> dict[str, np.ndarray]:
    """Return the batch with images decoded, masks checked, and ``pixels`` (float32 model input) added.

    The encoded ``image`` column is dropped; rows that fail get a zero tile, an error and its kind.
    Each image is reduced to the tile before a float32 copy exists (:func:`preprocess.read_model_input`).
    """
    spec = info.unet
    count = len(batch["key"])
    pixels = np.zeros((count, *spec.input_size, spec.channels), dtype=np.float32)
    heights = np.zeros(count, dtype=np.int32)
    widths = np.zeros(count, dtype=np.int32)
    errors = np.array(batch["error"], dtype=object)
    kinds = np.array(batch["error_kind"], dtype=object)
    seconds = np.zeros(count, dtype=np.float64)
    for index in range(count):
        if errors[index]:
            continue
        started = time.perf_counter()
        key = batch["key"][index]
        try:
            pixels[index], size = preprocess.read_model_input(batch["image"][index], spec.input_size, spec.channels,
                                                              info.normalization, max_image_pixels)
            heights[index], widths[index] = size
            if len(batch["mask"][index]):
                preprocess.decode_mask(batch["mask"][index], spec.num_classes, size)
        except preprocess.SampleError as exc:
            errors[index], kinds[index] = f"{key}: {exc}", exc.kind
        except Exception as exc:  # an unexpected failure must still cost only this image
            errors[index] = f"{key}: unexpected {type(exc).__name__} while preparing the image: {exc}"
            kinds[index] = "internal"
            log.exception("preparing %s failed", key)
        seconds[index] = time.perf_counter() - started
    out = {name: batch[name] for name in ("key", "source", "shard", "shard_rows", "mask")}
    out.update(pixels=pixels, height=heights, width=widths, error=errors, error_kind=kinds, seconds=seconds)
    return out


ROW_COLUMNS = ("key", "source", "shard", "image", "mask", "error", "error_kind")


def read_and_prepare(batch: dict[str, np.ndarray], info: ModelInfo, storage_config: StorageConfig | None,
                     batch_size: int, taken: Mapping[str, Mapping[str, str]] | None = None,
                     max_image_pixels: int | None = preprocess.DEFAULT_MAX_IMAGE_PIXELS,
                     ) -> Iterator[dict[str, np.ndarray]]:
    """Read each shard named in ``batch["shard"]`` and yield its rows prepared (:func:`prepare_batch`),
    ``batch_size`` rows at a time.

    ``taken`` maps a shard name to the keys earlier shards hold (:func:`sources.keys_taken_earlier`):
    those images become ``duplicate_key`` rows.

    Reading and decoding in one CPU task spares a stage boundary: the encoded images never become
    Arrow rows in the object store only to be turned back into arrays by the next task (that round
    trip cost about a sixth of the CPU the model itself used per image on a 2-core node).
    """
    for text in batch["shard"]:
        shard = sources.Shard.from_json(str(text))
        rows = sources.read_shard(shard, storage_config, (taken or {}).get(shard.name))
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            columns = {name: np.empty(len(chunk), dtype=object) for name in ROW_COLUMNS}
            for index, row in enumerate(chunk):
                for name in ROW_COLUMNS:
                    columns[name][index] = row[name]
            columns["shard_rows"] = np.array([row["shard_rows"] for row in chunk], dtype=np.int64)
            yield prepare_batch(columns, info, max_image_pixels)


def finish_batch(
    batch: dict[str, np.ndarray],
    info: ModelInfo,
    output: str,
    model_id: str,
    run_id: str,
    storage_config: StorageConfig | None = None,
) -> pa.Table:
    """Return the batch's metrics rows (``schema.METRICS_SCHEMA`` plus ``shard, shard_rows``).

    For each usable row: bring the scores back to the image's size, write ``masks/<key>.png``
    under ``output``, count predicted pixels per class, and with ground truth compute TP/FP/FN,
    Dice and IoU (see :mod:`pipeline.metrics`).
    """
    rows = []
    for index in range(len(batch["key"])):
        started = time.perf_counter()
        row = finish_row({name: batch[name][index] for name in batch}, info, output, storage_config)
        row.update(
            shard=batch["shard"][index],
            shard_rows=int(batch["shard_rows"][index]),
            model_id=model_id,
            run_id=run_id,
            seconds=float(batch["seconds"][index]) + time.perf_counter() - started,
        )
        rows.append(row)
    table = schema.metrics_table(rows)
    extra = [pa.array([r["shard"] for r in rows], pa.string()), pa.array([r["shard_rows"] for r in rows], pa.int64())]
    return table.append_column("shard", extra[0]).append_column("shard_rows", extra[1])


def finish_row(item: dict[str, Any], info: ModelInfo, output: str, storage_config: StorageConfig | None) -> dict[str, Any]:
    """Return the metrics fields of one row; failures become ``status="error"`` with the reason."""
    key = str(item["key"])
    base = {"key": key, "source": str(item["source"])}
    if item["error"]:
        return {**base, "status": schema.STATUS_ERROR, "error": str(item["error"]),
                "error_kind": str(item["error_kind"])}
    height, width = int(item["height"]), int(item["width"])
    try:
        predicted = preprocess.mask_at_size(item["scores"], height, width, info.threshold)
        mask_uri = storage.join_url(output, "masks", f"{key}.png")
        storage.write_bytes(mask_uri, preprocess.encode_png(predicted, compress_level=1), storage_config)
        record: dict[str, Any] = {
            "class_pixels": metrics.class_counts(predicted, info.unet.num_classes).tolist(),
        }
        if len(item["mask"]):
            truth = preprocess.decode_mask(item["mask"], info.unet.num_classes, (height, width))
            record.update({k: np.asarray(v).tolist() for k, v in metrics.image_metrics(predicted, truth, info.unet.num_classes).items()})
    except Exception as exc:
        log.exception("finishing %s failed", key)
        return {**base, "status": schema.STATUS_ERROR, "error": f"{key}: {type(exc).__name__} while writing the mask: {exc}",
                "error_kind": "write_failed", "height": height, "width": width}
    return {**base, **record, "status": schema.STATUS_OK, "height": height, "width": width, "mask_uri": mask_uri}


class MaskWriter:
    """Callable actor around :func:`finish_batch` with the run's fixed arguments.

    The finish stage runs on a small pool of these rather than as tasks: an actor holds its CPU
    share for the whole run, so Ray Data can never starve the last stage of CPU budget while the
    upstream stages run ahead, and each writer keeps its object-storage client warm.
    """

    def __init__(self, info: ModelInfo, output: str, model_id: str, run_id: str,
                 storage_config: StorageConfig | None = None) -> None:
        self.arguments = {"info": info, "output": output, "model_id": model_id, "run_id": run_id,
                          "storage_config": storage_config}

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        """Return :func:`finish_batch` of the batch."""
        return finish_batch(batch, **self.arguments)
