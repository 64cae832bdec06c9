"""Connecting to Ray (the session already running, a cluster address, or a new local instance), and
the CPU priority of the processes Ray runs the stages in."""

from __future__ import annotations

import logging
import os

LOCAL_OBJECT_STORE_BYTES = 2 * 1024**3


def connect_ray(address: str | None) -> None:
    """Connect to Ray: the running session, ``address`` / ``RAY_ADDRESS``, or a new local instance."""
    import ray

    if ray.is_initialized():
        return
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address, logging_level=logging.WARNING)
    else:
        ray.init(address="local", object_store_memory=LOCAL_OBJECT_STORE_BYTES, include_dashboard=False,
                 logging_level=logging.WARNING)


def largest_node_cpus() -> float:
    """Return the CPU count of the largest live node of the connected cluster (0 if none)."""
    import ray

    return max((node["Resources"].get("CPU", 0.0) for node in ray.nodes() if node.get("Alive")), default=0.0)


def set_process_nice(nice: int) -> int:
    """Set the scheduling niceness of every thread of this process to ``nice``; return the value in effect.

    The CPU stages around the model (read, prepare, finish) run at a higher niceness than the
    predictor actors, so that on a node with few cores the model's threads get a core whenever
    they can run, and the stages fill the gaps instead of stalling the model's parallel ops.
    Raising niceness is always allowed; lowering it may not be (then the current value stays).
    On Linux niceness is per thread, so each thread of the process is set.
    """
    if not hasattr(os, "setpriority"):
        return 0
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if current == nice:
        return current
    try:
        tasks = [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:
        tasks = [0]
    try:
        for tid in tasks:
            try:
                os.setpriority(os.PRIO_PROCESS, tid, nice)
            except ProcessLookupError:  # the thread ended meanwhile
                continue
    except PermissionError:
        logging.getLogger(__name__).warning("cannot change this process's niceness from %d to %d (not permitted)",
                                            current, nice)
    return os.getpriority(os.PRIO_PROCESS, 0)
