"""CPU priority of the stage processes: the stages yield the cores to the model actors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="per-thread niceness is read from Linux /proc")


def run_python(code: str) -> dict:
    """Run ``code`` in a fresh interpreter (niceness cannot always be lowered back) and return its JSON output."""
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_lower_priority_lowers_every_thread_once() -> None:
    out = run_python("""
        import json, os, threading
        from pipeline.cluster import lower_priority
        stop = threading.Event()
        workers = [threading.Thread(target=stop.wait) for _ in range(3)]
        for worker in workers:
            worker.start()
        before = os.getpriority(os.PRIO_PROCESS, 0)
        first = lower_priority(3)
        again = lower_priority(3)  # relative to the niceness the process started with, not cumulative
        nices = [int(open(f"/proc/self/task/{tid}/stat").read().rsplit(")", 1)[1].split()[16])
                 for tid in os.listdir("/proc/self/task")]
        stop.set()
        print(json.dumps({"before": before, "first": first, "again": again, "nices": nices}))
    """)
    target = min(19, out["before"] + 3)
    assert len(out["nices"]) >= 4  # the main thread and the three others
    assert out["first"] == out["again"] == target
    assert set(out["nices"]) == {target}


def test_predictor_takes_back_the_priority_a_stage_lowered(tiny_model: str) -> None:
    out = run_python(f"""
        import json, os
        from pipeline.cluster import lower_priority
        from pipeline.predictor import SegmentationPredictor
        base = os.getpriority(os.PRIO_PROCESS, 0)
        lowered = lower_priority(5)
        SegmentationPredictor({tiny_model!r})
        print(json.dumps({{"base": base, "lowered": lowered, "after": os.getpriority(os.PRIO_PROCESS, 0),
                          "root": os.geteuid() == 0}}))
    """)
    assert out["lowered"] == min(19, out["base"] + 5)
    if out["root"]:
        assert out["after"] == out["base"]
    else:  # an unprivileged process may not lower its niceness: it keeps the stage's (and logs a warning)
        assert out["after"] == out["lowered"]
