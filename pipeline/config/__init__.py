"""Run configurations: frozen dataclasses loaded from YAML with ``KEY=VALUE`` overrides.

:mod:`.loading` loads them and derives the options and the reference from their declarations;
:mod:`.runs` holds segmentation and storage; :mod:`.tools` sample data, report, inspect, export and model
import; :mod:`.training` training.
"""

from pipeline.config.loading import ConfigError, load_config, option_fields, public_dict, reference_markdown
from pipeline.config.runs import ActorConfig, CocoConfig, LabelsConfig, ObjectsConfig, SegmentConfig, StorageConfig
from pipeline.config.tools import ExportConfig, ImportConfig, InspectConfig, ReportConfig, SampleDataConfig
from pipeline.config.training import DEFAULT_CLASSES, AugmentConfig, LoaderConfig, ModelConfig, OptimConfig, TrainConfig

__all__ = [
    "DEFAULT_CLASSES", "ActorConfig", "AugmentConfig", "CocoConfig", "ExportConfig", "ConfigError", "ImportConfig", "InspectConfig", "LabelsConfig", "LoaderConfig", "ModelConfig", "ObjectsConfig",
    "OptimConfig", "ReportConfig", "SampleDataConfig", "SegmentConfig", "StorageConfig", "TrainConfig", "load_config",
    "option_fields", "public_dict", "reference_markdown",
]
