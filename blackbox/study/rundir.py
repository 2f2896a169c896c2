"""A run directory: its storage, its saved config, atomic writes, seeds (a leaf module).

A run directory holds ``config.yaml`` (the resolved config, storage password masked),
``study.db`` (the Optuna storage unless ``storage:`` names another), ``result.json`` and the
space's files.  Re-running the same config into it resumes; another config is refused.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
import yaml

from blackbox.config.base import ConfigError
from blackbox.masking import masked
from blackbox.study.storage import StorageError, open_study


def atomic_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch global RNGs (strategies use their own generators)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def storage_url(cfg: Any, run_dir: Path) -> str:
    """The config's storage, or SQLite ``study.db`` in the run directory."""
    return cfg.storage or f"sqlite:///{(run_dir / 'study.db').resolve()}"


def saved_config(run_dir: Path) -> Any:
    """The validated config saved in a run directory (one-line error if there is none)."""
    from blackbox.config.loading import validate

    path = run_dir / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{str(run_dir)!r} is not a run directory (no config.yaml)")
    try:
        return validate(yaml.safe_load(path.read_text()))
    except ConfigError as exc:
        raise ConfigError(
            f"run dir {str(run_dir)!r}: its config.yaml is not valid here ({exc})"
        ) from None
    except Exception:
        raise ConfigError(
            f"run dir {str(run_dir)!r}: its config.yaml is unreadable; use another --out"
        ) from None


def check_run_dir(cfg: Any, run_dir: Path) -> None:
    """Refuse a run dir that holds a run of a different config (budget changes are fine)."""
    if (run_dir / "config.yaml").exists():
        old = saved_config(run_dir)
        if old.fingerprint() != cfg.fingerprint():
            raise ConfigError(
                f"run dir {str(run_dir)!r} holds a run with another config; use another --out "
                "(only budget and storage may change on resume)"
            )


def open_run_study(cfg: Any, run_dir: Path, box: Any) -> tuple[optuna.Study, str]:
    """Create the run dir and open its study; a failed open leaves no run dir behind."""
    url = storage_url(cfg, run_dir)
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        return open_study(url, cfg.name, box, cfg.fingerprint()), url
    except StorageError:
        if created:  # nothing half-written
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def save_config(cfg: Any, run_dir: Path) -> None:
    """``config.yaml``: the resolved config (defaults filled in, password masked)."""
    atomic_text(run_dir / "config.yaml", yaml.safe_dump(masked(cfg.resolved()), sort_keys=False))
