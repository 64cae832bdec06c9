"""What a segmentation run reports about itself: progress in the log, ``run.json``, the summary."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import math
import platform
import time
from importlib import metadata
from typing import Any, Protocol

from pipeline import console
from pipeline.config import SegmentConfig
from pipeline.io import layout, storage
from pipeline.segment.plan import RunPlan

log = logging.getLogger(__name__)


class ShardCounts(Protocol):
    """What progress and the summary read of the driver's shard writer (:class:`pipeline.segment.write.ShardWriter`)."""

    committed: dict[str, dict[str, int]]  # shard name -> rows, ok, errors, duplicate_keys
    resumed: frozenset[str]  # shards an earlier attempt committed
    pending: dict[str, list[dict[str, Any]]]  # rows of shards not yet complete
    received: int  # rows received by this attempt
    first_batch: tuple[float, int] | None  # (perf_counter time, rows) of the first batch
    events: dict[str, float]  # the driver's start-up steps seen while rows arrive
    last_commit: float
    repeated: dict[str, Any]
    errors_received: int  # rows with status error received by this attempt
    shard_rows: dict[str, int]  # shard name -> its rows, for shards whose rows are arriving  # keys held by more than one shard: count and examples

    @property
    def empty_shards(self) -> tuple[str, ...]: ...

    @property
    def duplicate_keys(self) -> int: ...


VERSIONED_PACKAGES = ("segpipe", "ray", "tensorflow-cpu", "tensorflow", "keras", "numpy", "pyarrow", "pillow", "fsspec", "s3fs")


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
    duplicate_keys: int  # rows whose key an earlier image of the same shard took
    repeated_keys: dict[str, Any]  # keys held by more than one shard (each image kept): count, examples
    changed_shards: tuple[str, ...]  # committed earlier, replaced since: redone by this run
    removed_shards: tuple[str, ...]  # committed earlier, no longer in the input
    resumed_shards: int
    wall_seconds: float
    startup_seconds: float
    images_per_second: float
    steady_images_per_second: float
    startup: dict[str, float] = dataclasses.field(default_factory=dict)  # see startup_breakdown

    def line(self) -> str:
        """Return the one-line summary shown at the end of a run."""
        resumed = f" ({self.resumed_shards} committed by an earlier attempt)" if self.resumed_shards else ""
        notes = [f"{count} {what}" for count, what in (
            (self.repeated_keys.get("count", 0), "key(s) held by more than one shard"),
            (len(self.changed_shards), "shard(s) changed since their commit and redone"),
            (len(self.removed_shards), "committed shard(s) no longer in the input")) if count]
        return (
            f"{self.images} images ({self.ok} ok, {self.errors} errors) from {self.shards} shards{resumed} in "
            f"{self.wall_seconds:.1f} s, {self.images_per_second:.1f} images/s "
            f"({self.steady_images_per_second:.1f} after {self.startup_seconds:.1f} s start-up); outputs in {self.output}"
            + (f"; {', '.join(notes)} (see run.json)" if notes else "")
        )


def outputs_line(output: str) -> str:
    """Return the line that says where a run's outputs are."""
    return (f"masks in {layout.folder_url(output, layout.MASKS)}/, metric rows in "
            f"{layout.folder_url(output, layout.METRICS)}/*.parquet, run record {layout.run_record_url(output)}")


class Progress:
    """Shows a run's progress and keeps run.json's counts current as shards commit.

    On a terminal, one live line (:class:`pipeline.console.LiveBar`) redrawn as rows arrive: images
    done of all (the total estimated from the shards' sizes as their first rows tell them), images/s,
    errors so far and the ETA. In a log, a line every ``cfg.progress_seconds``: shards committed of
    all, images done (this attempt's rate), errors so far, and an ETA from the mean rows per
    committed shard. run.json is rewritten with the counts when a shard commits, at most every
    ``RUN_JSON_SECONDS``.
    """

    RUN_JSON_SECONDS = 5.0

    def __init__(self, cfg: SegmentConfig, plan: RunPlan, started_at: str, live: bool | None = None) -> None:
        self.cfg = cfg
        self.plan = plan
        self.started_at = started_at
        self.clock = time.perf_counter()
        self.last_line = self.clock
        self.last_json = -math.inf  # the first commit always updates run.json
        self.bar = console.LiveBar("segment", live)
        self.lines = 0  # progress lines logged

    def counts(self, writer: ShardCounts) -> dict[str, Any]:
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

    def images_total(self, writer: ShardCounts) -> float | None:
        """Return the run's images: the rows of the shards whose size is known, and their mean for each
        other shard (None before any shard's size is known)."""
        sizes = {**{name: c["rows"] for name, c in writer.committed.items()}, **writer.shard_rows}
        if not sizes:
            return None
        known = sum(sizes.values())
        return known + (len(self.plan.shards) - len(sizes)) * known / len(sizes)

    def update(self, writer: ShardCounts, force: bool = False) -> None:
        """Redraw the live line; log a progress line if the interval has passed (or ``force``, after
        an earlier one: a run shorter than the interval ends with its summary alone)."""
        now = time.perf_counter()
        if self.bar.enabled:
            resumed = sum(c["rows"] for name, c in writer.committed.items() if name in writer.resumed)
            rate = writer.received / max(1e-9, now - self.clock)
            if writer.first_batch is not None and now - writer.first_batch[0] > 1.0:  # the rate since start-up
                rate = (writer.received - writer.first_batch[1]) / (now - writer.first_batch[0])
            total = self.images_total(writer)
            left = None if total is None or rate <= 0 else max(0.0, total - resumed - writer.received) / rate
            self.bar.update(resumed + writer.received, total,
                            f"{resumed + writer.received}/{'?' if total is None else round(total)} images, "
                            f"{rate:.1f} images/s, {writer.errors_received} errors, ETA {console.duration(left)}")
            return
        if now - self.last_line < self.cfg.progress_seconds and not (force and self.lines):
            return
        self.last_line = now
        self.lines += 1
        c = self.counts(writer)
        log.info("progress: %d/%d shards committed, %d images done (%d this attempt, %.2f images/s), %d errors, ETA %s",
                 c["committed_shards"], c["shards"], c["images"], c["images_this_attempt"], c["images_per_second"],
                 c["errors"], console.duration(c["eta_seconds"]))

    def after_commit(self, writer: ShardCounts) -> None:
        """Rewrite run.json with the counts after a commit (throttled)."""
        now = time.perf_counter()
        if now - self.last_json < self.RUN_JSON_SECONDS:
            return
        self.last_json = now
        write_run_json(self.cfg, self.plan, {"status": "running", "started": self.started_at, "progress": self.counts(writer)})


