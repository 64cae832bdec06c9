"""Input formats, one module each, registered once here (:data:`FORMATS`).

A format implements :class:`~pipeline.io.formats.base.InputFormat`: find its shards under an
input, read a shard's occurrences (whole, keys only, or some keys), and write samples. Adding a
format is one new module and one line in :data:`FORMATS`.
"""

from __future__ import annotations

from pipeline.io.formats.base import InputFormat, Shard
from pipeline.io.formats.coco import CocoFormat
from pipeline.io.formats.folder import FolderFormat
from pipeline.io.formats.parquet import ParquetFormat
from pipeline.io.formats.tar import TarFormat

# In the order an input is tried: the first format that finds shards under it reads them all.
FORMATS: dict[str, InputFormat] = {fmt.kind: fmt for fmt in (TarFormat(), FolderFormat(), ParquetFormat(), CocoFormat())}


def format_of(shard: Shard | str) -> InputFormat:
    """Return the format of a shard (or of a format's kind)."""
    kind = shard if isinstance(shard, str) else shard.kind
    try:
        return FORMATS[kind]
    except KeyError:
        raise ValueError(f"input format {kind!r}: one of {', '.join(FORMATS)}") from None


def format_of_source(source: str) -> InputFormat:
    """Return the format of a metrics row's ``source``: the one whose shard files end like it, else the folder layout."""
    lowered = source.lower()
    return next((fmt for fmt in FORMATS.values() if fmt.file_suffixes and lowered.endswith(fmt.file_suffixes)),
                next(fmt for fmt in FORMATS.values() if not fmt.file_suffixes))
