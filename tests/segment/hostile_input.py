"""Hostile inputs: shards that mix every bad case a careless or malicious user can produce.

:func:`write_hostile_input` writes, from a seed, tar shards (or an image folder, or Parquet
files) where good images sit among corrupt, truncated, empty, CMYK and float images, path
escapes, wrong-size and wrong-class masks, hard links, symbolic links, directories, FIFOs and
devices named like images, keys repeated within shards (errors) and across shards (kept),
animated GIF/APNG/WebP, still GIFs, JPEG masks, gzip-compressed tar shards, masks without images, keys
with spaces and colons, misnamed members and headers that declare 40000 x 40000 pixels, in
random proportions. It returns what a run must produce: the ``(key, error_kind, truth_error_kind)`` of every row
(``""`` for none) and the size of every image that must be segmented.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import struct
import tarfile
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pipeline.imaging import encode_png

NUM_CLASSES = 3  # the test model's classes


def png_header_only(width: int, height: int) -> bytes:
    """Return a tiny PNG whose header declares ``width`` x ``height`` pixels (its data is one empty row)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00")) + chunk(b"IEND", b"")


@dataclasses.dataclass
class Member:
    """One tar member (or folder file, or Parquet cell) to write."""

    name: str
    data: bytes = b""
    kind: bytes = tarfile.REGTYPE
    link: str = ""


@dataclasses.dataclass
class Expected:
    """What a run over the hostile input must give."""

    rows: Counter = dataclasses.field(default_factory=Counter)  # (key, error_kind, truth_error_kind) -> count
    sizes: dict[str, list[tuple[int, int]]] = dataclasses.field(default_factory=dict)  # ok key -> its images' sizes
    image_named: int = 0  # image-named members and files (plus masks without image), each owed one row

    def ok(self, key: str, size: tuple[int, int], truth_kind: str = "") -> None:
        self.rows[(key, "", truth_kind)] += 1
        self.sizes.setdefault(key, []).append(size)

    def error(self, key: str, kind: str) -> None:
        self.rows[(key, kind, "")] += 1


