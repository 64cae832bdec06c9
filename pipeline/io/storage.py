"""Object storage through fsspec: local paths, ``file://``, ``s3://`` and any other fsspec URL.

URLs are kept as strings with their scheme; a filesystem is made from the URL and a
:class:`~pipeline.config.StorageConfig`. Credentials come from the config or the standard AWS
environment and never appear in messages.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import posixpath
import uuid
from collections.abc import Iterable, Iterator

import fsspec
from fsspec.core import split_protocol

from pipeline.config import StorageConfig

# Their DEBUG records carry signed request headers (the access key id) and credential details;
# a run's logs must never hold credentials, so they stay at INFO even when segpipe logs DEBUG.
CREDENTIAL_LOGGERS = ("botocore", "aiobotocore", "boto3", "s3fs", "urllib3", "s3transfer")


def quiet_credential_loggers() -> None:
    """Keep the object-storage clients' loggers (:data:`CREDENTIAL_LOGGERS`) at INFO or above.

    Called wherever a filesystem is made (:func:`filesystem_for`), so it holds in every process
    that touches storage, whatever level the process logs at.
    """
    for name in CREDENTIAL_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level < logging.INFO:
            logger.setLevel(logging.INFO)


class StorageError(RuntimeError):
    """Object storage cannot be used as asked; the message names the URL and the fix."""


class OutputFullError(StorageError):
    """The output's file system refuses every write (full, over quota, read-only): the run stops, resumable."""


FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})  # the output as a whole cannot take writes


