"""Fitting the K-means baseline (``segpipe train --architecture kmeans``): no TensorFlow, no Ray Train.

The same readers and decoding as the networks' training (at the images' own resolution, no
augmentation): a Ray Data stage samples pixel features and their classes from every training
image, the driver fits K-means on the sample (:func:`pipeline.model.kmeans.fit_kmeans`), and a
second stage validates the fitted model on every pixel of the validation images. The artifact is
``model.json`` alone; segmentation runs it on the same actor pool as any model.
"""

from __future__ import annotations

import hashlib
import logging
import time
import warnings
from typing import Any

import numpy as np

from pipeline import imaging, metrics
from pipeline.cluster import connect_ray
from pipeline.config import TrainConfig
from pipeline.io import storage
from pipeline.io.readers import read_dataset
from pipeline.io.shards import discover_shards
from pipeline.model import ModelInfo, ModelSpec, save_artifact
from pipeline.model.kmeans import KMeansSegmenter, fit_kmeans, pixel_features, sample_pixels
from pipeline.train.data import DecodedSamples
from pipeline.train.summary import TrainSummary

log = logging.getLogger(__name__)

MAX_FITTED_PIXELS = 400_000  # the sample K-means is fitted on, spread evenly over the training images
MIN_PIXELS_PER_IMAGE = 256
GUESSED_SHARD_IMAGES = 100


def labelled_pairs(batch: dict[str, np.ndarray], spec: ModelSpec, normalization: dict[str, Any],
                   label_map: imaging.LabelMap | None = None) -> Any:
    """Yield ``(key, normalised image, mask)`` for each usable labelled row of a batch; log and skip the rest."""
    for index, key in enumerate(batch["key"]):
        if batch["error"][index] or not len(batch["mask"][index]):
            continue
        try:
            yield key, *DecodedSamples.decode(batch["image"][index], batch["mask"][index], spec, normalization,
                                              label_map=label_map)
        except imaging.SampleError as exc:
            log.warning("skipping training sample %s: %s", key, exc)


class PixelSample:
    """The sampling stage: up to ``per_image`` random pixels of each pair, the same ones for the same key and seed."""

    def __init__(self, spec: ModelSpec, normalization: dict[str, Any], features: tuple[str, ...], per_image: int,
                 seed: int, label_map: imaging.LabelMap | None = None) -> None:
        self.spec, self.normalization, self.features, self.label_map = spec, normalization, features, label_map
        self.per_image, self.seed = per_image, seed

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values, labels = [], []
        for key, image, mask in labelled_pairs(batch, self.spec, self.normalization, self.label_map):
            digest = hashlib.blake2b(f"{self.seed}:{key}".encode(), digest_size=8).digest()
            rng = np.random.default_rng(int.from_bytes(digest, "little"))
            sampled = sample_pixels(image, mask, self.features, self.per_image, rng)
            values.append(sampled[0])
            labels.append(sampled[1])
        if not values:  # no usable pair: an empty sample of the features' width
            values.append(pixel_features(np.zeros((1, 1, self.spec.channels), np.float32), self.features)[:0])
        return {"values": np.concatenate(values),
                "labels": np.concatenate(labels) if labels else np.zeros(0, dtype=np.uint8)}


class PixelCounts:
    """The validation stage: per image, the fitted model's TP/FP/FN per class and its wrong pixels."""

    def __init__(self, spec: ModelSpec, normalization: dict[str, Any], fitted: dict[str, Any],
                 label_map: imaging.LabelMap | None = None) -> None:
        self.spec, self.normalization, self.fitted, self.label_map = spec, normalization, fitted, label_map

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        segmenter = KMeansSegmenter(self.fitted, self.spec.num_classes)
        rows: dict[str, list[Any]] = {"tp": [], "fp": [], "fn": [], "wrong": [], "pixels": []}
        for _, image, mask in labelled_pairs(batch, self.spec, self.normalization, self.label_map):
            predicted = segmenter.classes_of(image)
            result = metrics.image_metrics(predicted, mask, self.spec.num_classes)
            for name in ("tp", "fp", "fn"):
                rows[name].append(result[name])
            labelled = mask < self.spec.num_classes  # not IGNORE
            rows["wrong"].append(int((predicted != mask)[labelled].sum()))
            rows["pixels"].append(int(labelled.sum()))
        classes = self.spec.num_classes
        return {name: np.array(values, dtype=np.int64).reshape(-1, classes) if name in ("tp", "fp", "fn")
                else np.array(values, dtype=np.int64) for name, values in rows.items()}


