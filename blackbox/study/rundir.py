"""A run directory: its storage, its saved config, seeds (a leaf module).

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
import yaml

from blackbox.masking import masked
from blackbox.sections import ConfigError
from blackbox.staging import atomic_write
from blackbox.study.storage import StorageError, open_study


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch global RNGs (strategies use their own generators)."""
    random.seed(seed)
    np.random.seed(seed)
    import torch  # here: the CLI checks run directories before torch loads

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
            f"run dir {str(run_dir)!r}: its config.yaml cannot be read as YAML"
        ) from None


def adopt_saved_dtype(cfg: Any, run_dir: Path) -> None:
    """``model.dtype: auto`` and a run saved in ``run_dir``: resume in the precision it ran in
    (its saved config names it), rather than timing again and perhaps choosing another."""
    if cfg.model.dtype == "auto" and (run_dir / "config.yaml").is_file():
        old = saved_config(run_dir)
        why = f"resumed: the run saved in {str(run_dir)!r} ran in {old.model.dtype}"
        cfg.adopt_dtype(old.fingerprint(), why)


def check_run_dir(cfg: Any, run_dir: Path) -> None:
    """Refuse a run dir that holds a run of a different config (budget changes are fine)."""
    if (run_dir / "config.yaml").exists():
        old = saved_config(run_dir)
        if old.fingerprint() != cfg.fingerprint():
            raise ConfigError(
                f"run dir {str(run_dir)!r} holds a run with another config; use another --out "
                "(only budget and storage may change on resume)"
            )


def check_out_dir(path: Path, option: str = "--out") -> None:
    """Refuse an output directory that cannot be one, before any work: an existing file, a
    component longer than the file system allows, no write permission where it would be
    created, or a directory another process holds (one-line :class:`ConfigError`).  An
    existing directory is locked here (:func:`lock_dir`) for the rest of the process."""
    shown = str(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{option}: {shown!r} exists and is not a directory")
    too_long = [c for c in path.parts if len(c.encode()) > 255]
    if too_long:
        raise ConfigError(
            f"{option}: a path component is {len(too_long[0].encode())} bytes; at most 255"
        )
    parent = path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{option}: {str(parent)!r} is a file, so {shown!r} cannot be created")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{option}: cannot write in {str(parent)!r} (read-only or no permission)")
    if path.is_dir():  # an existing run: claim it now, so a second process fails at once
        lock_dir(path)


_LOCKS: dict[str, Any] = {}  # open lock files, held until the process exits


def lock_dir(path: Path) -> None:
    """Hold an exclusive OS lock on ``path/.lock`` for this process's lifetime.

    The kernel releases it when the process dies (even by SIGKILL), so no stale lock is ever
    left; a second process on the same directory fails at once naming the holder's PID.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        return
    key = str(path.resolve())
    if key in _LOCKS:
        return
    f = open(path / ".lock", "a+")  # noqa: SIM115 - held open on purpose
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "?"
        f.close()
        raise ConfigError(
            f"{str(path)!r} is in use by another blackbox process (PID {holder}); wait for it "
            "or use another --out"
        ) from None
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    _LOCKS[key] = f


def open_run_study(cfg: Any, run_dir: Path, box: Any) -> tuple[optuna.Study, str]:
    """Create and lock the run dir, open its study; a failed open leaves no run dir behind."""
    url = storage_url(cfg, run_dir)
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        lock_dir(run_dir)
        spec = None
        if getattr(cfg, "side_effects", None):  # a multi-objective study (its directions)
            from blackbox.evals.side_effects import config_spec

            spec = config_spec(cfg)
        return open_study(url, cfg.name, box, cfg.fingerprint(), objectives=spec), url
    except (StorageError, ConfigError):
        if created:  # nothing half-written
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def save_config(cfg: Any, run_dir: Path) -> None:
    """``config.yaml``: the resolved config (defaults filled in, password masked)."""
    atomic_write(run_dir / "config.yaml", yaml.safe_dump(masked(cfg.resolved()), sort_keys=False))
