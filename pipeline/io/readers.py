"""Read a shard into rows of encoded ``key, image[, mask][, instances]``, one per image, never losing one.

Reading a shard never raises for a bad sample: the sample becomes a row with ``error`` and
``error_kind`` set (:data:`pipeline.schema.ERROR_KINDS`), and the whole shard becomes one error
row if it cannot be read at all. Every tar member, folder file or Parquet row named like an
image gets its row; so does ground truth (a mask or instance labels) without an image.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import posixpath
import tarfile
from collections.abc import Collection, Iterator, Mapping
from typing import Any

import pyarrow.parquet as pq

from pipeline.config import StorageConfig
from pipeline.io import storage
from pipeline.io.shards import (
    IMAGE_EXTENSIONS,
    INSTANCES_SUFFIXES,
    MASK_SUFFIX,
    InputError,
    Shard,
    shard_dataset,
    shard_name,
)

log = logging.getLogger(__name__)


def sample_row(shard: Shard, key: str, image: bytes = b"", mask: bytes | None = None, error: str = "",
               kind: str = "", instances: bytes | None = None) -> dict[str, Any]:
    """Return one input row. Empty ``mask`` means no ground-truth mask, empty ``instances`` no instance
    label image; a non-empty ``error`` means the sample is unusable and says why, and ``kind`` names
    it (:data:`pipeline.schema.ERROR_KINDS`). (Empty values, not None, keep the columns' types stable.)"""
    return {"key": key, "source": shard.url, "shard": shard.name, "image": image, "mask": mask or b"",
            "instances": instances or b"", "error": error, "error_kind": kind if error else ""}


@dataclasses.dataclass(frozen=True)
class Occurrence:
    """One image (or mask, or instance label image) of a key in a shard, in the shard's order.

    ``member`` names it (tar member, file URL or Parquet row); ``error``/``kind`` say why it cannot
    be read. ``claims``: whether it takes its key, so that a later image of the same key is a
    duplicate; every occurrence does except those refused before reading (an unsafe key, a link
    or special file, a row without a key), exactly as :func:`pipeline.io.keys.shard_keys` decides from headers.
    """

    key: str
    member: str
    content: bytes = b""
    error: str = ""
    kind: str = ""
    claims: bool = True


def read_shard(shard: Shard, storage_config: StorageConfig | None = None,
               taken: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """Return the shard's rows (one per image, and one per ground truth without an image), each tagged with
    ``shard_rows`` = the shard's row count.

    ``taken`` maps keys an earlier shard already holds to that shard's URL (see
    :func:`keys_taken_earlier`); their images here become ``duplicate_key`` error rows.
    """
    readers = {"tar": tar_contents, "parquet": parquet_contents, "folder": folder_contents}
    try:
        occurrences, truth, cut = readers[shard.kind](shard, storage_config)
        rows = list(paired_rows(shard, occurrences, truth, taken or {}))
        if cut:
            rows.append(sample_row(shard, shard.name, error=cut, kind="unreadable_shard"))
    except Exception as exc:  # the whole shard is unreadable: keep a trace of it as one error row
        log.warning("shard %s cannot be read: %s", shard.url, exc)
        rows = [sample_row(shard, shard.name, error=f"shard {shard.url} cannot be read ({type(exc).__name__}: {exc})",
                           kind="unreadable_shard")]
    for row in rows:
        row["shard_rows"] = len(rows)
    if not rows:
        log.warning("shard %s holds no images", shard.url)
    return rows


Truth = dict[str, dict[str, Occurrence]]  # key -> "mask" / "instances" -> its occurrence (the first of its key)
Contents = tuple[list[Occurrence], Truth, str]  # images, ground truth by key, cut-off message


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
                          "<key>.<png|jpg|tif|bmp|webp>, masks <key>.mask.png and instance labels <key>.instances.png", kind="unsupported_member",
                          claims=False)
    problem = member_problem(member, regular)
    if problem:
        return Occurrence(key, member.name, error=f"{name} {problem}", kind="unsupported_member", claims=False)
    if not with_content:
        return Occurrence(key, member.name)
    content, error = read_member(archive, regular[member.linkname] if member.islnk() else member)
    bad = {"image": "corrupt_image", "mask": "bad_mask"}.get(role, "bad_instances")
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


def paired_rows(shard: Shard, occurrences: list[Occurrence], truth: Truth,
                taken: Mapping[str, str]) -> Iterator[dict[str, Any]]:
    """Yield one row per image occurrence (with its key's ground truth), then one per ground truth without an image.

    The first occurrence of a key that claims it is segmented; a later one, in this shard or after
    an earlier shard (``taken``), is a ``duplicate_key`` error row naming where the key was first.
    """
    first: dict[str, str] = {}
    for item in occurrences:
        problem = storage.key_problem(item.key)
        if problem:
            yield sample_row(shard, item.key, error=f"key {item.key!r} ({item.member}) in {shard.url} cannot name an "
                             f"output file: {problem}; rename it", kind="unsafe_key")
            continue
        if item.claims and item.key in taken:
            yield sample_row(shard, item.key, error=f"key {item.key!r} ({item.member}) in {shard.url} was already "
                             f"taken by the earlier shard {taken[item.key]}; keys must be unique across the input: "
                             "rename one of them", kind="duplicate_key")
            continue
        if item.claims and item.key in first:
            yield sample_row(shard, item.key, error=f"key {item.key!r} ({item.member}) in {shard.url} repeats "
                             f"{first[item.key]} of the same shard; keep one image per key", kind="duplicate_key")
            continue
        if item.claims:
            first[item.key] = item.member
        labels = truth.get(item.key, {})
        failed = item if item.error else next((found for found in labels.values() if found.error), None)
        if failed is not None:
            yield sample_row(shard, item.key, error=failed.error, kind=failed.kind)
        else:
            yield sample_row(shard, item.key, image=item.content, mask=content_of(labels, "mask"),
                             instances=content_of(labels, "instances"))
    with_image = {item.key for item in occurrences}
    for key in sorted(set(truth) - with_image):
        problem = storage.key_problem(key)
        if problem:
            yield sample_row(shard, key, error=f"key {key!r} (ground truth) in {shard.url} cannot name an output file: "
                             f"{problem}; rename it", kind="unsafe_key")
        else:
            yield sample_row(shard, key, error=f"key {key!r} in {shard.url} has a {' and '.join(sorted(truth[key]))} "
                             "but no image",
                             kind="missing_image")


def content_of(labels: Mapping[str, Occurrence], role: str) -> bytes | None:
    """Return the bytes of a key's ground truth of ``role`` (``"mask"`` / ``"instances"``), None if it has none."""
    found = labels.get(role)
    return found.content if found is not None and found.content else None


def parquet_contents(shard: Shard, storage_config: StorageConfig | None, with_content: bool = True,
                     wanted: Collection[str] | None = None) -> Contents:
    """Return a Parquet shard's image occurrences (row order) and ground truth; columns ``key``, ``image``,
    optional ``mask`` and ``instances``.

    Without ``with_content`` only the ``key`` column is read (for :func:`pipeline.io.keys.shard_keys`);
    with ``wanted`` only the rows of those keys.
    """
    fs, path = storage.filesystem_for(shard.url, storage_config)
    with fs.open(path, "rb") as handle:
        parquet = pq.ParquetFile(handle)
        names = parquet.schema_arrow.names
        missing = {"key", "image"} - set(names)
        if missing:
            raise InputError(f"Parquet shard {shard.url} lacks column(s) {sorted(missing)}; "
                             "it needs key, image[, mask][, instances]")
        extra = [name for name in ("mask", "instances") if name in names]
        columns = ["key", "image", *extra] if with_content else ["key"]
        if wanted is None:
            table = parquet.read(columns=columns)
        else:  # batch by batch, keeping only the wanted rows
            table = pq.read_table(handle, columns=columns, filters=[("key", "in", sorted(wanted))])
    keys = table.column("key").to_pylist()
    images = table.column("image").to_pylist() if with_content else [b""] * len(keys)
    truth_columns = {role: table.column(role).to_pylist() if role in table.column_names else [None] * len(keys)
                     for role in ("mask", "instances")}
    occurrences: list[Occurrence] = []
    truth: Truth = {}
    for index, (key, image) in enumerate(zip(keys, images)):
        if key is None:
            occurrences.append(Occurrence(f"{shard.name}#row{index}", f"row {index}", error=f"row {index} of "
                                          f"{shard.url} has no key", kind="missing_key", claims=False))
            continue
        occurrences.append(Occurrence(str(key), f"row {index}", image or b""))
        for role, column in truth_columns.items():
            if column[index] is not None:
                truth.setdefault(str(key), {}).setdefault(role, Occurrence(str(key), f"row {index}", column[index]))
    return occurrences, truth, ""


def folder_contents(shard: Shard, storage_config: StorageConfig | None, with_content: bool = True) -> Contents:
    """Return an image-folder shard's image occurrences and ground truth, reading each file (unless not ``with_content``)."""
    occurrences: list[Occurrence] = []
    truth: Truth = {}
    for key, image_url, mask_url, *rest in shard.members:
        if image_url is not None:
            occurrences.append(file_occurrence(key, image_url, storage_config, with_content, "corrupt_image"))
        for role, url, kind in (("mask", mask_url, "bad_mask"), ("instances", rest[0] if rest else None, "bad_instances")):
            if url is not None and role not in truth.get(key, {}):
                truth.setdefault(key, {})[role] = file_occurrence(key, url, storage_config, with_content, kind)
    return occurrences, truth, ""


def file_occurrence(key: str, url: str, storage_config: StorageConfig | None, with_content: bool,
                    kind: str) -> Occurrence:
    """Return the occurrence of one input file, read if ``with_content``; a read failure is an error of ``kind``."""
    if not with_content:
        return Occurrence(key, url)
    try:
        return Occurrence(key, url, storage.read_bytes(url, storage_config))
    except OSError as exc:
        return Occurrence(key, url, error=f"cannot read {url} ({type(exc).__name__}: {exc})", kind=kind)


def read_samples(source: str, keys: set[str],
                 storage_config: StorageConfig | None = None) -> dict[str, tuple[bytes, bytes | None, bytes | None]]:
    """Return ``{key: (image, mask or None, instances or None)}`` for the ``keys`` found in one input shard.

    ``source`` is a metrics row's ``source``: a tar shard, a Parquet shard or an image folder,
    read by the same readers as a run but for those keys only (a tar's other members are skipped,
    a Parquet file is filtered on ``key``, a folder globbed per key). Each key's first image is
    read, as a segmentation run reads it; keys not found are absent from the result.
    """
    name = shard_name(posixpath.basename(source.rstrip("/")))
    if source.lower().endswith(".tar"):
        occurrences, truth, _ = tar_contents(Shard(name, "tar", source), storage_config, wanted=keys)
    elif source.lower().endswith(".parquet"):
        occurrences, truth, _ = parquet_contents(Shard(name, "parquet", source), storage_config, wanted=keys)
    else:
        occurrences, truth, _ = folder_contents(folder_shard_of(source, keys, storage_config), storage_config)
    found: dict[str, tuple[bytes, bytes | None, bytes | None]] = {}
    for item in occurrences:
        if item.key in keys and item.key not in found and item.claims and not item.error:
            labels = truth.get(item.key, {})
            found[item.key] = (item.content, content_of(labels, "mask"), content_of(labels, "instances"))
    return found


def folder_shard_of(url: str, keys: set[str], storage_config: StorageConfig | None) -> Shard:
    """Return a folder shard holding just ``keys`` of the image folder at ``url`` (found by globbing)."""
    fs, path = storage.filesystem_for(url, storage_config)
    members = []
    for key in sorted(keys):
        candidates = sorted(c for c in fs.glob(posixpath.join(path, "images", glob_escape(key)) + ".*")
                            if c.lower().endswith(IMAGE_EXTENSIONS))
        mask = posixpath.join(path, "masks", f"{key}.png")
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


def read_dataset(shards: list[Shard], storage_config: StorageConfig | None, stage_cpus: float) -> Any:
    """Return a lazy Ray Dataset of the shards' input rows (see :func:`read_shard`), one read task per shard."""
    return shard_dataset(shards).flat_map(lambda row: read_shard(Shard.from_json(row["shard"]), storage_config),
                                          num_cpus=stage_cpus)