def filesystem_for(url: str, storage: StorageConfig | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """Return the fsspec filesystem for ``url`` and the path inside it (no scheme)."""
    quiet_credential_loggers()
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
    """Write ``data`` to ``url`` whole or not at all: no reader ever sees part of it under its name.

    On a local file system the bytes go to a hidden temporary name in the same folder, renamed
    over ``url`` once written (parent folders are created); an object store's PUT is already
    whole. A file system that refuses every write (full, over quota, read-only: :data:`FULL_ERRNOS`)
    raises :class:`OutputFullError` naming the URL and the fix, the temporary file removed; other
    failures (a name too long, say) raise their OSError.
    """
    fs, path = filesystem_for(url, storage)
    if not is_local(fs):
        fs.pipe_file(path, data)
        return
    parent = posixpath.dirname(path)
    temporary = posixpath.join(parent, f".{posixpath.basename(path)}.partial-{os.getpid()}")
    try:
        if parent:
            os.makedirs(parent, exist_ok=True)
        with open(temporary, "wb") as handle:
            handle.write(data)
        os.replace(temporary, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        if exc.errno in FULL_ERRNOS:
            raise OutputFullError(f"cannot write {url}: {exc.strerror or exc}; free space on (or make writable) the "
                                  "output's file system, then re-run the same command: the shards committed so far "
                                  "are kept") from exc
        raise


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


def key_problem(key: str) -> str | None:
    """Return why ``key`` cannot name a file under an output prefix (it would escape it or be misread), else None.

    Refused: empty, absolute (``/x``), a ``..``, ``.`` or empty path component, backslashes,
    control characters, and ``::`` or ``://`` (fsspec would read them as a protocol or a chained
    URL). Other characters, spaces and colons among them, are kept: POSIX file systems and object
    stores take them.
    """
    if not key:
        reason = "it is empty"
    elif key.startswith("/"):
        reason = "it is absolute (starts with '/')"
    elif "\\" in key:
        reason = "it holds a backslash"
    elif any(ord(ch) < 32 or ord(ch) == 127 for ch in key):
        reason = "it holds a control character"
    elif "::" in key or "://" in key:
        reason = "it holds '::' or '://', which would be read as a URL protocol"
    elif any(part in ("", ".", "..") for part in key.split("/")):
        reason = "it has a '..', '.' or empty path part"
    else:
        return None
    return reason


def is_safe_key(key: str) -> bool:
    """Return whether ``key`` can name a file under an output prefix (see :func:`key_problem`)."""
    return key_problem(key) is None


def location(url: str) -> tuple[str, str]:
    """Return ``(store, path)`` naming where ``url`` points, for comparing URLs.

    Local paths are made absolute with symbolic links resolved; ``s3a://`` is ``s3://``;
    trailing slashes are dropped.
    """
    protocol, _ = split_protocol(url)
    protocol = {None: "file", "local": "file", "s3a": "s3"}.get(protocol, protocol)
    if protocol == "file":
        fs, path = filesystem_for(url)
        return "file", os.path.realpath(os.path.abspath(path))
    fs, path = filesystem_for(url)
    return protocol, path.rstrip("/") or "/"


def inside(child: tuple[str, str], parent: tuple[str, str]) -> bool:
    """Return whether the location ``child`` equals or lies inside ``parent`` (see :func:`location`)."""
    if child[0] != parent[0]:
        return False
    root = parent[1].rstrip("/")
    return child[1] == parent[1] or child[1].startswith(root + "/")


def check_apart(output: str, inputs: dict[str, str]) -> None:
    """Raise :class:`StorageError` if ``output`` equals, contains or lies inside any of ``inputs`` (``{what: url}``).

    A run writes and, with overwrite, deletes under its output; it must never do either to its inputs.
    """
    target = location(output)
    for what, url in inputs.items():
        source = location(url)
        if inside(target, source) or inside(source, target):
            relation = "is" if target == source else "lies inside" if inside(target, source) else "contains"
            raise StorageError(
                f"output {output} {relation} the {what} {url}; segpipe never writes into (or, with --overwrite, "
                f"deletes from) its inputs: choose an output outside the {what}, e.g. a sibling folder or prefix"
            )


CREDENTIAL_ERRORS = ("NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError",
                     "NoAuthTokenError", "UnauthorizedSSOTokenError")
CONNECTION_ERRORS = ("EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError",
                     "ProxyConnectionError", "SSLError", "ClientConnectorError", "ServerTimeoutError",
                     "ServerDisconnectedError", "FSTimeoutError")


def endpoint_of(storage: StorageConfig | None) -> str:
    """Return the object-storage endpoint a config reaches, as a person would name it."""
    endpoint = (storage or StorageConfig()).endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get(
        "AWS_ENDPOINT_URL")
    return endpoint or "the AWS S3 endpoint of the region"


def explain(url: str, exc: BaseException, storage: StorageConfig | None) -> str | None:
    """Return a message that names ``url`` and the fix for an object-storage failure, or None if it is not one."""
    chain = [exc]
    while chain[-1].__cause__ is not None or chain[-1].__context__ is not None:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)  # type: ignore[arg-type]
        if len(chain) > 8:
            break
    names = {type(error).__name__ for error in chain}
    cause = next((type(error).__name__ for error in reversed(chain) if type(error).__name__ in CONNECTION_ERRORS),
                 type(chain[-1]).__name__)
    if names & set(CREDENTIAL_ERRORS):
        return (f"{url} cannot be reached: no object-storage credentials were found; set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, or run where an instance role provides them), or "
                "storage.key and storage.secret in the config; storage.anon=true reads a public bucket without them")
    if names & set(CONNECTION_ERRORS) or any(isinstance(error, (ConnectionError, TimeoutError)) for error in chain):
        return (f"{url} cannot be reached: the object-storage endpoint {endpoint_of(storage)} does not answer "
                f"({cause}); check AWS_ENDPOINT_URL (or --endpoint-url, storage.endpoint_url) and the network")
    if any(isinstance(error, PermissionError) for error in chain):
        return (f"access to {url} was refused ({type(exc).__name__}: {exc}); check that the credentials "
                "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or storage.key / storage.secret) are valid and allow it")
    return None


def probe(url: str, storage: StorageConfig | None) -> None:
    """Make one listing request for ``url`` on object storage (nothing for local paths), raising
    :class:`StorageError` with the fix if the store cannot be reached or refuses the credentials.

    A missing bucket or prefix passes: the caller says what it expected there. One request with
    the config's attempts and timeouts bounds how long an unreachable endpoint takes to report.
    """
    fs, path = filesystem_for(url, storage)
    if is_local(fs):
        return
    with reaching(url, storage):
        try:
            fs.ls(path.rstrip("/") or path, detail=False)
        except FileNotFoundError:
            pass
        finally:
            fs.invalidate_cache()  # later checks must see the store as it is then, not this listing


@contextlib.contextmanager
def reaching(url: str, storage: StorageConfig | None) -> Iterator[None]:
    """Turn an object-storage failure of the block (credentials, endpoint, access) into a
    :class:`StorageError` naming ``url`` and the fix; other errors pass unchanged."""
    try:
        yield
    except StorageError:
        raise
    except Exception as exc:
        message = explain(url, exc, storage)
        if message is None:
            raise
        raise StorageError(message) from exc
