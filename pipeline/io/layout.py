"""Where a segmentation run's outputs lie under its output URL: the one place that names them.

::

    <output>/masks/<shard>/<key>.png  the predicted class-index mask of each ok image
    <output>/instances/<shard>/<key>.png
                                      with objects: the predicted objects' 16-bit label image (.tif
                                      when an image holds more than 65,535 objects)
    <output>/objects/<shard>.parquet  with objects: one row per predicted object of the shard
    <output>/metrics/<shard>.parquet  one row per input image of the shard
    <output>/_done/<shard>.json       the shard's commit marker, written after the files above
    <output>/run.json                 the run record: config, model, versions, times, counts
    <output>/_lease.json              while a run writes the output: which run, since when, its heartbeat
    <output>/report/                  summary.json and report.html (``segpipe report``)

A key becomes a path by appending ``.png`` under its shard's folder of ``masks/`` (keys are
checked first: :func:`pipeline.io.storage.key_problem`). Each shard writes under its own folders,
so two shards holding the same key never write the same file, whatever order they run in; a
shard's name is derived from the input, so every re-run writes the same names.

:data:`VERSION` is recorded in run.json: outputs of an older layout (``masks/<key>.png``) are
not continued.
"""

from __future__ import annotations

from pipeline.config import StorageConfig
from pipeline.io.storage import join_url, list_files

MASKS = "masks"
INSTANCES = "instances"
OBJECTS = "objects"
METRICS = "metrics"
MARKERS = "_done"
RUN_RECORD = "run.json"
LEASE = "_lease.json"  # the live run's hold on the output (pipeline.segment.lease); --overwrite leaves it
VERSION = 2  # 2: masks and instances under a folder per shard
REPORT = "report"
PARTS = (METRICS, MARKERS, MASKS, INSTANCES, OBJECTS, REPORT, RUN_RECORD)  # all a run writes: what --overwrite removes


def mask_url(output: str, shard: str, key: str) -> str:
    """Return the URL of the predicted mask of ``key`` in ``shard``."""
    return join_url(output, MASKS, shard, f"{key}.png")


def instances_url(output: str, shard: str, key: str, extension: str = "png") -> str:
    """Return the URL of the predicted instance label image of ``key`` in ``shard`` (``png``, or ``tif``
    beyond 65,535 objects)."""
    return join_url(output, INSTANCES, shard, f"{key}.{extension}")


SHARD_PARTS = (MARKERS, METRICS, OBJECTS, MASKS, INSTANCES)  # a shard's outputs, its marker first


def shard_parts(output: str, shard: str) -> list[str]:
    """Return the URLs of a shard's outputs, its commit marker first (removed first when it is redone)."""
    return [marker_url(output, shard), metrics_url(output, shard), objects_url(output, shard),
            join_url(output, MASKS, shard), join_url(output, INSTANCES, shard)]


def objects_url(output: str, shard: str) -> str:
    """Return the URL of a shard's objects file."""
    return join_url(output, OBJECTS, f"{shard}.parquet")


def metrics_url(output: str, shard: str) -> str:
    """Return the URL of a shard's metrics file."""
    return join_url(output, METRICS, f"{shard}.parquet")


def marker_url(output: str, shard: str) -> str:
    """Return the URL of a shard's commit marker."""
    return join_url(output, MARKERS, f"{shard}.json")


def folder_url(output: str, part: str) -> str:
    """Return the URL of one of the :data:`PARTS` under ``output``."""
    return join_url(output, part)


def run_record_url(output: str) -> str:
    """Return the URL of the run record."""
    return join_url(output, RUN_RECORD)


def lease_url(output: str) -> str:
    """Return the URL of the output's lease (:mod:`pipeline.segment.lease`)."""
    return join_url(output, LEASE)


def report_url(output: str) -> str:
    """Return the URL of the default report folder."""
    return join_url(output, REPORT)


def shard_of(url: str) -> str:
    """Return the shard name of a metrics file or commit marker URL (``.../_done/<name>.json`` → ``<name>``)."""
    return url.rsplit("/", 1)[-1].rsplit(".", 1)[0]


def marker_urls(output: str, storage_config: StorageConfig | None = None) -> list[str]:
    """Return the URLs of the commit markers under ``output``, sorted."""
    return list_files(folder_url(output, MARKERS), (".json",), storage_config)