def validation_summary(counts: dict[str, np.ndarray]) -> dict[str, Any]:
    """Return the validation metrics of per-image counts, with the keys and conventions of the networks' training."""
    if not len(counts["pixels"]):
        return {}
    tp, fp, fn = (counts[name].sum(axis=0) for name in ("tp", "fp", "fn"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)  # a class absent from every image
        per_image_dice = metrics.dice_from_counts(counts["tp"], counts["fp"], counts["fn"])
        per_image_iou = metrics.iou_from_counts(counts["tp"], counts["fp"], counts["fn"])
        macro_dice, macro_iou = np.nanmean(per_image_dice, axis=0), np.nanmean(per_image_iou, axis=0)
    micro_dice, micro_iou = metrics.dice_from_counts(tp, fp, fn), metrics.iou_from_counts(tp, fp, fn)
    return {
        "val_images": len(counts["pixels"]), "val_dice": micro_dice.tolist(), "val_iou": micro_iou.tolist(),
        "val_macro_dice": macro_dice.tolist(), "val_macro_iou": macro_iou.tolist(),
        "val_mean_dice": metrics.foreground_mean(micro_dice), "val_mean_iou": metrics.foreground_mean(micro_iou),
        "val_pixel_error": float(counts["wrong"].sum() / counts["pixels"].sum()),
    }


def collected(dataset: Any, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Return the named columns of a dataset, every batch joined."""
    parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        for name in names:
            parts[name].append(batch[name])
    return {name: np.concatenate(values) if values else np.zeros(0) for name, values in parts.items()}


def run_kmeans_training(cfg: TrainConfig, spec: ModelSpec, started: float,
                        label_map: imaging.LabelMap | None = None) -> TrainSummary:
    """Fit the K-means baseline on ``cfg.data``, validate it on ``cfg.val_data``, write its artifact; return the summary."""
    inputs = {"training data": cfg.data, **({"validation data": cfg.val_data} if cfg.val_data else {})}
    storage.check_apart(cfg.output, inputs)
    loader, normalization = cfg.loader, {"mode": cfg.loader.normalization}
    shards = discover_shards(cfg.data, cfg.storage, loader.folder_shard_size, cfg.coco.images)
    val_shards = discover_shards(cfg.val_data, cfg.storage, loader.folder_shard_size, cfg.coco.images) if cfg.val_data else []
    storage.check_writable(cfg.output, cfg.storage)
    connect_ray(cfg.address)
    features = cfg.model.feature_list()
    # the images a shard holds are known for folders; tar and Parquet shards are guessed at a hundred
    images = sum(len(shard.members) if shard.kind == "folder" else GUESSED_SHARD_IMAGES for shard in shards)
    per_image = max(MIN_PIXELS_PER_IMAGE, MAX_FITTED_PIXELS // max(1, images))
    sampled = collected(read_dataset(shards, cfg.storage, loader.stage_cpus).map_batches(
        PixelSample(spec, normalization, features, per_image, cfg.seed, label_map), num_cpus=loader.stage_cpus),
        ("values", "labels"))
    if not len(sampled["labels"]):
        raise RuntimeError(f"no usable labelled image under {cfg.data}; see the warnings above")
    fit_started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)  # kmeans2: a cluster left empty is mapped to background
        fitted = fit_kmeans(sampled["values"], sampled["labels"], cfg.model.clusters, spec.num_classes, features, cfg.seed)
    fit_seconds = time.perf_counter() - fit_started
    best: dict[str, Any] = {"epoch": 0, "pixels_fitted": fitted["pixels_fitted"], "fit_seconds": round(fit_seconds, 2)}
    if val_shards:
        counts = collected(read_dataset(val_shards, cfg.storage, loader.stage_cpus).map_batches(
            PixelCounts(spec, normalization, fitted, label_map), num_cpus=loader.stage_cpus), ("tp", "fp", "fn", "wrong", "pixels"))
        best.update(validation_summary(counts))
    seconds = time.perf_counter() - started
    info = ModelInfo(
        spec=spec, class_names=cfg.model.names(), normalization=normalization, threshold=0.5, scale="native",
        kmeans=fitted, label_map=label_map if label_map is not None and label_map.declared else None,
        training={"trained": True, "data_url": cfg.data, "val_data_url": cfg.val_data, "epochs": 1, "best_epoch": 0,
                  "best_metrics": best, "history": [best], "config": cfg.to_public_dict(), "seconds": round(seconds, 1)},
    )
    save_artifact(None, info, cfg.output, cfg.storage)
    summary = TrainSummary(artifact=cfg.output, epochs=1, best_epoch=0, best_metrics=best, history=[best],
                           seconds=seconds)
    log.debug("%s", summary.line())  # the command line prints it
    return summary
