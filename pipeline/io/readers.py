"""Read a shard into rows of encoded ``key, image[, mask][, instances]``, one per image, never losing one.

Each format (:mod:`pipeline.io.formats`) reads its shard's occurrences; this module pairs images
with their ground truth and applies the key rules, the same for every format.

Reading a shard never raises for a bad sample: the sample becomes a row with ``error`` and
``error_kind`` set (:class:`pipeline.errors.ErrorKind`), and the whole shard becomes one error
row if it cannot be read at all. Every tar member, folder file or Parquet row named like an
image gets its row; so does ground truth (a mask or instance labels) without an image.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any

from pipeline.config import StorageConfig
from pipeline.errors import ErrorKind
from pipeline.io import storage
from pipeline.io.formats import format_of, format_of_source
from pipeline.io.formats.base import Occurrence, Shard, Truth
from pipeline.io.shards import shard_dataset

log = logging.getLogger(__name__)


def sample_row(shard: Shard, key: str, image: bytes = b"", mask: bytes | None = None, error: str = "",
               kind: ErrorKind | str = "", instances: bytes | None = None,
               truth: Occurrence | None = None) -> dict[str, Any]:
    """Return one input row. Empty ``mask`` means no ground-truth mask, empty ``instances`` no instance
    label image; a non-empty ``error`` means the sample is unusable and says why, and ``kind`` names
    it (:class:`pipeline.errors.ErrorKind`). ``truth``: a ground-truth file that cannot be read (the
    image is still segmented; the row's ``truth_error``/``truth_error_kind`` say why it is not scored).
    (Empty values, not None, keep the columns' types stable.)"""
    return {"key": key, "source": shard.url, "shard": shard.name, "image": image, "mask": mask or b"",
            "instances": instances or b"", "error": error, "error_kind": str(kind) if error else "",
            "truth_error": truth.error if truth else "", "truth_error_kind": str(truth.kind) if truth else ""}


def read_shard(shard: Shard, storage_config: StorageConfig | None = None) -> list[dict[str, Any]]:
    """Return the shard's rows (one per image, and one per ground truth without an image), each tagged with
    ``shard_rows`` = the shard's row count."""
    try:
        occurrences, truth, cut = format_of(shard).contents(shard, storage_config)
        rows = list(paired_rows(shard, occurrences, truth))
        if cut:
            rows.append(sample_row(shard, shard.name, error=cut, kind=ErrorKind.UNREADABLE_SHARD))
    except Exception as exc:  # the whole shard is unreadable: keep a trace of it as one error row
        log.warning("shard %s cannot be read: %s", shard.url, exc)
        rows = [sample_row(shard, shard.name, error=f"shard {shard.url} cannot be read ({type(exc).__name__}: {exc})",
                           kind=ErrorKind.UNREADABLE_SHARD)]
    for row in rows:
        row["shard_rows"] = len(rows)
    if not rows:
        log.warning("shard %s holds no images", shard.url)
    return rows


def paired_rows(shard: Shard, occurrences: list[Occurrence], truth: Truth) -> Iterator[dict[str, Any]]:
    """Yield one row per image occurrence (with its key's ground truth), then one per ground truth without an image.

    The first occurrence of a key that claims it is segmented; a later one in the same shard is a
    ``duplicate_key`` error row naming the first (its mask would take the same name). The same key
    in another shard is no error: each shard writes under its own folder
    (:mod:`pipeline.io.layout`), and the run reports keys repeated across shards.
    """
    first: dict[str, str] = {}
    for item in occurrences:
        problem = storage.key_problem(item.key)
        if problem:
            yield sample_row(shard, item.key, error=f"key {item.key!r} ({item.member}) in {shard.url} cannot name an "
                             f"output file: {problem}; rename it", kind=ErrorKind.UNSAFE_KEY)
            continue
        if item.claims and item.key in first:
            yield sample_row(shard, item.key, error=f"key {item.key!r} ({item.member}) in {shard.url} repeats "
                             f"{first[item.key]} of the same shard; keep one image per key", kind=ErrorKind.DUPLICATE_KEY)
            continue
        if item.claims:
            first[item.key] = item.member
        labels = truth.get(item.key, {})
        if item.error:
            yield sample_row(shard, item.key, error=item.error, kind=item.kind)
        else:  # a ground-truth file that cannot be read costs the image only its scores
            yield sample_row(shard, item.key, image=item.content, mask=content_of(labels, "mask"),
                             instances=content_of(labels, "instances"),
                             truth=next((found for found in labels.values() if found.error), None))
    with_image = {item.key for item in occurrences}
    for key in sorted(set(truth) - with_image):
        problem = storage.key_problem(key)
        if problem:
            yield sample_row(shard, key, error=f"key {key!r} (ground truth) in {shard.url} cannot name an output file: "
                             f"{problem}; rename it", kind=ErrorKind.UNSAFE_KEY)
        else:
            yield sample_row(shard, key, error=f"key {key!r} in {shard.url} has a {' and '.join(sorted(truth[key]))} "
                             "but no image",
                             kind=ErrorKind.MISSING_IMAGE)


def content_of(labels: Mapping[str, Occurrence], role: str) -> bytes | None:
    """Return the bytes of a key's ground truth of ``role`` (``"mask"`` / ``"instances"``), None if it has none."""
    found = labels.get(role)
    return found.content if found is not None and found.content else None


def read_samples(source: str, keys: set[str],
                 storage_config: StorageConfig | None = None) -> dict[str, tuple[bytes, bytes | None, bytes | None]]:
    """Return ``{key: (image, mask or None, instances or None)}`` for the ``keys`` found in one input shard.

    ``source`` is a metrics row's ``source``: a tar shard, a Parquet shard or an image folder,
    read by the same readers as a run but for those keys only (a tar's other members are skipped,
    a Parquet file is filtered on ``key``, a folder globbed per key). Each key's first image is
    read, as a segmentation run reads it; keys not found are absent from the result.
    """
    fmt = format_of_source(source)
    occurrences, truth, _ = fmt.contents(fmt.source_shard(source, keys, storage_config), storage_config, wanted=keys)
    found: dict[str, tuple[bytes, bytes | None, bytes | None]] = {}
    for item in occurrences:
        if item.key in keys and item.key not in found and item.claims and not item.error:
            labels = truth.get(item.key, {})
            found[item.key] = (item.content, content_of(labels, "mask"), content_of(labels, "instances"))
    return found


def read_dataset(shards: list[Shard], storage_config: StorageConfig | None, stage_cpus: float) -> Any:
    """Return a lazy Ray Dataset of the shards' input rows (see :func:`read_shard`), one read task per shard."""
    return shard_dataset(shards).flat_map(lambda row: read_shard(Shard.from_json(row["shard"]), storage_config),
                                          num_cpus=stage_cpus)
