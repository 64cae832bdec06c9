"""Multi-worker training on Ray Train, from the same shards and readers as inference.

``run_training(cfg)`` checks the data, output and cluster, then runs a ``TensorflowTrainer`` whose
workers train one model under ``tf.distribute.MultiWorkerMirroredStrategy``. The training data
is a Ray Dataset split equally across workers (``get_dataset_shard``), streamed, never loaded
whole. Each epoch ends with validation (Dice and IoU from :mod:`pipeline.metrics`, the same
conventions as inference) and a checkpoint through ``ray.train.report``; re-running the same
command on the same output continues from the latest checkpoint. At the end the best epoch's
model is written as a model artifact (``model.keras`` + ``model.json``) under the output.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import math
import os
import tempfile
import time
from typing import Any

from pipeline import console
from pipeline.cluster import connect_ray, largest_node_cpus
from pipeline.config import ConfigError, ModelConfig, TrainConfig
from pipeline.fingerprint import measure_data
from pipeline.imaging import LabelMap
from pipeline.io import storage
from pipeline.io.labelmaps import fitted_label_map, input_label_map
from pipeline.io.shards import InputError, discover_shards
from pipeline.model import MODEL_FILE, ModelInfo, ModelSpec, encoder_preprocessing, load_keras_file, save_artifact
from pipeline.model.architectures import base_filters, check_model_config, check_training_config
from pipeline.train.curves import write_training_page
from pipeline.train.data import training_dataset
from pipeline.train.plan import Hardware, TrainingPlan, needs_fingerprint, plan_training
from pipeline.train.schedule import Schedule
from pipeline.train.step import BEST_MODEL_FILE, STATE_FILE, WorkerConfig, train_loop_per_worker
from pipeline.train.summary import TrainSummary
from pipeline.train.watch import TrainingConsole

log = logging.getLogger(__name__)


CHECKPOINT_RUN_NAME = "checkpoints"
PROGRESS_SECONDS = 30.0  # between progress lines in a log while an epoch runs
FINGERPRINT_FILE = "fingerprint.json"  # the training data's fingerprint, beside model.json
FINGERPRINT_IMAGES = 2000  # the fingerprint a plan reads samples larger data sets to about this many images


def model_spec(model: ModelConfig) -> ModelSpec:
    """Return the architecture and shape the config asks for; raise ConfigError if they make no model."""
    check_model_config(model)
    return ModelSpec(
        architecture=model.architecture, input_size=(model.input_size, model.input_size), channels=model.channels,
        num_classes=model.class_count(), depth=model.depth, base_filters=base_filters(model.architecture, model.base_filters), batch_norm=model.batch_norm,
        dropout=model.dropout, output_activation=model.output_activation, fc_filters=model.fc_filters,
        width=model.width, aspp_filters=model.aspp_filters, target=model.target or "classes",
    )


def label_map_classes(found: LabelMap | None) -> int:
    """Return the classes a label map implies: as many as it names, else its highest class plus one (0: none)."""
    if found is None:
        return 0
    highest = max([index for _, index in (*found.values, *found.colors)], default=0)
    return found.num_classes or (highest + 1 if highest else 0)


def with_labels(cfg: TrainConfig, found: LabelMap | None, where: str) -> tuple[TrainConfig, LabelMap]:
    """Return the config with its model's classes and names settled, and the training data's label map.

    The classes are ``--num-classes`` where given (or planned), else the label map's (``labels.*``, the
    data's ``labels.yaml`` or COCO's categories: see :func:`label_map_classes`). ConfigError,
    before any work, where the label map and ``--num-classes`` disagree.
    """
    count = cfg.model.num_classes or label_map_classes(found) or cfg.model.class_count()
    label_map = fitted_label_map(found, where, count)
    names = cfg.model.class_names or (",".join(label_map.names) if label_map.names else "")
    model = dataclasses.replace(cfg.model, num_classes=count, class_names=names)
    if where:
        log.info("label map from %s: %d classes (%s)%s", where, count, ", ".join(model.names()),
                 f"; ignored values {list(label_map.ignore) + list(label_map.ignore_colors)}"
                 if label_map.ignore or label_map.ignore_colors else "")
    return dataclasses.replace(cfg, model=model), label_map


@dataclasses.dataclass(frozen=True)
class PlannedRun:
    """A training config with every planned key set, its label map, its plan and the fingerprint it came from."""

    cfg: TrainConfig
    label_map: LabelMap
    plan: TrainingPlan
    fingerprint: dict[str, Any] | None


def planned_run(cfg: TrainConfig) -> PlannedRun:
    """Return the run ``cfg`` asks for with the keys it leaves to the plan set (:mod:`pipeline.train.plan`).

    The data is measured (its fingerprint, on Ray Data, sampled to :data:`FINGERPRINT_IMAGES`)
    only where a key the data decides is left to the plan. Raises ConfigError, InputError or
    StorageError before any training when the data or the config cannot serve the run.
    """
    checks = cfg.storage.for_checks()
    found, where = input_label_map(cfg.data, cfg.labels.given(), checks)
    connect_ray(cfg.address)
    fingerprint = None
    if needs_fingerprint(cfg):
        shards = discover_shards(cfg.data, checks, cfg.loader.folder_shard_size, cfg.coco.images)
        fingerprint = measure_data(cfg.data, shards, found, where, cfg.storage, cfg.loader.stage_cpus,
                                   FINGERPRINT_IMAGES)
    labels = (label_map_classes(found), where) if found is not None and label_map_classes(found) else None
    cfg, plan = plan_training(cfg, fingerprint, Hardware.of_cluster(), labels)
    cfg, label_map = with_labels(cfg, found, where)
    check_training_config(cfg)
    return PlannedRun(cfg, label_map, plan, fingerprint)


def encoder_weights(cfg: TrainConfig, spec: ModelSpec) -> tuple[bytes, str] | None:
    """Return the checked encoder weights file ``(bytes, name)`` the config asks for, or None for random
    weights; raise ConfigError (before any training) if they cannot be had or do not fit."""
    if cfg.model.encoder_weights in ("", "none"):
        return None
    from pipeline.model.encoders import EncoderWeightsError, encoder_weights_bytes

    try:
        return encoder_weights_bytes(spec, cfg.model.encoder_weights, lambda url: storage.read_bytes(url, cfg.storage))
    except EncoderWeightsError as exc:
        raise ConfigError(str(exc)) from exc


def worker_resources(cfg: TrainConfig) -> tuple[float, int]:
    """Return ``(cpus_per_worker, tensorflow_threads)``; raise ConfigError if the workers cannot be placed.

    Automatic: the largest node's CPUs, less a share for the data stage, divided among the
    workers (at most 4 per worker), since local runs put every worker on one node.
    """
    import ray

    total_cpus = ray.cluster_resources().get("CPU", 0.0)
    total_gpus = ray.cluster_resources().get("GPU", 0.0)
    if cfg.use_gpu and total_gpus < cfg.num_workers:
        raise ConfigError(
            f"use_gpu with num_workers={cfg.num_workers} needs {cfg.num_workers} GPUs; the cluster has {total_gpus:g}"
        )
    cpus = cfg.cpus_per_worker
    if cpus is None:
        cpus = min(4.0, max(0.25, (largest_node_cpus() - 2 * cfg.loader.stage_cpus) / cfg.num_workers))
    if cfg.num_workers * cpus + cfg.loader.stage_cpus > total_cpus:
        raise ConfigError(
            f"num_workers={cfg.num_workers} x {cpus:g} CPUs plus {cfg.loader.stage_cpus:g} for reading does not fit the "
            f"cluster's {total_cpus:g} CPUs; lower num_workers or cpus_per_worker"
        )
    return cpus, max(1, math.ceil(cpus))


def run_config(cfg: TrainConfig) -> Any:
    """Return the Ray Train RunConfig that keeps checkpoints under ``<output>/checkpoints``."""
    import pyarrow.fs
    from ray.train import CheckpointConfig, FailureConfig, RunConfig

    fs, path = storage.filesystem_for(cfg.output, cfg.storage)
    checkpoints = CheckpointConfig(num_to_keep=2)
    failures = FailureConfig(max_failures=0)
    if storage.is_local(fs):
        return RunConfig(name=CHECKPOINT_RUN_NAME, storage_path=os.path.abspath(path), checkpoint_config=checkpoints,
                         failure_config=failures)
    handler = pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs))
    return RunConfig(name=CHECKPOINT_RUN_NAME, storage_path=path, storage_filesystem=handler,
                     checkpoint_config=checkpoints, failure_config=failures)


def run_datasets(cfg: TrainConfig, spec: ModelSpec, label_map: LabelMap) -> tuple[Any, Any]:
    """Return the run's lazy training and validation datasets (None without validation): ``val_data``,
    or the ``val_fraction`` held out of the training data by key hash."""
    split = (cfg.val_fraction, False) if cfg.val_fraction else None
    train_data = training_dataset(cfg.data, cfg, spec, cfg.augment.enabled, cfg.loader.passes_per_epoch,
                                  cfg.loader.patch_size, label_map=label_map, split=split)
    if cfg.val_data:
        return train_data, training_dataset(cfg.val_data, cfg, spec, False, label_map=label_map)
    if cfg.val_fraction:
        return train_data, training_dataset(cfg.data, cfg, spec, False, label_map=label_map,
                                            split=(cfg.val_fraction, True))
    return train_data, None


def run_training(cfg: TrainConfig) -> TrainSummary:
    """Train the model as configured and write its artifact under ``cfg.output``; return the summary.

    The K-means baseline is fitted instead (:func:`pipeline.train.kmeans.run_kmeans_training`).

    Raises InputError, StorageError or ConfigError before training starts when the data, the
    output or the cluster cannot serve the run.
    """
    started = time.perf_counter()
    storage.check_apart(cfg.output, {"training data": cfg.data, **({"validation data": cfg.val_data}
                                                                    if cfg.val_data else {})})
    run = planned_run(cfg)
    cfg, label_map = run.cfg, run.label_map
    for line in run.plan.lines() if console.VERBOSITY else run.plan.brief_lines():
        log.info("%s", line)
    spec = model_spec(cfg.model)
    if not spec.keras:
        from pipeline.train.kmeans import run_kmeans_training

        return run_kmeans_training(cfg, spec, started, label_map)
    train_data, val_data = run_datasets(cfg, spec, label_map)
    storage.check_writable(cfg.output, cfg.storage)
    if not cfg.resume and storage.exists(storage.join_url(cfg.output, CHECKPOINT_RUN_NAME), cfg.storage):
        raise ConfigError(
            f"{cfg.output} already holds checkpoints of a training run; set resume=true to continue it "
            "or choose another output"
        )
    weights = encoder_weights(cfg, spec)
    if run.fingerprint is not None:
        storage.write_bytes(storage.join_url(cfg.output, FINGERPRINT_FILE), json.dumps(run.fingerprint, indent=2).encode(),
                            cfg.storage)
    cpus, threads = worker_resources(cfg)
    import ray
    from ray.train import DataConfig, ScalingConfig
    from ray.train.tensorflow import TensorflowTrainer

    datasets = {"train": train_data, **({"val": val_data} if val_data is not None else {})}
    channel = console.new_channel()
    optim = cfg.optim
    trainer = TensorflowTrainer(
        train_loop_per_worker,
        train_loop_config={"worker": WorkerConfig(
            spec=spec, threads=threads, seed=cfg.seed, batch_size=optim.batch_size, loss=optim.loss,
            schedule=Schedule(optim.learning_rate, optim.lr_schedule, cfg.epochs, 60.0 * cfg.max_minutes),
            has_val=val_data is not None, threshold=0.5, xla=optim.xla, patch=cfg.loader.patch_size, ema=optim.ema,
            steps_per_epoch=cfg.loader.steps_per_epoch or 0, preprocessing=encoder_preprocessing(spec.architecture, cfg.model.encoder_weights),
            encoder_weights=None if weights is None else (ray.put(weights[0]), weights[1]),
            encoder_trainable_after=cfg.model.encoder_trainable_after, precision=optim.precision,
            channel=channel, output=cfg.output,
            storage=cfg.storage, class_names=cfg.model.names())},
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, resources_per_worker={"CPU": cpus}),
        dataset_config=DataConfig(datasets_to_split=["train"]),
        datasets=datasets,
        run_config=run_config(cfg),
    )
    log.info("training %d worker(s) x %g CPUs (%d TensorFlow threads) for %s", cfg.num_workers, cpus, threads,
             " or ".join(filter(None, (f"{cfg.epochs} epochs" if cfg.epochs else "",
                                       f"{cfg.max_minutes:g} minutes" if cfg.max_minutes else ""))))
    shown = TrainingConsole(cfg.epochs, 60.0 * cfg.max_minutes, PROGRESS_SECONDS)
    with console.Watch(channel, shown.on_message), shown:
        result = trainer.fit()
    return write_final_artifact(cfg, spec, result, time.perf_counter() - started, label_map, run.plan,
                                objects_record(cfg, run.fingerprint))


def skipped_samples(cfg: TrainConfig, history: list[dict[str, Any]]) -> str:
    """Return what the last epoch skipped, as the summary line says it ("" for nothing); raise InputError,
    before any artifact is written, if it trained on no sample at all, and warn if on fewer than half.

    Every epoch reads the same samples, so the last one's counts are the data set's. The rank-0
    worker reports its own skipped rows against all workers' rows, hence the scaling.
    """
    last = history[-1] if history else {}
    rows = last.get("images", 0) / cfg.num_workers
    skipped = last.get("skipped_samples", 0)
    reasons = ", ".join(f"{kind} ({count})" for kind, count in
                        collections.Counter(last.get("skip_reasons") or {}).most_common(3))
    if rows <= 0 or skipped >= rows:
        raise InputError(
            f"training data {cfg.data}: no sample could be trained on ({int(skipped)} of {int(rows)} read were skipped"
            f"{'; most common: ' + reasons if reasons else ''}), so no model was written to {cfg.output}; fix the "
            "samples (docs/segmentation.md says what each kind means: no_mask is an image without a mask) and train again")
    if skipped / rows > 0.5:
        log.warning("training data %s: %d of %d samples were skipped (%.0f %%; most common: %s); the model learnt from "
                    "the rest only", cfg.data, skipped, rows, 100 * skipped / rows, reasons)
    return f"{int(skipped)} of {int(rows)} samples skipped ({reasons})" if skipped else ""


def objects_record(cfg: TrainConfig, fingerprint: dict[str, Any] | None) -> dict[str, Any] | None:
    """Return what model.json records of the training data's objects (``objects``): the border
    width of border targets and the objects' median diameter and area quantiles, where measured."""
    record: dict[str, Any] = {}
    if cfg.model.target == "borders":
        record["border_width"] = cfg.model.border_width
    measured = (fingerprint or {}).get("objects") or {}
    if measured.get("median_diameter"):
        record.update(diameter=round(float(measured["median_diameter"]), 2), area=measured.get("area"),
                      source=",".join(sorted(measured.get("sources") or {})))
    return record or None


