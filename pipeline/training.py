"""Multi-worker U-Net training on Ray Train, from the same shards and readers as inference.

``run_training(cfg)`` checks the data, output and cluster, then runs a ``TensorflowTrainer`` whose
workers train one model under ``tf.distribute.MultiWorkerMirroredStrategy``. The training data
is a Ray Dataset split equally across workers (``get_dataset_shard``), streamed, never loaded
whole. Each epoch ends with validation (Dice and IoU from :mod:`pipeline.metrics`, the same
conventions as inference) and a checkpoint through ``ray.train.report``; re-running the same
command on the same output continues from the latest checkpoint. At the end the best epoch's
model is written as a model artifact (``model.keras`` + ``model.json``) under the output.

Why a custom training step and not ``Model.fit``: with Keras 3 on TensorFlow, ``Model.fit``
under ``MultiWorkerMirroredStrategy`` with two or more workers fails ("Attempt to convert a
value (PerReplica...) to a Tensor", keras-team/keras#20585). tf-keras' ``fit`` runs, but Keras 3
cannot load the ``.keras`` files it writes, and inference loads Keras 3 artifacts. A step of our
own (``strategy.run`` inside a ``tf.function``, the loss scaled by the global batch size)
trains the Keras 3 model under the strategy and keeps the Keras 3 artifact.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
import math
import os
import tempfile
import time
import warnings
from typing import Any

import numpy as np

from pipeline import augment, metrics, preprocess, storage
from pipeline.cluster import connect_ray, largest_node_cpus
from pipeline.config import ConfigError, TrainConfig, UNetConfig
from pipeline.model import MODEL_FILE, ModelInfo, UNetSpec, build_unet, save_artifact
from pipeline.sources import discover_shards, read_dataset

log = logging.getLogger(__name__)

CHECKPOINT_RUN_NAME = "checkpoints"
STATE_FILE = "state.json"
BEST_MODEL_FILE = "best.keras"
OPTIMIZER_FILE = "optimizer.npz"


@dataclasses.dataclass(frozen=True)
class TrainSummary:
    """What a training run produced."""

    artifact: str
    epochs: int
    best_epoch: int
    best_metrics: dict[str, Any]
    history: list[dict[str, Any]]
    seconds: float

    def line(self) -> str:
        """Return the one-line summary shown at the end of training."""
        best = self.best_metrics
        return (
            f"trained {self.epochs} epochs in {self.seconds:.0f} s; best epoch {self.best_epoch}: "
            f"val mean Dice {best.get('val_mean_dice', float('nan')):.3f}, "
            f"pixel error {best.get('val_pixel_error', float('nan')):.4f}; model artifact in {self.artifact}"
        )


def unet_spec(unet: UNetConfig) -> UNetSpec:
    """Return the U-Net architecture the config asks for."""
    return UNetSpec(
        input_size=(unet.input_size, unet.input_size), channels=unet.channels, num_classes=unet.num_classes,
        depth=unet.depth, base_filters=unet.base_filters, batch_norm=unet.batch_norm, dropout=unet.dropout,
        output_activation=unet.output_activation,
    )


# ---------------------------------------------------------------------------------- data stage


class DecodedSamples:
    """The decoded, normalised image and mask of recent samples, least recently used dropped first.

    Kept per data-stage process, keyed by a hash of the encoded bytes (not the sample key, which
    another data set may reuse) and the settings that shape the arrays. Every epoch, and every
    pass of an epoch, reads the same samples again; on a small data set with many passes the PNG
    decode of a 512x512 slice (about 10 ms of the 12 a 128x128 window costs) would otherwise be
    repeated for every window cut from it. The arrays are read-only: augmentation makes new ones.
    """

    def __init__(self) -> None:
        self.entries: collections.OrderedDict[tuple, tuple[np.ndarray, np.ndarray]] = collections.OrderedDict()
        self.bytes = 0

    def get(self, image: bytes, mask: bytes, spec: UNetSpec, normalization: dict[str, Any],
            budget_bytes: int) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(normalised float32 image, uint8 mask)``; raise preprocess.SampleError if unusable.

        With ``budget_bytes`` 0 nothing is looked up or kept: every call decodes.
        """
        if budget_bytes <= 0:
            return self.decode(image, mask, spec, normalization)
        digest = hashlib.blake2b(image, digest_size=16)
        digest.update(mask)
        # len(image) marks where the image's bytes end and the mask's begin in the one digest
        key = (digest.digest(), len(image), spec.channels, spec.num_classes, json.dumps(normalization, sort_keys=True))
        found = self.entries.get(key)
        if found is not None:
            self.entries.move_to_end(key)
            return found
        pair = self.decode(image, mask, spec, normalization)
        size = pair[0].nbytes + pair[1].nbytes
        if size <= budget_bytes:
            for array in pair:
                array.flags.writeable = False
            self.entries[key] = pair
            self.bytes += size
            while self.bytes > budget_bytes:
                _, (old_image, old_mask) = self.entries.popitem(last=False)
                self.bytes -= old_image.nbytes + old_mask.nbytes
        return pair

    @staticmethod
    def decode(image: bytes, mask: bytes, spec: UNetSpec, normalization: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """Return the normalised image and its mask decoded from their bytes."""
        decoded = preprocess.decode_image(image)
        labels = preprocess.decode_mask(mask, spec.num_classes, decoded.shape[:2])
        return preprocess.normalise(preprocess.match_channels(decoded, spec.channels), normalization), labels


DECODED = DecodedSamples()


def training_batch(batch: dict[str, np.ndarray], spec: UNetSpec, normalization: dict[str, Any], augmented: bool,
                   warp: bool = False, crop: bool = False, patch: int = 0,
                   cache_mb: float = 0, flips: bool = True,
                   label_offset: tuple[float, float] = (0.0, 0.0),
                   quarter_turns: bool = True) -> dict[str, np.ndarray]:
    """Return ``pixels`` (float32 tiles), ``labels`` (uint8 class tiles) and ``weights`` for a batch of input rows.

    With ``augmented`` each pair is augmented as :func:`pipeline.augment.training_pair` describes.
    With ``patch`` each tile is then cut to a random ``patch`` x ``patch`` window at the tile's scale.
    With ``cache_mb`` this process keeps up to that many MB of decoded samples (:class:`DecodedSamples`).

    A sample that cannot be used (unreadable, no mask, mask of another size or with unknown
    classes) keeps its place with weight 0: it adds nothing to the loss and is counted as skipped,
    and every worker still gets the same number of rows, which the synchronous strategy needs.
    """
    count = len(batch["key"])
    tile = spec.input_size
    shape = (patch, patch) if patch else tile
    pixels = np.zeros((count, *shape, spec.channels), dtype=np.float32)
    labels = np.zeros((count, *shape), dtype=np.uint8)
    weights = np.zeros(count, dtype=np.float32)
    rng = np.random.default_rng() if augmented or patch else None
    for index in range(count):
        if batch["error"][index] or not len(batch["mask"][index]):
            continue
        try:
            normalised, mask = DECODED.get(batch["image"][index], batch["mask"][index], spec, normalization,
                                           int(cache_mb * 2**20))
            pair = augment.training_pair(normalised, mask, tile, rng if augmented else None, warp, crop, flips,
                                         label_offset, quarter_turns)
            pixels[index], labels[index] = augment.random_patch(*pair, shape, rng) if patch else pair
            weights[index] = 1.0
        except preprocess.SampleError as exc:
            log.warning("skipping training sample %s: %s", batch["key"][index], exc)
    return {"pixels": pixels, "labels": labels, "weights": weights}


# ------------------------------------------------------------------------------- worker side


def per_example_loss(labels: Any, probabilities: Any, spec: UNetSpec, kind: str) -> Any:
    """Return the loss of each example, shape ``(n,)``: cross-entropy, soft Dice loss, or their sum.

    Cross-entropy is the pixel mean; soft Dice loss is ``1 - mean over classes of
    (2 sum(p*y) + 1) / (sum(p) + sum(y) + 1)``.
    """
    import tensorflow as tf

    if spec.output_activation == "sigmoid":
        probabilities = tf.concat([1.0 - probabilities, probabilities], axis=-1)
    probabilities = tf.clip_by_value(probabilities, 1e-7, 1.0 - 1e-7)
    onehot = tf.one_hot(tf.cast(labels, tf.int32), spec.num_classes)
    loss = tf.zeros(tf.shape(labels)[:1])
    if "ce" in kind:
        loss += tf.reduce_mean(-tf.reduce_sum(onehot * tf.math.log(probabilities), axis=-1), axis=[1, 2])
    if "dice" in kind:
        overlap = tf.reduce_sum(onehot * probabilities, axis=[1, 2])
        total = tf.reduce_sum(onehot, axis=[1, 2]) + tf.reduce_sum(probabilities, axis=[1, 2])
        loss += 1.0 - tf.reduce_mean((2.0 * overlap + 1.0) / (total + 1.0), axis=-1)
    return loss


def patch_twin(spec: UNetSpec, patch: int) -> Any:
    """Return a new U-Net like ``spec`` for ``patch`` x ``patch`` inputs (the same layers and weight shapes)."""
    return build_unet(dataclasses.replace(spec, input_size=(patch, patch)))


def adam(learning_rate: float, ema: float, model: Any) -> Any:
    """Return Adam built for ``model``'s weights, keeping their moving average with momentum ``ema`` if > 0."""
    import keras

    optimizer = keras.optimizers.Adam(learning_rate, use_ema=ema > 0, ema_momentum=ema or 0.99)
    optimizer.build(model.trainable_variables)
    return optimizer


def make_train_step(strategy: Any, model: Any, optimizer: Any, spec: UNetSpec, kind: str, global_batch: int,
                    xla: bool = True) -> Any:
    """Return a traced step ``(pixels, labels, weights) -> global mean loss`` that updates the model.

    With ``xla`` the forward and backward pass are compiled with XLA (``jit_compile``): about 1.5x
    the images/s of the plain graph on CPU. Only that part is compiled; the gradient all-reduce and
    optimizer update stay outside it, where MultiWorkerMirroredStrategy's collectives run.
    """
    import tensorflow as tf

    @tf.function(jit_compile=xla)
    def loss_and_gradients(pixels: Any, labels: Any, weights: Any) -> Any:
        with tf.GradientTape() as tape:
            probabilities = model(pixels, training=True)
            losses = per_example_loss(labels, probabilities, spec, kind) * weights
            loss = tf.nn.compute_average_loss(losses, global_batch_size=global_batch)
        return loss, tape.gradient(loss, model.trainable_variables)

    def replica_step(pixels: Any, labels: Any, weights: Any) -> Any:
        loss, gradients = loss_and_gradients(pixels, labels, weights)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return loss

    @tf.function
    def train_step(pixels: Any, labels: Any, weights: Any) -> Any:
        per_replica = strategy.run(replica_step, args=(pixels, labels, weights))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    return train_step


def validation_metrics(model: Any, dataset: Any, spec: UNetSpec, threshold: float) -> dict[str, Any]:
    """Return validation Dice/IoU per class (micro: summed TP/FP/FN; macro: image mean), their
    foreground means, and the pixel error (fraction of misclassified pixels), at tile resolution."""
    classes = spec.num_classes
    tp, fp, fn = (np.zeros(classes, dtype=np.int64) for _ in range(3))
    per_image_dice, per_image_iou = [], []
    wrong = total = 0
    for batch in dataset.iter_batches(batch_size=16, batch_format="numpy"):
        scores = model(batch["pixels"], training=False).numpy()
        for index in np.flatnonzero(batch["weights"] > 0):
            predicted = preprocess.mask_from_scores(scores[index], threshold)
            result = metrics.image_metrics(predicted, batch["labels"][index], classes)
            tp, fp, fn = tp + result["tp"], fp + result["fp"], fn + result["fn"]
            per_image_dice.append(result["dice"])
            per_image_iou.append(result["iou"])
            wrong += int((predicted != batch["labels"][index]).sum())
            total += predicted.size
    if not total:
        return {}
    micro_dice = metrics.dice_from_counts(tp, fp, fn)
    micro_iou = metrics.iou_from_counts(tp, fp, fn)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)  # a class absent from every image
        macro_dice = np.nanmean(np.array(per_image_dice), axis=0)
        macro_iou = np.nanmean(np.array(per_image_iou), axis=0)
    return {
        "val_images": len(per_image_dice),
        "val_dice": micro_dice.tolist(),
        "val_iou": micro_iou.tolist(),
        "val_macro_dice": macro_dice.tolist(),
        "val_macro_iou": macro_iou.tolist(),
        "val_mean_dice": metrics.foreground_mean(micro_dice),
        "val_mean_iou": metrics.foreground_mean(micro_iou),
        "val_pixel_error": wrong / total,
    }


