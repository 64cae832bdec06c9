"""Batch segmentation: check a run (:mod:`.plan`), prepare images (:mod:`.prepare`), predict on an
actor pool (:mod:`.predictor`), write masks and commit shards (:mod:`.write`), resume
(:mod:`.resume`), report progress and the run record (:mod:`.record`), all driven by :mod:`.run`."""

from pipeline.segment.record import RunSummary
from pipeline.segment.run import run_segmentation

__all__ = ["RunSummary", "run_segmentation"]
