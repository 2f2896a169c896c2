"""``blackbox export RUN_DIR [--format F]``: write the best candidate of a finished run, any space.

Reads the run's saved config and storage, rebuilds the model and the search space only (no
objective), finds the best search evaluation and hands it to the space's finishing step
(:mod:`blackbox.finishing`) in the format asked for:

=========== ======================================= ==========================================
space       formats (first: the default)            files
=========== ======================================= ==========================================
steering    ``steered``, ``gguf``                   ``steered.pt``, ``control_vector.gguf``
tokens      ``json``, ``lm_eval``                   ``tokens.json``, ``lm_eval_task/``
soft_prompt ``safetensors``, ``peft``               ``soft_prompt.safetensors``, ``peft_adapter/``
=========== ======================================= ==========================================

``--format all`` writes every format of the space.  The files written are added to the run's
``result.json`` (``files``: paths relative to the run directory, absolute outside it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from blackbox.config.base import ConfigError
from blackbox.study.context import BuildContext
from blackbox.study.rundir import saved_config, storage_url
from blackbox.study.storage import checked_option, open_study, probe_storage, trial_x


def record_files(run_dir: Path, paths: list[Path]) -> None:
    """Add ``paths`` to ``files`` of the run's ``result.json`` (when there is one)."""
    import json

    from blackbox.study.rundir import atomic_text

    result_path = Path(run_dir) / "result.json"
    if not result_path.is_file():
        return
    result = json.loads(result_path.read_text())
    files = list(result.get("files") or [])
    root = Path(run_dir).resolve()
    for path in paths:
        full = Path(path).resolve()
        name = str(full.relative_to(root)) if full.is_relative_to(root) else str(full)
        if name not in files:
            files.append(name)
    result["files"] = files
    atomic_text(result_path, json.dumps(result, indent=2, default=float))


def _chosen_trial(run_dir: Path) -> int | None:
    """The trial number of ``side_effects.chosen`` in the run's ``result.json``, if any."""
    import json

    path = Path(run_dir) / "result.json"
    try:
        chosen = (json.loads(path.read_text()).get("side_effects") or {}).get("chosen")
    except (OSError, ValueError):
        return None
    return None if not chosen else int(chosen["trial"])


def export_run(
    run_dir: Path, out: Path | None = None, storage: str | None = None, fmt: str | None = None
) -> tuple[list[Path], float]:
    """Write the best candidate's files; returns their paths and its search score.

    Args:
        run_dir: a run directory (holding ``config.yaml``).
        out: the output file or directory (default: the format's name in ``run_dir``; for
            ``all``, a directory for every format's default name).
        storage: the storage URL when the run's is not in the directory (its password is
            masked in the saved config).
        fmt: an export format of the run's space, ``all``, or ``None`` (the default format).
    """
    run_dir = Path(run_dir)
    cfg = saved_config(run_dir)  # before torch loads: a wrong directory is told at once
    from blackbox.finishing.plots import search_trials
    from blackbox.finishing.registry import FINISHERS
    from blackbox.models import load_model
    from blackbox.search_spaces.registry import SPACES
    from blackbox.study.pipeline import Prepared

    finisher = FINISHERS.get(cfg.space.type)
    formats = (
        list(finisher.formats) if fmt == "all" else [finisher.check_format(fmt, cfg.space.type)]
    )
    if storage:
        cfg = cfg.model_copy(update={"storage": checked_option(storage)})
    elif cfg.storage and "***" in cfg.storage:
        raise ConfigError(
            f"export: the run's storage password is masked in {str(run_dir / 'config.yaml')!r}; "
            "pass --storage URL"
        )
    elif cfg.storage:
        probe_storage(cfg.storage)  # before the model loads
    loaded = load_model(cfg.model.name, device=cfg.model.device, dtype=cfg.model.dtype)
    space = SPACES.get(cfg.space.type).from_config(cfg, BuildContext(cfg, loaded))
    study = open_study(storage_url(cfg, run_dir), cfg.name, space.box, cfg.fingerprint())
    trials = [t for t in search_trials(study) if t.values]
    if not trials:
        raise ConfigError(f"export: {str(run_dir)!r} has no completed evaluations yet")
    best = max(trials, key=lambda t: t.values[0])
    chosen = _chosen_trial(run_dir)  # side effects: the member the selection rule chose
    if chosen is not None:
        best = next((t for t in trials if t.number == chosen), best)
    x = trial_x(best, space.box.names)
    if x is None:
        raise ConfigError(f"export: the best trial of {str(run_dir)!r} does not fit the space")
    cand = space.decode(np.asarray(x)[None])[0]
    p = Prepared(cfg, loaded, space, None, None, None, {})  # type: ignore[arg-type]
    paths: list[Path] = []
    for f in formats:
        if fmt == "all":  # every format under its own name, in ``out`` or the run directory
            paths += finisher.export(p, cand, Path(out) if out else run_dir, None, fmt=f)
        else:
            paths += finisher.export(p, cand, run_dir, out, fmt=f)
    record_files(run_dir, paths)
    return paths, float(best.values[0])
