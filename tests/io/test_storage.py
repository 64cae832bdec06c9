"""URLs and keys: where an output may go relative to its inputs, which keys can name output files, and
what an object-storage failure tells the user."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.io import storage
from pipeline.io.storage import StorageError


@pytest.mark.parametrize(("output", "inputs", "relation"), [
    ("s3://b/data", "s3://b/data/", "is"),
    ("s3://b/data/run", "s3://b/data", "lies inside"),
    ("s3a://b", "s3://b/data", "contains"),
    ("/data/x/../run", "/data/run/in", "contains"),
])
def test_an_output_touching_an_input_is_refused(output: str, inputs: str, relation: str) -> None:
    with pytest.raises(StorageError, match=f"output {output} {relation} the input"):
        storage.check_apart(output, {"input": inputs})


@pytest.mark.parametrize(("output", "inputs"), [
    ("s3://b/data-run", "s3://b/data"),  # a shared name prefix is not a folder
    ("s3://other/data", "s3://b/data"),
    ("/data/run", "s3://data/run"),  # another store
    ("/data/run", "/data/in"),
])
def test_siblings_and_other_stores_are_apart(output: str, inputs: str) -> None:
    storage.check_apart(output, {"input": inputs})


def test_local_locations_resolve_relative_paths_and_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    monkeypatch.chdir(tmp_path)
    assert storage.location("link/out") == storage.location(f"file://{tmp_path}/real/out") == (
        "file", str(tmp_path / "real" / "out"))
    with pytest.raises(StorageError, match="lies inside the input"):
        storage.check_apart("link/out", {"input": str(tmp_path / "real")})


@pytest.mark.parametrize(("key", "reason"), [
    ("", "empty"), ("/etc/x", "absolute"), ("a/../b", "'..'"), ("a//b", "empty path part"), ("./a", "'.'"),
    ("a\\b", "backslash"), ("a\x00b", "control character"), ("s3://b/x", "'://'"), ("a::b", "'::'"),
])
def test_keys_that_cannot_name_an_output_file_say_why(key: str, reason: str) -> None:
    problem = storage.key_problem(key)
    assert problem is not None and reason in problem


@pytest.mark.parametrize("key", ["time 12:00:00", "C:x", "sub/dir/img-1", "naïve #1 (copy)", "a?b*[c]"])
def test_ordinary_keys_are_kept(key: str) -> None:
    assert storage.key_problem(key) is None


def test_storage_failures_are_explained_with_the_fix() -> None:
    from botocore.exceptions import EndpointConnectionError, NoCredentialsError

    no_credentials = storage.explain("s3://b/x", NoCredentialsError(), None)
    assert no_credentials is not None and "AWS_ACCESS_KEY_ID" in no_credentials
    try:
        try:
            raise EndpointConnectionError(endpoint_url="http://nowhere:9")
        except EndpointConnectionError as exc:
            raise OSError("listing failed") from exc
    except OSError as wrapped:
        unreachable = storage.explain("s3://b/x", wrapped, storage.StorageConfig(endpoint_url="http://nowhere:9"))
    assert unreachable is not None
    assert "endpoint http://nowhere:9 does not answer (EndpointConnectionError)" in unreachable
    assert storage.explain("s3://b/x", ValueError("something else"), None) is None


def test_a_write_is_whole_or_absent_and_a_full_disk_names_the_output_and_the_fix(tmp_path: Path,
                                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import io

    target = tmp_path / "metrics" / "s.parquet"
    storage.write_bytes(str(target), b"first")
    assert target.read_bytes() == b"first" and os.listdir(target.parent) == ["s.parquet"]

    class FullFile(io.BytesIO):  # takes a few bytes, then the file system is full
        def __init__(self, path: str, mode: str) -> None:
            super().__init__()
            self.path = path

        def write(self, data: bytes) -> int:
            with open(self.path, "wb") as handle:
                handle.write(data[:2])
            raise OSError(errno.ENOSPC, "No space left on device")

        def __exit__(self, *args: object) -> None:
            return None

    monkeypatch.setattr(storage, "open", FullFile, raising=False)
    with pytest.raises(storage.OutputFullError, match=rf"cannot write {target}: No space left on device; free space.*"
                                                      "re-run the same command"):
        storage.write_bytes(str(target), b"second, longer")
    assert target.read_bytes() == b"first" and os.listdir(target.parent) == ["s.parquet"]  # no partial file anywhere
    monkeypatch.setattr(storage, "open", lambda path, mode: (_ for _ in ()).throw(OSError(errno.ENAMETOOLONG, "too long")),
                        raising=False)
    with pytest.raises(OSError, match="too long"):  # one file's problem stays an OSError: its row says so
        storage.write_bytes(str(target), b"third")
