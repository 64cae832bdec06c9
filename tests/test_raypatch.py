"""The data stream's scheduling loop pauses instead of spinning when no task runs (pipeline.raypatch)."""

from __future__ import annotations

import subprocess
import sys

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


def test_importing_the_sources_module_installs_it() -> None:
    """Any process that unpickles a stream built by pipeline.sources (Ray Train's SplitCoordinator
    among them) imports that module, which installs the pause: checked in a fresh interpreter."""
    probe = ("from ray.data._internal.execution import streaming_executor as s; "
             "assert not hasattr(s.process_completed_tasks, 'segpipe_pausing'); "
             "import pipeline.sources; print(s.process_completed_tasks.segpipe_pausing)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "True"
