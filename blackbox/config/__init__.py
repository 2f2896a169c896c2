"""Study configuration: YAML validated into typed pydantic models.

:mod:`.schema` (the study), :mod:`.spaces` and :mod:`.objectives` (their sections),
:mod:`.loading` (YAML, ``--set``, one-line errors), :mod:`.rules` (which space, objective and
strategy can meet).
"""

from blackbox.config.loading import (
    apply_overrides,
    format_validation_error,
    load_config,
    read_yaml,
    validate,
)
from blackbox.config.schema import BudgetConfig, StudyConfig
from blackbox.sections import ConfigError, Strict

__all__ = [
    "BudgetConfig",
    "ConfigError",
    "Strict",
    "StudyConfig",
    "apply_overrides",
    "format_validation_error",
    "load_config",
    "read_yaml",
    "validate",
]
