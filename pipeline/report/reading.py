"""Find a segmentation run's committed metrics files and stream them, one record batch at a time."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import schema
from pipeline.config import StorageConfig
from pipeline.io import layout, storage

READ_COLUMNS = ("key", "source", "status", "error", "error_kind", "truth_error", "truth_error_kind", "height", "width", "mask_uri", "class_pixels",
                "ignored_pixels", "tp", "fp", "fn", "dice", "iou", "mean_dice", "mean_iou", "model_id", "run_id", "seconds")


class ReportError(RuntimeError):
    """The run's outputs cannot be reported on; the message names the URL and the fix."""


@dataclasses.dataclass(frozen=True)
class RunFiles:
    """A run's metadata and the metrics files the report reads."""

    url: str
    run_json: dict[str, Any]
    metrics_files: list[str]
    shards: int
    committed: int
    partial: bool


def locate_run(url: str, storage_config: StorageConfig | None, allow_partial: bool = False) -> RunFiles:
    """Return the run's files; raise ReportError if it is not a run, holds no metrics, or is unfinished."""
    url = url.rstrip("/")
    run_url = layout.run_record_url(url)
    try:
        run_json = json.loads(storage.read_bytes(run_url, storage_config))
    except FileNotFoundError:
        run_json = None
    except Exception as exc:
        raise ReportError(f"{run_url} cannot be read ({type(exc).__name__}: {exc}); check the URL and credentials") from exc
    metrics = storage.list_files(layout.folder_url(url, layout.METRICS), (".parquet",), storage_config)
    if run_json is None and not metrics:
        raise ReportError(f"{url} holds no run.json and no metrics/*.parquet: not a segmentation run's output; "
                          "pass the --output URL of a 'segpipe segment' run")
    if not metrics:
        raise ReportError(f"{url} has no metrics/*.parquet yet (run status: {run_json.get('status', 'unknown')}); "
                          "wait for the run to commit shards, or resume it with the same segment command")
    markers = {layout.shard_of(u) for u in layout.marker_urls(url, storage_config)}
    committed = [m for m in metrics if layout.shard_of(m) in markers]
    run_json = run_json or {}
    shards = int(run_json.get("shards") or len(metrics))
    status = run_json.get("status", "unknown")
    complete = status == "finished" and len(committed) == len(metrics) and len(markers) >= shards
    if not complete and not allow_partial:
        raise ReportError(
            f"run {url} is incomplete (status {status}, {len(markers)} of {shards} shards committed, "
            f"{len(metrics) - len(committed)} metrics file(s) without a commit marker); finish or resume it by "
            f"re-running the same segment command, or pass --partial to report on the {len(committed)} committed shard(s)"
        )
    if not committed:
        raise ReportError(f"run {url} has no committed shards (no _done/<shard>.json marker yet); nothing to report")
    return RunFiles(url, run_json, committed, shards, len(markers), partial=not complete)


def check_schema(url: str, file_schema: pa.Schema) -> None:
    """Raise ReportError if a metrics file lacks a column of :data:`schema.METRICS_SCHEMA` or has another type."""
    missing = [name for name in READ_COLUMNS if name not in file_schema.names]
    problems = [f"column {name!r} is {file_schema.field(name).type}, expected {schema.METRICS_SCHEMA.field(name).type}"
                for name in READ_COLUMNS
                if name in file_schema.names and not file_schema.field(name).type.equals(schema.METRICS_SCHEMA.field(name).type)]
    if missing:
        problems.append(f"missing column(s) {', '.join(missing)}")
    if problems:
        raise ReportError(f"metrics file {url} has a different schema ({'; '.join(problems)}); "
                          "it was not written by this version of 'segpipe segment' - re-run the segmentation")


def metric_batches(files: list[str], storage_config: StorageConfig | None,
                   columns: tuple[str, ...] = READ_COLUMNS) -> Iterator[pa.RecordBatch]:
    """Yield record batches of ``columns`` from the metrics files, one file open at a time."""
    for url in files:
        fs, path = storage.filesystem_for(url, storage_config)
        try:
            with fs.open(path, "rb") as handle:
                parquet = pq.ParquetFile(handle)
                check_schema(url, parquet.schema_arrow)
                yield from parquet.iter_batches(batch_size=65_536, columns=list(columns))
        except ReportError:
            raise
        except Exception as exc:
            raise ReportError(f"metrics file {url} cannot be read ({type(exc).__name__}: {exc}); it may be "
                              "half-written: re-run the same segment command to redo its shard") from exc
