"""Exactly once through crashes: re-runs skip committed shards and redo half-written ones, killed actors
lose nothing, and outputs of another run are refused (a killed driver: tests/segment/test_objects_run.py)."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.config import ConfigError, SampleDataConfig, SegmentConfig
from pipeline.model import ModelInfo, build_unet, save_artifact
from pipeline.sample_data import write_sample_data
from pipeline.segment.run import run_segmentation
from tests.conftest import TINY_CLASSES, TINY_UNET

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_cluster")]


def metrics_rows(output: Path) -> list[dict]:
    """Return the rows of the committed shards (those with a marker), as a report reads them."""
    committed = {p.stem for p in (output / "_done").glob("*.json")}
    files = [str(p) for p in sorted((output / "metrics").glob("*.parquet")) if p.stem in committed]
    return pads.dataset(files, format="parquet").to_table().to_pylist() if files else []


def assert_exactly_once(output: Path, keys: set[str]) -> None:
    """Every input key appears once in the committed metrics, and every ok row's mask decodes at its size."""
    rows = metrics_rows(output)
    seen = [row["key"] for row in rows]
    assert sorted(seen) == sorted(keys), "keys missing or repeated"
    for row in rows:
        assert row["status"] == "ok"
        assert Image.open(row["mask_uri"]).size == (row["width"], row["height"])


def committed(output: Path) -> int:
    """Return how many shards have a commit marker."""
    return len(list((output / "_done").glob("*.json")))


def run_record(output: Path) -> dict:
    """Return run.json (empty while it is not there or half-written)."""
    try:
        return json.loads((output / "run.json").read_text())
    except (OSError, ValueError):
        return {}


def sample_keys(count: int) -> set[str]:
    return {f"sample-{i:06d}" for i in range(count)}


def test_rerun_skips_committed_shards_and_redoes_a_half_written_one(tmp_path: Path, tiny_model: str,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    data, output = tmp_path / "data", tmp_path / "out"
    write_sample_data(SampleDataConfig(output=str(data), num_images=16, num_shards=4, min_size=32, max_size=48))
    cfg = SegmentConfig(input=str(data), model=tiny_model, output=str(output), batch_size=4, progress_seconds=0.01)
    with caplog.at_level(logging.INFO, logger="pipeline.segment.record"):
        first = run_segmentation(cfg)
    assert first.resumed_shards == 0 and first.images == 16
    progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith("progress:")]
    assert progress and "4/4 shards committed, 16 images done" in progress[-1] and "ETA" in progress[-1]
    # a crash after shard 2's Parquet was written but before its marker: torn file, no marker
    (output / "_done" / "shard-00002.json").unlink()
    parquet = output / "metrics" / "shard-00002.parquet"
    parquet.write_bytes(parquet.read_bytes()[:100])
    markers_before = {p.name: p.read_text() for p in (output / "_done").glob("*.json")}

    second = run_segmentation(cfg)

    assert second.resumed_shards == 3 and second.images == 16 and second.run_id == first.run_id
    assert {p.name: p.read_text() for p in (output / "_done").glob("*.json") if p.name in markers_before} == markers_before
    assert_exactly_once(output, sample_keys(16))
    third = run_segmentation(cfg)  # everything committed: nothing to do, same counts
    assert third.resumed_shards == 4 and third.images == 16
    run = json.loads((output / "run.json").read_text())
    assert run["status"] == "finished" and run["summary"]["resumed_shards"] == 4