class ShardBuilder:
    """Members of one shard plus the expectations they add, built case by case."""

    def __init__(self, index: int, rng: np.random.Generator, expected: Expected, earlier_keys: list[str]) -> None:
        self.index, self.rng, self.expected, self.earlier_keys = index, rng, expected, earlier_keys
        self.members: list[Member] = []
        self.keys: list[str] = []  # keys of this shard's good images, for later duplicates
        self.count = 0

    def key(self, stem: str = "k") -> str:
        self.count += 1
        return f"s{self.index}-{stem}{self.count:03d}"

    def picture(self) -> tuple[bytes, tuple[int, int], np.ndarray]:
        """Return an encoded good image (8- or 16-bit, gray or RGB, PNG or JPEG), its size and a matching mask."""
        height, width = (int(v) for v in self.rng.integers(20, 60, size=2))
        style = self.rng.integers(0, 4)
        if style == 0:
            data = encode_png(self.rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
        elif style == 1:
            data = encode_png(self.rng.integers(0, 255, (height, width), dtype=np.uint8))
        elif style == 2:
            buffer = io.BytesIO()
            Image.fromarray(self.rng.integers(0, 65535, (height, width), dtype=np.uint16)).save(buffer, format="PNG")
            data = buffer.getvalue()
        else:
            buffer = io.BytesIO()
            Image.fromarray(self.rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(buffer, format="JPEG")
            data = buffer.getvalue()
        mask = self.rng.integers(0, NUM_CLASSES, (height, width), dtype=np.uint8)
        return data, (height, width), mask

    def add(self, *members: Member) -> None:
        self.members.extend(members)
        self.expected.image_named += sum(1 for m in members if not m.name.endswith(".mask.png"))

    # ------------------------------------------------------------------ the cases

    def good(self) -> None:
        key = self.key("good")
        data, size, mask = self.picture()
        extension = "jpg" if data[:2] == b"\xff\xd8" else "png"
        self.add(Member(f"{key}.{extension}", data))
        if self.rng.random() < 0.6:
            self.members.append(Member(f"{key}.mask.png", encode_png(mask)))
        self.expected.ok(key, size)
        self.keys.append(key)

    def spaced_and_coloned_key(self) -> None:
        key = self.key("time 12:00:")
        data, size, _ = self.picture()
        self.add(Member(f"{key}.png", data))
        self.expected.ok(key, size)
        self.keys.append(key)

    def broken(self) -> None:
        key = self.key("broken")
        good, _, _ = self.picture()
        data, kind = [(b"\x89PNG\r\n\x1a\n not really", "corrupt_image"), (good[: len(good) // 2], "corrupt_image"),
                      (b"", "corrupt_image"), (cmyk_jpeg(), "unsupported_image"),
                      (float_tiff(), "unsupported_image")][int(self.rng.integers(0, 5))]
        extension = "tif" if data[:2] in (b"II", b"MM") else "png"  # TIFF by name too; the rest by content
        self.add(Member(f"{key}.{extension}", data))
        self.expected.error(key, kind)

    def too_large(self) -> None:
        key = self.key("huge")
        self.add(Member(f"{key}.png", png_header_only(40000, 40000)))
        self.expected.error(key, "image_too_large")

    def bad_mask(self) -> None:
        key = self.key("badmask")
        data, (height, width), _ = self.picture()
        wrong_size = self.rng.random() < 0.5
        mask = np.zeros((height + 1, width), np.uint8) if wrong_size else np.full((height, width), 7, np.uint8)
        self.add(Member(f"{key}.png", data))
        self.members.append(Member(f"{key}.mask.png", encode_png(mask)))
        self.expected.ok(key, (height, width), "mask_size_mismatch" if wrong_size else "mask_classes")  # not scored

    def escape(self) -> None:
        key = self.key("escape")
        data, _, _ = self.picture()
        name = [f"../{key}.png", f"/abs/{key}.png", f"a//{key}.png", f"x::{key}.png"][int(self.rng.integers(0, 4))]
        self.add(Member(name, data))
        self.expected.error(name[: -len(".png")], "unsafe_key")

    def hard_link(self) -> None:
        target, key = self.key("target"), self.key("hardlink")
        data, size, _ = self.picture()
        self.add(Member(f"{target}.png", data), Member(f"{key}.png", kind=tarfile.LNKTYPE, link=f"{target}.png"))
        self.expected.ok(target, size)
        self.expected.ok(key, size)
        self.keys += [target, key]

    def special(self) -> None:
        key = self.key("special")
        kind = [tarfile.SYMTYPE, tarfile.DIRTYPE, tarfile.FIFOTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE][
            int(self.rng.integers(0, 5))]
        self.add(Member(f"{key}.png", kind=kind, link="/etc/passwd" if kind == tarfile.SYMTYPE else ""))
        self.expected.error(key, "unsupported_member")

    def misnamed(self) -> None:
        key = self.key("misnamed")
        data, _, _ = self.picture()
        self.add(Member(f"{key}.v2.png", data))
        self.expected.error(key, "unsupported_member")

    def repeated_here(self) -> None:
        key = self.key("twice")
        first, size, _ = self.picture()
        second, _, _ = self.picture()
        self.add(Member(f"{key}.png", first), Member(f"{key}.jpg", second))
        self.expected.ok(key, size)
        self.expected.error(key, "duplicate_key")
        self.keys.append(key)

    def repeated_from_earlier_shard(self) -> None:
        candidates = [key for key in self.earlier_keys if key not in self.keys]  # not twice in this shard
        if not candidates:
            return self.good()
        key = candidates[int(self.rng.integers(0, len(candidates)))]
        data, size, _ = self.picture()
        self.add(Member(f"{key}.png", data))
        self.expected.ok(key, size)  # kept under its own shard's folder; the run reports the repeat
        self.keys.append(key)
        return None

    def repeated_extensions(self) -> None:
        key = self.key("bmpwebp")
        data, size, _ = self.picture()
        buffers = [io.BytesIO(), io.BytesIO()]
        picture = Image.open(io.BytesIO(data))
        picture.convert("RGB").save(buffers[0], format="BMP")
        picture.convert("RGB").save(buffers[1], format="WEBP")
        self.add(Member(f"{key}.bmp", buffers[0].getvalue()), Member(f"{key}.webp", buffers[1].getvalue()))
        self.expected.ok(key, size)  # .bmp sorts (and is stored) first
        self.expected.error(key, "duplicate_key")
        self.keys.append(key)

    def animated(self) -> None:
        key = self.key("animated")
        frames = [Image.fromarray(self.rng.integers(0, 255, (12, 16), dtype=np.uint8)) for _ in range(3)]
        fmt, extension = [("GIF", "gif"), ("PNG", "png"), ("WEBP", "webp")][int(self.rng.integers(0, 3))]
        buffer = io.BytesIO()
        frames[0].save(buffer, format=fmt, save_all=True, append_images=frames[1:], duration=50)
        self.add(Member(f"{key}.{extension}", buffer.getvalue()))
        self.expected.error(key, "multi_page_image")

    def still_gif(self) -> None:
        key = self.key("gif")
        data, size, _ = self.picture()
        buffer = io.BytesIO()
        Image.open(io.BytesIO(data)).convert("RGB").save(buffer, format="GIF")
        self.add(Member(f"{key}.gif", buffer.getvalue()))
        self.expected.ok(key, size)
        self.keys.append(key)

    def jpeg_mask(self) -> None:
        key = self.key("jpegmask")
        data, size, _ = self.picture()
        buffer = io.BytesIO()
        Image.fromarray(np.zeros(size, np.uint8)).save(buffer, format="JPEG")  # all background: exact in JPEG
        self.add(Member(f"{key}.png", data))
        self.members.append(Member(f"{key}.mask.jpg", buffer.getvalue()))
        self.expected.ok(key, size)
        self.keys.append(key)

    def keyless_row(self) -> None:
        data, _, _ = self.picture()
        row = sum(1 for m in self.members if ".mask." not in m.name)
        self.add(Member("", data))
        self.expected.error(f"shard-{self.index:03d}#row{row}", "missing_key")

    def orphan_mask(self) -> None:
        key = self.key("orphan")
        self.members.append(Member(f"{key}.mask.png", encode_png(np.zeros((8, 8), np.uint8))))
        self.expected.image_named += 1
        self.expected.error(key, "missing_image")


CASES: tuple[Callable[[ShardBuilder], None], ...] = (
    ShardBuilder.good, ShardBuilder.spaced_and_coloned_key, ShardBuilder.broken, ShardBuilder.too_large,
    ShardBuilder.bad_mask, ShardBuilder.escape, ShardBuilder.hard_link, ShardBuilder.special, ShardBuilder.misnamed,
    ShardBuilder.repeated_here, ShardBuilder.repeated_from_earlier_shard, ShardBuilder.repeated_extensions,
    ShardBuilder.orphan_mask, ShardBuilder.animated, ShardBuilder.still_gif, ShardBuilder.jpeg_mask,
)
FOLDER_CASES = (ShardBuilder.good, ShardBuilder.spaced_and_coloned_key, ShardBuilder.broken, ShardBuilder.too_large,
                ShardBuilder.bad_mask, ShardBuilder.repeated_extensions, ShardBuilder.orphan_mask,
                ShardBuilder.animated, ShardBuilder.still_gif, ShardBuilder.jpeg_mask)
PARQUET_CASES = (ShardBuilder.good, ShardBuilder.broken, ShardBuilder.too_large, ShardBuilder.bad_mask,
                 ShardBuilder.repeated_here, ShardBuilder.repeated_from_earlier_shard, ShardBuilder.keyless_row)


def cmyk_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("CMYK", (20, 16), (10, 20, 30, 40)).save(buffer, format="JPEG")
    return buffer.getvalue()


def float_tiff() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.linspace(0, 1, 20 * 16, dtype=np.float32).reshape(16, 20)).save(buffer, format="TIFF")
    return buffer.getvalue()


def write_hostile_input(folder: Path, seed: int, layout: str = "tar", shards: int = 3,
                        cases_per_shard: int = 14) -> Expected:
    """Write hostile shards under ``folder`` (``tar``, ``folder`` or ``parquet`` layout); return what a run
    must give."""
    rng = np.random.default_rng(seed)
    cases = {"tar": CASES, "folder": FOLDER_CASES, "parquet": PARQUET_CASES}[layout]
    weights = rng.dirichlet(np.ones(len(cases)))  # random proportions, different for every seed
    expected = Expected()
    earlier: list[str] = []
    built = []
    for index in range(shards):
        builder = ShardBuilder(index, rng, expected, list(earlier))
        for choice in rng.choice(len(cases), size=cases_per_shard, p=weights):
            cases[choice](builder)
        earlier += builder.keys
        built.append(builder)
    folder.mkdir(parents=True, exist_ok=True)
    writers = {"tar": write_tar_shard, "parquet": write_parquet_shard}
    for builder in built:
        if layout == "folder":
            write_folder_files(folder, builder.members)
        elif layout == "tar" and builder.index % 2:  # every other tar shard gzip-compressed
            write_tar_shard(folder / f"shard-{builder.index:03d}.tar", builder.members)
            plain = folder / f"shard-{builder.index:03d}.tar"
            (folder / f"shard-{builder.index:03d}.tar.gz").write_bytes(gzip.compress(plain.read_bytes()))
            plain.unlink()
        else:
            writers[layout](folder / f"shard-{builder.index:03d}.{layout}", builder.members)
    return expected


def write_tar_shard(path: Path, members: list[Member]) -> None:
    with tarfile.open(path, "w") as archive:
        for member in members:
            info = tarfile.TarInfo(member.name)
            info.type, info.size, info.linkname = member.kind, len(member.data), member.link
            archive.addfile(info, io.BytesIO(member.data) if member.data else None)


def write_folder_files(folder: Path, members: list[Member]) -> None:
    for member in members:
        if ".mask." in member.name:
            stem, extension = member.name.split(".mask.")
            path = folder / "masks" / f"{stem}.{extension}"
        else:
            path = folder / "images" / member.name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(member.data)


def write_parquet_shard(path: Path, members: list[Member]) -> None:
    rows = [(m.name.split(".", 1)[0] or None, m.data) for m in members if ".mask." not in m.name]
    masks = {m.name.split(".mask.")[0]: m.data for m in members if ".mask." in m.name}
    table = pa.table({"key": pa.array([key for key, _ in rows], pa.string()),
                      "image": pa.array([data for _, data in rows], pa.binary()),
                      "mask": pa.array([masks.get(key) if key else None for key, _ in rows], pa.binary())})
    pq.write_table(table, path)
