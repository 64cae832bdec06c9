"""One run per output at a time: a lease under the output, kept alive by heartbeats.

``<output>/_lease.json`` names the run that holds the output (run id, host and process, since
when) and its last heartbeat. A run takes the lease before it reads or changes the output's
contents, renews the heartbeat every :data:`HEARTBEAT_S` from a thread, and gives the lease back
when it ends, however it ends. A second run that finds a lease whose heartbeat is younger than
:data:`EXPIRY_S` stops before any work (exit 2) naming the holder; a lease left behind by a run
that died (no heartbeat for longer, or a process of this machine that no longer exists) is taken
over with a warning; ``--overwrite`` takes over a live one too (and starts the output afresh).

Object stores offer no "create if absent" every server honours, so two runs starting within the
same moment are told apart by reading the lease back :data:`SETTLE_S` after writing it: the last
writer keeps it, the other stops. A run that finds, at a heartbeat, that another run took its
lease stops before its next commit.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

from pipeline.config import ConfigError, StorageConfig
from pipeline.io import layout, storage

log = logging.getLogger(__name__)

HEARTBEAT_S = 15.0
EXPIRY_S = 60.0  # four missed heartbeats: the holder is gone
SETTLE_S = 1.0


class LeaseLost(ConfigError):
    """Another run took this run's output while it ran; this run stops before its next commit."""


class Lease:
    """The lease this run holds on its output (:func:`take`): renewed by a thread until :meth:`release`."""

    def __init__(self, output: str, storage_config: StorageConfig | None, record: dict[str, Any]) -> None:
        self.output = output
        self.url = layout.lease_url(output)
        self.storage_config = storage_config
        self.record = record
        self.written = time.monotonic()
        self.stopped = threading.Event()
        self.lost: dict[str, Any] | None = None
        self.thread = threading.Thread(target=self.beat, name="lease-heartbeat", daemon=True)

    def confirm(self) -> None:
        """Read the lease back :data:`SETTLE_S` after writing it; raise ConfigError if another run wrote
        after this one (it keeps the output), then start the heartbeats."""
        time.sleep(max(0.0, SETTLE_S - (time.monotonic() - self.written)))
        current = read_lease(self.url, self.storage_config)
        if not current or current.get("token") != self.record["token"]:
            raise ConfigError(f"output {self.output} was taken by {describe(current)} at the same moment this run "
                              "started; it keeps the output: let it finish, or choose another output")
        self.thread.start()

    def beat(self) -> None:
        """Renew the heartbeat every :data:`HEARTBEAT_S` until released; note it if another run took the lease."""
        while not self.stopped.wait(HEARTBEAT_S):
            try:
                current = read_lease(self.url, self.storage_config)
                if current and current.get("token") != self.record["token"]:
                    self.lost = current
                    log.error("output %s was taken over by %s; this run stops before its next commit",
                              self.output, describe(current))
                    return
                self.record["heartbeat"] = time.time()
                write_lease(self.url, self.record, self.storage_config)
            except Exception as exc:  # noqa: BLE001 - a missed heartbeat is retried; four in a row expire the lease
                log.warning("the heartbeat of the lease on %s failed (%s); retrying in %.0f s", self.output, exc,
                            HEARTBEAT_S)

    def check(self) -> None:
        """Raise :class:`LeaseLost` if another run took the output while this one ran."""
        if self.lost is not None:
            raise LeaseLost(f"output {self.output} was taken over by {describe(self.lost)} while this run was "
                            "writing it; this run stopped before its next commit: let that run finish")

    def release(self) -> None:
        """Stop the heartbeats and remove the lease if it is still this run's."""
        self.stopped.set()
        if self.thread.is_alive():
            self.thread.join(timeout=HEARTBEAT_S)
        try:
            current = read_lease(self.url, self.storage_config)
            if current and current.get("token") == self.record["token"]:
                fs, path = storage.filesystem_for(self.url, self.storage_config)
                fs.rm(path)
        except Exception as exc:  # noqa: BLE001 - a lease left behind expires by itself
            log.warning("the lease on %s could not be given back (%s); it expires in %.0f s", self.output, exc,
                        EXPIRY_S)


def take(output: str, storage_config: StorageConfig | None, run_id: str, overwrite: bool) -> Lease:
    """Take the lease on ``output`` for ``run_id``; raise ConfigError if a live run holds it (not with
    ``overwrite``). Call :meth:`Lease.confirm` before the run changes anything."""
    url = layout.lease_url(output)
    current = read_lease(url, storage_config)
    if current:
        age = time.time() - float(current.get("heartbeat", 0))
        if age < EXPIRY_S and not overwrite and not holder_gone(current):
            raise ConfigError(
                f"output {output} is in use by {describe(current)}, last heartbeat {age:.0f} s ago; two runs on "
                "one output would do the same work twice: let it finish, or choose another output (a run that "
                f"died gives the output up after {EXPIRY_S:.0f} s without a heartbeat; --overwrite takes it now and "
                "starts the output afresh)")
        log.warning("taking over output %s from %s (last heartbeat %.0f s ago%s)", output, describe(current), age,
                    "; --overwrite" if overwrite else "; its process is gone" if holder_gone(current) else "")
    now = time.time()
    record = {"run_id": run_id, "host": socket.gethostname(), "pid": os.getpid(),
              "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)), "heartbeat": now,
              "token": uuid.uuid4().hex}
    write_lease(url, record, storage_config)
    return Lease(output, storage_config, record)


def describe(record: dict[str, Any] | None) -> str:
    """Return who holds a lease, in words."""
    if not record:
        return "another run (its lease is gone)"
    return f"run {record.get('run_id')} (host {record.get('host')}, pid {record.get('pid')}, since {record.get('since')})"


def holder_gone(record: dict[str, Any]) -> bool:
    """Return whether the lease's holder was a process of this machine that no longer runs (killed, crashed)."""
    if record.get("host") != socket.gethostname() or not isinstance(record.get("pid"), int):
        return False
    if record["pid"] == os.getpid():  # this process is a later run: the one that wrote the lease is gone
        return True
    try:
        os.kill(record["pid"], 0)
    except ProcessLookupError:
        return True
    except OSError:  # it exists, under another user
        return False
    return False


def read_lease(url: str, storage_config: StorageConfig | None) -> dict[str, Any] | None:
    """Return the lease record at ``url``, or None if there is none (or it is unreadable)."""
    try:
        return json.loads(storage.read_bytes(url, storage_config))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("the lease %s is unreadable (%s); treating the output as free", url, exc)
        return None


def write_lease(url: str, record: dict[str, Any], storage_config: StorageConfig | None) -> None:
    """Write the lease record at ``url``."""
    storage.write_bytes(url, json.dumps(record).encode(), storage_config)