STARTUP_STEPS = (  # (name, from event, to event): the start-up of a run, step by step
    ("cli_import", "process_created", "imported"),
    ("config_and_plan", "run_started", "planned"),
    ("ray_init", "ray_started", "ray_ready"),
    ("driver_checks", "ray_ready", "stream_started"),
    ("actor_start", "stream_started", "actor_started"),
    ("tensorflow_import", "actor_started", "tensorflow_imported"),
    ("model_load", "tensorflow_imported", "model_loaded"),
    ("first_trace", "model_loaded", "traced"),
    ("read_start", "stream_started", "read_started"),
    ("first_read", "read_started", "first_prepared"),
    ("first_batch", "first_called", "first_predicted"),
    ("first_result", "origin", "first_result"),
    ("first_commit", "origin", "first_commit"),
    ("after_last_commit", "last_commit", "summary"),
)


def startup_breakdown(events: dict[str, float]) -> dict[str, float]:
    """Return the seconds of each of :data:`STARTUP_STEPS` whose two events happened (``time.time()`` values).

    The driver notes its own events; the read stage and the predictor send theirs beside the data
    (:mod:`pipeline.segment.telemetry`: the earliest of each across tasks and actors). ``first_result`` and ``first_commit``
    count from the process's start when the process was started for the run (``segpipe segment``
    notes ``process_created``), else from the call (a notebook, a test: no ``cli_import`` then);
    the actor's steps overlap the reads.
    """
    events = {**events, "origin": events.get("process_created") or events.get("run_started", 0)}
    return {name: round(events[end] - events[start], 3) for name, start, end in STARTUP_STEPS
            if events.get(start) and events.get(end)}


def startup_line(steps: dict[str, float]) -> str:
    """Return the start-up breakdown as one log line."""
    return "start-up: " + ", ".join(f"{name.replace('_', ' ')} {seconds:.1f} s" for name, seconds in steps.items())


def run_summary(cfg: SegmentConfig, plan: RunPlan, writer: ShardCounts, started: float,
                events: dict[str, float] | None = None) -> RunSummary:
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
        repeated_keys=writer.repeated,
        changed_shards=plan.changed_shards,
        removed_shards=plan.removed_shards,
        resumed_shards=len(writer.resumed),
        wall_seconds=round(wall, 3),
        startup_seconds=round(startup, 3),
        images_per_second=round(done_now / wall, 3) if wall > 0 else 0.0,
        steady_images_per_second=(round((done_now - first_rows) / steady_time, 3)
                                  if steady_time > 0 and done_now > first_rows else 0.0),
        startup=startup_breakdown({**(events or {}), **writer.events, "last_commit": writer.last_commit,
                                   "summary": time.time()}),
    )


def write_run_json(cfg: SegmentConfig, plan: RunPlan, state: dict[str, Any]) -> None:
    """Write ``<output>/run.json``: config (credentials redacted), model, versions, actors and ``state``."""
    record = {
        "run_id": plan.run_id,
        **state,
        "config": cfg.to_public_dict(),
        "model": {"url": cfg.model, "id": plan.model.model_id, "sha256": plan.model.sha256, "info": plan.model.info.to_json()},
        "tiling": plan.tiling.to_json(),
        "precision": {"asked": cfg.precision, "used": plan.precision, "why": plan.precision_reason},
        "actors": {"cpus": plan.actor_cpus, "gpus": plan.actor_gpus, "threads": plan.actor_threads,
                   "min": cfg.actors.min, "max": cfg.actors.max},
        "shards": len(plan.shards),
        "changed_shards": list(plan.changed_shards),
        "removed_shards": list(plan.removed_shards),
        "layout": layout.VERSION,
        "versions": package_versions(),
    }
    storage.write_bytes(layout.run_record_url(cfg.output), json.dumps(record, indent=2).encode(), cfg.storage)


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
