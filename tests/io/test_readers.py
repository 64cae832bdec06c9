"""Input discovery and shard reading: the three input shapes and the bad-member cases."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.imaging import encode_png
from pipeline.io.formats.tar import split_member_name
from pipeline.io.readers import read_shard
from pipeline.io.shards import InputError, Shard, discover_shards

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
    assert split_member_name("./img.png") == ("img", "png")


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
        "../escape.png": PNG, "/abs/path.png": PNG, "dup.png": PNG, "dup.jpg": PNG, "orphan.mask.png": PNG,
        "good.png": PNG, "a::b.png": PNG,
    })
    rows = read_shard(discover_shards(str(tmp_path))[0])
    by_kind = {(row["key"], row["error_kind"]): row for row in rows}
    assert "'..', '.' or empty path part" in by_kind[("../escape", "unsafe_key")]["error"]
    assert "absolute" in by_kind[("/abs/path", "unsafe_key")]["error"]
    assert "'::' or '://'" in by_kind[("a::b", "unsafe_key")]["error"]
    # the first image of a key is segmented, the later one is an error row naming the first
    assert by_kind[("dup", "")]["image"] == PNG
    assert "'dup.jpg'" not in by_kind[("dup", "")]["error"]
    assert "repeats dup.png of the same shard" in by_kind[("dup", "duplicate_key")]["error"]
    assert "has a mask but no image" in by_kind[("orphan", "missing_image")]["error"]
    assert by_kind[("good", "")]["error"] == "" and by_kind[("good", "")]["image"] == PNG
    assert len(rows) == 7 and {row["shard_rows"] for row in rows} == {7}


def test_keys_with_colons_and_spaces_are_kept_and_a_leading_dot_slash_is_not_part_of_the_key(tmp_path: Path) -> None:
    write_tar(tmp_path / "s.tar", {"time 12:00:00.png": PNG, "./sub/x.png": PNG})
    rows = {row["key"]: row for row in read_shard(discover_shards(str(tmp_path))[0])}
    assert set(rows) == {"time 12:00:00", "sub/x"} and all(not row["error"] for row in rows.values())


def special_members_tar(path: Path) -> None:
    """Write a tar holding, named like images: a file, a hard link to it, a symlink, a directory, a FIFO,
    a character device, a hard link to nothing, and a misnamed image (a.b.png)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        def add(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", link: str = "") -> None:
            info = tarfile.TarInfo(name)
            info.type, info.size, info.linkname = kind, len(data), link
            archive.addfile(info, io.BytesIO(data) if data else None)

        add("real.png", data=PNG)
        add("copy.png", tarfile.LNKTYPE, link="real.png")
        add("link.png", tarfile.SYMTYPE, link="/etc/passwd")
        add("folder.png", tarfile.DIRTYPE)
        add("pipe.png", tarfile.FIFOTYPE)
        add("device.png", tarfile.CHRTYPE)
        add("dangling.png", tarfile.LNKTYPE, link="absent.png")
        add("a.b.png", data=PNG)
    path.write_bytes(buffer.getvalue())


def test_links_devices_fifos_and_folders_named_like_images_get_error_rows(tmp_path: Path) -> None:
    special_members_tar(tmp_path / "special.tar")
    shard = discover_shards(str(tmp_path))[0]
    rows = {row["key"]: row for row in read_shard(shard)}
    assert set(rows) == {"real", "copy", "link", "folder", "pipe", "device", "dangling", "a"}
    assert rows["real"]["image"] == PNG and rows["copy"]["image"] == PNG and not rows["copy"]["error"]
    expected = {"link": "symbolic link to '/etc/passwd'; links are never followed", "folder": "is a directory",
                "pipe": "is a FIFO", "device": "is a device", "dangling": "hard link to 'absent.png'",
                "a": "component 'b.png'"}
    for key, fragment in expected.items():
        assert rows[key]["error_kind"] == "unsupported_member" and fragment in rows[key]["error"], rows[key]["error"]
        assert f"member '{key}" in rows[key]["error"] and rows[key]["image"] == b""


def test_a_truncated_tar_keeps_the_rows_of_the_members_before_the_cut(tmp_path: Path) -> None:
    write_tar(tmp_path / "whole.tar", {"a.png": PNG, "b.png": PNG * 20, "c.png": PNG})
    whole = (tmp_path / "whole.tar").read_bytes()
    (tmp_path / "whole.tar").unlink()
    (tmp_path / "cut.tar").write_bytes(whole[:512 + 512 + 512 + 300])  # a, then b's header and part of its data
    rows = {row["key"]: row for row in read_shard(discover_shards(str(tmp_path))[0])}
    assert set(rows) == {"a", "b", "cut"}  # c's header lies past the cut: the shard's own row stands for it
    assert rows["a"]["image"] == PNG and not rows["a"]["error"]
    assert rows["b"]["error_kind"] == "corrupt_image" and "cut off" in rows["b"]["error"]
    assert rows["cut"]["error_kind"] == "unreadable_shard" and "cut off" in rows["cut"]["error"]
    write_tar(tmp_path / "cut.tar", {"a.png": PNG})
    (tmp_path / "cut.tar").write_bytes((tmp_path / "cut.tar").read_bytes()[:1024])  # no end blocks at all
    rows = {row["key"]: row for row in read_shard(discover_shards(str(tmp_path))[0])}
    assert not rows["a"]["error"] and "probably cut off" in rows["cut"]["error"]


def test_a_shard_s_identity_follows_its_bytes_not_its_name(tmp_path: Path) -> None:
    write_tar(tmp_path / "a.tar", {"x.png": PNG})
    first = discover_shards(str(tmp_path))[0]
    assert first.identity and discover_shards(str(tmp_path))[0].identity == first.identity  # stable
    assert Shard.from_json(first.to_json()) == first
    write_tar(tmp_path / "a.tar", {"x.png": PNG, "y.png": PNG})  # replaced under the same name
    assert discover_shards(str(tmp_path))[0].identity != first.identity
    folder = tmp_path / "folder"
    for role in ("images", "masks"):
        (folder / role).mkdir(parents=True)
        for key in ("p", "q"):
            (folder / role / f"{key}.png").write_bytes(PNG)
    before = [shard.identity for shard in discover_shards(str(folder), folder_shard_size=1)]
    (folder / "masks" / "q.png").write_bytes(PNG + b"\0")  # one mask of the second slice changed
    after = [shard.identity for shard in discover_shards(str(folder), folder_shard_size=1)]
    assert before[0] == after[0] and before[1] != after[1]


def test_a_key_repeated_in_another_shard_is_no_error_when_read(tmp_path: Path) -> None:
    write_tar(tmp_path / "a.tar", {"x.png": PNG})
    write_tar(tmp_path / "b.tar", {"x.png": PNG, "y.png": PNG})
    for shard in discover_shards(str(tmp_path)):
        assert all(not row["error"] for row in read_shard(shard))


def test_folder_duplicates_and_masks_without_images_get_error_rows(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for name in ("ok.bmp", "ok.webp", "solo.png"):
        (tmp_path / "images" / name).write_bytes(PNG)
    (tmp_path / "masks" / "orphan.png").write_bytes(PNG)
    (tmp_path / "masks" / "ok.png").write_bytes(PNG)
    shards = discover_shards(str(tmp_path), folder_shard_size=1)  # a key's images stay in one shard
    assert [[member[0] for member in shard.members] for shard in shards] == [["ok", "ok"], ["orphan"], ["solo"]]
    rows = [row for shard in shards for row in read_shard(shard)]
    kinds = sorted((row["key"], row["error_kind"]) for row in rows)
    assert kinds == [("ok", ""), ("ok", "duplicate_key"), ("orphan", "missing_image"), ("solo", "")]
    first = next(row for row in rows if row["key"] == "ok" and not row["error"])
    assert first["mask"] == PNG
    duplicate = next(row for row in rows if row["error_kind"] == "duplicate_key")
    assert "ok.webp" in duplicate["error"] and "ok.bmp" in duplicate["error"]


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
    keys = [key for shard in shards for key, *_ in shard.members]
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
    with pytest.raises(InputError, match="holds no images.*found 1 other file.*'readme.txt'"):
        discover_shards(str(tmp_path))


@pytest.mark.parametrize("layout", ["tar", "folder", "parquet"])
def test_samples_are_read_for_the_asked_keys_only_as_a_run_reads_them(tmp_path: Path, layout: str) -> None:
    from pipeline.config import SampleDataConfig
    from pipeline.io.readers import read_samples
    from pipeline.sample_data import write_sample_data

    write_sample_data(SampleDataConfig(output=str(tmp_path), num_images=6, num_shards=1, layout=layout,
                                       min_size=32, max_size=40))
    shard = discover_shards(str(tmp_path))[0]
    rows = {row["key"]: row for row in read_shard(shard)}
    wanted = {"sample-000001", "sample-000004", "not-there"}
    found = read_samples(rows["sample-000001"]["source"], wanted)
    assert set(found) == {"sample-000001", "sample-000004"}
    for key, (image, mask, instances) in found.items():
        assert image == rows[key]["image"] and mask == rows[key]["mask"] and instances is None


@pytest.mark.parametrize("layout", ["tar", "folder", "parquet"])
def test_instance_label_images_are_read_in_every_layout(tmp_path: Path, layout: str) -> None:
    from pipeline.config import SampleDataConfig
    from pipeline.sample_data import sample_with_instances, write_sample_data

    cfg = SampleDataConfig(output=str(tmp_path / "data"), num_images=3, num_shards=1, layout=layout, instances=True)
    write_sample_data(cfg)
    rows = {key: row for shard in discover_shards(cfg.output) for key, row in rows_by_key(shard).items()}
    assert sorted(rows) == ["sample-000000", "sample-000001", "sample-000002"]
    for index, key in enumerate(sorted(rows)):
        _, mask, instances = sample_with_instances(cfg, index)
        assert rows[key]["instances"] == encode_png(instances) and rows[key]["mask"] == encode_png(mask)
        assert instances.max() >= 1 and ((instances > 0) == (mask > 0)).all()  # every object pixel has its label


def test_instances_without_an_image_is_an_orphan_row(tmp_path: Path) -> None:
    write_tar(tmp_path / "s.tar", {"a.png": PNG, "a.instances.png": PNG, "lost.instances.png": PNG})
    rows = rows_by_key(discover_shards(str(tmp_path))[0])
    assert rows["a"]["instances"] == PNG and not rows["a"]["error"]
    assert rows["lost"]["error_kind"] == "missing_image" and "instances but no image" in rows["lost"]["error"]


def test_compressed_tar_shards_are_read_beside_plain_ones_and_a_cut_one_keeps_its_first_members(tmp_path: Path) -> None:
    import gzip

    write_tar(tmp_path / "a.tar", {"x.png": PNG})
    write_tar(tmp_path / "plain.tar", {"y.png": PNG, "y.mask.png": PNG})
    (tmp_path / "b.tar.gz").write_bytes(gzip.compress((tmp_path / "plain.tar").read_bytes()))
    (tmp_path / "c.tgz").write_bytes(gzip.compress((tmp_path / "plain.tar").read_bytes()))
    (tmp_path / "plain.tar").unlink()
    shards = discover_shards(str(tmp_path))
    assert [shard.name for shard in shards] == ["a", "b.tar.gz", "c.tgz"]
    for shard in shards[1:]:
        rows = rows_by_key(shard)
        assert set(rows) == {"y"} and rows["y"]["image"] == PNG and rows["y"]["mask"] == PNG and not rows["y"]["error"]
    write_tar(tmp_path / "big.tar", {"first.png": PNG, "second.png": bytes(np.random.default_rng(0).integers(0, 255, 20000, dtype=np.uint8))})
    packed = gzip.compress((tmp_path / "big.tar").read_bytes())
    (tmp_path / "big.tar").unlink()
    (tmp_path / "cut.tgz").write_bytes(packed[: len(packed) // 2])
    rows = rows_by_key(next(s for s in discover_shards(str(tmp_path)) if s.name == "cut.tgz"))
    assert rows["first"]["image"] == PNG and not rows["first"]["error"]
    assert rows["cut.tgz"]["error_kind"] == "unreadable_shard" and "gzip stream cut off" in rows["cut.tgz"]["error"]
    assert discover_shards(str(tmp_path / "c.tgz"))[0].name == "c.tgz"  # one compressed shard as the input


def test_masks_in_any_image_format_pair_with_their_images(tmp_path: Path) -> None:
    from PIL import Image

    jpeg = io.BytesIO()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(jpeg, format="JPEG")
    (tmp_path / "t").mkdir()
    write_tar(tmp_path / "t" / "s.tar",
              {"a.png": PNG, "a.mask.jpg": jpeg.getvalue(), "b.gif": PNG})
    rows = rows_by_key(discover_shards(str(tmp_path / "t"))[0])
    assert set(rows) == {"a", "b"} and rows["a"]["mask"] == jpeg.getvalue() and not rows["a"]["error"]
    folder = tmp_path / "f"
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    (folder / "images" / "k.png").write_bytes(PNG)
    (folder / "masks" / "k.jpg").write_bytes(jpeg.getvalue())
    rows = rows_by_key(discover_shards(str(folder))[0])
    assert rows["k"]["mask"] == jpeg.getvalue()


def test_two_shards_that_would_write_under_one_name_are_refused(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    write_tar(tmp_path / "a" / "b.tar", {"x.png": PNG})
    write_tar(tmp_path / "a__b.tar", {"y.png": PNG})
    with pytest.raises(InputError, match=r"would both write their outputs as 'a__b'; rename one"):
        discover_shards(str(tmp_path))
