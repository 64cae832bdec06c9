"""Workaround for a busy loop in Ray Data's streaming executor (seen with Ray 2.60).

When no task of the stream is running, because every operator is held back by output
backpressure (its consumer, a training step or a model actor, is slower than the data stage),
the executor's scheduling loop has nothing to ``ray.wait`` on and goes round without pause,
taking most of a CPU core in the process that drives the stream: Ray Train's SplitCoordinator
actor, or the consumer's own process. On a small node that core is taken from the consumer.
:func:`install` makes the loop pause ``IDLE_PAUSE_S`` when it finds no running task.

Measured on 2 CPU cores, 1 training worker on ISBI windows: the SplitCoordinator went from
45-50 % to about 6 % of a core (see README, "Training").
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

IDLE_PAUSE_S = 0.02


def pausing(original: Callable[..., Any], sleep: Callable[[float], Any] = time.sleep) -> Callable[..., Any]:
    """Return ``original`` (the executor's ``process_completed_tasks(topology, ...)``) made to pause
    ``IDLE_PAUSE_S`` after a call in which no operator of ``topology`` had a running task."""

    @functools.wraps(original)
    def process_completed_tasks(topology: Any, *args: Any, **kwargs: Any) -> Any:
        idle = not any(op.get_active_tasks() for op in topology)
        result = original(topology, *args, **kwargs)
        if idle:
            sleep(IDLE_PAUSE_S)
        return result

    process_completed_tasks.segpipe_pausing = True  # type: ignore[attr-defined]
    return process_completed_tasks


def install() -> bool:
    """Patch the executor's scheduling loop in this process; return True if it is (now) patched.

    Idempotent. Returns False, changing nothing, where this Ray version has no such function.
    """
    try:
        from ray.data._internal.execution import streaming_executor
    except ImportError:
        return False
    original = getattr(streaming_executor, "process_completed_tasks", None)
    if original is None:
        return False
    if not getattr(original, "segpipe_pausing", False):
        streaming_executor.process_completed_tasks = pausing(original)
    return True
