"""The CPU stage before the model: read a shard and prepare its images as model input.

One task reads a shard (:func:`pipeline.io.readers.read_shard`) and yields its rows in batches,
each image decoded and reduced to the model's tile (:func:`prepare_batch`). A sample that fails
keeps its row, with ``error`` saying what went wrong with which key and ``error_kind`` its kind.

Internal columns between stages: ``key, source, shard, shard_rows, error, error_kind`` (``""`` =
none), ``mask`` and ``instances`` (encoded ground truth: class mask and instance labels, ``b""`` =
none), ``height, width`` (original size), ``seconds`` (compute time spent on the row so far).
(The stages' start-up timings travel beside the data: :mod:`pipeline.segment.telemetry`.) Then at the tile,
``tiles`` and ``wide`` (each image resized to the tile in its own type: :func:`prepare_batch`),
``bits``, ``value_low``, ``value_high`` and, once the model ran, ``scores`` (its output at the
tile); for windows and whole images ``image`` (the decoded image's bytes as uint8
``(H, W, C x bytes per value)``), ``bits`` (8 or 16), ``value_low`` / ``value_high`` (its
extremes, for ``minmax``) and ``predicted`` (the mask at the image's size).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Protocol

import numpy as np

from pipeline import console, imaging
from pipeline.config import StorageConfig
from pipeline.errors import ErrorKind
from pipeline.io import readers
from pipeline.io.shards import Shard
from pipeline.model import ModelInfo
from pipeline.segment.telemetry import send_events

log = logging.getLogger(__name__)


def prepare_rows(batch: dict[str, np.ndarray], columns: dict[str, np.ndarray],
                 prepare_one: Callable[[int], tuple[int, int]]) -> dict[str, np.ndarray]:
    """Return the batch with ``columns`` added, each usable row prepared by ``prepare_one(index)``.

    ``prepare_one`` fills row ``index`` of ``columns`` and returns the image's ``(height, width)``;
    a row it fails on keeps its place with an error naming the key and the error's kind.
    """
    count = len(batch["key"])
    heights, widths = np.zeros(count, dtype=np.int32), np.zeros(count, dtype=np.int32)
    errors = np.array(batch["error"], dtype=object)
    kinds = np.array(batch["error_kind"], dtype=object)
    seconds = np.zeros(count, dtype=np.float64)
    for index in range(count):
        if errors[index]:
            continue
        started = time.perf_counter()
        key = batch["key"][index]
        try:
            heights[index], widths[index] = prepare_one(index)
        except imaging.SampleError as exc:
            errors[index], kinds[index] = f"{key} ({batch['source'][index]}): {exc}", exc.kind
        except Exception as exc:  # an unexpected failure must still cost only this image
            errors[index] = f"{key}: unexpected {type(exc).__name__} while preparing the image: {exc}"
            kinds[index] = ErrorKind.INTERNAL.value
            log.exception("preparing %s failed", key)
        seconds[index] = time.perf_counter() - started
    out = {name: batch[name] for name in ("key", "source", "shard", "shard_rows", "mask", "instances", "truth_error",
                                          "truth_error_kind")}
    out.update(columns, height=heights, width=widths, error=errors, error_kind=kinds, seconds=seconds)
    return out


def check_truth(batch: dict[str, np.ndarray], index: int, labels: imaging.LabelMap, size: tuple[int, int]) -> None:
    """Set row ``index``'s ``truth_error`` and ``truth_error_kind`` and drop its ground truth if the mask (read
    through the run's label map) or instance labels cannot be used with its image: the image is still
    segmented, just not scored."""
    decoders = {"mask": lambda data: imaging.decode_mask(data, labels, size),
                "instances": lambda data: imaging.decode_instances(data, size)}
    for role, decode in decoders.items():
        if not len(batch[role][index]):
            continue
        try:
            decode(batch[role][index])
        except imaging.SampleError as exc:
            what = "mask" if role == "mask" else "instance label image"
            batch["truth_error"][index] = (f"{batch['key'][index]} ({batch['source'][index]}): the ground-truth {what} "
                                           f"cannot be used, so the image is segmented but not scored: {exc}")
            batch["truth_error_kind"][index] = exc.kind
            batch[role][index] = b""


def prepare_batch(batch: dict[str, np.ndarray], info: ModelInfo,
                  max_image_pixels: int | None = imaging.DEFAULT_MAX_IMAGE_PIXELS,
                  tiff_page: int | None = None) -> dict[str, np.ndarray]:
    """Return the batch with images decoded, masks checked, and each image resized to the model's tile
    in its own type, for the predictor to normalise (:func:`tile_pixels`): ``tiles`` uint8
    ``(n, tile_h, tile_w, channels)`` holds the 8-bit images; a 16-bit image's tile is in ``wide``
    (an object column, its uint16 tile viewed as bytes, as :func:`stored_image` reads it; a 1x1x1
    placeholder for the others), with ``bits`` and ``value_low``/``value_high`` for the normalisation.
    Every block of a run then has the same column types, whatever its images' depths.

    The encoded ``image`` column is dropped; rows that fail get a zero tile, an error and its kind.
    Each image is reduced to the tile before any copy of its size exists (:func:`imaging.read_tile`),
    and an 8-bit tile travels to the model's actors at a quarter of float32's bytes.
    """
    spec = info.spec
    count = len(batch["key"])
    tiles = np.zeros((count, *spec.input_size, spec.channels), dtype=np.uint8)
    wide = np.empty(count, dtype=object)
    for index in range(count):
        wide[index] = np.zeros((1, 1, 1), dtype=np.uint8)
    columns = {"tiles": tiles, "wide": wide, "bits": np.full(count, 8, dtype=np.int8),
               "value_low": np.zeros(count, dtype=np.float64), "value_high": np.zeros(count, dtype=np.float64),
               "orientation": np.ones(count, dtype=np.int8)}

    def prepare_one(index: int) -> tuple[int, int]:
        columns["orientation"][index] = imaging.image_orientation(batch["image"][index])
        tile, size, value_range = imaging.read_tile(batch["image"][index], spec.input_size, spec.channels,
                                                       info.normalization, max_image_pixels, tiff_page)
        check_truth(batch, index, info.truth_labels(), size)
        if tile.dtype == np.uint8:
            tiles[index] = tile
        else:
            wide[index] = np.ascontiguousarray(tile.astype(np.uint16)).view(np.uint8)
            columns["bits"][index] = 16
        if value_range is not None:
            columns["value_low"][index], columns["value_high"][index] = value_range  # (low, high)
        return size

    return prepare_rows(batch, columns, prepare_one)


TILE_COLUMNS = ("tiles", "wide", "bits", "value_low", "value_high")


def tile_pixels(batch: dict[str, np.ndarray], rows: np.ndarray, normalization: dict) -> np.ndarray:
    """Return the float32 model input of the ``rows`` (a boolean mask) of a :func:`prepare_batch` batch."""
    bits = np.asarray(batch["bits"])[rows]
    tiles = np.asarray(batch["tiles"])[rows]
    if (bits == 8).all() and normalization.get("mode", "scale") == "scale" and \
            "mean" not in normalization and "std" not in normalization:
        return tiles.astype(np.float32) / np.float32(255)  # the usual case in one pass, as normalise divides
    wide = np.asarray(batch["wide"], dtype=object)[rows]
    low, high = np.asarray(batch["value_low"])[rows], np.asarray(batch["value_high"])[rows]
    minmax = normalization.get("mode") == "minmax"
    return np.stack([imaging.tile_input(tile if int(depth) == 8 else stored_image(extra, 16), normalization,
                                          (lo, hi) if minmax else None)
                     for tile, extra, depth, lo, hi in zip(tiles, wide, bits, low, high)])


def prepare_native_batch(batch: dict[str, np.ndarray], info: ModelInfo,
                         max_image_pixels: int | None = imaging.DEFAULT_MAX_IMAGE_PIXELS,
                         tiff_page: int | None = None) -> dict[str, np.ndarray]:
    """Return the batch with images decoded at their own size and type, for windows or whole-image inference.

    ``image`` holds each decoded image as uint8 bytes ``(H, W, C x 1 or 2)`` (a 16-bit image viewed
    as bytes, ``bits`` 16), so 8- and 16-bit images travel in one column without a float32 copy;
    ``value_low``/``value_high`` hold its extremes for the ``minmax`` normalisation. Rows that fail
    get a 1x1 placeholder, an error and its kind.
    """
    count = len(batch["key"])
    images = np.empty(count, dtype=object)
    for index in range(count):
        images[index] = np.zeros((1, 1, 1), dtype=np.uint8)
    columns = {"image": images, "bits": np.full(count, 8, dtype=np.int8),
               "value_low": np.zeros(count, dtype=np.float64), "value_high": np.zeros(count, dtype=np.float64),
               "orientation": np.ones(count, dtype=np.int8)}

    def prepare_one(index: int) -> tuple[int, int]:
        columns["orientation"][index] = imaging.image_orientation(batch["image"][index])
        image, value_range = imaging.read_native(batch["image"][index], info.normalization, max_image_pixels,
                                                    tiff_page)
        check_truth(batch, index, info.truth_labels(), image.shape[:2])
        if value_range is not None:
            columns["value_low"][index], columns["value_high"][index] = value_range  # (low, high)
        columns["bits"][index] = 8 * image.dtype.itemsize
        images[index] = np.ascontiguousarray(image).view(np.uint8)
        return image.shape[:2]

    return prepare_rows(batch, columns, prepare_one)


def stored_image(stored: np.ndarray, bits: int) -> np.ndarray:
    """Return the ``(H, W, C)`` image a :func:`prepare_native_batch` row holds (a view, no copy)."""
    stored = np.ascontiguousarray(stored)
    return stored.view(np.uint16) if int(bits) == 16 else stored


ROW_COLUMNS = ("key", "source", "shard", "image", "mask", "instances", "error", "error_kind", "truth_error",
               "truth_error_kind")


class PreparesRows(Protocol):
    """What the read stage needs of the run's inferer (:mod:`pipeline.segment.inferers`)."""

    def prepare(self, rows: list[dict], max_image_pixels: int | None,
                tiff_page: int | None) -> Iterator[dict[str, np.ndarray]]: ...


