"""Object storage through fsspec: local paths, ``file://``, ``s3://`` and any other fsspec URL.

URLs are kept as strings with their scheme; a filesystem is made from the URL and a
:class:`~pipeline.config.StorageConfig`. Credentials come from the config or the standard AWS
environment and never appear in messages.
"""

from __future__ import annotations

import logging
import posixpath
import uuid
from collections.abc import Iterable

import fsspec
from fsspec.core import split_protocol

from pipeline.config import StorageConfig


# Their DEBUG records carry signed request headers (the access key id) and credential details;
# a run's logs must never hold credentials, so they stay at INFO even when segpipe logs DEBUG.
CREDENTIAL_LOGGERS = ("botocore", "aiobotocore", "boto3", "s3fs", "urllib3", "s3transfer")
for _name in CREDENTIAL_LOGGERS:
    _logger = logging.getLogger(_name)
    if _logger.level < logging.INFO:
        _logger.setLevel(logging.INFO)


class StorageError(RuntimeError):
    """Object storage cannot be used as asked; the message names the URL and the fix."""


def filesystem_for(url: str, storage: StorageConfig | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """Return the fsspec filesystem for ``url`` and the path inside it (no scheme)."""
    protocol, _ = split_protocol(url)
    protocol = protocol or "file"
    options = (storage or StorageConfig()).fsspec_options(protocol)
    fs = fsspec.filesystem(protocol, **options)
    return fs, fs._strip_protocol(url)


def join_url(base: str, *parts: str) -> str:
    """Return ``base`` with ``parts`` appended by ``/``, keeping the scheme (``s3://b/x`` + ``y`` → ``s3://b/x/y``)."""
    url = base.rstrip("/")
    for part in parts:
        url = f"{url}/{part.strip('/')}"
    return url


def url_with_protocol(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """Return a full URL for a path of ``fs`` (``bucket/k`` on s3 → ``s3://bucket/k``; local paths unchanged)."""
    if is_local(fs):
        return path
    protocol = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
    return f"{protocol}://{path}"


def list_files(url: str, suffixes: Iterable[str], storage: StorageConfig | None = None) -> list[str]:
    """Return the full URLs of files under ``url`` (recursively) whose names end in ``suffixes``, sorted."""
    fs, root = filesystem_for(url, storage)
    wanted = tuple(s.lower() for s in suffixes)
    try:
        paths = fs.find(root)
    except FileNotFoundError:
        return []
    return sorted(url_with_protocol(fs, p) for p in paths if p.lower().endswith(wanted))


def read_bytes(url: str, storage: StorageConfig | None = None) -> bytes:
    """Return the whole content of the file at ``url``."""
    fs, path = filesystem_for(url, storage)
    return fs.cat_file(path)


def write_bytes(url: str, data: bytes, storage: StorageConfig | None = None) -> None:
    """Write ``data`` to ``url``, creating parent folders on local filesystems."""
    fs, path = filesystem_for(url, storage)
    parent = posixpath.dirname(path)
    if parent and is_local(fs):  # object stores have no folders; makedirs there would create buckets
        fs.makedirs(parent, exist_ok=True)
    fs.pipe_file(path, data)


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    """Return whether ``fs`` is the local filesystem."""
    protocol = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
    return protocol in ("file", "local")


def exists(url: str, storage: StorageConfig | None = None) -> bool:
    """Return whether a file or folder exists at ``url``."""
    fs, path = filesystem_for(url, storage)
    return fs.exists(path)


def check_writable(url: str, storage: StorageConfig | None = None) -> None:
    """Raise :class:`StorageError` unless a small probe file can be written and removed under ``url``."""
    probe = join_url(url, f".write-probe-{uuid.uuid4().hex}")
    try:
        write_bytes(probe, b"", storage)
        fs, path = filesystem_for(probe, storage)
        fs.rm_file(path)
    except Exception as exc:  # any backend error means the same thing to the user
        raise StorageError(
            f"output {url} is not writable ({type(exc).__name__}: {exc}); "
            "check the path or bucket exists and the credentials allow writing"
        ) from exc


def is_safe_key(key: str) -> bool:
    """Return whether ``key`` can name a file under an output prefix without escaping it.

    Unsafe: empty, absolute (``/x``, ``C:x``), any ``..`` or ``.`` or empty path component,
    backslashes, or control characters.
    """
    if not key or key.startswith("/") or "\\" in key or ":" in key:
        return False
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in key):
        return False
    return all(part not in ("", ".", "..") for part in key.split("/"))
