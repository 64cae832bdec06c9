"""Synthetic labelled shards for the demo, the tests and benchmarks, in the three input layouts.

:func:`write_sample_data` writes the samples of :mod:`pipeline.synthetic` as WebDataset tar shards,
image/mask folders or Parquet files (DESIGN.md's input layouts), deterministically from a seed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from pipeline.config import SampleDataConfig
from pipeline.imaging import encode_png
from pipeline.io.formats import FORMATS
from pipeline.io.formats.base import Sample
from pipeline.synthetic import synthetic_sample

logger = logging.getLogger(__name__)


def sample_key(index: int) -> str:
    """Return the key of the sample with global ``index`` (``sample-000042``)."""
    return f"sample-{index:06d}"


def sample_for_index(cfg: SampleDataConfig, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Return the ``(image, mask)`` of sample ``index``; it depends only on ``cfg.seed`` and ``index``.

    Each sample has its own generator seeded by ``(seed, index)``, so a sample is the same whatever
    the layout or number of shards, and samples can be drawn in any order.
    """
    image, mask, _ = sample_with_instances(cfg, index)
    return image, mask


def sample_with_instances(cfg: SampleDataConfig, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return the ``(image, mask, instances)`` of sample ``index``: :func:`sample_for_index` and its objects'
    uint16 label image (numbered 1.. in painting order, those wholly covered by later ones left out)."""
    rng = np.random.default_rng([cfg.seed, index])
    height, width = rng.integers(cfg.min_size, cfg.max_size + 1, size=2)
    object_size = cfg.object_size if cfg.scale == "native" else None
    instances = np.zeros((int(height), int(width)), dtype=np.int32)
    image, mask = synthetic_sample(rng, int(height), int(width), cfg.num_classes, object_size, instances)
    _, numbered = np.unique(instances, return_inverse=True)  # 0 stays 0, the labels left become 1..n
    return image, mask, numbered.reshape(instances.shape).astype(np.uint16)


def truth_files(cfg: SampleDataConfig, index: int) -> tuple[np.ndarray, dict[str, bytes]]:
    """Return sample ``index``'s image and its encoded ground truth: ``mask`` and, with ``cfg.instances``, ``instances``."""
    image, mask, instances = sample_with_instances(cfg, index)
    files = {"mask": encode_png(mask)}
    if cfg.instances:
        files["instances"] = encode_png(instances)
    return image, files


def shard_ranges(num_images: int, num_shards: int) -> list[range]:
    """Return the global sample indices of each shard, in order, sizes differing by at most one.

    There are ``min(num_shards, num_images)`` ranges: a shard with no sample is not written.
    """
    count = min(num_shards, num_images)
    base, extra = divmod(num_images, count)
    ranges, start = [], 0
    for shard in range(count):
        stop = start + base + (1 if shard < extra else 0)
        ranges.append(range(start, stop))
        start = stop
    return ranges


def write_sample_data(cfg: SampleDataConfig) -> list[str]:
    """Write ``cfg.num_images`` synthetic samples to ``cfg.output`` in ``cfg.layout``; return the URLs, sorted.

    Layouts (each written by its format, :mod:`pipeline.io.formats`, through :mod:`pipeline.io.storage`, so local paths, ``file://`` and ``s3://`` work):

    - ``tar``: ``<output>/shard-00000.tar`` … with members ``<key>.png`` and ``<key>.mask.png``
      (and ``<key>.instances.png`` with ``cfg.instances``); returns the shard URLs.
    - ``folder``: ``<output>/images/<key>.png`` and ``<output>/masks/<key>.png`` (and
      ``instances/<key>.png``); returns the image URLs.
    - ``parquet``: ``<output>/part-00000.parquet`` … with columns ``key``, ``image``, ``mask``
      (and ``instances``; encoded PNG bytes); returns the file URLs.
    - ``coco``: ``<output>/<key>.png`` and ``<output>/annotations.json`` (each object an RLE
      annotation of its class); returns the image URLs and the annotations file's.

    Keys are ``sample-000000``, ``sample-000001``, … (global index). Shards hold consecutive keys and
    ``min(num_shards, num_images)`` of them are written. The same config gives byte-identical files.
    """
    units = {"tar": "tar shard(s)", "folder": "image/mask file pair(s)", "parquet": "Parquet file(s)",
             "coco": "files (the images and annotations.json)"}
    shards = (shard_samples(cfg, indices) for indices in shard_ranges(cfg.num_images, cfg.num_shards))
    urls = sorted(FORMATS[cfg.layout].write(cfg.output, shards, cfg.storage))
    logger.info(
        "wrote %d synthetic images with masks (%d classes, seed %d) to %s as %d %s",
        cfg.num_images, cfg.num_classes, cfg.seed, cfg.output, len(urls), units[cfg.layout],
    )
    return urls


def shard_samples(cfg: SampleDataConfig, indices: Sequence[int]) -> list[Sample]:
    """Return the samples of one shard: each key with its encoded image and ground truth."""
    samples = []
    for index in indices:
        image, files = truth_files(cfg, index)
        samples.append((sample_key(index), {"image": encode_png(image, compress_level=1), **files}))
    return samples