def retar(path: Path, members: dict[str, bytes]) -> None:
    """Write a tar at ``path`` holding ``members`` (name -> bytes)."""
    with tarfile.open(path, "w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


def tar_members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as archive:
        return {m.name: archive.extractfile(m).read() for m in archive.getmembers()}


def outcome(output: Path) -> Counter:
    """Return the committed rows as (shard file, key, status) with each ok row's mask bytes."""
    return Counter((Path(row["source"]).name, row["key"], row["status"],
                    Path(row["mask_uri"]).read_bytes() if row["mask_uri"] else b"") for row in metrics_rows(output))


def test_a_replaced_an_added_and_a_removed_shard_are_noticed_on_resume(tmp_path: Path, tiny_model: str) -> None:
    data, output = tmp_path / "data", tmp_path / "out"
    write_sample_data(SampleDataConfig(output=str(data), num_images=8, num_shards=2, min_size=32, max_size=48))
    cfg = SegmentConfig(input=str(data), model=tiny_model, output=str(output), batch_size=4)
    run_segmentation(cfg)
    kept_mask = (output / "masks" / "shard-00001" / "sample-000004.png").read_bytes()
    kept_marker = (output / "_done" / "shard-00001.json").read_text()
    # shard 0 replaced under its name by other images; a shard that sorts first added, repeating a key of shard 1
    pictures = list(tar_members(data / "shard-00000.tar").values())
    retar(data / "shard-00000.tar", {"new-a.png": pictures[2], "new-b.png": pictures[0]})
    retar(data / "a-first.tar", {"sample-000004.png": pictures[0]})

    second = run_segmentation(cfg)

    assert second.changed_shards == ("shard-00000",) and second.resumed_shards == 1 and second.images == 7
    assert (output / "_done" / "shard-00001.json").read_text() == kept_marker
    assert (output / "masks" / "shard-00001" / "sample-000004.png").read_bytes() == kept_mask  # never overwritten
    assert sorted(p.name for p in (output / "masks" / "shard-00000").iterdir()) == ["new-a.png", "new-b.png"]
    assert (output / "masks" / "a-first" / "sample-000004.png").is_file()
    assert second.repeated_keys == {"count": 1, "examples": [{"key": "sample-000004",
                                                              "shards": ["a-first", "shard-00001"]}]}
    assert json.loads((output / "run.json").read_text())["changed_shards"] == ["shard-00000"]
    # a fresh run over today's input gives the same rows and masks as the resumed one
    fresh = run_segmentation(replace(cfg, output=str(tmp_path / "fresh")))
    assert fresh.repeated_keys == second.repeated_keys
    assert outcome(tmp_path / "fresh") == outcome(output)

    (data / "shard-00001.tar").unlink()
    third = run_segmentation(cfg)
    assert third.removed_shards == ("shard-00001",) and third.changed_shards == () and third.resumed_shards == 2
    record = json.loads((output / "run.json").read_text())
    assert record["removed_shards"] == ["shard-00001"] and "no longer in the input" in third.line()


@contextlib.contextmanager
def small_file_system(path: Path, size: str) -> Iterator[None]:
    """Mount a tmpfs of ``size`` at ``path`` (skip where this machine does not let the test mount one)."""
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True).returncode == 0
    if not mounted:
        pytest.skip("mounting a tmpfs needs root here; tests/io/test_storage.py covers a full disk with a fake file")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_full_output_disk_stops_with_one_message_and_resumes_once_there_is_space(
        tmp_path: Path, tiny_model: str, capsys: pytest.CaptureFixture[str]) -> None:
    from jobs import cli

    data, output = tmp_path / "data", tmp_path / "small" / "out"
    write_sample_data(SampleDataConfig(output=str(data), num_images=16, num_shards=8, min_size=32, max_size=48))
    arguments = ["segment", "--input", str(data), "--model", tiny_model, "--output", str(output), "--batch-size", "2"]
    with small_file_system(tmp_path / "small", "2m"):
        filler = tmp_path / "small" / "filler"
        free = os.statvfs(filler.parent)
        filler.write_bytes(b"\0" * (free.f_bavail * free.f_frsize - 48 * 1024))  # room for about two shards

        assert cli.main(arguments) == 2
        err = capsys.readouterr().err  # (in this process Ray Data's own log lines go to stderr too)
        message = [line for line in err.splitlines() if line.startswith("segpipe")]
        assert "Traceback" not in err and len(message) == 1, err
        assert "No space left on device" in message[0] and str(output) in message[0]
        assert "re-run the same command" in message[0]
        done = {p.stem for p in (output / "_done").glob("*.json")} if (output / "_done").exists() else set()
        assert len(done) < 8
        for name in done:  # what is committed is whole; nothing half-written sits under a final name
            json.loads((output / "_done" / f"{name}.json").read_text())
            assert pq.read_table(output / "metrics" / f"{name}.parquet").num_rows == 2
        assert not [p for p in output.rglob("*") if ".partial-" in p.name]

        filler.unlink()
        assert cli.main(arguments) == 0
        assert_exactly_once(output, sample_keys(16))


def test_another_model_or_input_is_refused_unless_overwrite(tmp_path: Path, tiny_model: str) -> None:
    data, output = tmp_path / "data", tmp_path / "out"
    write_sample_data(SampleDataConfig(output=str(data), num_images=4, num_shards=1, min_size=32, max_size=48))
    run_segmentation(SegmentConfig(input=str(data), model=tiny_model, output=str(output)))
    import keras

    keras.utils.set_random_seed(7)
    other_model = str(tmp_path / "other-model")
    save_artifact(build_unet(TINY_UNET), ModelInfo(spec=TINY_UNET, class_names=TINY_CLASSES), other_model)

    with pytest.raises(ConfigError, match=r"another model_sha256.*--overwrite"):
        run_segmentation(SegmentConfig(input=str(data), model=other_model, output=str(output)))
    other_data = tmp_path / "data2"
    write_sample_data(SampleDataConfig(output=str(other_data), num_images=2, num_shards=1, seed=5, min_size=32, max_size=48))
    with pytest.raises(ConfigError, match=r"another input"):
        run_segmentation(SegmentConfig(input=str(other_data), model=tiny_model, output=str(output)))

    with pytest.raises(ConfigError, match=r"another tta"):  # TTA changes every score: not the same run
        run_segmentation(SegmentConfig(input=str(data), model=tiny_model, output=str(output), tta=True))
    with pytest.raises(ConfigError, match=r"another tiling"):  # so does the tiling, and each of its settings
        run_segmentation(SegmentConfig(input=str(data), model=tiny_model, output=str(output), tiling="windows"))
    # auto resolves to the resize for this resize-scale model: the same run, continued (nothing left to do)
    assert run_segmentation(SegmentConfig(input=str(data), model=tiny_model, output=str(output),
                                          tiling="auto")).resumed_shards == 1

    replaced = run_segmentation(SegmentConfig(input=str(other_data), model=other_model, output=str(output), overwrite=True))
    assert replaced.images == 2 and replaced.resumed_shards == 0
    assert_exactly_once(output, sample_keys(2))
    assert len(list((output / "masks").rglob("*.png"))) == 2  # the old run's masks are gone

    record = json.loads((output / "run.json").read_text())
    del record["layout"]  # an output of the layout before per-shard folders
    (output / "run.json").write_text(json.dumps(record))
    with pytest.raises(ConfigError, match=r"earlier segpipe with another output layout.*--overwrite"):
        run_segmentation(SegmentConfig(input=str(other_data), model=other_model, output=str(output)))


