"""Input discovery and shard reading: the three input shapes and the bad-member cases."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.preprocess import encode_png
from pipeline.sources import InputError, Shard, discover_shards, read_shard, split_member_name

PNG = encode_png(np.zeros((4, 4), dtype=np.uint8))


def write_tar(path: Path, members: dict[str, bytes]) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    path.write_bytes(buffer.getvalue())


def rows_by_key(shard: Shard) -> dict[str, dict]:
    return {row["key"]: row for row in read_shard(shard)}


def test_member_names_split_at_the_first_dot_of_the_basename() -> None:
    assert split_member_name("a/b/img-1.mask.png") == ("a/b/img-1", "mask.png")
    assert split_member_name("img.PNG") == ("img", "png")


def test_tar_shards_pair_images_with_masks(tmp_path: Path) -> None:
    write_tar(tmp_path / "s0.tar", {"a.png": PNG, "a.mask.png": PNG, "b.jpg": PNG, "notes.txt": b"x"})
    (tmp_path / "sub").mkdir()
    write_tar(tmp_path / "sub" / "s1.tar", {"c.png": PNG})
    shards = discover_shards(str(tmp_path))
    assert [(s.name, s.kind) for s in shards] == [("s0", "tar"), ("sub__s1", "tar")]
    rows = rows_by_key(shards[0])
    assert sorted(rows) == ["a", "b"]
    assert rows["a"]["mask"] == PNG and rows["b"]["mask"] == b""
    assert all(row["shard_rows"] == 2 and not row["error"] for row in rows.values())


def test_unsafe_duplicate_and_orphan_members_become_error_rows(tmp_path: Path) -> None:
    write_tar(tmp_path / "bad.tar", {
        "../escape.png": PNG, "/abs/path.png": PNG, "dup.png": PNG, "dup.jpg": PNG, "orphan.mask.png": PNG, "good.png": PNG,
    })
    rows = rows_by_key(discover_shards(str(tmp_path))[0])
    assert "not a safe relative name" in rows["../escape"]["error"]
    assert "not a safe relative name" in rows["/abs/path"]["error"]
    assert "has 2 images" in rows["dup"]["error"]
    assert "has a mask but no image" in rows["orphan"]["error"]
    assert rows["good"]["error"] == "" and rows["good"]["image"] == PNG
    assert {row["shard_rows"] for row in rows.values()} == {5}


def test_unreadable_tar_becomes_one_error_row(tmp_path: Path) -> None:
    (tmp_path / "broken.tar").write_bytes(b"\x01" * 700)
    rows = read_shard(discover_shards(str(tmp_path))[0])
    assert len(rows) == 1 and "cannot be read" in rows[0]["error"] and rows[0]["key"] == "broken"


def test_empty_tar_gives_no_rows(tmp_path: Path) -> None:
    write_tar(tmp_path / "empty.tar", {})
    assert read_shard(discover_shards(str(tmp_path))[0]) == []


def test_image_folder_is_sliced_into_named_shards(tmp_path: Path) -> None:
    (tmp_path / "images" / "sub").mkdir(parents=True)
    (tmp_path / "masks").mkdir()
    for key in ("a", "b", "c", "sub/d", "e"):
        (tmp_path / "images" / f"{key}.png").write_bytes(PNG)
    (tmp_path / "masks" / "a.png").write_bytes(PNG)
    shards = discover_shards(str(tmp_path), folder_shard_size=2)
    assert [s.name for s in shards] == ["images-00000", "images-00001", "images-00002"]
    keys = [key for shard in shards for key, _, _ in shard.members]
    assert keys == ["a", "b", "c", "e", "sub/d"]
    rows = rows_by_key(shards[0])
    assert rows["a"]["mask"] == PNG and rows["b"]["mask"] == b""
    assert Shard.from_json(shards[0].to_json()) == shards[0]


def test_parquet_input_with_and_without_masks(tmp_path: Path) -> None:
    table = pa.table({"key": ["x", "y", None], "image": [PNG, PNG, PNG], "mask": [PNG, None, None]})
    pq.write_table(table, tmp_path / "part-0.parquet")
    pq.write_table(pa.table({"image": [PNG]}), tmp_path / "part-1.parquet")
    shards = discover_shards(str(tmp_path))
    rows = rows_by_key(shards[0])
    assert rows["x"]["mask"] == PNG and rows["y"]["mask"] == b""
    assert "has no key" in rows["part-0#row2"]["error"]
    broken = read_shard(shards[1])
    assert len(broken) == 1 and "lacks column(s) ['key']" in broken[0]["error"]


def test_single_file_input(tmp_path: Path) -> None:
    write_tar(tmp_path / "one.tar", {"a.png": PNG})
    assert [s.name for s in discover_shards(str(tmp_path / "one.tar"))] == ["one"]


def test_missing_and_imageless_inputs_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        discover_shards(str(tmp_path / "nope"))
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(InputError, match="holds no images"):
        discover_shards(str(tmp_path))
