"""The data stream's scheduling loop pauses instead of spinning when no task runs (pipeline.raypatch)."""

from __future__ import annotations

import logging
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import raypatch


class Operator:
    def __init__(self, running: int) -> None:
        self.running = running

    def get_active_tasks(self) -> list[int]:
        return list(range(self.running))


@pytest.mark.parametrize(("running", "pauses"), [((0, 0), [raypatch.IDLE_PAUSE_S]), ((0, 2), []), ((1,), [])])
def test_loop_pauses_only_when_no_operator_has_a_running_task(running: tuple[int, ...], pauses: list[float]) -> None:
    calls: list[tuple] = []
    slept: list[float] = []
    wrapped = raypatch.pausing(lambda topology, *args, **kwargs: calls.append((topology, args, kwargs)) or 7,
                               sleep=slept.append)
    topology = {Operator(n): None for n in running}
    assert wrapped(topology, "budget", guard=1) == 7  # the original's result, called as it was
    assert calls == [(topology, ("budget",), {"guard": 1})]
    assert slept == pauses


def test_install_patches_the_executor_once() -> None:
    from ray.data._internal.execution import streaming_executor

    assert raypatch.install()
    patched = streaming_executor.process_completed_tasks
    assert patched.segpipe_pausing
    assert raypatch.install()
    assert streaming_executor.process_completed_tasks is patched  # not wrapped twice


def test_an_untested_ray_version_is_warned_about(monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    import ray
    from ray.data._internal.execution import streaming_executor

    monkeypatch.setattr(ray, "__version__", "9.1.0")
    monkeypatch.setattr(streaming_executor, "process_completed_tasks", lambda topology: None)
    with caplog.at_level(logging.WARNING, logger="pipeline.raypatch"):
        assert raypatch.install()
    assert "Ray 9.1.0" in caplog.text and "written for Ray 2.60" in caplog.text
    monkeypatch.delattr(streaming_executor, "process_completed_tasks")
    with caplog.at_level(logging.WARNING, logger="pipeline.raypatch"):
        assert not raypatch.install()
    assert "is not applied" in caplog.text


def test_importing_the_library_patches_nothing_and_the_training_stream_installs_it(tmp_path: Path) -> None:
    """Any process that unpickles the training stream's data function (Ray Train's SplitCoordinator
    among them) installs the pause; importing the library does not: checked in a fresh interpreter."""
    from pipeline.train.data import TrainingBatches

    (tmp_path / "batches.pickle").write_bytes(pickle.dumps(TrainingBatches(patch=0)))
    probe = ("import pickle, pipeline.io.readers, pipeline.segment.run, pipeline.train.data; "
             "from ray.data._internal.execution import streaming_executor as s; "
             "assert not hasattr(s.process_completed_tasks, 'segpipe_pausing'), 'patched on import'; "
             f"pickle.loads(open({str(tmp_path / 'batches.pickle')!r}, 'rb').read()); "
             "print(s.process_completed_tasks.segpipe_pausing)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "True"
