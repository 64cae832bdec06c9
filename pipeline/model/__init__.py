"""Models: what a model is (:mod:`~pipeline.model.spec`), the Keras networks (:mod:`~pipeline.model.networks`),
pretrained encoders (:mod:`~pipeline.model.encoders`), the K-means baseline (:mod:`~pipeline.model.kmeans`),
imported Keras models (:mod:`~pipeline.model.importing`) and the artifact that holds any of them
(:mod:`~pipeline.model.artifact`).

TensorFlow is imported inside the functions that need it: the driver and CPU stages stay light.
"""

from pipeline.model.artifact import (
    FORMAT_VERSION,
    INFO_FILE,
    MODEL_FILE,
    SCALES,
    LoadedModel,
    ModelArtifactError,
    ModelInfo,
    check_shapes,
    configure_tensorflow,
    inspect_artifact,
    load_artifact,
    load_keras_file,
    read_info,
    save_artifact,
)
from pipeline.model.networks import BATCH_NORM_MOMENTUM, build_model, build_unet
from pipeline.model.spec import ModelSpec, encoder_input, encoder_preprocessing

__all__ = [
    "BATCH_NORM_MOMENTUM", "FORMAT_VERSION", "INFO_FILE", "MODEL_FILE", "SCALES", "LoadedModel", "ModelArtifactError",
    "ModelInfo", "ModelSpec", "build_model", "build_unet", "check_shapes", "configure_tensorflow", "encoder_input",
    "encoder_preprocessing", "inspect_artifact", "load_artifact", "load_keras_file", "read_info", "save_artifact",
]
