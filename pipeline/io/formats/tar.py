"""WebDataset tar shards: ``<url>/*.tar`` (or gzip-compressed ``.tar.gz``/``.tgz``), members
``<key>.<png|jpg|tif|bmp|webp|gif>`` with optional ``<key>.mask.<image extension>`` and
``<key>.instances.png|tif``. A key ends at the first dot of the member's base name."""

from __future__ import annotations

import io
import tarfile
import zlib
from collections.abc import Collection, Iterable, Mapping

from pipeline.config import StorageConfig
from pipeline.errors import ErrorKind, unreadable_kind
from pipeline.io import storage
from pipeline.io.formats.base import (
    IMAGE_EXTENSIONS,
    INSTANCES_SUFFIXES,
    Contents,
    InputFormat,
    Occurrence,
    Sample,
    Shard,
    Truth,
    shard_name,
)

GZIP_MAGIC = b"\x1f\x8b"


class TarFormat(InputFormat):
    """WebDataset-style tar shards, one shard per ``.tar`` file."""

    kind = "tar"
    file_suffixes = (".tar", ".tar.gz", ".tgz")

    def find_shards(self, url: str, relative: list[str], folder_shard_size: int) -> list[Shard]:
        return [Shard(tar_shard_name(p), self.kind, storage.join_url(url, p)) for p in relative
                if p.lower().endswith(self.file_suffixes)]

    def contents(self, shard: Shard, storage_config: StorageConfig | None,
                 wanted: Collection[str] | None = None) -> Contents:
        return tar_contents(shard, storage_config, wanted)

    def write(self, output: str, shards: Iterable[list[Sample]], storage_config: StorageConfig | None) -> list[str]:
        return self.write_files(output, shards, storage_config, "shard-{:05d}.tar", tar_bytes)


def tar_shard_name(relative_path: str) -> str:
    """Return a tar shard's name: ``a/b.tar`` → ``a__b``; a compressed shard keeps its suffix
    (``b.tar.gz`` → ``b.tar.gz``), so that it never takes the name of a ``b.tar`` beside it."""
    if relative_path.lower().endswith(".tar"):
        return shard_name(relative_path)
    return relative_path.replace("/", "__")


def gunzip(data: bytes) -> tuple[bytes, str]:
    """Return gzip ``data`` decompressed, and why it stops early ("" when whole): a cut-off or damaged
    stream keeps what decompressed before the damage."""
    inflater = zlib.decompressobj(wbits=31)
    try:
        out = inflater.decompress(data)
    except zlib.error as exc:
        return b"", f"is not readable gzip ({exc})"
    if not inflater.eof:
        return out, "is a gzip stream cut off before its end"
    return out, ""


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
    if extension.startswith("mask.") and "." + extension[len("mask."):] in IMAGE_EXTENSIONS:
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


def tar_contents(shard: Shard, storage_config: StorageConfig | None,
                 wanted: Collection[str] | None = None) -> Contents:
    """Return a tar shard's image occurrences (member order), ground truth and cut-off message (empty if whole).

    The shard is fetched in one read; with ``wanted`` only those keys' bytes are read, seeking past
    the rest.
    """
    if wanted is None:
        data = storage.read_bytes(shard.url, storage_config)  # one request for the whole shard
        damaged = ""
        if data[:2] == GZIP_MAGIC:
            data, damaged = gunzip(data)
        whole = io.BytesIO(data)
        with tarfile.open(fileobj=whole, mode="r:") as archive:
            occurrences, truth, cut = tar_members(shard, archive, wanted)
            if damaged:  # the tar's own complaint follows from the compression's
                cut = (f"shard {shard.url} {damaged} after member "
                       f"{archive.members[-1].name if archive.members else '(none)'}; the members read are kept: "
                       "copy the shard again to read the rest")
            elif not cut and whole.getbuffer().nbytes - archive.offset < tarfile.BLOCKSIZE:
                cut = (f"shard {shard.url} ends without tar's end-of-archive blocks after member "
                       f"{archive.members[-1].name if archive.members else '(none)'}, so it was probably cut off; "
                       "the members read are kept: copy the shard again to read the rest")
        return occurrences, truth, cut
    fs, path = storage.filesystem_for(shard.url, storage_config)
    with fs.open(path, "rb") as handle, tarfile.open(fileobj=handle, mode="r:*") as archive:
        return tar_members(shard, archive, wanted)


def tar_members(shard: Shard, archive: tarfile.TarFile, wanted: Collection[str] | None = None) -> Contents:
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
                                  wanted is None or split_member_name(member.name)[0] in wanted)
            if role in ("mask", "instances"):
                truth.setdefault(item.key, {}).setdefault(role, item)
            else:
                occurrences.append(item)
    return occurrences, truth, cut


def tar_occurrence(shard: Shard, archive: tarfile.TarFile, member: tarfile.TarInfo, role: str,
                   regular: Mapping[str, tarfile.TarInfo], with_content: bool) -> Occurrence:
    """Return the occurrence of one image-named tar member, its bytes read if ``with_content`` (else only
    its key and whether it claims it)."""
    key, extension = split_member_name(member.name)
    name = f"member {member.name!r} of {shard.url}"
    if role == "misnamed":
        return Occurrence(key, member.name, error=f"{name} is named like an image, but a key ends at the first dot "
                          f"of the name, leaving the component {extension!r}, which segpipe does not read; name images "
                          "<key>.<png|jpg|tif|bmp|webp|gif>, masks <key>.mask.png and instance labels <key>.instances.png", kind=ErrorKind.UNSUPPORTED_MEMBER,
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
