"""Finish and commit: masks and metric rows from the model's scores, then each shard committed once.

The finish stage runs on a small actor pool (:class:`MaskWriter`) after the model's: it asks the
run's inferer for each image's mask at its size, writes ``masks/<key>.png`` and computes the image's
metrics; with objects, it also labels, writes and measures the image's objects
(:mod:`pipeline.segment.measure`). The driver's :class:`ShardWriter` collects the small metric
rows (and object rows) and, once a shard's rows are all in, writes ``objects/<shard>.parquet``,
``metrics/<shard>.parquet`` and then its commit marker (see :mod:`pipeline.io.layout`), on one
of a few threads while rows keep arriving.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import json
import logging
import time
from collections import defaultdict
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import console, imaging, metrics, objects, schema
from pipeline.config import ObjectsConfig, StorageConfig
from pipeline.errors import ErrorKind
from pipeline.io import layout, storage
from pipeline.io.shards import Shard
from pipeline.segment.inferers import Inferer
from pipeline.segment.measure import image_objects, table_bytes, table_from_bytes
from pipeline.segment.record import Progress, now_iso

log = logging.getLogger(__name__)


def finish_batch(
    batch: dict[str, np.ndarray],
    inferer: Inferer,
    output: str,
    model_id: str,
    run_id: str,
    storage_config: StorageConfig | None = None,
    objects_config: ObjectsConfig | None = None,
) -> pa.Table:
    """Return the batch's metrics rows (``schema.METRICS_SCHEMA`` plus ``shard, shard_rows, objects, output_full``).

    For each usable row: the mask at the image's size from the inferer's output
    (:meth:`pipeline.segment.inferers.Inferer.finish`), written to ``masks/<shard>/<key>.png``
    under ``output``, count predicted pixels per class, and with ground truth compute TP/FP/FN,
    Dice and IoU (see :mod:`pipeline.metrics`). With ``objects_config.enabled`` each row's
    ``objects`` holds its object rows as Arrow IPC bytes (``b""`` for none). ``output_full`` says
    why the output took no write (:class:`pipeline.io.storage.OutputFullError`), else ``""``: the
    driver then stops the run rather than commit the shard.
    """
    rows = []
    for index in range(len(batch["key"])):
        started = time.perf_counter()
        row = finish_row({name: batch[name][index] for name in batch}, inferer, output, storage_config, objects_config)
        row.update(
            shard=batch["shard"][index],
            shard_rows=int(batch["shard_rows"][index]),
            model_id=model_id,
            run_id=run_id,
            seconds=float(batch["seconds"][index]) + time.perf_counter() - started,
        )
        rows.append(row)
    table = schema.metrics_table(rows)
    extra = {"shard": pa.array([r["shard"] for r in rows], pa.string()),
             "shard_rows": pa.array([r["shard_rows"] for r in rows], pa.int64()),
             "objects": pa.array([r.get("objects", b"") for r in rows], pa.binary()),
             "output_full": pa.array([r.get("output_full", "") for r in rows], pa.string())}
    for name, column in extra.items():
        table = table.append_column(name, column)
    return table


def finish_row(item: dict[str, Any], inferer: Inferer, output: str, storage_config: StorageConfig | None,
               objects_config: ObjectsConfig | None = None) -> dict[str, Any]:
    """Return the metrics fields of one row (with objects, ``objects``: its object rows as IPC bytes);
    failures become ``status="error"`` with the reason."""
    key, shard = str(item["key"]), str(item["shard"])
    base = {"key": key, "source": str(item["source"]), "truth_error": str(item["truth_error"]) or None,
            "truth_error_kind": str(item["truth_error_kind"]) or None}
    if item["error"]:
        return {**base, "status": schema.STATUS_ERROR, "error": str(item["error"]),
                "error_kind": str(item["error_kind"])}
    height, width = int(item["height"]), int(item["width"])
    num_classes = inferer.info.spec.num_classes
    with_objects = objects_config is not None and objects_config.enabled
    try:
        decided, confidence = inferer.finish(item, confidence=with_objects)
        borders = inferer.info.spec.target == "borders"  # the class num_classes: borders, folded into their objects
        predicted = objects.fold_borders(decided, num_classes) if borders else decided
        mask_uri = layout.mask_url(output, shard, key)
        storage.write_bytes(mask_uri, imaging.encode_png(predicted, compress_level=1), storage_config)
        record: dict[str, Any] = {"class_pixels": metrics.class_counts(predicted, num_classes).tolist()}
        truth, snapped = (imaging.decode_mask_counted(item["mask"], inferer.info.truth_labels(), (height, width))
                          if len(item["mask"])
                          else (None, None))
        record["snapped_pixels"] = snapped
        encoded = item.get("instances", b"")
        truth_labels = imaging.decode_instances(encoded, (height, width)) if len(encoded) else None
        if truth is None and truth_labels is not None and num_classes == 2:
            truth = (truth_labels > 0).astype(np.uint8)  # a two-class model's mask is where the objects are
        if truth is not None:
            record.update({k: np.asarray(v).tolist() for k, v in metrics.image_metrics(predicted, truth, num_classes).items()})
        if with_objects:
            found, table = image_objects(key, shard, decided, confidence, truth, truth_labels, num_classes, objects_config,
                                         output, storage_config, borders, inferer.info.diameter)
            record.update(found, objects=table_bytes(table))
    except storage.OutputFullError as exc:  # the output takes no writes at all: the driver stops the run
        return {**base, "status": schema.STATUS_ERROR, "error": str(exc), "error_kind": ErrorKind.WRITE_FAILED.value,
                "height": height, "width": width, "output_full": str(exc)}
    except Exception as exc:
        if isinstance(exc, OSError):  # the store refused this file (a name too long): said in the row
            log.warning("writing the outputs of %s failed: %s", key, exc)
        else:
            log.exception("finishing %s failed", key)
        return {**base, "status": schema.STATUS_ERROR,
                "error": f"{key}: {type(exc).__name__} while writing the mask or its objects: {exc}",
                "error_kind": ErrorKind.WRITE_FAILED.value, "height": height, "width": width}
    return {**base, **record, "status": schema.STATUS_OK, "height": height, "width": width, "mask_uri": mask_uri,
            "orientation": int(item.get("orientation", 1))}


def key_hashes(keys: Any, unique: bool = True) -> np.ndarray:
    """Return 8-byte hashes of ``keys`` as uint64 (distinct and sorted when ``unique``): a shard's keys,
    held compactly on the driver until every shard is committed."""
    digests = b"".join(hashlib.blake2b(str(key).encode(), digest_size=8).digest() for key in keys)
    values = np.frombuffer(digests, dtype=np.uint64)
    return np.unique(values) if unique else values


class MaskWriter:
    """Callable actor around :func:`finish_batch` with the run's fixed arguments.

    The finish stage runs on a small pool of these rather than as tasks: an actor holds its CPU
    share for the whole run, so Ray Data can never starve the last stage of CPU budget while the
    upstream stages run ahead, and each writer keeps its object-storage client warm.
    """

    def __init__(self, inferer: Inferer, output: str, model_id: str, run_id: str,
                 storage_config: StorageConfig | None = None, objects_config: ObjectsConfig | None = None) -> None:
        self.arguments = {"inferer": inferer, "output": output, "model_id": model_id, "run_id": run_id,
                          "storage_config": storage_config, "objects_config": objects_config}
        console.forward_worker_warnings()

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        """Return :func:`finish_batch` of the batch."""
        return finish_batch(batch, **self.arguments)


COMMIT_THREADS = 8  # shards committed at once: on an object store each of a commit's writes is a round trip


class ShardWriter:
    """Collects metric rows on the driver and commits each shard once all its rows have arrived.

    A complete shard is written by one of :data:`COMMIT_THREADS` threads while rows keep arriving;
    the driver notes it as committed once its marker is written.

    ``committed`` holds the markers of shards an earlier attempt already committed (they are
    counted, not redone). With ``objects``, each shard's object rows are written to
    ``objects/<shard>.parquet`` before its metrics.
    """

    def __init__(self, output: str, storage_config: StorageConfig, shards: list[Shard],
                 committed: dict[str, dict[str, Any]] | None = None, run_id: str = "", model_id: str = "",
                 progress: Progress | None = None, objects: bool = False, class_names: tuple[str, ...] = ()) -> None:
        self.output = output
        self.objects = objects
        self.class_names = class_names  # recorded in each metrics file's schema metadata
        self.pending_objects: dict[str, list[pa.Table]] = defaultdict(list)
        self.storage_config = storage_config
        self.shards = {shard.name: shard for shard in shards}
        self.run_id = run_id
        self.model_id = model_id
        self.progress = progress
        self.pending: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.committed: dict[str, dict[str, int]] = {
            name: {k: int(marker.get(k, 0)) for k in ("rows", "ok", "errors", "duplicate_keys")}
            for name, marker in (committed or {}).items() if name in self.shards
        }
        self.resumed = frozenset(self.committed)
        self.received = 0
        self.errors_received = 0  # rows with status error received by this attempt
        self.shard_rows: dict[str, int] = {}  # shard name -> its rows, as its first row says
        self.first_batch: tuple[float, int] | None = None  # (perf_counter time, rows) of the first batch
        self.events: dict[str, float] = {}  # the driver's own steps: first result, first commit
        self.last_commit = 0.0
        self.key_hashes: dict[str, np.ndarray] = {}  # shard name -> hashes of its keys, as shards commit
        self.pool = concurrent.futures.ThreadPoolExecutor(COMMIT_THREADS, thread_name_prefix="commit")
        self.writing: dict[str, concurrent.futures.Future] = {}  # shards being committed
        self.repeated: dict[str, Any] = {"count": 0, "examples": []}  # keys repeated across shards (finish)

    def add(self, table: pa.Table) -> None:
        """Take a batch of rows; commit every shard it completes."""
        if self.first_batch is None:
            self.first_batch = (time.perf_counter(), table.num_rows)
            self.events["first_result"] = time.time()
        self.received += table.num_rows
        for row in table.to_pylist():
            if row.pop("output_full", ""):
                raise storage.OutputFullError(row["error"])  # nothing of the shard is committed: a re-run redoes it
            name = row.pop("shard")
            expected = row.pop("shard_rows")
            self.shard_rows[name] = expected
            self.errors_received += row["status"] == schema.STATUS_ERROR
            found = row.pop("objects", b"")
            if found:
                self.pending_objects[name].append(table_from_bytes(found))
            self.pending[name].append(row)
            if len(self.pending[name]) == expected:
                self.writing[name] = self.pool.submit(self.write_shard, name, self.pending.pop(name),
                                                      self.pending_objects.pop(name, []))
        self.collect()
        if self.progress:
            self.progress.update(self)

    def collect(self, wait: bool = False) -> None:
        """Note the shards whose commit has finished (every one with ``wait``); raise the first failure."""
        if wait:
            concurrent.futures.wait(list(self.writing.values()))
        for name, future in list(self.writing.items()):
            if future.done():
                del self.writing[name]
                self.note_commit(name, *future.result())

    def commit(self, name: str, rows: list[dict[str, Any]], found: list[pa.Table] | None = None) -> None:
        """Commit one shard now, in this thread (:meth:`write_shard`, then :meth:`note_commit`)."""
        self.note_commit(name, *self.write_shard(name, rows, found))

    def note_commit(self, name: str, counts: dict[str, int], hashes: np.ndarray) -> None:
        """Count a committed shard (its rows and key hashes) and keep run.json's progress current."""
        self.committed[name] = counts
        self.key_hashes[name] = hashes
        self.events.setdefault("first_commit", time.time())
        self.last_commit = time.time()
        if self.progress:
            self.progress.after_commit(self)

    def write_shard(self, name: str, rows: list[dict[str, Any]],
                    found: list[pa.Table] | None = None) -> tuple[dict[str, int], np.ndarray]:
        """Write ``objects/<name>.parquet`` (with objects: rows by key, then label), ``metrics/<name>.parquet``
        (rows sorted by key), then the marker ``_done/<name>.json``; return the shard's counts and key hashes.

        Runs on the commit threads (:data:`COMMIT_THREADS`): it reads only what never changes during a run.
        """
        if self.objects:
            table = pa.concat_tables([schema.objects_table({"key": []}), *(found or [])])
            self.write_parquet(layout.objects_url(self.output, name),
                               table.sort_by([("key", "ascending"), ("label", "ascending")]))
        rows.sort(key=lambda r: r["key"])
        self.write_parquet(layout.metrics_url(self.output, name), schema.metrics_table(rows, self.class_names))
        counts = {"rows": len(rows), "ok": sum(r["status"] == schema.STATUS_OK for r in rows)}
        counts["errors"] = counts["rows"] - counts["ok"]
        counts["duplicate_keys"] = sum(r.get("error_kind") == ErrorKind.DUPLICATE_KEY for r in rows)
        marker = {"shard": name, "source": self.shards[name].url, "identity": self.shards[name].identity, **counts,
                  "run_id": self.run_id,
                  "model_id": self.model_id, "committed": now_iso()}
        storage.write_bytes(layout.marker_url(self.output, name), json.dumps(marker).encode(), self.storage_config)
        return counts, key_hashes(r["key"] for r in rows if r.get("error_kind") != ErrorKind.UNREADABLE_SHARD)

    def write_parquet(self, url: str, table: pa.Table) -> None:
        """Write ``table`` as one Parquet file at ``url``."""
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        storage.write_bytes(url, buffer.getvalue(), self.storage_config)

    def finish(self) -> None:
        """Commit the shards that produced no rows (empty inputs); fail if any shard is incomplete."""
        if self.pending:
            partial = {name: len(rows) for name, rows in self.pending.items()}
            raise RuntimeError(f"shards ended with rows missing (rows received: {partial}); re-run the same command")
        self.collect(wait=True)
        self.close()
        for name in sorted(set(self.shards) - set(self.committed)):
            log.warning("shard %s holds no images; committing it empty", self.shards[name].url)
            self.commit(name, [])
        self.repeated = self.repeated_keys()
        if self.progress:
            self.progress.update(self, force=True)

    def close(self) -> None:
        """Let the commits under way finish (a run that fails still commits what it had written) and stop the threads."""
        self.pool.shutdown(wait=True)

    def repeated_keys(self, most: int = 20) -> dict[str, Any]:
        """Return ``{"count": keys held by more than one shard, "examples": [{"key", "shards"}, ...]}``.

        Each shard's images are kept under its own folder, so a repeated key loses nothing; it is
        reported because a user who meant keys to be unique wants to know. Found once every shard
        is committed, from the keys' 8-byte hashes (shards resumed from an earlier attempt give
        theirs from their metrics files), so the answer does not depend on the order shards ran in.
        """
        resumed = [name for name in self.committed if name not in self.key_hashes]
        for name, keys in zip(resumed, self.keys_of(resumed)):
            self.key_hashes[name] = key_hashes(keys)
        names = sorted(self.key_hashes)
        if len(names) < 2:
            return {"count": 0, "examples": []}
        hashes = np.concatenate([self.key_hashes[name] for name in names])
        owners = np.concatenate([np.full(len(self.key_hashes[name]), index) for index, name in enumerate(names)])
        order = np.argsort(hashes, kind="stable")
        hashes, owners = hashes[order], owners[order]
        repeated = np.unique(hashes[1:][hashes[1:] == hashes[:-1]])
        if not len(repeated):
            return {"count": 0, "examples": []}
        examples: dict[int, list[str]] = {}
        for value in repeated[:most]:
            start, end = np.searchsorted(hashes, value, "left"), np.searchsorted(hashes, value, "right")
            examples[int(value)] = [names[i] for i in sorted(owners[start:end])]
        involved = sorted({name for shards in examples.values() for name in shards})
        found: dict[int, str] = {}
        for keys in self.keys_of(involved):
            found.update({int(h): key for key, h in zip(keys, key_hashes(keys, unique=False)) if int(h) in examples})
        listed = [{"key": found.get(value, "?"), "shards": shards} for value, shards in examples.items()]
        log.warning("%d key(s) are held by more than one shard, e.g. %s; each image is kept, under its shard's "
                    "folder (masks/<shard>/<key>.png)", len(repeated),
                    "; ".join(f"{e['key']!r} in {', '.join(e['shards'])}" for e in listed[:3]))
        return {"count": int(len(repeated)), "examples": listed}

    def keys_of(self, names: list[str]) -> list[list[str]]:
        """Return the keys of committed shards, read from their metrics files (whole-shard error rows left out)."""
        def read(name: str) -> list[str]:
            data = storage.read_bytes(layout.metrics_url(self.output, name), self.storage_config)
            table = pq.read_table(io.BytesIO(data), columns=["key", "error_kind"])
            kinds = table.column("error_kind").to_pylist()
            return [key for key, kind in zip(table.column("key").to_pylist(), kinds)
                    if kind != ErrorKind.UNREADABLE_SHARD]

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            return list(pool.map(read, names))

    @property
    def repeated_count(self) -> int:
        """Return how many keys more than one shard holds (known once :meth:`finish` ran)."""
        return int(self.repeated["count"])

    @property
    def duplicate_keys(self) -> int:
        """Return the rows of committed shards whose key an earlier image already had."""
        return sum(counts["duplicate_keys"] for counts in self.committed.values())

    @property
    def empty_shards(self) -> tuple[str, ...]:
        """Return the names of committed shards that held no rows."""
        return tuple(sorted(name for name, counts in self.committed.items() if counts["rows"] == 0))
