"""The training data stage: labelled shards to augmented tiles (or windows of them, or, at native
scale, windows of the images at their own resolution), streamed.

It reads the same shards as segmentation (:mod:`pipeline.io.readers`), decodes each pair once
per data-stage process (:class:`DecodedSamples`) and cuts and augments it anew for every pass
(:mod:`pipeline.train.augment`). Where the stream is driven, Ray Data's idle scheduling loop is
made to pause (:mod:`pipeline.raypatch`).
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
from typing import Any

import numpy as np

from pipeline import console, imaging, objects, raypatch
from pipeline.config import AugmentConfig, TrainConfig
from pipeline.io.readers import read_dataset
from pipeline.io.shards import discover_shards
from pipeline.model import ModelSpec
from pipeline.train import augment

log = logging.getLogger(__name__)


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

    def get(self, image: bytes, mask: bytes, spec: ModelSpec, normalization: dict[str, Any],
            budget_bytes: int, tile: tuple[int, int] | None = None,
            label_map: imaging.LabelMap | None = None, borders: tuple[bytes, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(normalised float32 image, uint8 mask)``, at ``tile`` if given (see :meth:`decode`);
        raise imaging.SampleError if unusable.

        With ``budget_bytes`` 0 nothing is looked up or kept: every call decodes.
        """
        if budget_bytes <= 0:
            return self.decode(image, mask, spec, normalization, tile, label_map, borders)
        digest = hashlib.blake2b(image, digest_size=16)
        digest.update(mask)
        if borders is not None:
            digest.update(borders[0])
        # the lengths mark where the image's bytes end and the mask's (and the instances') begin in the one digest
        key = (digest.digest(), len(image), len(mask), spec.channels, spec.num_classes,
               json.dumps(normalization, sort_keys=True), tile, label_map, borders[1] if borders else None)
        found = self.entries.get(key)
        if found is not None:
            self.entries.move_to_end(key)
            return found
        pair = self.decode(image, mask, spec, normalization, tile, label_map, borders)
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
    def decode(image: bytes, mask: bytes, spec: ModelSpec, normalization: dict[str, Any],
               tile: tuple[int, int] | None = None, label_map: imaging.LabelMap | None = None,
               borders: tuple[bytes, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Return the normalised image and its mask decoded from their bytes, through the data set's label
        map (plain class indices without one; :data:`pipeline.imaging.IGNORE` where not labelled).

        With ``tile`` both come at the tile: the image through segmentation's own resize chain
        (:func:`pipeline.imaging.read_tile`, then :func:`pipeline.imaging.tile_input`), so a
        model trained at ``scale: resize`` sees exactly the input it is segmented with; the mask
        by nearest neighbour. Without, both at their own size, normalised as segmentation in
        windows normalises (the image's own value range, before its channels are matched).

        With ``borders`` (``(instance label bytes, border width)``) the mask is a border target
        (:func:`with_borders`).
        """
        label_map = label_map if label_map is not None else imaging.LabelMap(num_classes=spec.num_classes)
        if tile is not None:
            pixels, size, value_range = imaging.read_tile(image, tile, spec.channels, normalization)
            classes = imaging.decode_mask(mask, label_map, size)
            if borders is not None:
                classes = with_borders(classes, *borders, spec.num_classes, tile)
            return imaging.tile_input(pixels, normalization, value_range), imaging.labels_at_size(classes, tile)
        decoded, value_range = imaging.read_native(image, normalization)
        classes = imaging.decode_mask(mask, label_map, decoded.shape[:2])
        if borders is not None:
            classes = with_borders(classes, *borders, spec.num_classes)
        return imaging.normalise(imaging.match_channels(decoded, spec.channels), normalization, value_range), classes


def with_borders(classes: np.ndarray, instances: bytes, width: int, num_classes: int,
                 tile: tuple[int, int] | None = None) -> np.ndarray:
    """Return a decoded mask as a border target (:func:`pipeline.objects.border_target`), the objects
    from the instance label image ``instances`` or, without one, the mask's connected components
    (which never touch: such an image teaches borders nothing). With ``tile`` the border is drawn at
    the tile's scale: ``width`` pixels there, as the model sees it; the mask then comes at the tile."""
    labels = (imaging.decode_instances(instances, classes.shape).astype(np.int32) if len(instances)
              else objects.label_objects(np.where(classes < num_classes, classes, 0), num_classes)[0])
    if tile is not None:
        classes, labels = imaging.labels_at_size(classes, tile), imaging.labels_at_size(labels, tile)
    return objects.border_target(classes, labels, width, num_classes)


DECODED = DecodedSamples()


def native_batch(batch: dict[str, np.ndarray], spec: ModelSpec, normalization: dict[str, Any],
                 augmentation: AugmentConfig | None, cache_mb: float = 0,
                 label_map: imaging.LabelMap | None = None, border_width: int = 0) -> dict[str, np.ndarray]:
    """Return ``pixels``, ``labels`` and ``weights`` of the windows cut from a batch of input rows at native scale.

    Each usable pair gives :func:`pipeline.train.augment.native_windows`: with ``augmentation``,
    random windows in proportion to its area, augmented; without (validation), the windows that
    tile it. The number of rows out therefore differs from the number in; unusable samples give none.
    """
    tile = spec.input_size
    rng = np.random.default_rng() if augmentation else None
    windows: list[tuple[np.ndarray, np.ndarray]] = []
    reasons: list[str] = []  # one zero-weight row per skipped sample, so the step counts it
    for index in range(len(batch["key"])):
        reason = unusable_reason(batch, index)
        if not reason:
            try:
                normalised, mask = DECODED.get(batch["image"][index], batch["mask"][index], spec, normalization,
                                               int(cache_mb * 2**20), label_map=label_map,
                                               borders=borders_of(batch, index, spec, border_width))
                windows.extend(augment.native_windows(normalised, mask, tile, rng, augmentation or AugmentConfig()))
                continue
            except imaging.SampleError as exc:
                log.warning("skipping training sample %s: %s", batch["key"][index], exc)
                reason = exc.kind
        reasons.append(reason)
    count = len(windows) + len(reasons)
    pixels = np.zeros((count, *tile, spec.channels), dtype=np.float32)
    labels = np.zeros((count, *tile), dtype=np.uint8)
    for index, (image, mask) in enumerate(windows):
        pixels[index], labels[index] = image, mask
    weights = np.concatenate([np.ones(len(windows), np.float32), np.zeros(len(reasons), np.float32)])
    return {"pixels": pixels, "labels": labels, "weights": weights,
            "skip_reason": np.array([""] * len(windows) + reasons, dtype=object)}


def borders_of(batch: dict[str, np.ndarray], index: int, spec: ModelSpec, width: int) -> tuple[bytes, int] | None:
    """Return what a border target of row ``index`` is drawn from (its instance labels, possibly
    none, and the width), or None for a model of class targets."""
    if spec.target != "borders":
        return None
    instances = batch.get("instances")
    return (bytes(instances[index]) if instances is not None else b"", max(1, width))


def unusable_reason(batch: dict[str, np.ndarray], index: int) -> str:
    """Return why row ``index`` cannot train before it is decoded (its error's kind, or ``no_mask``), else ""."""
    if batch["error"][index]:
        kinds = batch.get("error_kind")
        return (str(kinds[index]) if kinds is not None else "") or "unreadable"
    truth = batch.get("truth_error_kind")
    if truth is not None and truth[index]:
        return str(truth[index])
    return "" if len(batch["mask"][index]) else NO_MASK


NO_MASK = "no_mask"  # a training sample without a ground-truth mask (not an error row: segmentation takes it)


def training_batch(batch: dict[str, np.ndarray], spec: ModelSpec, normalization: dict[str, Any],
                   augmentation: AugmentConfig | None, patch: int = 0, cache_mb: float = 0,
                   native: bool = False, label_map: imaging.LabelMap | None = None,
                   split: tuple[float, bool] | None = None, border_width: int = 0) -> dict[str, np.ndarray]:
    """Return ``pixels`` (float32 tiles), ``labels`` (uint8 class tiles) and ``weights`` for a batch of input rows.

    With ``augmentation`` each pair is augmented as :func:`pipeline.train.augment.training_pair` describes.
    With ``patch`` each tile is then cut to a random ``patch`` x ``patch`` window at the tile's scale.
    With ``cache_mb`` this process keeps up to that many MB of decoded samples (:class:`DecodedSamples`).

    A sample that cannot be used (unreadable, no mask, mask of another size or with unknown
    classes) keeps its place with weight 0 and its reason in ``skip_reason`` (the error kind, or
    ``no_mask``): it adds nothing to the loss and is counted as skipped, and every worker still
    gets the same number of rows, which the synchronous strategy needs.

    With ``native`` the pairs are cut into windows at their own scale instead (:func:`native_batch`).
    ``label_map``: the data set's label map (plain class indices without one). With ``split``
    (``(share, held_out)``) only the rows on that side of the validation split are kept
    (:func:`held_out`): the held-out ones, or the rest. A border model (``spec.target`` borders)
    learns border targets ``border_width`` pixels wide (:func:`with_borders`).
    """
    if split is not None:
        keep = np.array([held_out(str(key), split[0]) == split[1] for key in batch["key"]], dtype=bool)
        batch = {name: column[keep] for name, column in batch.items()}
    if native:
        return native_batch(batch, spec, normalization, augmentation, cache_mb, label_map, border_width)
    count = len(batch["key"])
    tile = spec.input_size
    shape = (patch, patch) if patch else tile
    pixels = np.zeros((count, *shape, spec.channels), dtype=np.float32)
    labels = np.zeros((count, *shape), dtype=np.uint8)
    weights = np.zeros(count, dtype=np.float32)
    reasons = np.full(count, "", dtype=object)
    rng = np.random.default_rng() if augmentation or patch else None
    # a random crop cuts the image at its own size before resizing; everything else starts at the tile
    at_tile = None if augmentation is not None and augmentation.crop else tile
    for index in range(count):
        reasons[index] = unusable_reason(batch, index)
        if reasons[index]:
            continue
        try:
            normalised, mask = DECODED.get(batch["image"][index], batch["mask"][index], spec, normalization,
                                           int(cache_mb * 2**20), at_tile, label_map,
                                           borders_of(batch, index, spec, border_width))
            pair = augment.training_pair(normalised, mask, tile, rng if augmentation else None,
                                         augmentation or AugmentConfig())
            pixels[index], labels[index] = augment.random_patch(*pair, shape, rng) if patch else pair
            weights[index] = 1.0
        except imaging.SampleError as exc:
            log.warning("skipping training sample %s: %s", batch["key"][index], exc)
            reasons[index] = exc.kind
    return {"pixels": pixels, "labels": labels, "weights": weights, "skip_reason": reasons}


def held_out(key: str, share: float) -> bool:
    """Return whether the image ``key`` is in the validation share carved from the training data: a
    hash of the key, so the same images every run, resume and worker count."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < share


def training_dataset(url: str, cfg: TrainConfig, spec: ModelSpec, augmented: bool, passes: int = 1,
                     patch: int = 0, label_map: imaging.LabelMap | None = None,
                     split: tuple[float, bool] | None = None) -> Any:
    """Return the lazy Ray Dataset of training tiles (or ``patch``-sized windows of them) for the shards
    at ``url``, each shard read ``passes`` times; with ``split`` (``(share, held_out)``) of one side of
    the validation split only.

    Repeated reads of a shard are augmented independently. Several passes per epoch suit small
    data sets, where one pass takes seconds and the per-epoch work (starting the data stream,
    validation, checkpoint) would otherwise cost as much as the training itself.
    """
    loader = cfg.loader
    shards = discover_shards(url, cfg.storage, loader.folder_shard_size, cfg.coco.images)
    dataset = read_dataset(shards * passes, cfg.storage, loader.stage_cpus)
    batches = TrainingBatches(spec=spec, normalization={"mode": loader.normalization},
                              augmentation=cfg.augment if augmented else None, patch=patch,
                              cache_mb=loader.decoded_cache_mb, native=cfg.scale == "native", label_map=label_map,
                              split=split, border_width=cfg.model.border_width)
    return dataset.map_batches(batches, batch_size=cfg.optim.batch_size, num_cpus=loader.stage_cpus)


class TrainingBatches:
    """The data stage's function: :func:`training_batch` with the run's settings.

    Every process that unpickles it installs the pause for Ray Data's idle scheduling loop
    (:func:`pipeline.raypatch.install`): Ray Train's SplitCoordinator, which drives the training
    stream and receives it with the dataset's plan, among them.
    """

    def __init__(self, **settings: Any) -> None:
        self.settings = settings
        raypatch.install()
        console.forward_worker_warnings()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        raypatch.install()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Return :func:`training_batch` of the batch."""
        return training_batch(batch, **self.settings)
