"""Image folders: ``<url>/images/<key>.<ext>`` with optional ``masks/<key>.<ext>`` and
``instances/<key>.png|tif``. A shard is a fixed-size slice of the keys in sorted order
(``images-00000``, ``images-00001``, ...)."""

from __future__ import annotations

import posixpath
from collections.abc import Collection, Iterable

from pipeline.config import StorageConfig
from pipeline.errors import ErrorKind
from pipeline.io import storage
from pipeline.io.formats.base import IMAGE_EXTENSIONS, Contents, InputFormat, Occurrence, Sample, Shard, Truth

FOLDERS = {"image": "images", "mask": "masks", "instances": "instances"}  # role -> its folder under the input
TRUTH_EXTENSIONS = {"mask": IMAGE_EXTENSIONS, "instances": (".png", ".tif", ".tiff")}


class FolderFormat(InputFormat):
    """Image folders with their ground truth in sibling folders."""

    kind = "folder"

    def find_shards(self, url: str, relative: list[str], folder_shard_size: int) -> list[Shard]:
        images = in_folder(relative, "image", IMAGE_EXTENSIONS)
        if not images:
            return []
        return folder_shards(url, images, in_folder(relative, "mask", TRUTH_EXTENSIONS["mask"]), folder_shard_size,
                             in_folder(relative, "instances", TRUTH_EXTENSIONS["instances"]))

    def contents(self, shard: Shard, storage_config: StorageConfig | None,
                 wanted: Collection[str] | None = None) -> Contents:
        return folder_contents(shard, storage_config)

    def source_shard(self, source: str, keys: Collection[str], storage_config: StorageConfig | None) -> Shard:
        return folder_shard_of(source, set(keys), storage_config)

    def write(self, output: str, shards: Iterable[list[Sample]], storage_config: StorageConfig | None) -> list[str]:
        urls = []
        for samples in shards:
            for key, files in samples:
                for role, data in files.items():
                    storage.write_bytes(storage.join_url(output, FOLDERS[role], f"{key}.png"), data, storage_config)
                urls.append(storage.join_url(output, FOLDERS["image"], f"{key}.png"))
        return urls


def in_folder(relative: list[str], role: str, extensions: tuple[str, ...]) -> list[str]:
    """Return the paths of ``role``'s folder with one of ``extensions``, sorted as given."""
    prefix = FOLDERS[role] + "/"
    return [p for p in relative if p.startswith(prefix) and p.lower().endswith(extensions)]


def folder_shards(url: str, images: list[str], masks: list[str], size: int,
                  instances: list[str] | None = None) -> list[Shard]:
    """Return image-folder shards of about ``size`` members each, named ``images-00000``, ``images-00001``, ...

    Members are ``(key, image URL, mask URL, instances URL)`` in key order (images of one key in
    file-name order); ground truth with no image of its key is a member with no image URL, so it
    gets its row. A key's images never straddle two shards (a slice ends after its last), so a
    repeated key is found within its shard.
    """
    by_key: dict[str, list[str]] = {}
    for relative in images:  # sorted, so images of one key keep their file-name order
        by_key.setdefault(relative[len("images/"):].rsplit(".", 1)[0], []).append(relative)
    mask_of: dict[str, str] = {}
    for relative in masks:  # a key's PNG mask is taken before one of another format (JPEG masks are lossy)
        key = relative[len("masks/"):].rsplit(".", 1)[0]
        if key not in mask_of or relative.lower().endswith(".png"):
            mask_of[key] = storage.join_url(url, relative)
    instances_of: dict[str, str] = {}
    for relative in instances or []:  # sorted: a key's PNG before its TIFF
        instances_of.setdefault(relative[len("instances/"):].rsplit(".", 1)[0], storage.join_url(url, relative))
    slices: list[list[tuple[str, str | None, str | None, str | None]]] = [[]]
    for key in sorted(set(by_key) | set(mask_of) | set(instances_of)):
        if len(slices[-1]) >= size:
            slices.append([])
        images_of_key = [storage.join_url(url, relative) for relative in by_key.get(key, [])]
        slices[-1].extend((key, image, mask_of.get(key), instances_of.get(key)) for image in images_of_key or [None])
    return [Shard(f"images-{index:05d}", "folder", url, tuple(members)) for index, members in enumerate(slices) if members]


def folder_contents(shard: Shard, storage_config: StorageConfig | None) -> Contents:
    """Return an image-folder shard's image occurrences and ground truth, reading each file."""
    occurrences: list[Occurrence] = []
    truth: Truth = {}
    for key, image_url, mask_url, *rest in shard.members:
        if image_url is not None:
            occurrences.append(file_occurrence(key, image_url, storage_config, ErrorKind.CORRUPT_IMAGE))
        for role, url, kind in (("mask", mask_url, ErrorKind.BAD_MASK), ("instances", rest[0] if rest else None, ErrorKind.BAD_INSTANCES)):
            if url is not None and role not in truth.get(key, {}):
                truth.setdefault(key, {})[role] = file_occurrence(key, url, storage_config, kind)
    return occurrences, truth, ""


def file_occurrence(key: str, url: str, storage_config: StorageConfig | None, kind: str) -> Occurrence:
    """Return the occurrence of one input file, read; a read failure is an error of ``kind``."""
    try:
        return Occurrence(key, url, storage.read_bytes(url, storage_config))
    except OSError as exc:
        return Occurrence(key, url, error=f"cannot read {url} ({type(exc).__name__}: {exc})", kind=kind)


def folder_shard_of(url: str, keys: set[str], storage_config: StorageConfig | None) -> Shard:
    """Return a folder shard holding just ``keys`` of the image folder at ``url`` (found by globbing)."""
    fs, path = storage.filesystem_for(url, storage_config)
    members = []
    for key in sorted(keys):
        candidates = sorted(c for c in fs.glob(posixpath.join(path, "images", glob_escape(key)) + ".*")
                            if c.lower().endswith(IMAGE_EXTENSIONS))
        masks = sorted((not c.lower().endswith(".png"), c) for c in fs.glob(posixpath.join(path, "masks", glob_escape(key)) + ".*")
                       if c.lower().endswith(IMAGE_EXTENSIONS))  # a PNG first, as a run takes it
        mask = masks[0][1] if masks else posixpath.join(path, "masks", f"{key}.png")
        instances = [posixpath.join(path, "instances", f"{key}.{extension}") for extension in ("png", "tif", "tiff")]
        instances = [candidate for candidate in instances if fs.exists(candidate)][:1]
        if candidates:
            members.append((key, storage.url_with_protocol(fs, candidates[0]),
                            storage.url_with_protocol(fs, mask) if fs.exists(mask) else None,
                            storage.url_with_protocol(fs, instances[0]) if instances else None))
    return Shard("samples", "folder", url, tuple(members))


def glob_escape(text: str) -> str:
    """Return ``text`` with glob wildcards escaped (``[*]``, ``[?]``, ``[[]``)."""
    return "".join(f"[{ch}]" if ch in "*?[" else ch for ch in text)
