"""Run configurations: frozen dataclasses loaded from YAML with ``KEY=VALUE`` overrides.

:mod:`.loading` loads them and derives the options and the reference from their declarations;
:mod:`.runs` holds segmentation, report, sample-data and storage; :mod:`.training` training.
"""

from pipeline.config.loading import ConfigError, load_config, option_fields, public_dict, reference_markdown
from pipeline.config.runs import ActorConfig, ReportConfig, SampleDataConfig, SegmentConfig, StorageConfig
from pipeline.config.training import AugmentConfig, LoaderConfig, OptimConfig, TrainConfig, UNetConfig

__all__ = [
    "ActorConfig", "AugmentConfig", "ConfigError", "LoaderConfig", "OptimConfig", "ReportConfig", "SampleDataConfig",
    "SegmentConfig", "StorageConfig", "TrainConfig", "UNetConfig", "load_config", "option_fields", "public_dict",
    "reference_markdown",
]
