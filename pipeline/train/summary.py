"""What a training run produced: the summary both the network runs and the K-means baseline return."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class TrainSummary:
    """What a training run produced."""

    artifact: str
    epochs: int
    best_epoch: int
    best_metrics: dict[str, Any]
    history: list[dict[str, Any]]
    seconds: float
    skipped: str = ""  # what the last epoch skipped, e.g. "3 of 40 samples skipped (no_mask (3))"
    curves: str = ""  # the training.html beside model.json ("": none, as for K-means)

    def line(self) -> str:
        """Return the one-line summary shown at the end of training (epochs counted from 1, as the
        per-epoch lines count them; model.json's ``best_epoch`` counts from 0)."""
        best = self.best_metrics
        curves = f"; curves in {self.curves} and TensorBoard's logs/ beside it" if self.curves else ""
        return (
            f"trained {self.epochs} epochs in {self.seconds:.0f} s; best epoch {self.best_epoch + 1}: "
            f"val mean Dice {best.get('val_mean_dice', float('nan')):.3f}, "
            f"pixel error {best.get('val_pixel_error', float('nan')):.4f}; "
            + (f"{self.skipped}; " if self.skipped else "") + f"model artifact in {self.artifact}{curves}"
        )
