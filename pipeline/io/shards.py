"""Turn an input URL into its shards: the unit of work and of output.

Accepted inputs (see DESIGN.md): WebDataset-style ``*.tar`` shards (members ``<key>.<ext>`` and
optionally ``<key>.mask.png`` and ``<key>.instances.png``), image folders (``images/<key>.<ext>`` plus
optional ``masks/<key>.png`` and ``instances/<key>.png``), and Parquet files with columns ``key``,
``image`` and optional ``mask`` and ``instances``. (Instance label images may also be 32-bit TIFFs,
``.instances.tif`` / ``instances/<key>.tif``.)

A shard is one tar file, one Parquet file, or a fixed-size slice of a sorted image folder. Its
name is derived from the input (never random), so a re-run writes the same output names.
:mod:`pipeline.io.readers` turns a shard into rows.
"""

from __future__ import annotations

import dataclasses
import json
import posixpath
from typing import Any

from pipeline.config import StorageConfig
from pipeline.io import storage

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
MASK_SUFFIX = ".mask.png"
INSTANCES_SUFFIXES = (".instances.png", ".instances.tif", ".instances.tiff")


class InputError(ValueError):
    """The run's input cannot be used at all; the message names the URL and the fix."""


@dataclasses.dataclass(frozen=True)
class Shard:
    """One unit of input. ``members`` lists ``(key, image_url, mask_url|None, instances_url|None)`` for folder shards."""

    name: str
    kind: str  # "tar" | "parquet" | "folder"
    url: str
    members: tuple[tuple[str, str | None, str | None, str | None], ...] = ()

    def to_json(self) -> str:
        """Return the shard as a JSON string (a plain column value for Ray Data)."""
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Shard:
        """Return the shard encoded by :meth:`to_json`."""
        data = json.loads(text)
        return cls(data["name"], data["kind"], data["url"], tuple(tuple(m) for m in data["members"]))


def discover_shards(url: str, storage_config: StorageConfig | None = None, folder_shard_size: int = 256) -> list[Shard]:
    """Return the input's shards in a stable order; raise InputError if it is missing or holds no images."""
    fs, root = storage.filesystem_for(url, storage_config)
    try:
        if fs.isfile(root):
            return [single_file_shard(url)]
        paths = fs.find(root) if fs.exists(root) else None
    except (PermissionError, OSError) as exc:
        raise InputError(f"input {url} cannot be listed ({type(exc).__name__}: {exc}); check the URL and credentials") from exc
    if paths is None:
        raise InputError(f"input {url} does not exist; check the URL (local path, file:// or s3://)")
    relative = sorted(posixpath.relpath(p, root) for p in paths)
    tars = [p for p in relative if p.lower().endswith(".tar")]
    images = [p for p in relative if p.startswith("images/") and p.lower().endswith(IMAGE_EXTENSIONS)]
    parquets = [p for p in relative if p.lower().endswith(".parquet")]
    if tars:
        return [Shard(shard_name(p), "tar", storage.join_url(url, p)) for p in tars]
    if images:
        masks = [p for p in relative if p.startswith("masks/") and p.lower().endswith(".png")]
        instances = [p for p in relative if p.startswith("instances/") and p.lower().endswith((".png", ".tif", ".tiff"))]
        return folder_shards(url, images, masks, folder_shard_size, instances)
    if parquets:
        return [Shard(shard_name(p), "parquet", storage.join_url(url, p)) for p in parquets]
    raise InputError(
        f"input {url} holds no images: expected *.tar shards, an images/ folder, or *.parquet files "
        f"(found {len(relative)} other files)"
    )


def single_file_shard(url: str) -> Shard:
    """Return the shard for an input URL that names one .tar or .parquet file."""
    name = shard_name(posixpath.basename(url.rstrip("/")))
    if url.lower().endswith(".tar"):
        return Shard(name, "tar", url)
    if url.lower().endswith(".parquet"):
        return Shard(name, "parquet", url)
    raise InputError(f"input {url} is a single file but not .tar or .parquet; point --input at a folder or shard")


def shard_name(relative_path: str) -> str:
    """Return a flat, file-name-safe shard name for a path relative to the input (``a/b.tar`` → ``a__b``)."""
    stem = relative_path.rsplit(".", 1)[0]
    return stem.replace("/", "__")


def folder_shards(url: str, images: list[str], masks: list[str], size: int,
                  instances: list[str] | None = None) -> list[Shard]:
    """Return image-folder shards of ``size`` members each, named ``images-00000``, ``images-00001``, ...

    Members are ``(key, image URL, mask URL, instances URL)`` in key order (images of one key in
    file-name order); ground truth with no image of its key is a member with no image URL, so it
    gets its row.
    """
    by_key: dict[str, list[str]] = {}
    for relative in images:  # sorted, so images of one key keep their file-name order
        by_key.setdefault(relative[len("images/"):].rsplit(".", 1)[0], []).append(relative)
    mask_of = {relative[len("masks/"):-len(".png")]: storage.join_url(url, relative) for relative in masks}
    instances_of: dict[str, str] = {}
    for relative in instances or []:  # sorted: a key's PNG before its TIFF
        instances_of.setdefault(relative[len("instances/"):].rsplit(".", 1)[0], storage.join_url(url, relative))
    members: list[tuple[str, str | None, str | None, str | None]] = []
    for key in sorted(set(by_key) | set(mask_of) | set(instances_of)):
        images_of_key = [storage.join_url(url, relative) for relative in by_key.get(key, [])]
        members.extend((key, image, mask_of.get(key), instances_of.get(key)) for image in images_of_key or [None])
    return [
        Shard(f"images-{index:05d}", "folder", url, tuple(members[start:start + size]))
        for index, start in enumerate(range(0, len(members), size))
    ]


def shard_dataset(shards: list[Shard]) -> Any:
    """Return a lazy Ray Dataset with one row per shard (``shard``: its JSON), one block each."""
    import ray

    return ray.data.from_items([{"shard": shard.to_json()} for shard in shards], override_num_blocks=max(1, len(shards)))
