"""The CPU stage before the model: read a shard and prepare its images as model input.

One task reads a shard (:func:`pipeline.io.readers.read_shard`) and yields its rows in batches,
each image decoded and reduced to the model's tile (:func:`prepare_batch`). A sample that fails
keeps its row, with ``error`` saying what went wrong with which key and ``error_kind`` its kind.

Internal columns between stages: ``key, source, shard, shard_rows, error, error_kind`` (``""`` =
none), ``mask`` (encoded ground truth, ``b""`` = none), ``height, width`` (original size),
``seconds`` (compute time spent on the row so far), ``pixels`` (model input) then ``scores``
(model output).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping

import numpy as np

from pipeline import preprocess
from pipeline.config import StorageConfig
from pipeline.io import readers
from pipeline.io.shards import Shard
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
        shard = Shard.from_json(str(text))
        rows = readers.read_shard(shard, storage_config, (taken or {}).get(shard.name))
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            columns = {name: np.empty(len(chunk), dtype=object) for name in ROW_COLUMNS}
            for index, row in enumerate(chunk):
                for name in ROW_COLUMNS:
                    columns[name][index] = row[name]
            columns["shard_rows"] = np.array([row["shard_rows"] for row in chunk], dtype=np.int64)
            yield prepare_batch(columns, info, max_image_pixels)
