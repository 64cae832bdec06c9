"""What runs on each Ray Train worker: the training step, validation and checkpoints.

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
import json
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from pipeline import console, imaging, metrics, objects
from pipeline.config import StorageConfig
from pipeline.model import MODEL_FILE, ModelSpec, build_model, configure_tensorflow, encoder_input, load_keras_file
from pipeline.train.curves import EventLog
from pipeline.train.schedule import EpochBatches, Schedule
from pipeline.train.watch import StepPublisher, publish_epoch

log = logging.getLogger(__name__)


BORDER_WEIGHT = 10.0  # a border model's cross-entropy on border pixels: about 1 % of nuclei images' pixels
STATE_FILE = "state.json"
BEST_MODEL_FILE = "best.keras"
HISTORY_LISTS = ("val_dice", "val_iou")  # per-class lists model.json's history keeps (for training.html)
OPTIMIZER_FILE = "optimizer.npz"


def per_example_loss(labels: Any, probabilities: Any, spec: ModelSpec, kind: str) -> Any:
    """Return the loss of each example, shape ``(n,)``: cross-entropy, soft Dice loss, or their sum.

    Cross-entropy is the pixel mean, a border pixel of a border model weighing :data:`BORDER_WEIGHT`
    times; soft Dice loss is ``1 - mean over classes of
    (2 sum(p*y) + 1) / (sum(p) + sum(y) + 1)``. Pixels labelled :data:`pipeline.imaging.IGNORE`
    (not labelled in the data set's masks, or the padding of a window larger than its image) count in neither.
    """
    import tensorflow as tf

    probabilities = tf.cast(probabilities, tf.float32)  # a mixed-precision network's output
    if spec.output_activation == "sigmoid":
        probabilities = tf.concat([1.0 - probabilities, probabilities], axis=-1)
    probabilities = tf.clip_by_value(probabilities, 1e-7, 1.0 - 1e-7)
    classes = spec.label_classes  # with border targets, the border is a class of its own
    onehot = tf.one_hot(tf.cast(labels, tf.int32), classes)  # all zeros where a label is IGNORE
    valid = tf.cast(labels < classes, probabilities.dtype)
    loss = tf.zeros(tf.shape(labels)[:1])
    if "ce" in kind:
        pixels = tf.maximum(tf.reduce_sum(valid, axis=[1, 2]), 1.0)
        pixel_loss = -tf.reduce_sum(onehot * tf.math.log(probabilities), axis=-1)
        if spec.target == "borders":  # borders are a sliver of the pixels, and all that tells touching objects apart
            pixel_loss *= 1.0 + (BORDER_WEIGHT - 1.0) * onehot[..., -1]
        loss += tf.reduce_sum(pixel_loss, axis=[1, 2]) / pixels
    if "dice" in kind:
        overlap = tf.reduce_sum(onehot * probabilities, axis=[1, 2])
        total = tf.reduce_sum(onehot, axis=[1, 2]) + tf.reduce_sum(probabilities * valid[..., tf.newaxis], axis=[1, 2])
        loss += 1.0 - tf.reduce_mean((2.0 * overlap + 1.0) / (total + 1.0), axis=-1)
    return loss


def patch_twin(spec: ModelSpec, patch: int) -> Any:
    """Return a new network like ``spec`` for ``patch`` x ``patch`` inputs (the same layers and weight shapes)."""
    return build_model(dataclasses.replace(spec, input_size=(patch, patch)))


def adam(learning_rate: float, ema: float, model: Any) -> Any:
    """Return Adam built for ``model``'s weights, keeping their moving average with momentum ``ema`` if > 0."""
    import keras

    optimizer = keras.optimizers.Adam(learning_rate, use_ema=ema > 0, ema_momentum=ema or 0.99)
    optimizer.build(model.trainable_variables)
    return optimizer


def make_train_step(strategy: Any, model: Any, optimizer: Any, spec: ModelSpec, kind: str, global_batch: int,
                    xla: bool = True, preprocessing: str = "none") -> Any:
    """Return a traced step ``(pixels, labels, weights, clock) -> (global mean loss, workers' mean clock)``
    that updates the model; ``clock`` is the worker's seconds of training (:mod:`pipeline.train.schedule`).

    With ``xla`` the forward and backward pass are compiled with XLA (``jit_compile``): about 1.5x
    the images/s of the plain graph on CPU. Only that part is compiled; the gradient all-reduce and
    optimizer update stay outside it, where MultiWorkerMirroredStrategy's collectives run.
    The model's trainable variables are read when the step is traced: after freezing or unfreezing
    layers, make a new step.
    """
    import tensorflow as tf

    @tf.function(jit_compile=xla)
    def loss_and_gradients(pixels: Any, labels: Any, weights: Any) -> Any:
        with tf.GradientTape() as tape:
            probabilities = model(encoder_input(pixels, preprocessing), training=True)
            losses = per_example_loss(labels, probabilities, spec, kind) * weights
            loss = tf.nn.compute_average_loss(losses, global_batch_size=global_batch)
        return loss, tape.gradient(loss, model.trainable_variables)

    def replica_step(pixels: Any, labels: Any, weights: Any, clock: Any) -> Any:
        loss, gradients = loss_and_gradients(pixels, labels, weights)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return loss, tf.identity(clock)

    @tf.function
    def train_step(pixels: Any, labels: Any, weights: Any, clock: Any) -> Any:
        loss, clocks = strategy.run(replica_step, args=(pixels, labels, weights, clock))
        return (strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None),
                strategy.reduce(tf.distribute.ReduceOp.MEAN, clocks, axis=None))

    return train_step


