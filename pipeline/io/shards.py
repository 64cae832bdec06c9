"""Turn an input URL into its shards: the unit of work and of output.

Accepted inputs (see DESIGN.md), one format each (:mod:`pipeline.io.formats`): WebDataset-style
``*.tar`` shards, image folders (``images/``, ``masks/``, ``instances/``), and Parquet files.
A shard is one tar file, one Parquet file, or a fixed-size slice of a sorted image folder. Its
name is derived from the input (never random), so a re-run writes the same output names.
:mod:`pipeline.io.readers` turns a shard into rows.
"""

from __future__ import annotations

import dataclasses
import hashlib
import posixpath
from collections.abc import Mapping
from typing import Any

from pipeline.config import StorageConfig
from pipeline.errors import cut_list
from pipeline.io import storage
from pipeline.io.formats import FORMATS
from pipeline.io.formats.base import IMAGE_EXTENSIONS, INSTANCES_SUFFIXES, MASK_SUFFIX, InputError, Shard, shard_name

__all__ = ["IMAGE_EXTENSIONS", "INSTANCES_SUFFIXES", "MASK_SUFFIX", "InputError", "Shard", "discover_shards",
           "shard_dataset", "shard_name", "single_file_shard"]


def discover_shards(url: str, storage_config: StorageConfig | None = None, folder_shard_size: int = 256,
                    coco_images: str = "") -> list[Shard]:
    """Return the input's shards in a stable order; raise InputError if it is missing or holds no images.

    The formats are tried in :data:`pipeline.io.formats.FORMATS` order; the first that finds
    shards under the input reads them all. An input naming one file is one shard, or a COCO
    annotations file cut into shards of ``folder_shard_size`` images (``coco_images``: where its
    images lie, if not beside it).
    """
    fs, root = storage.filesystem_for(url, storage_config)
    try:
        if fs.isfile(root):
            shards = file_shards(url, storage_config, folder_shard_size, coco_images)
            return [shard if shard.identity else dataclasses.replace(shard, identity=shard_identity(
                shard, {url: fs.info(root)})) for shard in shards]
        listing = fs.find(root, detail=True) if fs.exists(root) else None
    except (PermissionError, OSError) as exc:
        raise InputError(f"input {url} cannot be listed ({type(exc).__name__}: {exc}); check the URL and credentials") from exc
    if listing is None:
        raise InputError(f"input {url} does not exist; check the URL (local path, file:// or s3://)")
    details = {posixpath.relpath(path, root): info for path, info in listing.items()}
    relative = sorted(details)
    for fmt in FORMATS.values():
        shards = fmt.find_shards(url, relative, folder_shard_size)
        if shards:
            check_names(url, shards)
            by_url = {storage.join_url(url, path): info for path, info in details.items()}
            return [dataclasses.replace(shard, identity=shard_identity(shard, by_url)) for shard in shards]
    named = cut_list([repr(path) for path in relative], 3)
    raise InputError(
        f"input {url} holds no images: expected *.tar shards, an images/ folder, or *.parquet files; "
        + (f"found {len(relative)} other file(s), none of them named so: {named}" if relative else "it is empty")
    )


def check_names(url: str, shards: list[Shard]) -> None:
    """Raise InputError if two shards would write under one name (``a/b.tar`` and ``a__b.tar``)."""
    seen: dict[str, str] = {}
    for shard in shards:
        other = seen.setdefault(shard.name, shard.url)
        if other != shard.url:
            raise InputError(f"input {url}: shards {other} and {shard.url} would both write their outputs as "
                             f"{shard.name!r}; rename one of them")


def file_identity(info: Mapping[str, Any]) -> str:
    """Return what a listing says of one file's bytes: its size and ETag (object stores) or modification time."""
    tag = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified") or ""
    return f"{info.get('size')}:{str(tag).strip(chr(34))}"


def shard_identity(shard: Shard, infos: Mapping[str, Mapping[str, Any]]) -> str:
    """Return the shard's identity from the listing of its files (``{URL: info}``): the file's own for a
    shard of one file, a digest of its members' names and identities for a folder slice."""
    files = shard.files()
    if len(files) == 1 and not shard.members:
        return file_identity(infos.get(files[0], {}))
    digest = hashlib.sha256()
    for url in files:
        digest.update(f"{url}\t{file_identity(infos.get(url, {}))}\n".encode())
    return f"{len(files)} files:{digest.hexdigest()[:32]}"


def file_shards(url: str, storage_config: StorageConfig | None, shard_size: int, coco_images: str = "") -> list[Shard]:
    """Return the shards of an input URL that names one file: a shard file, or a COCO annotations file's shards."""
    for fmt in FORMATS.values():
        shards = fmt.file_shards(url, storage_config, shard_size, coco_images)
        if shards is not None:
            if not shards:
                raise InputError(f"input {url} names no images; it needs at least one image entry")
            return shards
    return [single_file_shard(url)]


def single_file_shard(url: str) -> Shard:
    """Return the shard for an input URL that names one shard file (.tar or .parquet)."""
    for fmt in FORMATS.values():
        shard = fmt.single_file_shard(url)
        if shard is not None:
            return shard
    suffixes = " or ".join(suffix for fmt in FORMATS.values() for suffix in fmt.file_suffixes)
    raise InputError(f"input {url} is a single file but not {suffixes}; point --input at a folder, a shard or a COCO "
                     "annotations file")


def shard_dataset(shards: list[Shard]) -> Any:
    """Return a lazy Ray Dataset with one row per shard (``shard``: its JSON), one block each."""
    import ray

    return ray.data.from_items([{"shard": shard.to_json()} for shard in shards], override_num_blocks=max(1, len(shards)))
