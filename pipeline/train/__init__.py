"""Multi-worker training on Ray Train: the data stage (:mod:`.data`) with its augmentation
(:mod:`.augment`), the step each worker runs (:mod:`.step`), and the run (:mod:`.run`)."""

from pipeline.train.run import model_spec, run_training
from pipeline.train.summary import TrainSummary

__all__ = ["TrainSummary", "run_training", "model_spec"]
