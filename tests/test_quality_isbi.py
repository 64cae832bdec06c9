"""The ISBI benchmark's error analysis (the benchmark itself is a script, run by hand)."""

from __future__ import annotations

import numpy as np

from jobs.benchmarks.quality_isbi import offset_errors, shifted


def test_offset_errors_find_a_score_drawn_off_its_labels() -> None:
    label = np.zeros((2, 40, 40), np.uint8)
    label[:, 15:25, :] = 1  # a band of cell across each slice
    score = np.roll(label, -1, axis=1).astype(np.float32)  # predicted one row too high
    errors = offset_errors(score, label)
    assert errors["+0.00,+0.00"] > 0.04
    assert errors["+1.00,+0.00"] == 0.0  # moved back down: exact
    assert errors["-1.00,+0.00"] > errors["+0.00,+0.00"]  # moved further up: worse
    half = shifted(score, 0.5, 0.0)[0, :, 0]
    assert half[13] == 0.0 and half[14] == 0.5 and half[15] == 1.0 and half[24] == 0.5  # half a row down, bilinear
