"""``blackbox export RUN_DIR``: write the best candidate of a finished run again, any space.

Reads the run's saved config and storage, rebuilds the model and the search space only (no
task, no objective), finds the best search evaluation and hands it to the space's finishing
step (:mod:`blackbox.finishing`): ``steered.pt`` for steering, ``tokens.json`` for token
prompts, ``soft_prompt.safetensors`` for soft prompts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from blackbox.config.base import ConfigError
from blackbox.study.context import BuildContext
from blackbox.study.rundir import saved_config, storage_url
from blackbox.study.storage import open_study, trial_x


def export_run(
    run_dir: Path, out: Path | None = None, storage: str | None = None
) -> tuple[list[Path], float]:
    """Write the best candidate's files; returns their paths and its search score.

    Args:
        run_dir: a run directory (holding ``config.yaml``).
        out: the output file (default: the space's file name in ``run_dir``).
        storage: the storage URL when the run's is not in the directory (its password is
            masked in the saved config).
    """
    from blackbox.finishing.plots import search_trials
    from blackbox.finishing.registry import FINISHERS
    from blackbox.models import load_model
    from blackbox.search_spaces.registry import SPACES
    from blackbox.study.pipeline import Prepared

    run_dir = Path(run_dir)
    cfg = saved_config(run_dir)
    if storage:
        cfg = cfg.model_copy(update={"storage": storage})
    elif cfg.storage and "***" in cfg.storage:
        raise ConfigError(
            f"export: the run's storage password is masked in {str(run_dir / 'config.yaml')!r}; "
            "pass --storage URL"
        )
    loaded = load_model(cfg.model.name, device=cfg.model.device, dtype=cfg.model.dtype)
    space = SPACES.get(cfg.space.type).from_config(cfg, BuildContext(cfg, loaded))
    study = open_study(storage_url(cfg, run_dir), cfg.name, space.box, cfg.fingerprint())
    trials = [t for t in search_trials(study) if t.value is not None]
    if not trials:
        raise ConfigError(f"export: {str(run_dir)!r} has no completed evaluations yet")
    best = max(trials, key=lambda t: t.value)
    x = trial_x(best, space.box.names)
    if x is None:
        raise ConfigError(f"export: the best trial of {str(run_dir)!r} does not fit the space")
    cand = space.decode(np.asarray(x)[None])[0]
    p = Prepared(cfg, loaded, space, None, None, None, {})  # type: ignore[arg-type]
    return FINISHERS.get(cfg.space.type).export(p, cand, run_dir, out), float(best.value)
