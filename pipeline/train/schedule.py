"""The run's schedule: how far training has come, its learning rate, and where its epochs end.

Progress is the larger of the time spent over the budget (``--max-minutes``: training and
validation, resumes included) and the epochs done over ``--epochs``; the run ends when it reaches
1, and the cosine learning rate reaches 0 with it. Under a budget the rate is set every step from
the workers' mean clock, which every worker receives from the same all-reduce, so all set the
same rate and all stop after the same step.

An epoch is a fixed number of steps (``loader.steps_per_epoch``) from one stream of batches that
runs on across epochs (:class:`EpochBatches`), or, with 0, passes over the data.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterator
from typing import Any


@dataclasses.dataclass(frozen=True)
class Schedule:
    """The learning rate and the end of a run of ``epochs`` (0: no limit) within ``budget_seconds`` (0: none)."""

    learning_rate: float
    kind: str  # constant or cosine
    epochs: int
    budget_seconds: float

    def progress(self, epoch: float, seconds: float) -> float:
        """Return how far the run is, 0 to 1, after ``epoch`` epochs and ``seconds`` of training."""
        return max(seconds / self.budget_seconds if self.budget_seconds else 0.0,
                   epoch / self.epochs if self.epochs else 0.0)

    def rate(self, epoch: float, seconds: float) -> float:
        """Return the learning rate at that point: constant, or cosine decay from the set rate to 0."""
        if self.kind == "cosine":
            return self.learning_rate * 0.5 * (1.0 + math.cos(math.pi * min(1.0, self.progress(epoch, seconds))))
        return self.learning_rate

    def over(self, seconds: float) -> bool:
        """Return whether the time budget is spent."""
        return bool(self.budget_seconds) and seconds >= self.budget_seconds

    def more_epochs(self, epoch: int) -> bool:
        """Return whether epoch ``epoch`` (0-based) is within ``epochs``."""
        return not self.epochs or epoch < self.epochs


class EpochBatches:
    """A worker's training batches, epoch by epoch: ``steps`` batches each from one stream that runs on
    across the data's passes (every worker's share holds the same number of batches, so all pass
    from one to the next at the same step), or with ``steps`` 0 one pass per epoch."""

    def __init__(self, data: Any, batch_size: int, shuffle_buffer: int, steps: int) -> None:
        self.data, self.batch_size, self.shuffle_buffer, self.steps = data, batch_size, shuffle_buffer, steps
        self.stream = self.forever() if steps else None

    def one_pass(self) -> Iterator[dict[str, Any]]:
        """Yield the batches of one pass over this worker's share."""
        return self.data.iter_batches(batch_size=self.batch_size, drop_last=True, batch_format="numpy",
                                      local_shuffle_buffer_size=self.shuffle_buffer)

    def forever(self) -> Iterator[dict[str, Any]]:
        """Yield batches pass after pass (ends only if a pass yields none)."""
        while True:
            empty = True
            for batch in self.one_pass():
                empty = False
                yield batch
            if empty:
                return

    def epoch(self) -> Iterator[dict[str, Any]]:
        """Return the next epoch's batches."""
        return itertools.islice(self.stream, self.steps) if self.stream is not None else self.one_pass()
