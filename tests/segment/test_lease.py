"""One run per output: the lease a run holds on its output, its heartbeats, expiry and take-over."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.config import ConfigError
from pipeline.segment import lease


def lease_file(output: Path) -> dict:
    return json.loads((output / "_lease.json").read_text())


def test_a_live_lease_refuses_a_second_run_naming_the_holder_and_is_given_back_at_the_end(tmp_path: Path) -> None:
    output = str(tmp_path / "out")
    held = lease.take(output, None, "night-1", overwrite=False)
    held.confirm()
    try:
        record = lease_file(tmp_path / "out")
        assert record["run_id"] == "night-1" and time.time() - record["heartbeat"] < 5
        # the holder as another live process of this machine (this process's own pid would be a dead run's)
        (tmp_path / "out" / "_lease.json").write_text(json.dumps({**record, "pid": 1}))
        with pytest.raises(ConfigError, match=r"is in use by run night-1 \(host .*, pid \d+, since 20.*\), last "
                                              r"heartbeat \d+ s ago.*let it finish.*--overwrite takes it now"):
            lease.take(output, None, "night-2", overwrite=False)
    finally:
        held.release()
    assert not (tmp_path / "out" / "_lease.json").exists()
    lease.take(output, None, "night-2", overwrite=False).release()  # free again


def test_a_lease_left_by_a_dead_run_is_taken_over(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    output = tmp_path / "out"
    output.mkdir()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    elsewhere = {"run_id": "old", "host": "another-node", "pid": 1, "since": "2026-12-01T00:00:00Z", "token": "x"}
    cases = {"no heartbeat for longer than the expiry": {**elsewhere, "heartbeat": time.time() - lease.EXPIRY_S - 1},
             "its process on this machine is gone": {**lease.take(str(output), None, "probe", False).record,
                                                      "pid": int(gone.stdout), "heartbeat": time.time()}}
    for why, record in cases.items():
        (output / "_lease.json").write_text(json.dumps(record))
        with caplog.at_level(logging.WARNING, logger="pipeline.segment.lease"):
            held = lease.take(str(output), None, "new", overwrite=False)
        assert "taking over output" in caplog.text, why
        assert lease_file(output)["run_id"] == "new"
        held.release()
        caplog.clear()
    (output / "_lease.json").write_text(json.dumps({**elsewhere, "heartbeat": time.time()}))  # alive elsewhere
    with pytest.raises(ConfigError, match="is in use by run old"):
        lease.take(str(output), None, "new", overwrite=False)
    lease.take(str(output), None, "new", overwrite=True).release()  # --overwrite takes even a live one


def test_of_two_runs_taking_the_output_at_once_the_last_writer_keeps_it(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lease, "SETTLE_S", 0.05)
    output = str(tmp_path / "out")
    first = lease.take(output, None, "a", overwrite=False)
    second = lease.take(output, None, "b", overwrite=True)  # as if it had read the output free a moment earlier
    with pytest.raises(ConfigError, match="was taken by run b .* at the same moment"):
        first.confirm()
    second.confirm()
    first.release()  # not its lease any more: left alone
    assert lease_file(tmp_path / "out")["run_id"] == "b"
    second.release()


def test_a_run_whose_output_was_taken_over_stops_at_its_next_check(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lease, "SETTLE_S", 0.0)
    monkeypatch.setattr(lease, "HEARTBEAT_S", 0.02)
    output = str(tmp_path / "out")
    held = lease.take(output, None, "a", overwrite=False)
    held.confirm()
    beat = lease_file(tmp_path / "out")["heartbeat"]
    deadline = time.monotonic() + 10
    while lease_file(tmp_path / "out")["heartbeat"] == beat and time.monotonic() < deadline:
        time.sleep(0.01)
    assert lease_file(tmp_path / "out")["heartbeat"] > beat  # renewed
    held.check()
    lease.take(output, None, "b", overwrite=True)
    while held.lost is None and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(lease.LeaseLost, match="was taken over by run b"):
        held.check()
    held.release()
    assert lease_file(tmp_path / "out")["run_id"] == "b"


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_a_second_run_on_a_busy_output_is_refused_and_a_killed_run_s_lease_does_not_block_its_resume(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import os
    import signal
    from dataclasses import replace

    from jobs import cli
    from pipeline.config import SampleDataConfig
    from pipeline.model import ModelInfo, build_unet, save_artifact
    from pipeline.sample_data import write_sample_data
    from tests.conftest import TINY_CLASSES, TINY_UNET
    from tests.segment.test_resume import assert_exactly_once, sample_keys

    data, output, model = tmp_path / "data", tmp_path / "out", tmp_path / "model"
    write_sample_data(SampleDataConfig(output=str(data), num_images=12, num_shards=6, min_size=32, max_size=48))
    spec = replace(TINY_UNET, input_size=(256, 256), depth=3, base_filters=16)  # slow enough to be caught running
    save_artifact(build_unet(spec), ModelInfo(spec=spec, class_names=TINY_CLASSES), str(model))
    arguments = ["segment", "--input", str(data), "--model", str(model), "--output", str(output), "--batch-size", "2"]
    env = {name: value for name, value in os.environ.items() if name != "RAY_ADDRESS"}  # its own local Ray
    first = subprocess.Popen([sys.executable, "-m", "jobs.cli", *arguments, "stage_cpus=0.2"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while first.poll() is None and not (output / "_lease.json").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert first.poll() is None, "the first run ended before the second started"
        started = time.monotonic()
        assert cli.main(arguments) == 2  # the nightly job firing while last night's still runs
        refused = [line for line in capsys.readouterr().err.splitlines() if line.startswith("segpipe")]
        assert len(refused) == 1 and f"output {output} is in use by run" in refused[0], refused
        assert time.monotonic() - started < 30  # refused before any work, not after doing it all again
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)  # the first run dies holding its lease
        first.wait(timeout=60)
    assert cli.main(arguments) == 0  # its process is gone: the lease does not block the resume
    assert_exactly_once(output, sample_keys(12))
    assert not (output / "_lease.json").exists()
