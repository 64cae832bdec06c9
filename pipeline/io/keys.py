"""Keys repeated across shards, found before a run so that the first image of a key keeps it.

Keys name output files (``masks/<key>.png``), so they must be unique across the input. Before a
run the keys of every shard are read without their images (tar headers, the Parquet ``key``
column; folder shards need no reading); the first shard holding a key, in sorted shard order,
keeps it, and each later image of it becomes a ``duplicate_key`` error row
(:func:`pipeline.io.readers.read_shard` with ``taken``). The same on every run and resume.
"""

from __future__ import annotations

import concurrent.futures
import logging
import tarfile

import pyarrow as pa

from pipeline.config import StorageConfig
from pipeline.io import storage
from pipeline.io.formats import format_of
from pipeline.io.formats.base import InputError, Shard

log = logging.getLogger(__name__)


UNPARSABLE = (tarfile.TarError, EOFError, UnicodeDecodeError, InputError, pa.ArrowInvalid)  # not a tar / Parquet


def shard_keys(shard: Shard, storage_config: StorageConfig | None = None) -> list[str]:
    """Return the keys the shard's images claim, in its order, reading no image data (tar headers,
    the Parquet ``key`` column, the folder listing).

    A shard that cannot be parsed claims none (reading it gives only its error row). A storage
    failure raises StorageError: without the shard's keys, duplicates could not be told apart.
    """
    try:
        occurrences, _, _ = format_of(shard).contents(shard, storage_config, with_content=False)
    except UNPARSABLE as exc:
        log.debug("shard %s cannot be parsed: %s", shard.url, exc)
        return []
    except Exception as exc:
        raise storage.StorageError(f"the keys of shard {shard.url} cannot be read ({type(exc).__name__}: {exc}); "
                                   "they are needed to find keys repeated across shards: re-run the same command "
                                   "(it resumes) once the storage answers") from exc
    return [item.key for item in occurrences if item.claims and storage.is_safe_key(item.key)]


INDEX_THREADS = 16


def keys_taken_earlier(shards: list[Shard], storage_config: StorageConfig | None = None) -> dict[str, dict[str, str]]:
    """Return ``{shard name: {key: URL of the earlier shard holding it}}`` for keys that repeat across shards.

    Shards are taken in the given (sorted) order, so the first shard holding a key keeps it on
    every run and resume. Only shards with repeated keys appear. The shards' keys are read with
    :data:`INDEX_THREADS` threads (tar headers and Parquet key columns; folder shards need no reading).
    """
    if len(shards) < 2:
        return {}
    with concurrent.futures.ThreadPoolExecutor(INDEX_THREADS) as pool:
        key_lists = list(pool.map(lambda shard: shard_keys(shard, storage_config), shards))
    owner: dict[str, int] = {}
    taken: dict[str, dict[str, str]] = {}
    for index, (shard, keys) in enumerate(zip(shards, key_lists)):
        for key in keys:
            first = owner.setdefault(key, index)
            if first != index:
                taken.setdefault(shard.name, {})[key] = shards[first].url
    if taken:
        log.warning("%d key(s) repeat across shards; each later image becomes a duplicate_key error row",
                    sum(len(keys) for keys in taken.values()))
    return taken
