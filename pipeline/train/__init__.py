"""Multi-worker training on Ray Train: the plan from the data (:mod:`.plan`), the data stage
(:mod:`.data`) with its augmentation (:mod:`.augment`), the schedule (:mod:`.schedule`), the step
each worker runs (:mod:`.step`), and the run (:mod:`.run`)."""

from pipeline.train.run import model_spec, run_training
from pipeline.train.summary import TrainSummary

__all__ = ["TrainSummary", "run_training", "model_spec"]
