"""Turn an input URL into shards, and a shard into rows of encoded ``key, image[, mask]``.

Accepted inputs (see DESIGN.md): WebDataset-style ``*.tar`` shards (members ``<key>.<ext>`` and
optionally ``<key>.mask.png``), image folders (``images/<key>.<ext>`` plus optional
``masks/<key>.png``), and Parquet files with columns ``key``, ``image`` and optional ``mask``.

A shard is the unit of work and of output: one tar file, one Parquet file, or a fixed-size slice
of a sorted image folder. Its name is derived from the input (never random), so a re-run writes
the same output names. Reading a shard never raises for a bad sample: the sample becomes a row
with ``error`` set, and the whole shard becomes one error row if it cannot be read at all.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import posixpath
import tarfile
from collections.abc import Iterator
from typing import Any

import pyarrow.parquet as pq

from pipeline import raypatch, storage
from pipeline.config import StorageConfig

raypatch.install()  # runs wherever a dataset built from this module is unpickled and driven

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
MASK_SUFFIX = ".mask.png"


class InputError(ValueError):
    """The run's input cannot be used at all; the message names the URL and the fix."""


@dataclasses.dataclass(frozen=True)
class Shard:
    """One unit of input. ``members`` lists ``(key, image_url, mask_url|None)`` for folder shards."""

    name: str
    kind: str  # "tar" | "parquet" | "folder"
    url: str
    members: tuple[tuple[str, str, str | None], ...] = ()

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
        masks = {p for p in relative if p.startswith("masks/")}
        return folder_shards(url, images, masks, folder_shard_size)
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


def folder_shards(url: str, images: list[str], masks: set[str], size: int) -> list[Shard]:
    """Return image-folder shards of ``size`` images each, named ``images-00000``, ``images-00001``, ..."""
    members = []
    for relative in images:
        key = relative[len("images/"):].rsplit(".", 1)[0]
        mask = f"masks/{key}.png"
        members.append((key, storage.join_url(url, relative), storage.join_url(url, mask) if mask in masks else None))
    return [
        Shard(f"images-{index:05d}", "folder", url, tuple(members[start:start + size]))
        for index, start in enumerate(range(0, len(members), size))
    ]


def sample_row(shard: Shard, key: str, image: bytes = b"", mask: bytes | None = None, error: str = "") -> dict[str, Any]:
    """Return one input row. Empty ``mask`` means no ground truth; a non-empty ``error`` means the
    sample is unusable and says why. (Empty values, not None, keep the columns' types stable.)"""
    return {"key": key, "source": shard.url, "shard": shard.name, "image": image, "mask": mask or b"", "error": error}


def read_shard(shard: Shard, storage_config: StorageConfig | None = None) -> list[dict[str, Any]]:
    """Return the shard's rows (one per sample), each tagged with ``shard_rows`` = the shard's row count."""
    readers = {"tar": tar_rows, "parquet": parquet_rows, "folder": folder_rows}
    try:
        rows = list(readers[shard.kind](shard, storage_config))
    except Exception as exc:  # the whole shard is unreadable: keep a trace of it as one error row
        log.warning("shard %s cannot be read: %s", shard.url, exc)
        rows = [sample_row(shard, shard.name, error=f"shard {shard.url} cannot be read ({type(exc).__name__}: {exc})")]
    for row in rows:
        row["shard_rows"] = len(rows)
    if not rows:
        log.warning("shard %s holds no images", shard.url)
    return rows


def split_member_name(name: str) -> tuple[str, str]:
    """Return ``(key, extension)`` for a WebDataset member: the key ends at the first dot of the basename."""
    folder, slash, base = name.rpartition("/")
    stem, _, extension = base.partition(".")
    return f"{folder}{slash}{stem}", extension.lower()


def tar_rows(shard: Shard, storage_config: StorageConfig | None) -> Iterator[dict[str, Any]]:
    """Yield the rows of a tar shard: images paired with their ``.mask.png`` members by key."""
    data = storage.read_bytes(shard.url, storage_config)
    images: dict[str, list[bytes]] = {}
    masks: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
        for member in archive:
            if not member.isfile():
                continue
            key, extension = split_member_name(member.name)
            if extension == "mask.png" or ("." + extension) in IMAGE_EXTENSIONS:
                try:
                    content = archive.extractfile(member).read()  # type: ignore[union-attr]
                except (tarfile.TarError, OSError) as exc:
                    content = b""
                    log.warning("member %s of %s cannot be read: %s", member.name, shard.url, exc)
                if extension == "mask.png":
                    masks[key] = content
                else:
                    images.setdefault(key, []).append(content)
    yield from paired_rows(shard, images, masks)


def paired_rows(shard: Shard, images: dict[str, list[bytes]], masks: dict[str, bytes]) -> Iterator[dict[str, Any]]:
    """Yield one row per key, with an error for unsafe keys, duplicate images and masks without image."""
    for key in sorted(set(images) | set(masks)):
        found = images.get(key, [])
        if not storage.is_safe_key(key):
            yield sample_row(shard, key, error=f"key {key!r} in {shard.url} is not a safe relative name "
                             "(absolute, '..' or empty parts); rename the member")
        elif not found:
            yield sample_row(shard, key, error=f"key {key!r} in {shard.url} has a mask but no image")
        elif len(found) > 1:
            yield sample_row(shard, key, error=f"key {key!r} in {shard.url} has {len(found)} images; keep one per key")
        else:
            yield sample_row(shard, key, image=found[0], mask=masks.get(key))


