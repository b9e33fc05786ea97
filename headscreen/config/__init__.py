"""Configs: settings as frozen dataclasses, built from data (model_configs/*.yaml, JSON, CLI flags).

  core.py       ConfigError and the one strict `from_mapping` (a leaf: imports nothing else from headscreen)
  yamlfile.py   read_yaml: a config file's YAML, refused when its aliases would blow it up
  optimizer.py  OptimizerSettings: the Adam(W) settings the three trainers' configs share, checked once
  sections.py   every model-config section with the dataclass that owns it, built when a config loads
  model.py      ModelConfig, load_config, the source and the series a config names

The owners of sections (TrainConfig, GrokConfig, ...) import from headscreen.config.core directly, never
from this package, which imports the section registry: that keeps the import graph free of circles.
"""

from headscreen.config.core import ConfigError, from_mapping
from headscreen.config.model import (
    CONFIG_DIR,
    SOURCE_KINDS,
    TOP_LEVEL,
    ModelConfig,
    SourceConfig,
    config_series,
    load_config,
    require_remote_code_flag,
)
from headscreen.config.optimizer import OptimizerSettings
from headscreen.config.sections import SECTIONS, build_section, check_sections
from headscreen.config.yamlfile import MAX_YAML_VALUES, read_yaml

__all__ = ["CONFIG_DIR", "MAX_YAML_VALUES", "SECTIONS", "SOURCE_KINDS", "TOP_LEVEL", "ConfigError", "ModelConfig",
           "OptimizerSettings", "SourceConfig", "build_section", "check_sections", "config_series", "from_mapping",
           "load_config", "read_yaml", "require_remote_code_flag"]
