"""Hostile shards through `segpipe segment`: every input accounted for, nothing of the user's touched.

For several seeds and every input layout, a run over :mod:`tests.segment.hostile_input`'s shards must give
one row per image-named member or file with the kind the case calls for, unique keys among ok
rows, a mask at the image's size for each of them, and nothing written outside the output: the
rest of the test's folder, input included, is byte-for-byte what it was. The same holds when the
driver is killed mid-run and the run resumed.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jobs import cli
from pipeline.model import ModelInfo, build_unet, save_artifact
from tests.conftest import TINY_CLASSES, TINY_UNET
from tests.segment.hostile_input import Expected, write_hostile_input
from tests.segment.test_resume import committed, metrics_rows

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_cluster")]


def tree_digest(root: Path, skip: str) -> dict[str, str]:
    """Return ``{relative path: content hash, or what the entry is}`` for everything under ``root`` but ``skip``."""
    digest = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if relative.parts[0] == skip:
            continue
        if path.is_symlink():
            digest[str(relative)] = f"link to {os.readlink(path)}"
        elif path.is_file():
            digest[str(relative)] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            digest[str(relative)] = "folder"
    return digest


def check_outputs(output: Path, expected: Expected) -> None:
    """Assert the run's committed rows and masks are exactly what the hostile input calls for."""
    rows = metrics_rows(output)
    assert len(rows) == expected.image_named == sum(expected.rows.values())
    assert Counter((row["key"], row["error_kind"] or "", row["truth_error_kind"] or "") for row in rows) == expected.rows
    for row in rows:
        if row["truth_error_kind"]:
            assert row["dice"] is None and row["key"] in row["truth_error"]
    ok = [row for row in rows if row["status"] == "ok"]
    assert len({(row["source"], row["key"]) for row in ok}) == len(ok)
    for row in ok:
        mask = Image.open(row["mask_uri"])
        assert (mask.height, mask.width) == (row["height"], row["width"])
        assert (mask.height, mask.width) in expected.sizes[row["key"]], row["key"]
        assert int(np.asarray(mask).max()) < 3
        assert Path(row["mask_uri"]).resolve().is_relative_to((output / "masks").resolve())
    for row in rows:
        if row["status"] == "error":
            assert row["error"] and row["error_kind"] and row["mask_uri"] is None
    written = {p.resolve() for p in (output / "masks").rglob("*.png")}
    assert written == {Path(row["mask_uri"]).resolve() for row in ok} and len(written) == len(ok)  # none overwritten
    repeated = {key for key, sizes in expected.sizes.items() if len(sizes) > 1}
    summary = json.loads((output / "run.json").read_text())["summary"]
    assert summary["repeated_keys"]["count"] == len(repeated)


@pytest.mark.parametrize(("layout", "seed"), [("tar", 1), ("tar", 2), ("tar", 3), ("folder", 4), ("parquet", 5)])
def test_a_hostile_input_gets_one_row_per_image_and_stays_untouched(tmp_path: Path, tiny_model: str, layout: str,
                                                                    seed: int) -> None:
    expected = write_hostile_input(tmp_path / "in", seed, layout)
    before = tree_digest(tmp_path, skip="out")
    command = ["segment", "--input", str(tmp_path / "in"), "--model", tiny_model, "--output", str(tmp_path / "out"),
               "--batch-size", "8", "folder_shard_size=10"]
    assert cli.main(command) == 0
    check_outputs(tmp_path / "out", expected)
    assert tree_digest(tmp_path, skip="out") == before
    assert cli.main(command) == 0  # a re-run finds every shard committed and changes nothing
    check_outputs(tmp_path / "out", expected)


def test_a_hostile_input_survives_a_driver_kill_and_resume(tmp_path: Path) -> None:
    expected = write_hostile_input(tmp_path / "in", seed=11, shards=6, cases_per_shard=10)
    # a 256x256 model, so shards commit far enough apart for the kill to land between them
    model = tmp_path / "model"
    spec = replace(TINY_UNET, input_size=(256, 256), depth=3, base_filters=16)
    save_artifact(build_unet(spec), ModelInfo(spec=spec, class_names=TINY_CLASSES), str(model))
    before = tree_digest(tmp_path, skip="out")
    arguments = ["segment", "--input", str(tmp_path / "in"), "--model", str(model), "--output", str(tmp_path / "out"),
                 "--batch-size", "4"]
    env = {name: value for name, value in os.environ.items() if name != "RAY_ADDRESS"}  # its own local Ray
    process = subprocess.Popen([sys.executable, "-m", "jobs.cli", *arguments, "stage_cpus=0.2"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None and committed(tmp_path / "out") < 1:
        time.sleep(0.02)
    killed = process.poll() is None
    if killed:
        os.killpg(process.pid, signal.SIGKILL)  # the driver and the local Ray it started
    process.wait(timeout=60)
    assert killed, "the run ended before the kill"
    assert committed(tmp_path / "out") < 6

    assert cli.main(arguments) == 0  # resumed on this session's Ray
    check_outputs(tmp_path / "out", expected)
    assert tree_digest(tmp_path, skip="out") == before