def parquet_rows(shard: Shard, storage_config: StorageConfig | None) -> Iterator[dict[str, Any]]:
    """Yield the rows of a Parquet shard with columns ``key``, ``image`` and optional ``mask``."""
    fs, path = storage.filesystem_for(shard.url, storage_config)
    with fs.open(path, "rb") as handle:
        table = pq.read_table(handle)
    missing = {"key", "image"} - set(table.column_names)
    if missing:
        raise InputError(f"Parquet shard {shard.url} lacks column(s) {sorted(missing)}; it needs key, image[, mask]")
    keys = table.column("key").to_pylist()
    images = table.column("image").to_pylist()
    masks = table.column("mask").to_pylist() if "mask" in table.column_names else [None] * len(keys)
    grouped: dict[str, list[bytes]] = {}
    grouped_masks: dict[str, bytes] = {}
    for index, (key, image, mask) in enumerate(zip(keys, images, masks)):
        if key is None:
            yield sample_row(shard, f"{shard.name}#row{index}", error=f"row {index} of {shard.url} has no key")
            continue
        grouped.setdefault(str(key), []).append(image or b"")
        if mask is not None:
            grouped_masks[str(key)] = mask
    yield from paired_rows(shard, grouped, grouped_masks)


def folder_rows(shard: Shard, storage_config: StorageConfig | None) -> Iterator[dict[str, Any]]:
    """Yield the rows of an image-folder shard, reading each image and its mask if present."""
    for key, image_url, mask_url in shard.members:
        try:
            image = storage.read_bytes(image_url, storage_config)
            mask = storage.read_bytes(mask_url, storage_config) if mask_url else None
        except OSError as exc:
            yield sample_row(shard, key, error=f"cannot read {image_url} ({type(exc).__name__}: {exc})")
            continue
        yield sample_row(shard, key, image=image, mask=mask)


def read_samples(source: str, keys: set[str], storage_config: StorageConfig | None = None) -> dict[str, tuple[bytes, bytes | None]]:
    """Return ``{key: (image, mask or None)}`` for the ``keys`` found in one input shard.

    ``source`` is a metrics row's ``source``: a tar shard (streamed until every key is found),
    a Parquet shard (only the matching rows are read) or an image folder. Only the asked-for
    samples are read into memory; keys not found are absent from the result.
    """
    fs, path = storage.filesystem_for(source, storage_config)
    found: dict[str, tuple[bytes, bytes | None]] = {}
    if source.lower().endswith(".tar"):
        images: dict[str, bytes] = {}
        masks: dict[str, bytes] = {}
        with fs.open(path, "rb") as handle, tarfile.open(fileobj=handle, mode="r|") as archive:
            for member in archive:
                key, extension = split_member_name(member.name)
                if key not in keys or not member.isfile():
                    continue
                content = archive.extractfile(member).read()  # type: ignore[union-attr]
                if extension == "mask.png":
                    masks[key] = content
                elif ("." + extension) in IMAGE_EXTENSIONS:
                    images[key] = content
                if len(images) == len(keys) and len(masks) == len(keys):
                    break
        return {key: (image, masks.get(key)) for key, image in images.items()}
    if source.lower().endswith(".parquet"):
        with fs.open(path, "rb") as handle:
            table = pq.read_table(handle, filters=[("key", "in", sorted(keys))])
        has_mask = "mask" in table.column_names
        for row in table.to_pylist():
            found[str(row["key"])] = (row["image"] or b"", row.get("mask") if has_mask else None)
        return found
    for key in keys:
        candidates = fs.glob(posixpath.join(path, "images", glob_escape(key)) + ".*")
        candidates = [c for c in candidates if c.lower().endswith(IMAGE_EXTENSIONS)]
        if not candidates:
            continue
        mask_path = posixpath.join(path, "masks", f"{key}.png")
        found[key] = (fs.cat_file(candidates[0]), fs.cat_file(mask_path) if fs.exists(mask_path) else None)
    return found


def glob_escape(text: str) -> str:
    """Return ``text`` with glob wildcards escaped (``[*]``, ``[?]``, ``[[]``)."""
    return "".join(f"[{ch}]" if ch in "*?[" else ch for ch in text)


def shard_dataset(shards: list[Shard]) -> Any:
    """Return a lazy Ray Dataset with one row per shard (``shard``: its JSON), one block each."""
    import ray

    return ray.data.from_items([{"shard": shard.to_json()} for shard in shards], override_num_blocks=max(1, len(shards)))


def read_dataset(shards: list[Shard], storage_config: StorageConfig | None, stage_cpus: float) -> Any:
    """Return a lazy Ray Dataset of the shards' input rows (see :func:`read_shard`), one read task per shard."""
    return shard_dataset(shards).flat_map(lambda row: read_shard(Shard.from_json(row["shard"]), storage_config),
                                          num_cpus=stage_cpus)
