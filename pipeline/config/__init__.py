"""Run configurations: frozen dataclasses loaded from YAML with ``KEY=VALUE`` overrides.

:mod:`.loading` loads them and derives the options and the reference from their declarations;
:mod:`.runs` holds segmentation, report, sample-data, model import and storage; :mod:`.training` training.
"""

from pipeline.config.loading import ConfigError, load_config, option_fields, public_dict, reference_markdown
from pipeline.config.runs import (
    ActorConfig,
    CocoConfig,
    ExportConfig,
    ImportConfig,
    InspectConfig,
    LabelsConfig,
    ObjectsConfig,
    ReportConfig,
    SampleDataConfig,
    SegmentConfig,
    StorageConfig,
)
from pipeline.config.training import AugmentConfig, LoaderConfig, ModelConfig, OptimConfig, TrainConfig

__all__ = [
    "ActorConfig", "AugmentConfig", "CocoConfig", "ExportConfig", "ConfigError", "ImportConfig", "InspectConfig", "LabelsConfig", "LoaderConfig", "ModelConfig", "ObjectsConfig",
    "OptimConfig", "ReportConfig", "SampleDataConfig", "SegmentConfig", "StorageConfig", "TrainConfig", "load_config",
    "option_fields", "public_dict", "reference_markdown",
]