def alive_actor_pids(name_part: str) -> list[int]:
    """Return the PIDs of the session's live actors whose class name contains ``name_part`` (from the GCS)."""
    from ray._private.state import actors

    return [info["Pid"] for info in actors(actor_state_name="ALIVE").values()
            if name_part in info["ActorClassName"] and info["Pid"]]


def test_killing_actors_mid_run_loses_nothing(tmp_path: Path, tiny_model: str) -> None:
    data, output = tmp_path / "data", tmp_path / "out"
    write_sample_data(SampleDataConfig(output=str(data), num_images=40, num_shards=10, min_size=32, max_size=48))
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["summary"] = run_segmentation(SegmentConfig(input=str(data), model=tiny_model, output=str(output),
                                                                batch_size=2))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    kills = []
    targets = ["SegmentationPredictor", "MaskWriter"]  # the model actor first, then a mask writer
    deadline = time.monotonic() + 300
    while thread.is_alive() and targets and time.monotonic() < deadline:
        if committed(output) >= 1 + 3 * len(kills):
            pids = alive_actor_pids(targets[0])
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                kills.append(targets.pop(0))
        time.sleep(0.1)
    thread.join(timeout=600)
    assert "error" not in outcome, outcome.get("error")
    assert kills, "no actor was killed mid-run"
    summary = outcome["summary"]
    assert summary.images == 40 and summary.errors == 0
    assert_exactly_once(output, sample_keys(40))


@pytest.mark.parametrize("stop", ["ctrl-c", "sigterm"])
def test_ctrl_c_stops_with_one_line_records_interrupted_and_leaves_no_ray_behind(tmp_path: Path, stop: str) -> None:
    """Ctrl-C (SIGINT to the terminal's whole foreground group) and a scheduler's SIGTERM (to the
    command alone) both interrupt: one line, run.json says interrupted, no Ray left, it resumes."""
    import psutil

    data, output, model = tmp_path / "data", tmp_path / "out", str(tmp_path / "model")
    # enough shards that the run is still going well after its first commit (about 25 images/s here)
    write_sample_data(SampleDataConfig(output=str(data), num_images=160, num_shards=16, min_size=32, max_size=48))
    spec = replace(TINY_UNET, input_size=(256, 256), depth=3, base_filters=16)  # slow enough to interrupt mid-run
    save_artifact(build_unet(spec), ModelInfo(spec=spec, class_names=TINY_CLASSES), model)
    env = {name: value for name, value in os.environ.items() if name != "RAY_ADDRESS"}  # its own local Ray
    process = subprocess.Popen([sys.executable, "-m", "jobs.cli", "segment", "--input", str(data), "--model", model,
                                "--output", str(output), "--batch-size", "4", "stage_cpus=0.2"],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None and committed(output) < 1:
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before Ctrl-C"
    ray_processes = psutil.Process(process.pid).children(recursive=True)
    assert ray_processes  # the local Ray it started: GCS, raylet, workers
    if stop == "ctrl-c":
        os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends: the whole foreground group
    else:
        os.kill(process.pid, signal.SIGTERM)  # what a scheduler (Kubernetes, Slurm, systemd) sends the command
    _, stderr = process.communicate(timeout=120)

    assert process.returncode == (130 if stop == "ctrl-c" else 143), stderr[-3000:]
    by = " (SIGTERM)" if stop == "sigterm" else ""
    assert stderr.strip().splitlines()[-1] == f"segpipe segment: interrupted{by}; re-run the same command to resume"
    assert "Traceback" not in stderr
    assert run_record(output)["status"] == "interrupted"
    gone, alive = psutil.wait_procs(ray_processes, timeout=10)
    assert not alive, [p.info for p in alive] if alive else None

    resumed = run_segmentation(SegmentConfig(input=str(data), model=model, output=str(output), batch_size=4))
    assert resumed.resumed_shards >= 1
    assert_exactly_once(output, sample_keys(160))
