"""Study configuration: YAML validated into typed pydantic models (see :mod:`.schema`)."""

from blackbox.config.schema import (
    BudgetConfig,
    ConfigError,
    StudyConfig,
    _Strict,
    apply_overrides,
    format_validation_error,
    load_config,
    read_yaml,
    validate,
)

__all__ = [
    "BudgetConfig",
    "ConfigError",
    "StudyConfig",
    "_Strict",
    "apply_overrides",
    "format_validation_error",
    "load_config",
    "read_yaml",
    "validate",
]