def validation_metrics(model: Any, dataset: Any, spec: ModelSpec, threshold: float,
                       preprocessing: str = "none") -> dict[str, Any]:
    """Return validation Dice/IoU per class (micro: summed TP/FP/FN; macro: image mean), their
    foreground means, and the pixel error (fraction of misclassified pixels), at tile resolution
    (for a native-scale model, over windows that tile each image: macro means over windows). A border
    model's borders count as the class of their objects (:func:`pipeline.objects.fold_borders`), in
    its output and its targets alike."""
    classes, borders = spec.num_classes, spec.target == "borders"
    tp, fp, fn = (np.zeros(classes, dtype=np.int64) for _ in range(3))
    per_image_dice, per_image_iou = [], []
    wrong = total = 0
    for batch in dataset.iter_batches(batch_size=16, batch_format="numpy"):
        scores = model(encoder_input(batch["pixels"], preprocessing), training=False).numpy()
        for index in np.flatnonzero(batch["weights"] > 0):
            labels = objects.fold_borders(batch["labels"][index], classes) if borders else batch["labels"][index]
            labelled = labels < classes  # not IGNORE: unlabelled, or the padding of a window larger than its image
            predicted = imaging.mask_from_scores(scores[index], threshold)
            predicted = (objects.fold_borders(predicted, classes) if borders else predicted)[labelled]
            result = metrics.image_metrics(predicted, labels[labelled], classes)
            tp, fp, fn = tp + result["tp"], fp + result["fp"], fn + result["fn"]
            per_image_dice.append(result["dice"])
            per_image_iou.append(result["iou"])
            wrong += int((predicted != labels[labelled]).sum())
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
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return {"epoch": 0, "best": {}, "history": [], "best_model": None}
    with checkpoint.as_directory() as folder:
        saved = load_keras_file(os.path.join(folder, MODEL_FILE))
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


def load_encoder_weights(model: Any, spec: ModelSpec, weights: Any) -> None:
    """Copy the encoder weights the driver checked and put in the object store (``(ref, file name)``) into ``model``."""
    import ray

    from pipeline.model.encoders import apply_encoder_weights

    reference, name = weights
    layers = apply_encoder_weights(model, spec, ray.get(reference), name)
    log.info("encoder weights from %s copied into %d layers", name, layers)


@dataclasses.dataclass(frozen=True)
class WorkerConfig:
    """What each Ray Train worker needs of the run, as the driver resolved it (``train_loop_config["worker"]``)."""

    spec: ModelSpec
    threads: int  # TensorFlow's intra-op threads
    seed: int
    schedule: Schedule
    batch_size: int  # the global batch, over all workers
    loss: str
    has_val: bool
    threshold: float = 0.5
    xla: bool = True
    patch: int = 0  # train on random patch x patch windows of each tile (0: the whole tile)
    ema: float = 0.0
    steps_per_epoch: int = 0  # 0: an epoch is a pass over the data
    preprocessing: str = "none"  # the encoder's input preprocessing
    encoder_weights: tuple[Any, str] | None = None  # (object ref of the weights file's bytes, its name)
    encoder_trainable_after: int = 0
    precision: str = "float32"  # the networks' arithmetic while training (weights stay float32)
    channel: str = ""  # the driver's console channel (pipeline.train.watch)
    output: str = ""  # the model output, whose logs/ gets the TensorBoard event files ("": none)
    storage: StorageConfig | None = None
    class_names: tuple[str, ...] = ()


