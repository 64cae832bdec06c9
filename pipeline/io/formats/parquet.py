"""Parquet shards: ``<url>/*.parquet``, columns ``key`` (string), ``image`` (encoded bytes) and optional
``mask`` and ``instances`` (encoded PNG bytes)."""

from __future__ import annotations

import io
from collections.abc import Collection, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import StorageConfig
from pipeline.errors import ErrorKind
from pipeline.io import storage
from pipeline.io.formats.base import Contents, InputError, InputFormat, Occurrence, Sample, Shard, Truth, shard_name


class ParquetFormat(InputFormat):
    """Parquet files of encoded images, one shard per file."""

    kind = "parquet"
    file_suffixes = (".parquet",)

    def find_shards(self, url: str, relative: list[str], folder_shard_size: int) -> list[Shard]:
        return [Shard(shard_name(p), self.kind, storage.join_url(url, p)) for p in relative
                if p.lower().endswith(".parquet")]

    def contents(self, shard: Shard, storage_config: StorageConfig | None,
                 wanted: Collection[str] | None = None) -> Contents:
        return parquet_contents(shard, storage_config, wanted)

    def write(self, output: str, shards: Iterable[list[Sample]], storage_config: StorageConfig | None) -> list[str]:
        return self.write_files(output, shards, storage_config, "part-{:05d}.parquet", parquet_bytes)


def parquet_contents(shard: Shard, storage_config: StorageConfig | None, wanted: Collection[str] | None = None) -> Contents:
    """Return a Parquet shard's image occurrences (row order) and ground truth; columns ``key``, ``image``,
    optional ``mask`` and ``instances``.

    With ``wanted`` only the rows of those keys.
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
        columns = ["key", "image", *extra]
        if wanted is None:
            table = parquet.read(columns=columns)
        else:  # batch by batch, keeping only the wanted rows
            table = pq.read_table(handle, columns=columns, filters=[("key", "in", sorted(wanted))])
    keys = table.column("key").to_pylist()
    images = table.column("image").to_pylist()
    truth_columns = {role: table.column(role).to_pylist() if role in table.column_names else [None] * len(keys)
                     for role in ("mask", "instances")}
    occurrences: list[Occurrence] = []
    truth: Truth = {}
    for index, (key, image) in enumerate(zip(keys, images)):
        if key is None:
            occurrences.append(Occurrence(f"{shard.name}#row{index}", f"row {index}", error=f"row {index} of "
                                          f"{shard.url} has no key", kind=ErrorKind.MISSING_KEY, claims=False))
            continue
        occurrences.append(Occurrence(str(key), f"row {index}", image or b""))
        for role, column in truth_columns.items():
            if column[index] is not None:
                truth.setdefault(str(key), {}).setdefault(role, Occurrence(str(key), f"row {index}", column[index]))
    return occurrences, truth, ""


def parquet_bytes(samples: list[Sample]) -> bytes:
    """Return a Parquet file, one row per sample: ``key`` and a binary column per role (``image``, ``mask``, ...)."""
    roles = list(dict.fromkeys(role for _, files in samples for role in files)) or ["image"]
    columns: dict[str, list] = {"key": [key for key, _ in samples]}
    for role in roles:
        columns[role] = [files.get(role) for _, files in samples]
    table = pa.table({name: pa.array(values, pa.string() if name == "key" else pa.binary())
                      for name, values in columns.items()})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()
