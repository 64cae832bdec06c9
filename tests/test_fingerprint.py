"""The data set's fingerprint (``segpipe inspect``) on a hand-made set whose figures are checked by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import InspectConfig
from pipeline.fingerprint import inspect_data
from pipeline.fingerprint.run import sampled_shards
from pipeline.imaging import IGNORE, encode_png
from pipeline.io.shards import Shard


def hand_set(folder: Path) -> None:
    """Write four images: ``bright`` (grey stored as RGB, a bright 4x4 square on dark, a 1-px ignore ring),
    ``dark`` (one channel, 40x48, a dark 2x3 object on bright), ``rare`` (RGB, two pixels of the rare class,
    as bright as their background) and ``broken`` (not an image)."""
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    grey = np.full((32, 32), 20, np.uint8)
    grey[8:12, 8:12] = 220
    mask = np.zeros((32, 32), np.uint8)
    mask[7:13, 7:13] = IGNORE
    mask[8:12, 8:12] = 1
    (folder / "images" / "bright.png").write_bytes(encode_png(np.dstack([grey] * 3)))
    (folder / "masks" / "bright.png").write_bytes(encode_png(mask))
    dark = np.full((40, 48), 200, np.uint8)
    dark[10:12, 20:23] = 10
    dark_mask = np.zeros((40, 48), np.uint8)
    dark_mask[10:12, 20:23] = 1
    (folder / "images" / "dark.png").write_bytes(encode_png(dark))
    (folder / "masks" / "dark.png").write_bytes(encode_png(dark_mask))
    colour = np.zeros((32, 32, 3), np.uint8)
    colour[..., 0] = 100
    rare_mask = np.zeros((32, 32), np.uint8)
    rare_mask[0, 0:2] = 2
    (folder / "images" / "rare.png").write_bytes(encode_png(colour))
    (folder / "masks" / "rare.png").write_bytes(encode_png(rare_mask))
    (folder / "images" / "broken.png").write_bytes(b"not a png")
    (folder / "labels.yaml").write_text("classes: [background, cell, rare]\nignore: [255]\n")


@pytest.mark.usefixtures("ray_cluster")
def test_the_fingerprint_of_a_hand_made_set(tmp_path: Path) -> None:
    hand_set(tmp_path / "data")
    fingerprint = inspect_data(InspectConfig(data=str(tmp_path / "data"), output=str(tmp_path / "fingerprint.json")))
    doc = json.loads((tmp_path / "fingerprint.json").read_text())
    assert doc == fingerprint.document and doc["label_map"].endswith("labels.yaml") and doc["sampled"] is None
    assert (doc["images"], doc["ok"], doc["errors"]) == (4, 3, {"corrupt_image": 1})
    assert doc["sizes"]["distinct"] == 2 and doc["sizes"]["varies"]
    assert doc["sizes"]["most_common"][0] == {"width": 32, "height": 32, "images": 2}
    assert doc["channels"] == {"1": 1, "3": 2} and doc["grey_stored_as_colour"] == 1 and doc["bits"] == {"8": 3}
    assert doc["polarity"] == {"bright_on_dark": 1, "dark_on_bright": 1, "no_contrast": 1, "mixed": True}  # rare: none
    labelled = 32 * 32 - 20 + 40 * 48 + 32 * 32  # the ring of 20 ignored pixels counts nowhere
    shares = [c["pixel_share"] for c in doc["classes"]]
    assert shares == pytest.approx([(labelled - 16 - 6 - 2) / labelled, (16 + 6) / labelled, 2 / labelled])
    assert [c["name"] for c in doc["classes"]] == ["background", "cell", "rare"]
    assert [c["images"] for c in doc["classes"]] == [3, 2, 1]
    assert doc["ignored_share"] == pytest.approx(20 / (labelled + 20))
    assert doc["objects"]["counted"] == 3 and doc["objects"]["sources"] == {"components": 3}  # 16, 6 and 2 px
    assert doc["objects"]["area"]["p50"] == 6
    text = "\n".join(fingerprint.lines())
    assert "1 colour images are grey" in text and "mixed" in text and "corrupt_image 1" in text


def test_a_large_archive_is_sampled_by_shards_spread_over_it() -> None:
    shards = [Shard(f"s{index}", "folder", f"u{index}", members=tuple((f"k{index}-{m}", "i", None, None)
                                                                     for m in range(10))) for index in range(100)]
    assert sampled_shards(shards, 5000) == shards
    chosen = sampled_shards(shards, 200)
    assert [shard.name for shard in chosen] == [f"s{index}" for index in range(0, 100, 5)]