@dataclasses.dataclass
class WorkerModels:
    """The models one worker keeps: ``model`` (checkpointed), ``trained`` (its patch-size twin, or itself),
    ``evaluated`` (the moving average with ``ema``, or ``model``) and the optimizer."""

    model: Any
    trained: Any
    evaluated: Any
    optimizer: Any


def worker_models(settings: WorkerConfig, strategy: Any) -> WorkerModels:
    """Return the worker's models built under ``strategy``, with encoder weights and the last checkpoint's state."""
    import keras

    keras.mixed_precision.set_global_policy(settings.precision)  # the layers built below compute in it
    try:
        return built_models(settings, strategy)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def built_models(settings: WorkerConfig, strategy: Any) -> WorkerModels:
    """Return :func:`worker_models`' models, built under the current dtype policy."""
    spec = settings.spec
    with strategy.scope():
        model = build_model(spec)
        # Training on patches: a twin of the model at the patch size is trained; its weights are
        # copied into the full-tile model (checkpoints) after each epoch.
        trained = patch_twin(spec, settings.patch) if settings.patch else model
        # With ema the optimizer keeps a moving average of the trained weights (Keras' own, updated in
        # apply_gradients); the average goes into a third model that is validated and kept as the best.
        # It is built for every weight, the encoder's too, before any is frozen.
        optimizer = adam(settings.schedule.learning_rate, settings.ema, trained)
        evaluated = build_model(spec) if settings.ema else model
    if settings.encoder_weights:
        load_encoder_weights(model, spec, settings.encoder_weights)
    return WorkerModels(model, trained, evaluated, optimizer)


@dataclasses.dataclass
class Clock:
    """A worker's seconds of training, resumes included (the workers' mean, as the last step reduced it)."""

    before: float  # trained in earlier sessions
    started: float = dataclasses.field(default_factory=time.perf_counter)
    agreed: float = 0.0  # the workers' mean clock after the last step

    def now(self) -> float:
        return self.before + time.perf_counter() - self.started

    def agree(self, strategy: Any) -> float:
        """Set and return the workers' mean clock now (an all-reduce: every worker must call it)."""
        import tensorflow as tf

        value = tf.constant(self.now(), tf.float32)
        per_replica = strategy.run(lambda: tf.identity(value))
        self.agreed = float(strategy.reduce(tf.distribute.ReduceOp.MEAN, per_replica, axis=None))
        return self.agreed