def restore_state(model: Any, optimizer: Any) -> dict[str, Any]:
    """Load the latest Ray Train checkpoint into ``model`` and ``optimizer`` if one exists; return its state.

    The state holds ``epoch`` (the next epoch to run), ``best`` (metrics of the best epoch so
    far), ``history`` and, on the worker that saves checkpoints, ``best_model`` (bytes).
    """
    import keras
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return {"epoch": 0, "best": {}, "history": [], "best_model": None}
    with checkpoint.as_directory() as folder:
        saved = keras.saving.load_model(os.path.join(folder, MODEL_FILE), compile=False, safe_mode=True)
        model.set_weights(saved.get_weights())
        with np.load(os.path.join(folder, OPTIMIZER_FILE)) as arrays:
            for variable, value in zip(optimizer.variables, (arrays[f"arr_{i}"] for i in range(len(arrays.files)))):
                variable.assign(value)
        with open(os.path.join(folder, STATE_FILE)) as handle:
            state = json.load(handle)
        with open(os.path.join(folder, BEST_MODEL_FILE), "rb") as handle:
            state["best_model"] = handle.read()
    log.info("resuming from checkpoint at epoch %d", state["epoch"])
    return state


def report_epoch(model: Any, optimizer: Any, state: dict[str, Any], epoch_metrics: dict[str, Any], rank: int,
                 evaluated: Any = None) -> None:
    """Report the epoch's metrics; the rank-0 worker attaches a checkpoint (model, best model, optimizer, state).

    ``model`` holds the weights training continues from; ``evaluated`` (default: ``model``) the
    weights the metrics belong to, kept as the best model when they are the best so far.
    """
    import ray.train

    if rank != 0:
        ray.train.report(epoch_metrics)
        return
    evaluated = model if evaluated is None else evaluated
    with tempfile.TemporaryDirectory() as folder:
        model_path = os.path.join(folder, MODEL_FILE)
        model.save(model_path)
        if state["best_model"] is None or epoch_metrics.get("val_mean_dice", -1.0) >= state["best"].get("val_mean_dice", -1.0):
            evaluated_path = model_path
            if evaluated is not model:
                evaluated_path = os.path.join(folder, "evaluated.keras")
                evaluated.save(evaluated_path)
            with open(evaluated_path, "rb") as handle:
                state["best_model"] = handle.read()
            state["best"] = dict(epoch_metrics)
        with open(os.path.join(folder, BEST_MODEL_FILE), "wb") as handle:
            handle.write(state["best_model"])
        np.savez(os.path.join(folder, OPTIMIZER_FILE), *[np.asarray(v) for v in optimizer.variables])
        with open(os.path.join(folder, STATE_FILE), "w") as handle:
            json.dump({k: v for k, v in state.items() if k != "best_model"}, handle)
        ray.train.report(epoch_metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


def epoch_learning_rate(config: dict[str, Any], epoch: int) -> float:
    """Return the learning rate of ``epoch``: constant, or cosine decay from the set rate towards 0."""
    if config.get("lr_schedule", "constant") == "cosine":
        return config["learning_rate"] * 0.5 * (1.0 + math.cos(math.pi * epoch / config["epochs"]))
    return config["learning_rate"]


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Train on this worker's share of the data for the configured epochs (runs inside Ray Train)."""
    from pipeline.predictor import configure_tensorflow

    configure_tensorflow(config["threads"])
    import keras
    import ray.train
    import tensorflow as tf

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    spec = UNetSpec(**config["spec"])
    keras.utils.set_random_seed(config["seed"])
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    ema = config.get("ema", 0.0)
    with strategy.scope():
        model = build_unet(spec)
        # Training on patches: a twin of the model at the patch size is trained; its weights are
        # copied into the full-tile model (checkpoints) after each epoch.
        patch = config.get("patch", 0)
        trained = patch_twin(spec, patch) if patch else model
        # With ema the optimizer keeps a moving average of the trained weights (Keras' own, updated in
        # apply_gradients); the average goes into a third model that is validated and kept as the best.
        optimizer = adam(config["learning_rate"], ema, trained)
        evaluated = build_unet(spec) if ema else model
    state = restore_state(model, optimizer)
    if trained is not model:
        trained.set_weights(model.get_weights())
    global_batch = config["batch_size"]
    step = make_train_step(strategy, trained, optimizer, spec, config["loss"], global_batch, config.get("xla", True))
    train_data = ray.train.get_dataset_shard("train")
    val_data = ray.train.get_dataset_shard("val") if config["has_val"] else None
    loop_started = time.perf_counter()
    for epoch in range(state["epoch"], config["epochs"]):
        optimizer.learning_rate.assign(epoch_learning_rate(config, epoch))
        started = time.perf_counter()
        losses, images, skipped = [], 0, 0
        for batch in train_data.iter_batches(batch_size=global_batch // world, drop_last=True, batch_format="numpy",
                                             local_shuffle_buffer_size=4 * global_batch):
            losses.append(float(step(batch["pixels"], batch["labels"], batch["weights"])))
            images += len(batch["weights"])
            skipped += int((batch["weights"] == 0).sum())
        seconds = time.perf_counter() - started
        if trained is not model:
            model.set_weights(trained.get_weights())
        if evaluated is not model:
            evaluated.set_weights(model.get_weights())  # the batch-norm statistics as trained
            optimizer.finalize_variable_values(evaluated.trainable_variables)  # the averaged weights
        epoch_metrics: dict[str, Any] = {
            "epoch": epoch, "loss": float(np.mean(losses)) if losses else float("nan"), "steps": len(losses),
            "images": images * world, "skipped_samples": skipped, "epoch_seconds": seconds,
            "train_images_per_second": images * world / seconds if seconds > 0 else 0.0,
        }
        if rank == 0 and val_data is not None:
            epoch_metrics.update(validation_metrics(evaluated, val_data, spec, config["threshold"]))
        epoch_metrics["elapsed_seconds"] = time.perf_counter() - loop_started  # this session, validation included
        state["epoch"] = epoch + 1
        state["history"].append({k: v for k, v in epoch_metrics.items() if not isinstance(v, list)})
        report_epoch(model, optimizer, state, epoch_metrics, rank, evaluated)


# ------------------------------------------------------------------------------- driver side


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
        cpus = min(4.0, max(0.25, (largest_node_cpus() - 2 * cfg.stage_cpus) / cfg.num_workers))
    if cfg.num_workers * cpus + cfg.stage_cpus > total_cpus:
        raise ConfigError(
            f"num_workers={cfg.num_workers} x {cpus:g} CPUs plus {cfg.stage_cpus:g} for reading does not fit the "
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


def training_dataset(url: str, cfg: TrainConfig, spec: UNetSpec, augmented: bool, passes: int = 1,
                     patch: int = 0) -> Any:
    """Return the lazy Ray Dataset of training tiles (or ``patch``-sized windows of them) for the shards
    at ``url``, each shard read ``passes`` times.

    Repeated reads of a shard are augmented independently. Several passes per epoch suit small
    data sets, where one pass takes seconds and the per-epoch work (starting the data stream,
    validation, checkpoint) would otherwise cost as much as the training itself.
    """
    shards = discover_shards(url, cfg.storage, cfg.folder_shard_size)
    dataset = read_dataset(shards * passes, cfg.storage, cfg.stage_cpus)
    return dataset.map_batches(
        training_batch,
        fn_kwargs={"spec": spec, "normalization": {"mode": cfg.normalization}, "augmented": augmented, "warp": cfg.warp,
                   "crop": cfg.crop, "flips": cfg.flips, "patch": patch, "cache_mb": cfg.decoded_cache_mb,
                   "label_offset": (cfg.label_offset_rows, cfg.label_offset_cols),
                   "quarter_turns": cfg.quarter_turns},
        batch_size=cfg.batch_size, num_cpus=cfg.stage_cpus,
    )


def run_training(cfg: TrainConfig) -> TrainSummary:
    """Train a U-Net as configured and write its artifact under ``cfg.output``; return the summary.

    Raises InputError, StorageError or ConfigError before training starts when the data, the
    output or the cluster cannot serve the run.
    """
    started = time.perf_counter()
    spec = unet_spec(cfg.unet)
    inputs = {"training data": cfg.data, **({"validation data": cfg.val_data} if cfg.val_data else {})}
    storage.check_apart(cfg.output, inputs)
    train_data = training_dataset(cfg.data, cfg, spec, cfg.augment, cfg.passes_per_epoch, cfg.patch_size)
    val_data = training_dataset(cfg.val_data, cfg, spec, False) if cfg.val_data else None
    storage.check_writable(cfg.output, cfg.storage)
    if not cfg.resume and storage.exists(storage.join_url(cfg.output, CHECKPOINT_RUN_NAME), cfg.storage):
        raise ConfigError(
            f"{cfg.output} already holds checkpoints of a training run; set resume=true to continue it "
            "or choose another output"
        )
    connect_ray(cfg.address)
    cpus, threads = worker_resources(cfg)
    from ray.train import DataConfig, ScalingConfig
    from ray.train.tensorflow import TensorflowTrainer

    datasets = {"train": train_data, **({"val": val_data} if val_data is not None else {})}
    trainer = TensorflowTrainer(
        train_loop_per_worker,
        train_loop_config={
            "spec": dataclasses.asdict(spec), "threads": threads, "seed": cfg.seed, "epochs": cfg.epochs,
            "batch_size": cfg.batch_size, "learning_rate": cfg.learning_rate, "loss": cfg.loss,
            "lr_schedule": cfg.lr_schedule,
            "has_val": val_data is not None, "threshold": 0.5, "xla": cfg.xla, "patch": cfg.patch_size, "ema": cfg.ema,
        },
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, resources_per_worker={"CPU": cpus}),
        dataset_config=DataConfig(datasets_to_split=["train"]),
        datasets=datasets,
        run_config=run_config(cfg),
    )
    log.info("training %d worker(s) x %g CPUs (%d TensorFlow threads) for %d epochs", cfg.num_workers, cpus, threads, cfg.epochs)
    result = trainer.fit()
    return write_final_artifact(cfg, spec, result, time.perf_counter() - started)


def write_final_artifact(cfg: TrainConfig, spec: UNetSpec, result: Any, seconds: float) -> TrainSummary:
    """Write the best epoch's model from the last checkpoint as the run's artifact; return the summary."""
    import keras

    if result.checkpoint is None:
        raise RuntimeError(f"training under {cfg.output} ended without a checkpoint; see the log above")
    with result.checkpoint.as_directory() as folder:
        with open(os.path.join(folder, STATE_FILE)) as handle:
            state = json.load(handle)
        with tempfile.TemporaryDirectory() as tmp:
            best_path = os.path.join(tmp, MODEL_FILE)
            with open(os.path.join(folder, BEST_MODEL_FILE), "rb") as source, open(best_path, "wb") as target:
                target.write(source.read())
            model = keras.saving.load_model(best_path, compile=False, safe_mode=True)
    best = state["best"]
    info = ModelInfo(
        unet=spec, class_names=cfg.unet.names(), normalization={"mode": cfg.normalization}, threshold=0.5,
        training={
            "trained": True, "data_url": cfg.data, "val_data_url": cfg.val_data, "epochs": state["epoch"],
            "best_epoch": best.get("epoch"), "best_metrics": best, "history": state["history"],
            "config": cfg.to_public_dict(), "seconds": round(seconds, 1),
        },
    )
    save_artifact(model, info, cfg.output, cfg.storage)
    summary = TrainSummary(
        artifact=cfg.output, epochs=state["epoch"], best_epoch=int(best.get("epoch", -1)), best_metrics=best,
        history=state["history"], seconds=seconds,
    )
    log.info("%s", summary.line())
    return summary
