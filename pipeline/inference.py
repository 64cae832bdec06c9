"""Build and run the batch segmentation job.

``run_segmentation(cfg)`` checks everything that can make the whole run fail (input, model,
output, cluster resources) before any work starts, then streams shards through Ray Data:

    read shard (CPU task) → prepare (CPU task) → predict (actor pool) → finish (CPU task) → driver

The driver receives only small metric rows. It writes ``metrics/<shard>.parquet`` once all of a
shard's rows have arrived, then the commit marker ``_done/<shard>.json``; names derive from the
input shard, so a re-run writes the same names. ``run.json`` holds the resolved config
(credentials redacted), the model, package versions, times and counts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import io
import json
import logging
import math
import platform
import time
from collections import defaultdict
from collections.abc import Iterator
from importlib import metadata
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import schema, storage
from pipeline.cluster import connect_ray, largest_node_cpus
from pipeline.config import ConfigError, SegmentConfig, StorageConfig
from pipeline.model import LoadedModel, ModelInfo, load_artifact
from pipeline.predictor import SegmentationPredictor, tta_symmetries
from pipeline.resume import prepare_output
from pipeline.sources import Shard, discover_shards, keys_taken_earlier, shard_dataset
from pipeline.stages import MaskWriter, read_and_prepare

log = logging.getLogger(__name__)

VERSIONED_PACKAGES = ("segpipe", "ray", "tensorflow-cpu", "tensorflow", "keras", "numpy", "pyarrow", "pillow", "fsspec", "s3fs")


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """What a checked run will do: its shards, its model, and its actor resources."""

    run_id: str
    shards: list[Shard]
    model: LoadedModel
    taken: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)  # see keys_taken_earlier
    actor_cpus: float = 1.0
    actor_gpus: float = 0.0
    actor_threads: int = 1


@dataclasses.dataclass(frozen=True)
class RunSummary:
    """Counts and throughput of a finished run."""

    run_id: str
    output: str
    model_id: str
    model_trained: bool
    shards: int
    images: int
    ok: int
    errors: int
    empty_shards: tuple[str, ...]
    duplicate_keys: int
    resumed_shards: int
    wall_seconds: float
    startup_seconds: float
    images_per_second: float
    steady_images_per_second: float

    def line(self) -> str:
        """Return the one-line summary shown at the end of a run."""
        resumed = f" ({self.resumed_shards} committed by an earlier attempt)" if self.resumed_shards else ""
        return (
            f"{self.images} images ({self.ok} ok, {self.errors} errors) from {self.shards} shards{resumed} in "
            f"{self.wall_seconds:.1f} s, {self.images_per_second:.1f} images/s "
            f"({self.steady_images_per_second:.1f} after {self.startup_seconds:.1f} s start-up); outputs in {self.output}"
        )


def run_segmentation(cfg: SegmentConfig) -> RunSummary:
    """Segment every image of ``cfg.input`` with ``cfg.model`` into ``cfg.output``; return the summary.

    Raises ConfigError, InputError, ModelArtifactError or StorageError before any work starts when
    the run as a whole cannot proceed. Bad single images never raise: they become error rows.
    An interrupted run (KeyboardInterrupt) records ``status: interrupted`` in run.json and re-raises.
    """
    started_at = now_iso()
    plan = plan_run(cfg)
    with storage.reaching(cfg.output, cfg.storage):
        prior = prepare_output(cfg, plan.model.sha256, cfg.overwrite)
    plan = dataclasses.replace(plan, run_id=prior.run_id or plan.run_id)
    todo = [shard for shard in plan.shards if shard.name not in prior.committed]
    if todo:
        connect_ray(cfg.address)
        plan = dataclasses.replace(plan, taken=keys_taken_earlier(plan.shards, cfg.storage), **actor_resources(cfg))
    else:
        log.info("every shard of %s is already committed under %s; nothing to do", cfg.input, cfg.output)
    write_run_json(cfg, plan, {"status": "running", "started": started_at})
    clock = time.perf_counter()
    progress = Progress(cfg, plan, started_at)
    writer = ShardWriter(cfg.output, cfg.storage, plan.shards, prior.committed, plan.run_id, plan.model.model_id, progress)
    try:
        if todo:
            for table in build_dataset(cfg, plan, todo).iter_batches(batch_format="pyarrow", batch_size=None):
                writer.add(table)
        writer.finish()
    except BaseException as exc:
        status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        failure = {"status": status, "started": started_at, "ended": now_iso(),
                   "error": f"{type(exc).__name__}: {exc}", "progress": progress.counts(writer)}
        write_run_json(cfg, plan, failure)
        raise
    summary = summarise(cfg, plan, writer, clock)
    write_run_json(cfg, plan, {"status": "finished", "started": started_at, "ended": now_iso(), "summary": dataclasses.asdict(summary)})
    log.info("%s", summary.line())
    return summary


def plan_run(cfg: SegmentConfig) -> RunPlan:
    """Return the run's plan after checking input, model and output; raise a clear error otherwise.

    Nothing is written before the output is known to lie apart from the input and the model. The
    checks make few, short attempts (:meth:`StorageConfig.for_checks`), so an unreachable
    endpoint or missing credentials stop the run within seconds with a StorageError.
    """
    storage.check_apart(cfg.output, {"input": cfg.input, "model artifact": cfg.model})
    checks = cfg.storage.for_checks()
    for url in (cfg.input, cfg.model, cfg.output):
        storage.probe(url, checks)
    with storage.reaching(cfg.input, cfg.storage):
        shards = discover_shards(cfg.input, checks, cfg.folder_shard_size)
    with storage.reaching(cfg.model, cfg.storage):
        model = load_artifact(cfg.model, checks)
    if cfg.tta:
        tta_symmetries(model.info, cfg.model)  # a model trained without flips cannot take TTA: stop before work
    with storage.reaching(cfg.output, cfg.storage):
        storage.check_writable(cfg.output, checks)
    run_id = cfg.run_id or dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    log.info("input %s: %d shard(s); model %s", cfg.input, len(shards), model.model_id)
    return RunPlan(run_id=run_id, shards=shards, model=model)


def actor_resources(cfg: SegmentConfig) -> dict[str, Any]:
    """Return ``actor_cpus``, ``actor_gpus`` and ``actor_threads`` for the connected cluster.

    Automatic CPUs: one per GPU actor; otherwise the largest node's CPUs shared among the actors
    that fit on it, less one ``stage_cpus`` share for each CPU stage (read + prepare, finish), so
    that every stage can always run a task beside the actors. TensorFlow gets
    ``ceil(actor_cpus)`` threads: the stage share left beside a fractional actor is mostly I/O wait.
    """
    import ray

    node_cpus = largest_node_cpus()
    total_gpus = ray.cluster_resources().get("GPU", 0.0)
    wanted = cfg.actors
    if wanted.gpus > 0 and total_gpus < wanted.gpus:
        raise ConfigError(
            f"actors.gpus={wanted.gpus:g} but the cluster has {total_gpus:g} GPUs; "
            "set actors.gpus=0 to run on CPUs or connect to a cluster with GPUs"
        )
    reserve = CPU_STAGES * cfg.stage_cpus
    if wanted.cpus is not None:
        cpus = wanted.cpus
    elif wanted.gpus > 0:
        cpus = 1.0
    else:
        cpus = max(0.5, (node_cpus - reserve) / min(wanted.max, max(1, int(node_cpus)))) if node_cpus else 1.0
    if cpus + cfg.stage_cpus > node_cpus:
        raise ConfigError(
            f"an actor asks for {cpus:g} CPUs plus {cfg.stage_cpus:g} for the other stages, but the largest node "
            f"has {node_cpus:g}; lower actors.cpus (or leave it unset for automatic)"
        )
    return {"actor_cpus": round(cpus, 3), "actor_gpus": wanted.gpus, "actor_threads": max(1, math.ceil(cpus))}


CPU_STAGES = 2  # read + prepare, finish: the operators around the actor pool


def batch_block_bytes(batch_size: int, info: ModelInfo) -> int:
    """Return the size of one batch of model input tiles (float32), at least 1 MiB.

    Used as Ray Data's target block size: without it a block holds a whole shard, and the first
    results surface only after an entire shard has passed every stage.
    """
    tile = info.unet.input_size[0] * info.unet.input_size[1] * info.unet.channels * 4
    return max(1024**2, batch_size * tile)


def reservation_ratio(stage_cpus: float) -> float:
    """Return the Ray Data reservation ratio that reserves exactly one stage task per CPU stage.

    Ray Data reserves ``max(ratio * cluster CPUs / operators, one task)`` per operator, upstream
    first. With the default ratio (0.5) on a small node the actor's reservation leaves nothing for
    the last stage, which then waits until every image is prepared: results stop streaming and
    the object store fills. Together with :func:`actor_resources` leaving ``CPU_STAGES`` stage
    shares free, this ratio lets every operator hold one task at all times.
    """
    import ray

    cluster_cpus = ray.cluster_resources().get("CPU", 1.0)
    return min(0.5, (CPU_STAGES + 1) * stage_cpus / cluster_cpus)


@contextlib.contextmanager
def data_context(**settings: Any) -> Iterator[None]:
    """Apply Ray Data context ``settings`` to datasets created inside the block (they keep them)."""
    from ray.data import DataContext

    context = DataContext.get_current()
    saved = {name: getattr(context, name) for name in settings}
    for name, value in settings.items():
        setattr(context, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(context, name, value)


def build_dataset(cfg: SegmentConfig, plan: RunPlan, shards: list[Shard]) -> Any:
    """Return the lazy Ray Dataset of metric rows (plus ``shard``, ``shard_rows``) for ``shards`` of the plan."""
    from ray.data import ActorPoolStrategy

    info = plan.model.info
    storage_config = cfg.storage
    settings = {
        "target_max_block_size": batch_block_bytes(cfg.batch_size, info),
        "op_resource_reservation_ratio": reservation_ratio(cfg.stage_cpus),
    }
    with data_context(**settings):
        dataset = shard_dataset(shards)
    dataset = dataset.map_batches(
        read_and_prepare, fn_kwargs={"info": info, "storage_config": storage_config, "batch_size": cfg.batch_size,
                                     "taken": plan.taken, "max_image_pixels": cfg.max_image_pixels},
        batch_size=1, num_cpus=cfg.stage_cpus,
    )
    dataset = dataset.map_batches(
        SegmentationPredictor,
        fn_constructor_kwargs={"model_url": cfg.model, "storage_config": storage_config, "threads": plan.actor_threads,
                               "tta": cfg.tta},
        compute=ActorPoolStrategy(min_size=cfg.actors.min, max_size=cfg.actors.max),
        batch_size=cfg.batch_size,
        num_cpus=plan.actor_cpus,
        num_gpus=plan.actor_gpus or None,
        memory=int(cfg.actors.memory_gb * 1024**3) if cfg.actors.memory_gb else None,
    )
    return dataset.map_batches(
        MaskWriter,
        fn_constructor_kwargs={"info": info, "output": cfg.output, "model_id": plan.model.model_id,
                               "run_id": plan.run_id, "storage_config": storage_config},
        compute=ActorPoolStrategy(min_size=1, max_size=cfg.actors.max),
        batch_size=cfg.batch_size,
        num_cpus=cfg.stage_cpus,
        batch_format="numpy",
    )


class ShardWriter:
    """Collects metric rows on the driver and commits each shard once all its rows have arrived.

    ``committed`` holds the markers of shards an earlier attempt already committed (they are
    counted, not redone).
    """

    def __init__(self, output: str, storage_config: StorageConfig, shards: list[Shard],
                 committed: dict[str, dict[str, Any]] | None = None, run_id: str = "", model_id: str = "",
                 progress: Progress | None = None) -> None:
        self.output = output
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
        self.first_batch: tuple[float, int] | None = None  # (perf_counter time, rows) of the first batch

    def add(self, table: pa.Table) -> None:
        """Take a batch of rows; commit every shard it completes."""
        if self.first_batch is None:
            self.first_batch = (time.perf_counter(), table.num_rows)
        self.received += table.num_rows
        for row in table.to_pylist():
            name = row.pop("shard")
            expected = row.pop("shard_rows")
            self.pending[name].append(row)
            if len(self.pending[name]) == expected:
                self.commit(name, self.pending.pop(name))
        if self.progress:
            self.progress.update(self)

    def commit(self, name: str, rows: list[dict[str, Any]]) -> None:
        """Write ``metrics/<name>.parquet`` (rows sorted by key), then the marker ``_done/<name>.json``."""
        rows.sort(key=lambda r: r["key"])
        buffer = io.BytesIO()
        pq.write_table(schema.metrics_table(rows), buffer)
        storage.write_bytes(storage.join_url(self.output, "metrics", f"{name}.parquet"), buffer.getvalue(), self.storage_config)
        counts = {"rows": len(rows), "ok": sum(r["status"] == schema.STATUS_OK for r in rows)}
        counts["errors"] = counts["rows"] - counts["ok"]
        counts["duplicate_keys"] = sum(r.get("error_kind") == "duplicate_key" for r in rows)
        marker = {"shard": name, "source": self.shards[name].url, **counts, "run_id": self.run_id,
                  "model_id": self.model_id, "committed": now_iso()}
        storage.write_bytes(storage.join_url(self.output, "_done", f"{name}.json"), json.dumps(marker).encode(), self.storage_config)
        self.committed[name] = counts
        if self.progress:
            self.progress.committed(self)

    def finish(self) -> None:
        """Commit the shards that produced no rows (empty inputs); fail if any shard is incomplete."""
        if self.pending:
            partial = {name: len(rows) for name, rows in self.pending.items()}
            raise RuntimeError(f"shards ended with rows missing (rows received: {partial}); re-run the same command")
        for name in sorted(set(self.shards) - set(self.committed)):
            log.warning("shard %s holds no images; committing it empty", self.shards[name].url)
            self.commit(name, [])
        if self.progress:
            self.progress.update(self, force=True)

    @property
    def duplicate_keys(self) -> int:
        """Return the rows of committed shards whose key an earlier image already had."""
        return sum(counts["duplicate_keys"] for counts in self.committed.values())

    @property
    def empty_shards(self) -> tuple[str, ...]:
        """Return the names of committed shards that held no rows."""
        return tuple(sorted(name for name, counts in self.committed.items() if counts["rows"] == 0))


class Progress:
    """Logs progress at a steady interval and keeps run.json's counts current as shards commit.

    A line every ``cfg.progress_seconds``: shards committed of all, images done (this attempt's
    rate), errors so far, and an ETA from the mean rows per committed shard. run.json is rewritten
    with the counts when a shard commits, at most every ``RUN_JSON_SECONDS``.
    """

    RUN_JSON_SECONDS = 5.0

    def __init__(self, cfg: SegmentConfig, plan: RunPlan, started_at: str) -> None:
        self.cfg = cfg
        self.plan = plan
        self.started_at = started_at
        self.clock = time.perf_counter()
        self.last_line = self.clock
        self.last_json = -math.inf  # the first commit always updates run.json

    def counts(self, writer: ShardWriter) -> dict[str, Any]:
        """Return the progress counts: shards, images, errors, rate and ETA."""
        elapsed = max(1e-9, time.perf_counter() - self.clock)
        images = sum(c["rows"] for c in writer.committed.values())
        errors = sum(c["errors"] for c in writer.committed.values())
        fresh = [c["rows"] for name, c in writer.committed.items() if name not in writer.resumed]
        remaining = len(self.plan.shards) - len(writer.committed)
        rate = writer.received / elapsed
        eta = None
        if fresh and rate > 0:
            left = remaining * (sum(fresh) / len(fresh)) - sum(len(rows) for rows in writer.pending.values())
            eta = max(0.0, left) / rate
        return {"shards": len(self.plan.shards), "committed_shards": len(writer.committed), "images": images,
                "errors": errors, "images_this_attempt": writer.received, "images_per_second": round(rate, 3),
                "eta_seconds": None if eta is None else round(eta, 1), "updated": now_iso()}

    def update(self, writer: ShardWriter, force: bool = False) -> None:
        """Log a progress line if the interval has passed (or ``force``)."""
        now = time.perf_counter()
        if not force and now - self.last_line < self.cfg.progress_seconds:
            return
        self.last_line = now
        c = self.counts(writer)
        eta = "unknown" if c["eta_seconds"] is None else str(dt.timedelta(seconds=round(c["eta_seconds"])))
        log.info("progress: %d/%d shards committed, %d images done (%d this attempt, %.2f images/s), %d errors, ETA %s",
                 c["committed_shards"], c["shards"], c["images"], c["images_this_attempt"], c["images_per_second"],
                 c["errors"], eta)

    def committed(self, writer: ShardWriter) -> None:
        """Rewrite run.json with the counts after a commit (throttled)."""
        now = time.perf_counter()
        if now - self.last_json < self.RUN_JSON_SECONDS:
            return
        self.last_json = now
        write_run_json(self.cfg, self.plan, {"status": "running", "started": self.started_at, "progress": self.counts(writer)})


def summarise(cfg: SegmentConfig, plan: RunPlan, writer: ShardWriter, started: float) -> RunSummary:
    """Return the run's summary from the committed shard counts and the timings.

    Start-up is the time until the first results reach the driver (actor start, model load, the
    first batch through every stage); the steady rate counts the images after that batch.
    """
    wall = time.perf_counter() - started
    first_at, first_rows = writer.first_batch or (time.perf_counter(), 0)
    startup = first_at - started
    images = sum(c["rows"] for c in writer.committed.values())
    ok = sum(c["ok"] for c in writer.committed.values())
    done_now = sum(c["rows"] for name, c in writer.committed.items() if name not in writer.resumed)
    steady_time = wall - startup
    return RunSummary(
        run_id=plan.run_id,
        output=cfg.output,
        model_id=plan.model.model_id,
        model_trained=bool(plan.model.info.training.get("trained")),
        shards=len(plan.shards),
        images=images,
        ok=ok,
        errors=images - ok,
        empty_shards=writer.empty_shards,
        duplicate_keys=writer.duplicate_keys,
        resumed_shards=len(writer.resumed),
        wall_seconds=round(wall, 3),
        startup_seconds=round(startup, 3),
        images_per_second=round(done_now / wall, 3) if wall > 0 else 0.0,
        steady_images_per_second=(round((done_now - first_rows) / steady_time, 3)
                                  if steady_time > 0 and done_now > first_rows else 0.0),
    )


def write_run_json(cfg: SegmentConfig, plan: RunPlan, state: dict[str, Any]) -> None:
    """Write ``<output>/run.json``: config (credentials redacted), model, versions, actors and ``state``."""
    record = {
        "run_id": plan.run_id,
        **state,
        "config": cfg.to_public_dict(),
        "model": {"url": cfg.model, "id": plan.model.model_id, "sha256": plan.model.sha256, "info": plan.model.info.to_json()},
        "actors": {"cpus": plan.actor_cpus, "gpus": plan.actor_gpus, "threads": plan.actor_threads,
                   "min": cfg.actors.min, "max": cfg.actors.max},
        "shards": len(plan.shards),
        "versions": package_versions(),
    }
    storage.write_bytes(storage.join_url(cfg.output, "run.json"), json.dumps(record, indent=2).encode(), cfg.storage)


def package_versions() -> dict[str, str]:
    """Return the versions of Python and the packages a run depends on (those installed)."""
    versions = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def now_iso() -> str:
    """Return the current UTC time as ISO 8601 with seconds."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
