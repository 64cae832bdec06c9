"""Watching a training run: what the rank-0 worker tells the driver, and what the driver shows.

The worker publishes (:func:`pipeline.console.publish`) its latest step (``step``: epoch, step of
steps, running loss) at most every :data:`STEP_SECONDS`, and each finished epoch (``epoch-NNNNNN``:
loss, validation Dice/IoU, seconds, whether it became the best). The driver's
:class:`TrainingConsole` turns them into one line per epoch (:func:`epoch_line`), a live bar on a
terminal (epoch, step of steps, loss, ETA) and, in a log, a progress line every ``interval``
seconds while an epoch runs.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from pipeline import console

log = logging.getLogger(__name__)

STEP_SECONDS = 1.0


class StepPublisher:
    """The rank-0 worker's side: publishes the running step at most every :data:`STEP_SECONDS`."""

    def __init__(self, channel: str, epoch: int, steps: int | None) -> None:
        self.channel, self.epoch, self.steps = channel, epoch, steps
        self.last = 0.0

    def __call__(self, step: int, loss: float) -> None:
        now = time.monotonic()
        if not self.channel or now - self.last < STEP_SECONDS:
            return
        self.last = now
        console.publish(self.channel, "step", {"epoch": self.epoch, "step": step, "steps": self.steps, "loss": loss})


def publish_epoch(channel: str, record: dict[str, Any]) -> None:
    """Publish a finished epoch's record (the worker's side)."""
    console.publish(channel, f"epoch-{int(record['epoch']):06d}", record)


def epoch_line(record: dict[str, Any], epochs: int, eta: float | None) -> str:
    """Return the line shown for a finished epoch, e.g.
    ``epoch 3/12: loss 0.2130, val Dice 0.912, IoU 0.850, 4.6 s, ETA 0:00:41, best``.

    ``epochs`` is the run's epochs (0 under a time budget alone); epochs count from 1 here.
    """
    number = f"{int(record['epoch']) + 1}/{epochs}" if epochs else str(int(record["epoch"]) + 1)
    parts = [f"loss {record['loss']:.4f}"]
    if record.get("val_mean_dice") is not None:
        parts.append(f"val Dice {record['val_mean_dice']:.3f}, IoU {record['val_mean_iou']:.3f}")
    parts.append(f"{record['seconds']:.1f} s")
    parts.append(f"ETA {console.duration(eta)}")
    if record.get("best"):
        parts.append("best")
    return f"epoch {number}: " + ", ".join(parts)


class TrainingConsole:
    """The driver's side: per-epoch lines, the live bar on a terminal, a progress line every
    ``interval`` seconds in a log. ``epochs``: the run's epochs (0: none set); ``budget``: its time
    budget in seconds (0: none)."""

    def __init__(self, epochs: int, budget: float, interval: float = 30.0, live: bool | None = None) -> None:
        self.epochs, self.budget, self.interval = epochs, budget, interval
        self.bar = console.LiveBar("train", live)
        self.epoch_seconds: list[float] = []
        self.trained_seconds = 0.0  # the workers' clock at the last finished epoch
        self.last_line = time.monotonic()
        self.lines: list[str] = []  # the epoch lines shown

    def __enter__(self) -> TrainingConsole:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(*exc)

    def on_message(self, key: str, payload: dict[str, Any]) -> None:
        if key.startswith("epoch-"):
            self.finished(payload)
        elif key == "step":
            self.step(payload)

    def eta(self, epoch: int, done_share: float) -> float | None:
        """Return the seconds left after ``done_share`` of epoch ``epoch`` (0-based), from the mean epoch
        so far and the time budget; None before an epoch has finished."""
        if not self.epoch_seconds:
            return None
        mean = sum(self.epoch_seconds) / len(self.epoch_seconds)
        left = [(self.epochs - epoch - done_share) * mean] if self.epochs else []
        if self.budget:
            left.append(self.budget - self.trained_seconds - done_share * mean)
        return max(0.0, min(left)) if left else None

    def finished(self, record: dict[str, Any]) -> None:
        self.epoch_seconds.append(float(record["seconds"]))
        self.trained_seconds = float(record.get("trained_seconds", self.trained_seconds))
        line = epoch_line(record, self.epochs, 0.0 if record.get("last") else self.eta(int(record["epoch"]) + 1, 0.0))
        self.lines.append(line)
        self.last_line = time.monotonic()
        log.info("%s", line)

    def step(self, message: dict[str, Any]) -> None:
        epoch, step, steps = int(message["epoch"]), int(message["step"]), message.get("steps")
        share = min(1.0, step / steps) if steps else 0.0
        eta = self.eta(epoch, share)
        number = f"{epoch + 1}/{self.epochs}" if self.epochs else str(epoch + 1)
        loss = float(message["loss"])
        text = (f"epoch {number}, step {step}/{steps or '?'}, loss {loss:.4f}" if math.isfinite(loss)
                else f"epoch {number}, step {step}/{steps or '?'}") + f", ETA {console.duration(eta)}"
        if self.bar.enabled:
            self.bar.update(step, steps, text)
        elif time.monotonic() - self.last_line >= self.interval:
            self.last_line = time.monotonic()
            log.info("training: %s", text)
