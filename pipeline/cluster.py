"""Connecting to Ray: the session already running, a cluster address, or a new local instance."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import TypeVar

from pipeline import console

LOCAL_OBJECT_STORE_BYTES = 2 * 1024**3

T = TypeVar("T")

_started_local = False  # connect_ray started the local Ray this process is connected to


def connect_ray(address: str | None) -> None:
    """Connect to Ray: the running session, ``address`` / ``RAY_ADDRESS``, or a new local instance."""
    global _started_local
    import ray

    if ray.is_initialized():
        return
    previous = signal.getsignal(signal.SIGTERM)
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address, **console.ray_init_options())
    else:
        ray.init(address="local", object_store_memory=LOCAL_OBJECT_STORE_BYTES, include_dashboard=False,
                 **console.ray_init_options())
        _started_local = True
    console.quiet_ray_data()
    # ray.init makes SIGTERM a bare sys.exit in the driver; a caller that chose its own handler
    # (segpipe's command line: an interruption, as Ctrl-C) keeps it.
    if callable(previous) and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, previous)


def shutdown_local_ray() -> None:
    """Stop the local Ray that :func:`connect_ray` started, with all its processes; a session or
    cluster this process found already connected is left as it is."""
    global _started_local
    if not _started_local or "ray" not in sys.modules:
        return
    import ray

    ray.shutdown()
    _started_local = False


def largest_node_cpus() -> float:
    """Return the CPU count of the largest live node of the connected cluster (0 if none)."""
    import ray

    return max((node["Resources"].get("CPU", 0.0) for node in ray.nodes() if node.get("Alive")), default=0.0)


def this_node_only() -> bool:
    """Return whether the connected cluster is one node: this machine."""
    import ray

    alive = [node for node in ray.nodes() if node.get("Alive")]
    return len(alive) == 1 and alive[0].get("NodeManagerAddress") == ray.util.get_node_ip_address()


def on_every_cpu_node(probe: Callable[[], T]) -> list[T]:
    """Return what ``probe()`` answers on each live node with a CPU: here where the cluster is this one
    machine, else one task pinned to each node."""
    import ray

    if this_node_only():
        return [probe()]
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    remote = ray.remote(num_cpus=0.01)(probe)
    nodes = [node["NodeID"] for node in ray.nodes() if node.get("Alive") and node["Resources"].get("CPU", 0) >= 1]
    return ray.get([remote.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote()
                    for node in nodes])
