"""Workaround for a busy loop in Ray Data's streaming executor, written for Ray 2.60.

Why it exists: when no task of a stream is running, because every operator is held back by
output backpressure (its consumer, a training step or a model actor, is slower than the data
stage), the executor's scheduling loop has nothing to ``ray.wait`` on and goes round without
pause, taking most of a CPU core in the process that drives the stream: Ray Train's
SplitCoordinator actor for training, the driver for segmentation. On a small node that core is
taken from the consumer. :func:`install` makes the loop pause ``IDLE_PAUSE_S`` when it finds no
running task. Measured on 2 CPU cores, 1 training worker on ISBI windows: the SplitCoordinator
went from 45-50 % to about 6 % of a core (docs/benchmarks.md).

It is installed explicitly where a stream is driven: :func:`pipeline.segment.run.run_segmentation`
before it iterates, and :class:`pipeline.train.data.TrainingBatches` wherever it is unpickled (the
SplitCoordinator among those processes). Nothing is patched on import.

How to tell whether a newer Ray still needs it: train with one worker on a data set whose step is
slower than its data stage (``python jobs/benchmarks/quality_isbi.py --minutes 2``, or any
``segpipe train`` on CPU) with ``SEGPIPE_RAY_PATCH=0`` in the environment, and watch the
``SplitCoordinator`` process in ``top``: near a whole core means the loop still spins and the
patch is needed; a few percent means Ray fixed it, and this module and ``TESTED_RAY`` can go.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

IDLE_PAUSE_S = 0.02
TESTED_RAY = ("2.60.",)  # versions the patch was written for and measured with (pyproject bounds ray the same)


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

    Idempotent. ``SEGPIPE_RAY_PATCH=0`` turns it off. Where this Ray has no such function, a
    warning is logged and nothing changes; on a Ray version other than :data:`TESTED_RAY` the
    patch is still applied (the function it wraps has the same signature) with a warning.
    """
    if os.environ.get("SEGPIPE_RAY_PATCH", "1") == "0":
        return False
    import ray

    try:
        from ray.data._internal.execution import streaming_executor
    except ImportError:
        streaming_executor = None
    original = getattr(streaming_executor, "process_completed_tasks", None)
    if original is None:
        log.warning("Ray %s has no streaming_executor.process_completed_tasks: the pause for Ray Data's idle "
                    "scheduling loop (pipeline/raypatch.py, written for Ray %s) is not applied", ray.__version__,
                    "/".join(v.rstrip(".") for v in TESTED_RAY))
        return False
    if getattr(original, "segpipe_pausing", False):
        return True
    if not ray.__version__.startswith(TESTED_RAY):
        log.warning("applying the pause for Ray Data's idle scheduling loop (pipeline/raypatch.py) to Ray %s; it was "
                    "written for Ray %s: see the module's notes on telling whether this Ray still needs it",
                    ray.__version__, "/".join(v.rstrip(".") for v in TESTED_RAY))
    streaming_executor.process_completed_tasks = pausing(original)
    return True