def write_final_artifact(cfg: TrainConfig, spec: ModelSpec, result: Any, seconds: float,
                         label_map: LabelMap | None = None, plan: TrainingPlan | None = None,
                         objects: dict[str, Any] | None = None) -> TrainSummary:
    """Write the best epoch's model from the last checkpoint as the run's artifact; return the summary."""
    if result.checkpoint is None:
        raise RuntimeError(f"training under {cfg.output} ended without a checkpoint; see the log above")
    with result.checkpoint.as_directory() as folder:
        with open(os.path.join(folder, STATE_FILE)) as handle:
            state = json.load(handle)
        with tempfile.TemporaryDirectory() as tmp:
            best_path = os.path.join(tmp, MODEL_FILE)
            with open(os.path.join(folder, BEST_MODEL_FILE), "rb") as source, open(best_path, "wb") as target:
                target.write(source.read())
            model = load_keras_file(best_path)
    if cfg.optim.precision != "float32":  # trained in mixed precision: the artifact's layers compute in float32
        from pipeline.model import build_model

        twin = build_model(spec)
        twin.set_weights(model.get_weights())
        model = twin
    skipped = skipped_samples(cfg, state["history"])
    best = state["best"]
    info = ModelInfo(
        spec=spec, class_names=cfg.model.names(), normalization={"mode": cfg.loader.normalization}, threshold=0.5,
        scale=cfg.scale, preprocessing=encoder_preprocessing(spec.architecture, cfg.model.encoder_weights),
        label_map=label_map if label_map is not None and label_map.declared else None,
        plan=plan.to_json() if plan is not None else None, objects=objects,
        training={
            "trained": True, "data_url": cfg.data, "val_data_url": cfg.val_data, "epochs": state["epoch"],
            "best_epoch": best.get("epoch"), "best_metrics": best, "history": state["history"],
            "config": cfg.to_public_dict(), "seconds": round(seconds, 1),
        },
    )
    save_artifact(model, info, cfg.output, cfg.storage)
    curves = write_training_page(cfg.output, cfg.storage, state["history"], cfg.model.names(), best.get("epoch"))
    summary = TrainSummary(
        artifact=cfg.output, epochs=state["epoch"], best_epoch=int(best.get("epoch", -1)), best_metrics=best,
        history=state["history"], seconds=seconds, skipped=skipped, curves=curves,
    )
    log.debug("%s", summary.line())  # the command line prints it
    return summary
