"""Build and run the batch segmentation job.

``run_segmentation(cfg)`` checks everything that can make the whole run fail (input, model,
output, cluster resources) before any work starts (:mod:`pipeline.segment.plan`), then streams
shards through Ray Data:

    read + prepare (CPU task) → predict (actor pool) → finish (actor pool) → driver

The driver receives only small metric rows and commits each shard once all its rows are in
(:mod:`pipeline.segment.write`); names derive from the input shard, so a re-run writes the same
names and resumes (:mod:`pipeline.segment.resume`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

from pipeline import console, raypatch
from pipeline.cluster import connect_ray
from pipeline.config import SegmentConfig
from pipeline.io import storage
from pipeline.io.shards import Shard, shard_dataset
from pipeline.model import ModelArtifactError
from pipeline.segment import lease
from pipeline.segment.inferers import inferer_for
from pipeline.segment.plan import CPU_STAGES, RunPlan, actor_resources, plan_run, resolve_precision
from pipeline.segment.predictor import SegmentationPredictor
from pipeline.segment.prepare import read_and_prepare
from pipeline.segment.record import Progress, RunSummary, now_iso, run_summary, startup_line, write_run_json
from pipeline.segment.resume import prepare_output
from pipeline.segment.telemetry import channel_of as telemetry_channel
from pipeline.segment.telemetry import gather_events
from pipeline.segment.write import MaskWriter, ShardWriter

log = logging.getLogger(__name__)


def run_segmentation(cfg: SegmentConfig, own_process: bool = False) -> RunSummary:
    """Segment every image of ``cfg.input`` with ``cfg.model`` into ``cfg.output``; return the summary.

    Raises ConfigError, InputError, ModelArtifactError or StorageError before any work starts when
    the run as a whole cannot proceed. Bad single images never raise: they become error rows.
    An interrupted run (KeyboardInterrupt) records ``status: interrupted`` in run.json and re-raises.
    ``own_process``: the process was started for this run (``segpipe segment``), so the start-up
    breakdown counts from the process's start.
    """
    started_at = now_iso()
    events = {"run_started": time.time()}
    if own_process:
        events.update(process_created=process_created(), imported=IMPORTED_AT)
    plan = plan_run(cfg)
    events["planned"] = time.time()
    with storage.reaching(cfg.output, cfg.storage):
        held = lease.take(cfg.output, cfg.storage, plan.run_id, cfg.overwrite)
    try:
        return segment_held_output(cfg, plan, held, started_at, events)
    finally:
        held.release()


def segment_held_output(cfg: SegmentConfig, plan: RunPlan, held: lease.Lease, started_at: str,
                        events: dict[str, float]) -> RunSummary:
    """Run the checked ``plan`` on the output this run holds (:func:`run_segmentation`'s body)."""
    with storage.reaching(cfg.output, cfg.storage):
        prior = prepare_output(cfg, plan.model.sha256, cfg.overwrite, plan.tiling.to_json(), plan.shards,
                               plan.model.info.to_json().get("labels"))
    plan = dataclasses.replace(plan, run_id=prior.run_id or plan.run_id, changed_shards=prior.changed,
                               removed_shards=prior.removed)
    todo = [shard for shard in plan.shards if shard.name not in prior.committed]
    if todo:
        events["ray_started"] = time.time()
        connect_ray(cfg.address)
        events["ray_ready"] = time.time()
        raypatch.install()  # this driver drives the stream: its idle scheduling loop must not spin
        plan = dataclasses.replace(plan, **actor_resources(cfg))
        plan = dataclasses.replace(plan, **resolve_precision(cfg, plan, prior.precision))
        if plan.model.info.spec.keras:
            log.info("precision %s (%s)", plan.precision, plan.precision_reason)
    else:
        log.info("every shard of %s is already committed under %s; nothing to do", cfg.input, cfg.output)
        plan = dataclasses.replace(plan, **resolve_precision(cfg, plan, prior.precision or "float32"))
    held.confirm()  # by now (Ray started) a run that took the output at the same moment has written its lease
    write_run_json(cfg, plan, {"status": "running", "started": started_at})
    channel = telemetry_channel(plan.run_id)
    clock = time.perf_counter()
    progress = Progress(cfg, plan, started_at)
    writer = ShardWriter(cfg.output, cfg.storage, plan.shards, prior.committed, plan.run_id, plan.model.model_id, progress,
                         objects=cfg.objects.enabled, class_names=plan.model.info.class_names)
    try:
        if todo:
            events["stream_started"] = time.time()
            with console.Watch(), progress.bar:
                for table in build_dataset(cfg, plan, todo, channel).iter_batches(batch_format="pyarrow",
                                                                                  batch_size=None):
                    held.check()
                    writer.add(table)
        writer.finish()
    except BaseException as exc:
        writer.close()
        status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        failure = {"status": status, "started": started_at, "ended": now_iso(),
                   "error": f"{type(exc).__name__}: {exc}", "progress": progress.counts(writer)}
        try:
            write_run_json(cfg, plan, failure)
        except storage.OutputFullError:  # the output that stopped the run cannot take its record either
            log.warning("run.json could not record the failure: the output takes no writes")
        refused = model_error_in(exc)
        if refused is not None:  # the actors' full load refused the model: one message, like the driver's checks
            raise refused from None
        raise
    events.update(gather_events(channel))
    summary = run_summary(cfg, plan, writer, clock, events)
    write_run_json(cfg, plan, {"status": "finished", "started": started_at, "ended": now_iso(), "summary": dataclasses.asdict(summary)})
    if summary.startup:
        log.debug("%s", startup_line(summary.startup))
    log.debug("%s", summary.line())  # the command line prints it
    return summary


def model_error_in(exc: BaseException) -> ModelArtifactError | None:
    """Return the ModelArtifactError an actor raised while loading the model, as told by Ray's error, else None."""
    marker = f"{ModelArtifactError.__name__}: "
    text = str(exc)
    if marker not in text:
        return None
    return ModelArtifactError(text.split(marker, 1)[1].splitlines()[0])


IMPORTED_AT = time.time()  # when the segment command had imported what it runs


def process_created() -> float:
    """Return when this process started (``time.time()``), or 0 if the system does not say.

    On Linux from ``/proc`` to the clock tick (psutil's figure rests on the boot time in whole
    seconds, so it can be a second off); elsewhere from psutil.
    """
    try:
        with open("/proc/self/stat") as stat, open("/proc/uptime") as uptime:
            ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
            since_boot = float(uptime.read().split()[0])
        return time.time() - (since_boot - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil

        return float(psutil.Process().create_time())
    except Exception:  # noqa: BLE001 - a missing figure is no reason to fail a run
        return 0.0


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


def build_dataset(cfg: SegmentConfig, plan: RunPlan, shards: list[Shard], channel: str = "") -> Any:
    """Return the lazy Ray Dataset of metric rows (plus ``shard``, ``shard_rows``) for ``shards`` of the plan.

    The run's inferer (:mod:`pipeline.segment.inferers`) decides what each stage does with an
    image and how large a block is; this function only wires the stages. The stages send their
    start-up timings on ``channel`` (:mod:`pipeline.segment.telemetry`).
    """
    from ray.data import ActorPoolStrategy

    inferer = inferer_for(plan.tiling, plan.model.info, cfg.batch_size)
    storage_config = cfg.storage
    settings = {
        "target_max_block_size": inferer.block_bytes(),
        "op_resource_reservation_ratio": reservation_ratio(cfg.stage_cpus),
    }
    with data_context(**settings):
        dataset = shard_dataset(shards)
    dataset = dataset.map_batches(
        read_and_prepare, fn_kwargs={"inferer": inferer, "storage_config": storage_config,
                                     "max_image_pixels": cfg.max_image_pixels, "tiff_page": cfg.tiff_page,
                                     "telemetry_channel": channel},
        batch_size=1, num_cpus=cfg.stage_cpus,
    )
    dataset = dataset.map_batches(
        SegmentationPredictor,
        fn_constructor_kwargs={"model_url": cfg.model, "storage_config": storage_config, "threads": plan.actor_threads,
                               "tta": cfg.tta, "tiling": plan.tiling, "batch_size": cfg.batch_size,
                               "confidence": cfg.objects.enabled, "precision": plan.precision,
                               "telemetry_channel": channel},
        compute=ActorPoolStrategy(min_size=cfg.actors.min, max_size=cfg.actors.max),
        batch_size=inferer.images_per_call,
        num_cpus=plan.actor_cpus,
        num_gpus=plan.actor_gpus or None,
        memory=int(cfg.actors.memory_gb * 1024**3) if cfg.actors.memory_gb else None,
    )
    return dataset.map_batches(
        MaskWriter,
        fn_constructor_kwargs={"inferer": inferer, "output": cfg.output, "model_id": plan.model.model_id,
                               "run_id": plan.run_id, "storage_config": storage_config,
                               "objects_config": cfg.objects},
        compute=ActorPoolStrategy(min_size=1, max_size=cfg.actors.max),
        batch_size=inferer.images_per_call,
        num_cpus=cfg.stage_cpus,
        batch_format="numpy",
    )
