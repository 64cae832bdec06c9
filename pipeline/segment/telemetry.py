"""Start-up timings of a run's stages, sent beside the data rather than in it.

The read stage and each model actor note when their start-up steps ended (``time.time()`` values)
and send them once, with :func:`send_events`, to Ray's cluster key-value store (the GCS every Ray
process already talks to: no extra actor, no column in the data). The driver collects them with
:func:`gather_events` for the run's start-up breakdown
(:func:`pipeline.segment.record.startup_breakdown`) and removes them. Telemetry never fails a run:
outside Ray, or if the store does not answer, events are dropped with a debug message.
"""

from __future__ import annotations

import json
import logging
import os
import uuid

from pipeline.console import kv_store

log = logging.getLogger(__name__)

NAMESPACE = "segpipe-telemetry"


def send_events(channel: str, events: dict[str, float]) -> None:
    """Send one stage's start-up events on ``channel`` (the run's :func:`channel_of`)."""
    store = kv_store()
    if store is None or not channel or not events:
        return
    key = f"{channel}/{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        store._internal_kv_put(key, json.dumps(events), namespace=NAMESPACE)
    except Exception as exc:  # noqa: BLE001 - a lost timing is no reason to lose an image
        log.debug("start-up events on %s were not sent: %s", channel, exc)


def gather_events(channel: str) -> dict[str, float]:
    """Return the earliest time of each event sent on ``channel``, and remove them from the store."""
    store = kv_store()
    if store is None or not channel:
        return {}
    earliest: dict[str, float] = {}
    try:
        for key in store._internal_kv_list(channel + "/", namespace=NAMESPACE):
            value = store._internal_kv_get(key, namespace=NAMESPACE)
            for step, when in json.loads(value or b"{}").items():
                earliest[step] = min(float(when), earliest.get(step, float(when)))
        store._internal_kv_del(channel + "/", del_by_prefix=True, namespace=NAMESPACE)
    except Exception as exc:  # noqa: BLE001 - the breakdown is a report, not the run
        log.debug("start-up events on %s could not be read: %s", channel, exc)
    return earliest


def channel_of(run_id: str) -> str:
    """Return a channel for one attempt of a run (a resumed run's attempt gets its own)."""
    return f"{run_id}/{uuid.uuid4().hex[:12]}"
