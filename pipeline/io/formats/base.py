"""What every input format shares: the shard, an image's occurrence in it, and the format interface.

A format (one module of :mod:`pipeline.io.formats` each) finds its shards under an input URL,
reads a shard's image and ground-truth occurrences (all of them, only their keys, or only some
keys' bytes), and writes samples for ``segpipe sample-data``. :mod:`pipeline.io.readers` turns
occurrences into rows the same way for every format.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Collection, Iterable
from typing import ClassVar

from pipeline.config import StorageConfig
from pipeline.io import storage

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".gif")
MASK_SUFFIX = ".mask.png"  # what segpipe writes; a mask is read in any of IMAGE_EXTENSIONS
INSTANCES_SUFFIXES = (".instances.png", ".instances.tif", ".instances.tiff")


class InputError(ValueError):
    """The run's input cannot be used at all; the message names the URL and the fix."""


@dataclasses.dataclass(frozen=True)
class Shard:
    """One unit of input. ``members`` lists ``(key, image_url, mask_url|None, instances_url|None)`` for folder shards.

    ``identity`` says which bytes the shard held when it was listed (size and ETag or modification
    time of its files, :func:`pipeline.io.shards.discover_shards`): a commit marker records it, so
    a re-run notices a shard replaced under the same name.
    """

    name: str
    kind: str  # the format's kind: "tar" | "parquet" | "folder"
    url: str
    members: tuple[tuple[str, str | None, str | None, str | None], ...] = ()
    identity: str = ""
    payload: str = ""  # what the format's reader needs beyond the URL (COCO: the shard's images and annotations)

    def files(self) -> list[str]:
        """Return the URLs of the files the shard reads: its own file, or its members' files."""
        if not self.members:
            return [self.url]
        return [url for member in self.members for url in member[1:] if url]

    def to_json(self) -> str:
        """Return the shard as a JSON string (a plain column value for Ray Data)."""
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Shard:
        """Return the shard encoded by :meth:`to_json`."""
        data = json.loads(text)
        return cls(data["name"], data["kind"], data["url"], tuple(tuple(m) for m in data["members"]),
                   data.get("identity", ""), data.get("payload", ""))


def shard_name(relative_path: str) -> str:
    """Return a flat, file-name-safe shard name for a path relative to the input (``a/b.tar`` → ``a__b``)."""
    stem = relative_path.rsplit(".", 1)[0]
    return stem.replace("/", "__")


@dataclasses.dataclass(frozen=True)
class Occurrence:
    """One image (or mask, or instance label image) of a key in a shard, in the shard's order.

    ``member`` names it (tar member, file URL or Parquet row); ``error``/``kind`` say why it cannot
    be read. ``claims``: whether it takes its key, so that a later image of the same key in the
    shard is a duplicate; every occurrence does except those refused before reading (an unsafe
    key, a link or special file, a row without a key).
    """

    key: str
    member: str
    content: bytes = b""
    error: str = ""
    kind: str = ""
    claims: bool = True


Truth = dict[str, dict[str, Occurrence]]  # key -> "mask" / "instances" -> its occurrence (the first of its key)
Contents = tuple[list[Occurrence], Truth, str]  # images, ground truth by key, cut-off message
Sample = tuple[str, dict[str, bytes]]  # a key and its encoded files by role: "image", "mask", "instances" (PNG)


class InputFormat:
    """One input format. Subclasses set ``kind`` and ``file_suffixes`` and implement the four methods."""

    kind: ClassVar[str]
    file_suffixes: ClassVar[tuple[str, ...]] = ()  # a shard is one file of these suffixes (none: a folder layout)

    def find_shards(self, url: str, relative: list[str], folder_shard_size: int) -> list[Shard]:
        """Return the input's shards of this format from the input's sorted file paths (relative to
        ``url``), in a stable order; ``[]`` when it holds none."""
        raise NotImplementedError

    def contents(self, shard: Shard, storage_config: StorageConfig | None,
                 wanted: Collection[str] | None = None) -> Contents:
        """Return the shard's image occurrences (its order), ground truth and cut-off message (empty if whole);
        with ``wanted`` only those keys' bytes."""
        raise NotImplementedError

    def source_shard(self, source: str, keys: Collection[str], storage_config: StorageConfig | None) -> Shard:
        """Return the shard a metrics row's ``source`` names, to read ``keys`` from it."""
        return Shard(shard_name(source.rstrip("/").rsplit("/", 1)[-1]), self.kind, source)

    def write(self, output: str, shards: Iterable[list[Sample]], storage_config: StorageConfig | None) -> list[str]:
        """Write the samples, one shard per list, under ``output`` in this format; return the URLs written."""
        raise NotImplementedError

    @staticmethod
    def write_files(output: str, shards: Iterable[list[Sample]], storage_config: StorageConfig | None, name: str,
                    shard_bytes: Callable[[list[Sample]], bytes]) -> list[str]:
        """Write one file per shard, named ``name.format(index)`` under ``output``, holding ``shard_bytes``
        of its samples; return their URLs (for formats of one file per shard)."""
        urls = []
        for index, samples in enumerate(shards):
            url = storage.join_url(output, name.format(index))
            storage.write_bytes(url, shard_bytes(samples), storage_config)
            urls.append(url)
        return urls

    def file_shards(self, url: str, storage_config: StorageConfig | None, shard_size: int,
                    images: str = "") -> list[Shard] | None:
        """Return the shards of an input URL that names one file of this format (one shard, unless the format
        cuts its file into several), else None. ``images``: where the file's images lie, for formats
        whose file names them (COCO)."""
        shard = self.single_file_shard(url)
        return None if shard is None else [shard]

    def single_file_shard(self, url: str) -> Shard | None:
        """Return the shard of an input URL that names one file of this format, else None."""
        if not self.file_suffixes or not url.lower().endswith(self.file_suffixes):
            return None
        return self.find_shards(url.rstrip("/").rsplit("/", 1)[0], [url.rstrip("/").rsplit("/", 1)[-1]], 0)[0]
