"""Multi-worker training on Ray Train: the data stage (:mod:`.data`) with its augmentation
(:mod:`.augment`), the step each worker runs (:mod:`.step`), and the run (:mod:`.run`)."""

from pipeline.train.run import TrainSummary, run_training, model_spec

__all__ = ["TrainSummary", "run_training", "model_spec"]
