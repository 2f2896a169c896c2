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

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from blackbox.sections import ConfigError
from blackbox.staging import Staged, atomic_write
from blackbox.study.context import BuildContext
from blackbox.study.rundir import saved_config, storage_url
from blackbox.study.storage import checked_option, open_study, probe_storage, trial_x


@dataclass(frozen=True)
class Exported:
    """What ``blackbox export`` wrote.

    Attributes:
        paths: the files written (inside directory formats: each file).
        search: the exported trial's search score.
        heldout: its held-out score from ``result.json`` (``None`` when the run did not
            re-score that trial).
        commands: the ``lm_eval`` commands that score the files on the run's held-out
            documents (formats lm-eval reads, runs with an lm-eval task).
    """

    paths: list[Path]
    search: float
    heldout: float | None
    commands: list[str]


def record_files(run_dir: Path, paths: list[Path]) -> None:
    """Add ``paths`` to ``files`` of the run's ``result.json`` (when there is one)."""
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
    atomic_write(result_path, json.dumps(result, indent=2, default=float))


RUN_FILES = ("config.yaml", "result.json", "study.db", ".lock", "lm_eval")  # never replaced


def read_result(run_dir: Path) -> dict[str, Any] | None:
    """The run's ``result.json`` (``None`` when there is none yet); a one-line
    :class:`ConfigError` naming the file when it is not a JSON object."""
    path = Path(run_dir) / "result.json"
    if not path.exists():
        return None
    try:
        result = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        why = f"{exc.msg} at line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else exc
        raise ConfigError(
            f"export: {str(path)!r} is not valid JSON ({why}); restore it or move it away "
            "(a re-run rewrites it)"
        ) from None
    if not isinstance(result, dict):
        raise ConfigError(f"export: {str(path)!r} is not a JSON object; restore it or move it away")
    return result


def _chosen_trial(result: dict[str, Any] | None) -> int | None:
    """The trial number of ``side_effects.chosen`` in the run's result, if any."""
    chosen = ((result or {}).get("side_effects") or {}).get("chosen")
    return None if not chosen else int(chosen["trial"])


def protected_paths(cfg: Any, run_dir: Path) -> list[Path]:
    """The run's own files (and the run directory): no export may replace them."""
    root = Path(run_dir).resolve()
    paths = [root] + [root / name for name in RUN_FILES]
    url = storage_url(cfg, run_dir)
    for prefix in ("sqlite:///", "journal:///"):
        if url.startswith(prefix):
            paths.append(Path(url[len(prefix) :].split("?")[0]).resolve())
    return paths


def export_targets(
    finisher: Any, formats: list[str], run_dir: Path, out: Path | None, every: bool
) -> list[tuple[str, Path, bool]]:
    """``(format, target path, is a directory)`` of each format written."""
    targets = []
    for f in formats:
        name = finisher.default_name(f)
        is_dir = name.endswith("/")
        if every or out is None:
            target = (Path(out) if every and out else Path(run_dir)) / name.rstrip("/")
        else:
            target = Path(out)
        targets.append((f, target, is_dir))
    return targets


def check_targets(
    cfg: Any, run_dir: Path, targets: list[tuple[str, Path, bool]], finisher: Any
) -> None:
    """Refuse, before anything loads, a target that would replace a run file (or hold one),
    and a file format aimed at a directory or the other way round."""
    protected = protected_paths(cfg, run_dir)
    for fmt, target, is_dir in targets:
        full = target.resolve()
        hit = next((p for p in protected if p == full or p.is_relative_to(full)), None)
        if hit is not None:
            raise ConfigError(
                f"export: --out {str(target)!r} would replace the run's "
                f"{'directory' if hit == protected[0] else repr(hit.name)}; give another path "
                f"(default: {str(Path(run_dir) / finisher.default_name(fmt))!r})"
            )
        above = next((a for a in target.parents if a.exists()), None)
        if above is not None and not above.is_dir():
            raise ConfigError(
                f"export: {str(target)!r} cannot be written: {str(above)!r} is a file, not a "
                "directory" + ("; --format all writes into a directory" if len(targets) > 1 else "")
            )
        if is_dir and target.exists() and not target.is_dir():
            raise ConfigError(
                f"export: --format {fmt} writes a directory, but {str(target)!r} is a file"
            )
        if not is_dir and target.is_dir():
            raise ConfigError(
                f"export: --format {fmt} writes a file, but {str(target)!r} is a directory; "
                "give a file path"
            )


def export_run(
    run_dir: Path, out: Path | None = None, storage: str | None = None, fmt: str | None = None
) -> Exported:
    """Write the best candidate's files, all or nothing; returns what was written.

    Everything a user can get wrong is checked before the model loads: the run directory and
    its ``result.json``, the format, the storage, and the targets (none may replace a run
    file).  The files are written under temporary names and moved into place together, so a
    failing export changes nothing.

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
    result = read_result(run_dir)
    from blackbox.search_spaces.registry import SPACES

    finisher = SPACES.get(cfg.space.type).finisher
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
    targets = export_targets(finisher, formats, run_dir, out, fmt == "all")
    check_targets(cfg, run_dir, targets, finisher)
    if cfg.storage:
        probe_storage(cfg.storage)  # before the model loads

    from blackbox.finishing.plots import search_trials
    from blackbox.models import load_model
    from blackbox.study.pipeline import Prepared

    loaded = load_model(cfg.model.name, device=cfg.model.device, dtype=cfg.model.dtype)
    space = SPACES.get(cfg.space.type).from_config(cfg.space, BuildContext(cfg, loaded))
    study = open_study(storage_url(cfg, run_dir), cfg.name, space.box, cfg.fingerprint())
    trials = [t for t in search_trials(study) if t.values]
    if not trials:
        raise ConfigError(f"export: {str(run_dir)!r} has no completed evaluations yet")
    best = max(trials, key=lambda t: t.values[0])
    chosen = _chosen_trial(result)  # side effects: the member the selection rule chose
    if chosen is not None:
        best = next((t for t in trials if t.number == chosen), best)
    x = trial_x(best, space.box.names)
    if x is None:
        raise ConfigError(f"export: the best trial of {str(run_dir)!r} does not fit the space")
    cand = space.decode(np.asarray(x)[None])[0]
    p = Prepared(cfg, loaded, space, None, None, None, {})  # type: ignore[arg-type]
    from blackbox.finishing.provenance import export_command

    by_format: dict[str, list[Path]] = {}
    with Staged() as staged:
        for f, target, _ in targets:
            written = finisher.export(p, cand, run_dir, staged.path(target), fmt=f)
            by_format[f] = [staged.final(w) for w in written]
    paths = [path for written in by_format.values() for path in written]
    record_files(run_dir, paths)
    commands = [
        export_command(result, f, ps, Path(loaded.path), cfg.task) for f, ps in by_format.items()
    ]
    heldout = _heldout_score(result, space.describe(cand))
    return Exported(paths, float(best.values[0]), heldout, [c for c in commands if c])


def _heldout_score(result: dict[str, Any] | None, described: Any) -> float | None:
    """The held-out score of the exported candidate, from ``result.json``, when the run
    re-scored that candidate (its ``best`` describes the same candidate)."""
    chosen = ((result or {}).get("side_effects") or {}).get("chosen")
    best = chosen or (result or {}).get("best") or {}  # side effects: the chosen is exported
    heldout = best.get("heldout")
    if not isinstance(heldout, dict) or not isinstance(heldout.get("score"), int | float):
        return None
    same = json.loads(json.dumps(described, default=float)) == best.get("candidate")
    return float(heldout["score"]) if same else None
