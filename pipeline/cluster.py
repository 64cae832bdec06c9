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


_BASE_NICE: int | None = None  # this process's niceness before lower_priority first changed it


def niceness() -> int:
    """Return the calling thread's niceness (0 where the OS has none)."""
    return os.getpriority(os.PRIO_PROCESS, 0) if hasattr(os, "getpriority") else 0


def set_niceness(nice: int) -> bool:
    """Set the niceness of every thread of this process (niceness is per thread on Linux); return success.

    Raising it is always allowed; lowering it needs privileges, and without them nothing changes.
    """
    if not hasattr(os, "setpriority"):
        return False
    try:
        threads = [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:
        threads = [0]
    try:
        for tid in threads:
            try:
                os.setpriority(os.PRIO_PROCESS, tid, nice)
            except ProcessLookupError:  # the thread ended meanwhile
                continue
    except PermissionError:
        return False
    return True


def lower_priority(steps: int) -> int:
    """Run this process ``steps`` niceness steps below the priority it started with (at most 19); return it.

    The CPU stages around the model (read, prepare, finish) call this so that on a node with few
    cores the predictor actors' threads get a core whenever they can run and the stages fill the
    gaps, instead of stalling the model's parallel ops. Ray starts its worker processes at
    niceness 15, so by default the stages run at 19 and the actors at 15. Calling it again is
    cheap and changes nothing.
    """
    global _BASE_NICE
    current = niceness()
    if _BASE_NICE is None:
        _BASE_NICE = current
    target = min(19, _BASE_NICE + steps)
    if current != target and not set_niceness(target):
        logging.getLogger(__name__).warning("cannot change this process's niceness from %d to %d", current, target)
    return niceness()


def restore_priority() -> None:
    """Undo :func:`lower_priority` in this process (a Ray worker that ran a stage and now hosts an actor).

    Lowering niceness needs privileges; without them the process keeps the stage's priority (it
    then shares the cores evenly with the stages) and a warning says so.
    """
    if _BASE_NICE is not None and niceness() > _BASE_NICE and not set_niceness(_BASE_NICE):
        logging.getLogger(__name__).warning(
            "this worker ran a lower-priority stage before and may not raise its priority back to niceness %d; "
            "the model shares the CPU evenly with the stages here", _BASE_NICE)
