"""Run a study from Python: ``blackbox.run(config) -> Result``.

The same pipeline as ``blackbox run`` (:func:`blackbox.study.pipeline.prepare`, then
:func:`~blackbox.study.pipeline.execute`), the same run directory (``config.yaml``,
``study.db``, ``result.json``, plots, the space's files), and the same checks: bad input raises
the :class:`~blackbox.errors.UserError` subclass whose one-line message the command prints
before exiting with code 2, before the model loads where the check needs no model.  Running
the same call again resumes the run, as the command does.

    import blackbox

    result = blackbox.run("studies/steer_rotten_tomatoes.yaml", out="runs/demo")
    print(result.best.heldout.score, result.best.candidate)

:class:`Result` is a frozen, typed view of ``result.json``; ``Result.raw`` is the dict itself
(every section, the space's own ones included), and ``Result.load(run_dir)`` reads a finished
run back.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blackbox.errors import UserError

__all__ = [
    "Best",
    "Difference",
    "Interval",
    "Result",
    "Score",
    "Scores",
    "SplitStatistics",
    "Statistics",
    "load_result",
    "run",
]


@dataclass(frozen=True)
class Score:
    """One candidate scored on one split.

    Attributes:
        score: the objective's value (higher is better).
        metrics: every metric of that evaluation (``acc``, ``acc_norm``, ``gold_logprob``...).
    """

    score: float
    metrics: Mapping[str, Any]

    @classmethod
    def of(cls, entry: Mapping[str, Any] | None) -> Score | None:
        if entry is None:
            return None
        return cls(float(entry["score"]), dict(entry.get("metrics") or {}))


@dataclass(frozen=True)
class Scores:
    """A candidate on the search split and on the held-out split (``None``: not scored)."""

    search: Score | None
    heldout: Score | None

    @classmethod
    def of(cls, entry: Mapping[str, Any]) -> Scores:
        return cls(Score.of(entry.get("search")), Score.of(entry.get("heldout")))


@dataclass(frozen=True)
class Best(Scores):
    """The best candidate found: its scores and its description (as stored with its trial,
    e.g. ``{"sentiment.layer": 23, "sentiment.coeff": 0.0865, ...}``; ``None``: no
    evaluation finished)."""

    candidate: Mapping[str, Any] | None

    @classmethod
    def of(cls, entry: Mapping[str, Any]) -> Best:
        candidate = entry.get("candidate")
        return cls(
            Score.of(entry.get("search")),
            Score.of(entry.get("heldout")),
            None if candidate is None else dict(candidate),
        )


@dataclass(frozen=True)
class Interval:
    """A mean over ``n`` documents with its 95% bootstrap interval ``[low, high]``."""

    mean: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, entry: Mapping[str, Any]) -> Interval:
        lo, hi = entry["ci95"]
        return cls(float(entry["mean"]), float(lo), float(hi), int(entry["n"]))


@dataclass(frozen=True)
class Difference(Interval):
    """best - baseline on the same documents: mean, 95% interval, the test and its p-value
    (``mcnemar_exact`` for 0/1 metrics, with the documents ``gained`` and ``lost``;
    ``paired_bootstrap`` otherwise)."""

    test: str = ""
    p: float = float("nan")
    gained: int | None = None
    lost: int | None = None

    @classmethod
    def of(cls, entry: Mapping[str, Any]) -> Difference:
        lo, hi = entry["ci95"]
        return cls(
            float(entry["mean"]),
            float(lo),
            float(hi),
            int(entry["n"]),
            str(entry.get("test", "")),
            float(entry.get("p", float("nan"))),
            entry.get("gained"),
            entry.get("lost"),
        )


@dataclass(frozen=True)
class SplitStatistics:
    """The first baseline and the best on one split, with their paired difference."""

    n_documents: int
    baseline: Interval
    best: Interval
    difference: Difference

    @classmethod
    def of(cls, entry: Mapping[str, Any] | None) -> SplitStatistics | None:
        if not entry:
            return None
        return cls(
            int(entry["n_documents"]),
            Interval.of(entry["baseline"]),
            Interval.of(entry["best"]),
            Difference.of(entry["difference"]),
        )


@dataclass(frozen=True)
class Statistics:
    """``result.json -> statistics``: per split (``None`` where the split has no values per
    document) and how the intervals were made."""

    search: SplitStatistics | None
    heldout: SplitStatistics | None
    method: str

    @classmethod
    def of(cls, entry: Mapping[str, Any] | None) -> Statistics | None:
        if not entry:  # objectives whose value is not a mean over documents have none
            return None
        return cls(
            SplitStatistics.of(entry.get("search")),
            SplitStatistics.of(entry.get("heldout")),
            str(entry.get("method", "")),
        )


@dataclass(frozen=True)
class Result:
    """A finished run, as in its ``result.json``.

    Attributes:
        run_dir: the run directory.
        name: the study's name.
        space, objective, strategy: the registered names the study used.
        task: the lm-eval task (``None`` for other objectives).
        metric: what ``score`` is.
        seed: the study's seed.
        splits: documents per split (``{"search": 64, "heldout": 400}``).
        baselines: reference candidates by label (``unsteered``, ``no prompt``, ...).
        best: the best candidate of the search, re-scored on the held-out split.
        statistics: intervals and paired tests (``None`` when the objective has no values per
            document).
        evaluations: evaluations in the run (resumed ones included).
        cost_forward_passes: the search's cost in forward-pass equivalents.
        wall_seconds: the search's wall time.
        files: the files the run wrote for its best candidate (``steered.pt``, ...), as paths.
        raw: the ``result.json`` dict itself (every section, the space's own ones included).
    """

    run_dir: Path
    name: str
    space: str
    objective: str
    strategy: str
    task: str | None
    metric: str
    seed: int
    splits: Mapping[str, int]
    baselines: Mapping[str, Scores]
    best: Best
    statistics: Statistics | None
    evaluations: int
    cost_forward_passes: float
    wall_seconds: float
    files: tuple[Path, ...]
    raw: Mapping[str, Any]

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], run_dir: str | Path) -> Result:
        """The typed view of a ``result.json`` dict of the run in ``run_dir``."""
        run_dir = Path(run_dir)
        return cls(
            run_dir=run_dir,
            name=raw["study_name"],
            space=raw["space"],
            objective=raw["objective"],
            strategy=raw["strategy"],
            task=raw.get("task"),
            metric=raw["metric"],
            seed=int(raw["seed"]),
            splits=dict(raw.get("splits") or {}),
            baselines={k: Scores.of(v) for k, v in (raw.get("baselines") or {}).items()},
            best=Best.of(raw["best"]),
            statistics=Statistics.of(raw.get("statistics")),
            evaluations=int(raw["evaluations"]),
            cost_forward_passes=float(raw["cost_forward_passes"]),
            wall_seconds=float(raw["wall_seconds"]),
            files=tuple(run_dir / f for f in raw.get("files") or ()),
            raw=raw,
        )

    @classmethod
    def load(cls, run_dir: str | Path) -> Result:
        """Read a finished run's ``result.json``."""
        return load_result(run_dir)


def load_result(run_dir: str | Path) -> Result:
    """The :class:`Result` of a finished run directory (its ``result.json``)."""
    from blackbox.study.export import read_result

    raw = read_result(Path(run_dir))
    if raw is None:
        raise UserError(f"{str(run_dir)!r} holds no result.json (not a finished run)")
    return Result.from_dict(raw, run_dir)


def _config(config: Any, overrides: Iterable[str]) -> Any:
    """A validated :class:`~blackbox.config.StudyConfig` from a path, a mapping or a config,
    with ``overrides`` (``"a.b=c"``, as ``--set``) applied."""
    from blackbox.config import StudyConfig, apply_overrides, load_config, validate

    overrides = [overrides] if isinstance(overrides, str) else list(overrides)
    if isinstance(config, StudyConfig):
        return validate(apply_overrides(config.resolved(), overrides)) if overrides else config
    if isinstance(config, Mapping):
        return validate(apply_overrides(dict(config), overrides))
    if isinstance(config, (str, os.PathLike)):
        return load_config(config, overrides)
    raise UserError(
        f"config: {type(config).__name__} is not a study config; give a YAML path, a mapping "
        "or a blackbox.StudyConfig"
    )


def run(
    config: str | os.PathLike[str] | Mapping[str, Any] | Any,
    out: str | os.PathLike[str] | None = None,
    overrides: Iterable[str] = (),
    progress: bool = False,
) -> Result:
    """Run (or resume) a study, as ``blackbox run CONFIG --out OUT --set ...`` does.

    Args:
        config: a YAML path, a mapping (the YAML's content) or a validated
            :class:`~blackbox.config.StudyConfig` (from :func:`blackbox.load_config`).
        out: the run directory (default ``runs/<config name>``).  An existing run there with
            the same config is resumed.
        overrides: ``"key.path=value"`` strings (the command's ``--set``; values parsed as
            YAML).
        progress: show progress bars.

    Returns:
        The run's :class:`Result` (``result.json`` and the other files are written to
        ``out`` as by the command).

    Raises:
        blackbox.errors.UserError: bad input (config, model, task, data, storage, ``out``),
            with the one-line message the command prints before exiting with code 2.
    """
    for key, value in (  # the command's defaults: no network unless the caller says otherwise
        ("HF_HUB_OFFLINE", "1"),
        ("HF_DATASETS_OFFLINE", "1"),
        ("TOKENIZERS_PARALLELISM", "false"),
        ("TRANSFORMERS_VERBOSITY", "error"),
    ):
        os.environ.setdefault(key, value)
    cfg = _config(config, overrides)
    # the pipeline pulls in torch, transformers and nevergrad: a config error does not wait
    from blackbox.study.pipeline import execute, prepare
    from blackbox.study.rundir import check_out_dir

    run_dir = Path(out) if out is not None else Path("runs") / cfg.name
    check_out_dir(run_dir, option="out")
    prepared = prepare(cfg, progress=progress, run_dir=run_dir)
    raw = execute(prepared, run_dir, progress=progress)
    return Result.from_dict(raw, run_dir)