def read_and_prepare(batch: dict[str, np.ndarray], inferer: PreparesRows, storage_config: StorageConfig | None,
                     max_image_pixels: int | None = imaging.DEFAULT_MAX_IMAGE_PIXELS,
                     tiff_page: int | None = None, telemetry_channel: str = "") -> Iterator[dict[str, np.ndarray]]:
    """Read each shard named in ``batch["shard"]`` and yield its rows prepared by the run's inferer,
    a block at a time (:meth:`pipeline.segment.inferers.Inferer.prepare`).

    Reading and decoding in one CPU task spares a stage boundary: the encoded images never become
    Arrow rows in the object store only to be turned back into arrays by the next task (that round
    trip cost about a sixth of the CPU the model itself used per image on a 2-core node).
    """
    read_started = time.time()
    console.forward_worker_warnings()
    first = True
    for text in batch["shard"]:
        shard = Shard.from_json(str(text))
        rows = readers.read_shard(shard, storage_config)
        for prepared in inferer.prepare(rows, max_image_pixels, tiff_page):
            if first and len(prepared["key"]):  # this task's start-up, once
                send_events(telemetry_channel, {"read_started": read_started, "first_prepared": time.time()})
                first = False
            yield prepared


def columns_of(rows: list[dict]) -> dict[str, np.ndarray]:
    """Return input rows as columns (object arrays; ``shard_rows`` int64)."""
    columns = {name: np.empty(len(rows), dtype=object) for name in ROW_COLUMNS}
    for index, row in enumerate(rows):
        for name in ROW_COLUMNS:
            columns[name][index] = row[name]
    columns["shard_rows"] = np.array([row["shard_rows"] for row in rows], dtype=np.int64)
    return columns


def concatenate(batches: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Return prepared batches as one (object columns stay object arrays of their items)."""
    joined = {}
    for name, values in batches[0].items():
        if values.dtype == object:
            items = [item for batch in batches for item in batch[name]]
            column = np.empty(len(items), dtype=object)
            for index, item in enumerate(items):
                column[index] = item  # one by one: a list of equal arrays would become one array
            joined[name] = column
        else:
            joined[name] = np.concatenate([batch[name] for batch in batches])
    return joined
