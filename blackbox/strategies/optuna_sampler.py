"""Optuna samplers (TPE, CMA-ES, GP, random, QMC, NSGA-II) through Optuna's ask-and-tell.

An in-memory study (``direction="maximize"``) holds this strategy's own trials; it is not the
runner's record of evaluations.  Each dimension is one parameter named after ``box.names``:
``IntDistribution`` for integer dims, ``FloatDistribution`` otherwise.  Non-finite values are
told as failed trials (``TrialState.FAIL``), which every sampler ignores.

Extra dependencies: ``"cmaes"`` needs the ``cmaes`` package, ``"gp"`` needs torch (and scipy).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, FloatDistribution, IntDistribution
from optuna.trial import Trial, TrialState

from blackbox.api import StrategyTraits
from blackbox.errors import UserError
from blackbox.multiobjective import ObjectiveSpec
from blackbox.strategies.base import Box, Strategy

SAMPLERS = ("tpe", "cmaes", "gp", "random", "qmc", "nsga2")
ORDINAL_SAMPLERS = ("cmaes", "gp", "qmc")
"""Samplers that model coordinates as points on ordered axes (not for token ids)."""


@dataclass(frozen=True)
class OptunaSettings:
    """Settings of :class:`OptunaSampler`.

    Attributes:
        sampler: one of ``SAMPLERS`` (case-insensitive).
    """

    sampler: str = "tpe"

    def __post_init__(self) -> None:
        if str(self.sampler).lower() not in SAMPLERS:
            raise UserError(f"optuna.sampler: {self.sampler!r} is not one of {SAMPLERS}")


CONSTRAINED_SAMPLERS = ("tpe", "nsga2", "gp")
"""Samplers that read constraints (``Trial.set_constraint``, Optuna 5's successor of
``constraints_func``); random and qmc ignore them as they ignore values; cmaes is
single-objective and unconstrained."""


def build_sampler(
    name: str, seed: int, population: int, has_integer: bool
) -> optuna.samplers.BaseSampler:
    """Build a seeded Optuna sampler.

    Args:
        name: one of ``SAMPLERS`` (case-insensitive).
        seed: the sampler's seed.
        population: CMA-ES population size (at least 4) and NSGA-II's (at least 2).
        has_integer: whether the box has integer dims (CMA-ES then uses margin, CMAwM).

    Returns:
        The sampler.
    """
    with warnings.catch_warnings():  # with_margin and QMCSampler are "experimental"
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return _build(name.lower(), seed, population, has_integer)


def _build(name: str, seed: int, population: int, has_integer: bool) -> optuna.samplers.BaseSampler:
    samplers = optuna.samplers
    if name == "tpe":
        return samplers.TPESampler(seed=seed)
    if name == "cmaes":
        # popsize < 4 gives cmaes a zero mu-weight (division warnings); margin (CMAwM) keeps
        # integer dims from collapsing onto one value.
        return samplers.CmaEsSampler(seed=seed, popsize=max(population, 4), with_margin=has_integer)
    if name == "gp":
        return samplers.GPSampler(seed=seed)
    if name == "random":
        return samplers.RandomSampler(seed=seed)
    if name == "qmc":
        # Unscrambled Sobol ignores the seed; scrambling makes seeds matter.
        return samplers.QMCSampler(seed=seed, scramble=True)
    if name == "nsga2":
        return samplers.NSGAIISampler(seed=seed, population_size=max(population, 2))
    raise UserError(f"optuna.sampler: {name!r} is not one of {SAMPLERS}")


class OptunaSampler(Strategy):
    """An Optuna sampler as a maximising ask/tell strategy.

    ``ask(n)`` asks ``n`` trials and keeps them pending in ask order; ``tell(x, values)`` tells
    the oldest ``len(x)`` pending trials, which must be ``x`` in the same order.

    Args:
        box: the search box.
        seed: seed of the private generator (the sampler's seed is drawn from it).
        population: default batch size; population of CMA-ES and NSGA-II.
        **settings: fields of :class:`OptunaSettings`.
    """

    name: ClassVar[str] = "optuna"
    discrete_hint: ClassVar[str] = "sampler tpe, random or nsga2 on token ids"
    settings_schema: ClassVar[type] = OptunaSettings

    @classmethod
    def traits_for(cls, settings: dict[str, Any]) -> StrategyTraits:
        sampler = str(settings.get("sampler", OptunaSettings.sampler)).lower()
        return StrategyTraits(ordinal=sampler in ORDINAL_SAMPLERS)

    def __init__(self, box: Box, seed: int = 0, population: int = 8, **settings: Any) -> None:
        super().__init__(box, seed=seed, population=population, **settings)
        self.config = OptunaSettings(**settings)
        sampler_seed = int(self.rng.integers(2**31 - 1))
        self._sampler_seed = sampler_seed
        self.sampler = build_sampler(
            self.config.sampler, sampler_seed, population, bool(box.integer.any())
        )
        self.study = optuna.create_study(direction="maximize", sampler=self.sampler)
        self.distributions: dict[str, BaseDistribution] = {
            name: IntDistribution(int(lo), int(hi)) if is_int else FloatDistribution(lo, hi)
            for name, lo, hi, is_int in zip(box.names, box.lower, box.upper, box.integer)
        }
        self._pending: list[Trial] = []

    def set_objectives(self, spec: ObjectiveSpec) -> None:
        """A multi-objective study (``directions``: the primary, then the Pareto side
        columns); bounded columns are told as constraints (``Trial.set_constraint``, read by
        TPE, NSGA-II and GP: feasible trials first)."""
        name = self.config.sampler.lower()
        if name == "cmaes" and (len(spec.directions) > 1 or spec.bounded):
            raise UserError(
                "optuna.sampler: 'cmaes' is single-objective and unconstrained; with "
                f"side_effects use one of {CONSTRAINED_SAMPLERS} (or random)"
            )
        if self._pending or self.n_told:
            raise ValueError("optuna: set_objectives before the first ask")
        super().set_objectives(spec)
        self.sampler = build_sampler(
            name, self._sampler_seed, self.population, bool(self.box.integer.any())
        )
        self.study = optuna.create_study(directions=spec.directions, sampler=self.sampler)

    def _to_array(self, trial: Trial) -> np.ndarray:
        """``(dim,)`` box point of one trial's parameters."""
        return np.array([trial.params[name] for name in self.box.names], dtype=float)

    def _ask(self, n: int) -> np.ndarray:
        trials = [self.study.ask(self.distributions) for _ in range(n)]
        self._pending.extend(trials)
        return np.stack([self._to_array(t) for t in trials]).reshape(n, self.box.dim)

    def _tell(self, x: np.ndarray, values: np.ndarray) -> None:
        n = len(values)
        if n > len(self._pending):
            raise ValueError(f"optuna: told {n} candidates but only {len(self._pending)} pending")
        told = self._pending[:n]
        asked = np.stack([self._to_array(t) for t in told])
        if not np.allclose(self.box.clip(asked), x):
            raise ValueError("optuna: tell x must be the pending trials' points in ask order")
        spec = self.objectives
        if spec is not None and self.told_extra is not None and self.told_values is not None:
            rows = spec.objectives(self.told_values, self.told_extra)  # (n, 1 + k)
            cons = spec.constraints(self.told_extra)  # (n, m)
            for trial, row, con in zip(told, rows, cons):
                if np.isfinite(row).all() and np.isfinite(con).all():
                    for col, c in zip(spec.bounded, con):
                        trial.set_constraint(col.name, float(c))
                    self.study.tell(trial, [float(v) for v in row])
                else:
                    self.study.tell(trial, state=TrialState.FAIL)
            del self._pending[:n]
            return
        for trial, value in zip(told, values):
            if np.isfinite(value) and len(self.study.directions) == 1:
                self.study.tell(trial, float(value))
            else:  # a multi-objective study told no side columns: nothing to learn from
                self.study.tell(trial, state=TrialState.FAIL)
        del self._pending[:n]
