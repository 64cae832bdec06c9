"""Check a segmentation run before any work starts, and size its actors for the cluster.

:func:`plan_run` stops a run that cannot succeed as a whole (an output touching its inputs, an
input, model or output that cannot be used, storage that does not answer) with one error;
:func:`actor_resources` fits the actor pool to the connected cluster.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
from typing import Any

from pipeline.cluster import largest_node_cpus, this_node_only
from pipeline.config import ConfigError, SegmentConfig, StorageConfig
from pipeline.imaging import LabelMap
from pipeline.io import storage
from pipeline.io.labelmaps import fitted_label_map, input_label_map
from pipeline.io.shards import Shard, discover_shards
from pipeline.model import LoadedModel, inspect_artifact
from pipeline.model.precision import auto_precision, node_arithmetic
from pipeline.segment.inferers import inferer_for
from pipeline.segment.predictor import tta_symmetries
from pipeline.segment.tiling import Tiling, resolve_tiling

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """What a checked run will do: its shards, its model, and its actor resources."""

    run_id: str
    shards: list[Shard]
    model: LoadedModel
    tiling: Tiling
    changed_shards: tuple[str, ...] = ()  # committed earlier, replaced since: redone (pipeline.segment.resume)
    removed_shards: tuple[str, ...] = ()  # committed earlier, no longer in the input
    actor_cpus: float = 1.0
    actor_gpus: float = 0.0
    actor_threads: int = 1
    precision: str = "float32"  # the model's arithmetic, as resolved (resolve_precision)
    precision_reason: str = "given"


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
        shards = discover_shards(cfg.input, checks, cfg.folder_shard_size, cfg.coco.images)
    with storage.reaching(cfg.model, cfg.storage):
        model = inspect_artifact(cfg.model, checks)  # no TensorFlow on the driver: the actors load it
    with storage.reaching(cfg.input, cfg.storage):
        model = with_truth_labels(cfg, model, checks)
    if cfg.tta:
        tta_symmetries(model.info, cfg.model)  # a model trained without flips cannot take TTA: stop before work
    spec = model.info.spec
    if cfg.precision not in ("auto", "float32") and spec.architecture in ("imported", "kmeans"):
        raise ConfigError(f"precision={cfg.precision}: model {cfg.model} is {'an imported Keras model' if spec.keras else 'the K-means baseline'}, "
                          "which runs as it was saved; mixed precision is for the networks segpipe builds: "
                          "leave precision at float32")
    if cfg.objects.enabled and cfg.objects.split == "borders" and spec.target != "borders":
        raise ConfigError(f"objects.split=borders: model {cfg.model} was not trained on border targets, so it predicts "
                          "no borders; use split auto or watershed, or train with model.target=borders")
    # The K-means baseline decides each pixel alone: auto runs it on whole images (its position
    # and texture features then see the image, not a window).
    requested = "whole" if cfg.tiling == "auto" and not spec.keras else cfg.tiling
    tiling = resolve_tiling(requested, model.info.scale, spec.input_size, cfg.overlap, cfg.blend,
                            cfg.window, cfg.whole_max_pixels)
    problem = inferer_for(tiling, model.info, cfg.batch_size).model_problem(cfg.model)
    if problem:
        raise ConfigError(problem)
    with storage.reaching(cfg.output, cfg.storage):
        storage.check_writable(cfg.output, checks)
    run_id = cfg.run_id or dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    log.info("input %s: %d shard(s); model %s (scale %s); tiling %s", cfg.input, len(shards), model.model_id,
             model.info.scale, tiling.mode)
    return RunPlan(run_id=run_id, shards=shards, model=model, tiling=tiling)


def with_truth_labels(cfg: SegmentConfig, model: LoadedModel, checks: StorageConfig) -> LoadedModel:
    """Return the model with the label map its ground truth is read through: the run's ``labels.*``, else
    the input's ``labels.yaml`` (or COCO categories), else the one its training data declared, else
    plain class indices. ConfigError, before any work, where that map's classes do not fit the model."""
    found, where = input_label_map(cfg.input, cfg.labels.given(), checks)
    if found is None:
        return model
    label_map = fitted_label_map(found, where, model.info.spec.num_classes)
    names = model.info.class_names
    if label_map.names and names != label_map.names:
        if names == LabelMap(num_classes=len(names)).class_names():  # the model's are background, class_1, ...
            names = label_map.names
        else:
            log.info("the input's classes (%s) are named otherwise than the model's (%s); the outputs use the model's",
                     ", ".join(label_map.names), ", ".join(names))
    return dataclasses.replace(model, info=dataclasses.replace(model.info, label_map=label_map, class_names=names))


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


def resolve_precision(cfg: SegmentConfig, plan: RunPlan, prior: str | None = None) -> dict[str, str]:
    """Return ``precision`` and ``precision_reason`` for the connected cluster: the one asked for, the one a
    resumed run began in (``prior``) under auto, else :func:`pipeline.model.precision.auto_precision` for the
    hardware of the actors' node (this machine's where the cluster is this one node; else a probe task
    placed as an actor is, and a mixed cluster gets that node's answer)."""
    if cfg.precision != "auto":
        return {"precision": cfg.precision, "precision_reason": "given"}
    if prior:
        return {"precision": prior, "precision_reason": "auto: the precision the run began in"}
    spec = plan.model.info.spec
    if spec.architecture in ("imported", "kmeans"):
        flag, capability = "", None
    elif plan.actor_gpus or not this_node_only():
        import ray

        probe = ray.remote(num_cpus=0.01, num_gpus=plan.actor_gpus or None)(node_arithmetic)
        flag, capability = ray.get(probe.remote(plan.actor_gpus))
    else:
        flag, capability = node_arithmetic(0)
    precision, why = auto_precision(spec.architecture, plan.actor_gpus, flag, capability)
    return {"precision": precision, "precision_reason": f"auto: {why}"}


CPU_STAGES = 2  # read + prepare, finish: the operators around the actor pool
