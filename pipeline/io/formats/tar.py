"""WebDataset tar shards: ``<url>/*.tar``, members ``<key>.<png|jpg|tif|bmp|webp>`` with optional
``<key>.mask.png`` and ``<key>.instances.png|tif``. A key ends at the first dot of the member's base name."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Collection, Iterable, Mapping

from pipeline.config import StorageConfig
from pipeline.errors import ErrorKind, unreadable_kind
from pipeline.io import storage
from pipeline.io.formats.base import (
    IMAGE_EXTENSIONS,
    INSTANCES_SUFFIXES,
    MASK_SUFFIX,
    Contents,
    InputFormat,
    Occurrence,
    Sample,
    Shard,
    Truth,
    shard_name,
)


class TarFormat(InputFormat):
    """WebDataset-style tar shards, one shard per ``.tar`` file."""

    kind = "tar"
    file_suffix = ".tar"

    def find_shards(self, url: str, relative: list[str], folder_shard_size: int) -> list[Shard]:
        return [Shard(shard_name(p), self.kind, storage.join_url(url, p)) for p in relative if p.lower().endswith(".tar")]

    def contents(self, shard: Shard, storage_config: StorageConfig | None, with_content: bool = True,
                 wanted: Collection[str] | None = None) -> Contents:
        return tar_contents(shard, storage_config, with_content, wanted)

    def write(self, output: str, shards: Iterable[list[Sample]], storage_config: StorageConfig | None) -> list[str]:
        return self.write_files(output, shards, storage_config, "shard-{:05d}.tar", tar_bytes)


def split_member_name(name: str) -> tuple[str, str]:
    """Return ``(key, extension)`` for a WebDataset member: the key ends at the first dot of the basename.

    A leading ``./`` (``tar -cf x.tar .``) is not part of the key.
    """
    while name.startswith("./"):
        name = name[2:]
    folder, slash, base = name.rpartition("/")
    stem, _, extension = base.partition(".")
    return f"{folder}{slash}{stem}", extension.lower()


def member_role(name: str) -> str | None:
    """Return what a tar member named like an image is: ``"image"``, ``"mask"``, ``"instances"``,
    ``"misnamed"`` (an image extension after another component, e.g. ``a.b.png`` or ``a.mask.jpg``),
    else None (ignored)."""
    _, extension = split_member_name(name)
    if extension == MASK_SUFFIX[1:]:
        return "mask"
    if "." + extension in INSTANCES_SUFFIXES:
        return "instances"
    if "." + extension in IMAGE_EXTENSIONS:
        return "image"
    return "misnamed" if extension.endswith(IMAGE_EXTENSIONS) else None


def member_problem(member: tarfile.TarInfo, regular: Mapping[str, tarfile.TarInfo]) -> str | None:
    """Return why a tar member named like an image cannot be read as one, else None.

    Regular files are read; a hard link to a regular member earlier in the same tar (how GNU tar
    stores a second copy) is read as that member. Symbolic links are never followed; devices,
    FIFOs and directories hold no image.
    """
    if member.isreg():
        return None
    if member.islnk():
        if member.linkname in regular:
            return None
        return f"is a hard link to {member.linkname!r}, which is not a regular file earlier in this tar"
    if member.issym():
        return f"is a symbolic link to {member.linkname!r}; links are never followed: store the file itself"
    kind = ("a directory" if member.isdir() else "a FIFO" if member.isfifo() else
            "a device" if member.ischr() or member.isblk() else f"of tar type {member.type!r}")
    return f"is {kind}, not a file"


def tar_contents(shard: Shard, storage_config: StorageConfig | None, with_content: bool = True,
                 wanted: Collection[str] | None = None) -> Contents:
    """Return a tar shard's image occurrences (member order), ground truth and cut-off message (empty if whole).

    Without ``with_content`` only the headers are read (for :func:`pipeline.io.keys.shard_keys`): occurrences carry
    no bytes but the same keys and ``claims``. With ``wanted`` only those keys' bytes are read,
    seeking past the rest; otherwise the shard is fetched in one read.
    """
    if with_content and wanted is None:
        whole = io.BytesIO(storage.read_bytes(shard.url, storage_config))  # one request for the whole shard
        with tarfile.open(fileobj=whole, mode="r:") as archive:
            occurrences, truth, cut = tar_members(shard, archive, with_content, wanted)
            if not cut and whole.getbuffer().nbytes - archive.offset < tarfile.BLOCKSIZE:
                cut = (f"shard {shard.url} ends without tar's end-of-archive blocks after member "
                       f"{archive.members[-1].name if archive.members else '(none)'}, so it was probably cut off; "
                       "the members read are kept: copy the shard again to read the rest")
        return occurrences, truth, cut
    fs, path = storage.filesystem_for(shard.url, storage_config)
    with fs.open(path, "rb") as handle, tarfile.open(fileobj=handle, mode="r:") as archive:
        return tar_members(shard, archive, with_content, wanted)


def tar_members(shard: Shard, archive: tarfile.TarFile, with_content: bool,
                wanted: Collection[str] | None = None) -> Contents:
    """Return :func:`tar_contents` for an open archive."""
    occurrences: list[Occurrence] = []
    truth: Truth = {}
    regular: dict[str, tarfile.TarInfo] = {}
    last, cut = "", ""
    while True:
        try:
            member = archive.next()
        except (tarfile.TarError, EOFError, UnicodeDecodeError) as exc:  # a storage failure is not a cut: it raises
            cut = (f"shard {shard.url} is cut off or damaged after member {last or '(none)'} "
                   f"({type(exc).__name__}: {exc}); the members after it cannot be read: copy the shard again")
            break
        if member is None:
            break
        last = member.name
        if member.isreg():
            regular[member.name] = member
        role = member_role(member.name)
        if role is not None:
            item = tar_occurrence(shard, archive, member, role, regular,
                                  with_content and (wanted is None or split_member_name(member.name)[0] in wanted))
            if role in ("mask", "instances"):
                truth.setdefault(item.key, {}).setdefault(role, item)
            else:
                occurrences.append(item)
    return occurrences, truth, cut


def tar_occurrence(shard: Shard, archive: tarfile.TarFile, member: tarfile.TarInfo, role: str,
                   regular: Mapping[str, tarfile.TarInfo], with_content: bool) -> Occurrence:
    """Return the occurrence of one image-named tar member, its bytes read if ``with_content``."""
    key, extension = split_member_name(member.name)
    name = f"member {member.name!r} of {shard.url}"
    if role == "misnamed":
        return Occurrence(key, member.name, error=f"{name} is named like an image, but a key ends at the first dot "
                          f"of the name, leaving the component {extension!r}, which segpipe does not read; name images "
                          "<key>.<png|jpg|tif|bmp|webp>, masks <key>.mask.png and instance labels <key>.instances.png", kind=ErrorKind.UNSUPPORTED_MEMBER,
                          claims=False)
    problem = member_problem(member, regular)
    if problem:
        return Occurrence(key, member.name, error=f"{name} {problem}", kind=ErrorKind.UNSUPPORTED_MEMBER, claims=False)
    if not with_content:
        return Occurrence(key, member.name)
    content, error = read_member(archive, regular[member.linkname] if member.islnk() else member)
    bad = unreadable_kind("image" if role == "image" else "instance label image" if role == "instances" else role)
    return Occurrence(key, member.name, content, f"{name} {error}" if error else "", bad if error else "")


def read_member(archive: tarfile.TarFile, member: tarfile.TarInfo) -> tuple[bytes, str]:
    """Return ``(content, "")`` of a regular tar member, or ``(b"", why)`` if its data cannot be read."""
    try:
        handle = archive.extractfile(member)
        content = handle.read() if handle else b""
    except (tarfile.TarError, OSError, EOFError) as exc:
        return b"", f"cannot be read ({type(exc).__name__}: {exc}); the shard is cut off or damaged: copy it again"
    if len(content) != member.size:
        return b"", f"is cut off ({len(content)} of {member.size} bytes); the shard is truncated"
    return content, ""


def tar_bytes(samples: list[Sample]) -> bytes:
    """Return a tar archive holding ``<key>.png`` and ``<key>.<role>.png`` for each sample."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for key, files in samples:
            for role, data in files.items():
                add_member(archive, f"{key}.png" if role == "image" else f"{key}.{role}.png", data)
    return buffer.getvalue()


def add_member(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    """Add a regular file ``name`` with ``data`` and fixed metadata (mtime 0, owner 0) for reproducibility."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    archive.addfile(info, io.BytesIO(data))