def train_epoch(step: Any, models: WorkerModels, batches: Any, settings: WorkerConfig, world: int, epoch: int,
                clock: Clock, on_step: Callable[[int, float], None] | None = None) -> dict[str, Any]:
    """Run one epoch's steps on this worker's share; return its training figures (the models synced after it).

    Under a time budget the learning rate is set every step and the epoch ends early, on every
    worker after the same step (the first that began past the budget), when the budget is spent
    (``budget_spent`` in the figures; ``trained_seconds`` and ``previous_step_clock``: the clock at
    the start of the last step and of the one before). ``on_step(steps, mean loss)`` is told of each step.
    """
    import tensorflow as tf

    started = time.perf_counter()
    schedule = settings.schedule
    losses, images, skipped, step_seconds, spent, previous = [], 0, 0, 0.0, False, clock.agreed
    reasons: collections.Counter[str] = collections.Counter()
    models.optimizer.learning_rate.assign(schedule.rate(epoch, clock.agreed))
    for batch in batches:
        step_started = time.perf_counter()
        loss, agreed = step(batch["pixels"], batch["labels"], batch["weights"], tf.constant(clock.now(), tf.float32))
        losses.append(float(loss))
        previous = clock.agreed
        clock.agreed, step_seconds = float(agreed), time.perf_counter() - step_started
        images += len(batch["weights"])
        skipped += int((batch["weights"] == 0).sum())
        if on_step is not None:
            on_step(len(losses), float(np.mean(losses)))
        reasons.update(str(reason) for reason in batch.get("skip_reason", ()) if reason)
        if schedule.budget_seconds:
            if schedule.over(clock.agreed):
                spent = True
                break
            models.optimizer.learning_rate.assign(schedule.rate(epoch, clock.agreed))
    seconds = time.perf_counter() - started
    if models.trained is not models.model:
        models.model.set_weights(models.trained.get_weights())
    if models.evaluated is not models.model:
        models.evaluated.set_weights(models.model.get_weights())  # the batch-norm statistics as trained
        models.optimizer.finalize_variable_values(models.evaluated.trainable_variables)  # the averaged weights
    return {"loss": float(np.mean(losses)) if losses else float("nan"), "steps": len(losses),
            "images": images * world, "skipped_samples": skipped, "skip_reasons": dict(reasons),
            "epoch_seconds": seconds, "learning_rate": float(np.asarray(models.optimizer.learning_rate)),
            "trained_seconds": clock.agreed, "previous_step_clock": previous, "last_step_seconds": step_seconds,
            "budget_spent": spent,
            "train_images_per_second": images * world / seconds if seconds > 0 else 0.0}


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Train on this worker's share of the data for the configured epochs (runs inside Ray Train).

    ``config["worker"]`` is the run's :class:`WorkerConfig`.
    """
    settings: WorkerConfig = config["worker"]
    configure_tensorflow(settings.threads)
    console.forward_worker_warnings()
    import keras
    import ray.train
    import tensorflow as tf

    from pipeline.model.encoders import set_encoder_trainable

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    spec = settings.spec
    keras.utils.set_random_seed(settings.seed)
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    models = worker_models(settings, strategy)
    state = restore_state(models.model, models.optimizer)
    if models.trained is not models.model:
        models.trained.set_weights(models.model.get_weights())
    step, frozen = None, None
    batches = EpochBatches(ray.train.get_dataset_shard("train"), settings.batch_size // world, 4 * settings.batch_size,
                           settings.steps_per_epoch)
    val_data = ray.train.get_dataset_shard("val") if settings.has_val else None
    clock = Clock(before=float(state.get("trained_seconds", 0.0)))
    clock.agreed = clock.before
    epoch = state["epoch"]
    events = EventLog(settings.output, settings.storage, settings.class_names) if rank == 0 and settings.output else None
    steps = settings.steps_per_epoch or None  # of a pass over the data: known after the first epoch
    while settings.schedule.more_epochs(epoch) and not settings.schedule.over(clock.agreed):
        epoch_started = time.perf_counter()
        if step is None or frozen != (epoch < settings.encoder_trainable_after):
            frozen = epoch < settings.encoder_trainable_after
            if frozen or step is not None:
                set_encoder_trainable(models.trained, spec, not frozen)
                log.info("epoch %d: encoder %s", epoch, "frozen" if frozen else "trainable")
            step = make_train_step(strategy, models.trained, models.optimizer, spec, settings.loss,
                                   settings.batch_size, settings.xla, settings.preprocessing)
        publisher = StepPublisher(settings.channel if rank == 0 else "", epoch, steps)
        epoch_metrics: dict[str, Any] = {"epoch": epoch, **train_epoch(step, models, batches.epoch(), settings, world,
                                                                        epoch, clock, publisher)}
        steps = settings.steps_per_epoch or epoch_metrics["steps"]
        if spec.has_encoder:
            epoch_metrics["encoder_frozen"] = bool(frozen)
        if rank == 0 and val_data is not None:
            epoch_metrics.update(validation_metrics(models.evaluated, val_data, spec, settings.threshold,
                                                    settings.preprocessing))
        epoch_metrics["elapsed_seconds"] = time.perf_counter() - clock.started  # this session, validation included
        state["epoch"] = epoch = epoch + 1
        state["trained_seconds"] = clock.before + epoch_metrics["elapsed_seconds"]
        state["history"].append({k: v for k, v in epoch_metrics.items()
                                 if not isinstance(v, list) or k in HISTORY_LISTS})
        report_epoch(models.model, models.optimizer, state, epoch_metrics, rank, models.evaluated)
        over = settings.schedule.over(clock.agree(strategy))
        if rank == 0:
            shown = {**state["history"][-1], "seconds": time.perf_counter() - epoch_started,
                     "best": "val_mean_dice" in epoch_metrics and state["best"].get("epoch") == epoch - 1,
                     "last": over or not settings.schedule.more_epochs(epoch)}
            if events is not None:
                events.write(shown)
            publish_epoch(settings.channel, shown)
        if over:
            log.info("stopping in epoch %d: the time budget of %.1f minutes is spent", epoch - 1,
                     settings.schedule.budget_seconds / 60)
    if events is not None:
        events.close()
