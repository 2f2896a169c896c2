"""EPO (Evolutionary Prompt Optimization, Thompson et al. 2024) and GCG as its special case.

A population of ``M`` prompts, member ``i`` tied to fluency weight ``lambda_i`` (log-spaced in
``[lambda_min, lambda_max]``).  Each iteration:

1. ``ask``: one gradient call on the ``M`` parents (``problem.token_gradients``, the gradient
   of ``f - lambda_i * xentropy`` w.r.t. one-hot inputs; 3 forward-pass equivalents each, exposed
   through :meth:`EPO.pop_extra_cost`), then ``r`` children per parent from the proposal mix.
2. ``tell(x, values, extra)``: pool = parents + children; member ``i`` becomes the pool's best
   under ``f - lambda_i * xentropy`` (selection per lambda, with replacement).  Every
   ``restart_every`` iterations, ``lambda_r`` is drawn log-uniformly from ``lambda_restart`` and
   every member restarts from the run's best prompt under ``lambda_r`` (found on the front).
3. The (feature, cross-entropy) Pareto front over every evaluated prompt is kept in ``front``.

GCG (Zou et al. 2023) is EPO with ``M = 1`` and ``lambda = 0`` (:class:`GCG`).

Runner contract: call ``bind(problem)`` (a :class:`~blackbox.api.Problem`: the token space and
its objective) once before the loop; add ``pop_extra_cost()`` to the budget after each
``ask``/``tell``; optionally pass ``extra=ev.extra`` to ``tell`` (the self cross-entropy,
``objective.extra_names == ("xentropy",)``).  Without ``extra`` the strategy reads the
cross-entropies from the problem's ``recent_xentropy`` (no extra forward pass) and
scores only prompts it cannot find there (for example trials replayed on resume).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from blackbox.api import StrategyTraits
from blackbox.errors import UserError
from blackbox.pareto import FrontPoint, select_per_weight, update_front
from blackbox.strategies.base import Box, Strategy
from blackbox.strategies.proposals import EPO_PROPOSALS, ProposalInputs, ProposalMix


def check_counts(name: str, **counts: Any) -> None:
    """One line naming the first setting that is not a whole number >= its minimum
    (``counts``: setting -> ``(value, minimum)``)."""
    for key, (value, low) in counts.items():
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
            raise UserError(f"{name}.{key}: must be a whole number >= {low}, got {value!r}")


def check_lambdas(name: str, lo: Any, hi: Any, restart: Any, members: int) -> None:
    """The fluency weights' range and restart factors: finite numbers, ``0 <= lo <= hi``
    (``lo > 0`` when ``members`` > 1 weights are log-spaced up to ``hi > 0``)."""
    for key, value in (("lambda_min", lo), ("lambda_max", hi)):
        if not isinstance(value, int | float) or not np.isfinite(value) or value < 0:
            raise UserError(f"{name}.{key}: must be a finite number >= 0, got {value!r}")
    if lo > hi:
        raise UserError(f"{name}.lambda_min: {lo} is above lambda_max {hi}; allowed: <= it")
    if lo == 0 and hi > 0 and members > 1:
        raise UserError(f"{name}.lambda_min: must be > 0 (the grid is log-spaced), got 0")
    pair = list(restart) if isinstance(restart, list | tuple) else []
    if len(pair) != 2 or not all(
        isinstance(v, int | float) and np.isfinite(v) and v > 0 for v in pair
    ):
        raise UserError(f"{name}.lambda_restart: must be two finite numbers > 0, got {restart!r}")


def lambda_grid(m: int, lo: float, hi: float) -> np.ndarray:
    """``(m,)`` log-spaced fluency weights in ``[lo, hi]`` (zeros if ``hi == 0``)."""
    if hi <= 0:
        return np.zeros(m)
    if m == 1:
        return np.array([float(np.sqrt(lo * hi)) if lo > 0 else float(hi)])
    return np.geomspace(lo, hi, m)


class GradientGuided(Strategy):
    """Shared plumbing of token strategies that may call the objective's gradients."""

    traits = StrategyTraits(needs_gradients=True, needs_vocabulary=True)

    def __init__(self, box: Box, seed: int = 0, population: int = 8, **settings: Any) -> None:
        super().__init__(box, seed=seed, population=population, **settings)
        self.space: Any = None
        self.problem: Any = None
        self._extra_cost = 0.0
        self.proposal_steps = 0  # generations of children proposed (0: only the random start)
        self._last_extra: np.ndarray | None = None
        self._last_gradients: Any = None

    def bind(self, problem: Any) -> None:
        """Attach the problem: its token space (``allowed_ids``) and objective (gradients)."""
        self.problem, self.space = problem, problem.space

    @property
    def uses_gradients(self) -> bool:
        return self.mix.needs_grad or self.mix.needs_logits

    def pop_extra_cost(self) -> float:
        """Forward-pass equivalents spent inside the strategy since the last call."""
        cost, self._extra_cost = self._extra_cost, 0.0
        return cost

    def ask_cost(self) -> float:
        """Forward-pass equivalents the next :meth:`ask` spends before anything is scored (its
        gradient pass), so a runner with a cost budget stops before paying for nothing."""
        if self.problem is None or not self.uses_gradients or not self._has_parents():
            return 0.0
        return self.population * self.problem.gradient_cost()

    def _has_parents(self) -> bool:
        return True

    def tell(self, x: np.ndarray, values: np.ndarray, extra: np.ndarray | None = None) -> None:
        """As :meth:`Strategy.tell`; ``extra`` ``(n, k)`` carries the cross-entropy in column 0."""
        self._last_extra = None if extra is None else np.asarray(extra, dtype=float)
        super().tell(x, values)

    def _xentropy(self, x: np.ndarray, values: np.ndarray) -> np.ndarray:
        """``(n,)`` cross-entropies of the told batch ``x`` (inf where ``values`` is not finite).

        Read from ``tell``'s ``extra`` if given, else from the problem's ``recent_xentropy``
        (the batch it just scored); any still missing are scored here and charged as extra cost.
        """
        ok = np.isfinite(values)
        if self._last_extra is not None:
            xent = self._last_extra.reshape(len(x), -1)[:, 0].copy()
        elif self.problem is None:
            xent = np.zeros(len(x))
        else:
            ids = self.space.allowed_ids[x.astype(np.int64)]
            xent = self.problem.recent_xentropy(ids)
            missing = ok & ~np.isfinite(xent)
            if missing.any():
                ev = self.problem.evaluate(self.space.decode(x[missing]))
                self._extra_cost += float(ev.cost)
                xent[missing] = np.asarray(ev.extra, dtype=float)[:, 0]
        return np.where(ok, xent, np.inf)

    def _propose(
        self, mix: ProposalMix, inputs: ProposalInputs, rows: np.ndarray, retries: int = 3
    ) -> np.ndarray:
        """``(c, n)`` children; children the space would reject are proposed again (up to
        ``retries`` rounds, tokenizer work only), so the evaluated batch is mostly valid."""
        kids = mix(inputs, rows, self.rng)
        validity = getattr(self.space, "validity", None)
        if validity is None:
            return kids
        allowed = self.space.allowed_ids
        for _ in range(retries):
            ids = allowed[kids]
            bad = ~validity(ids, self.space.tokenizer.batch_decode(ids.tolist()))
            if not bad.any():
                break
            kids[bad] = mix(inputs, rows[bad], self.rng)
        return kids

    def _inputs(self, parents: np.ndarray, lambdas: np.ndarray, mix: ProposalMix) -> ProposalInputs:
        """Gradients/logits of ``parents`` ``(P, n)`` as the proposal mix needs them."""
        inputs = ProposalInputs(
            parents=parents.astype(np.int64), n_choices=int(self.box.upper[0]) + 1
        )
        if not (mix.needs_grad or mix.needs_logits):
            return inputs
        if self.problem is None:
            raise RuntimeError(f"{self.name}: gradient proposals need bind(problem)")
        allowed = self.space.allowed_ids
        tg = self.problem.token_gradients(allowed[inputs.parents], lambdas)
        self._extra_cost += tg.cost
        self._last_gradients = tg
        inputs.grad = tg.grad[:, :, allowed]  # (P, n, A)
        inputs.next_logits = tg.next_logits[:, :, allowed]  # (P, n, A)
        return inputs


class EPO(GradientGuided):
    """Evolutionary Prompt Optimization over a ``TokenSpace`` box.

    Args:
        box: the token space's box.
        seed: RNG seed.
        population: ``M``, prompts (one per lambda).
        children: ``r``, children per member per iteration (ask returns ``M * r``).
        lambda_min, lambda_max: range of the log-spaced fluency weights.
        lambdas: explicit ``(M,)`` weights (overrides the grid).
        restart_every: ``T_restart`` iterations between restarts (0: never).
        lambda_restart: ``[lambda_r_min, lambda_r_max]`` range of the restart weight.
        proposals: operator -> probability (default: gradient top-k only, as the paper).
        topk: top-k of the gradient proposal.
        n_replace: positions replaced per gradient child.
        init: optional ``(M, n)`` or ``(n,)`` starting prompt(s) in box indices; without it the
            first ask returns ``M * r`` random prompts and tell picks the starting members.
        keep_parents: select from parents + children (elitist, the default); ``False`` moves
            each member to the best of its children even when that is worse (GCG as Zou et
            al. and nanoGCG do it); the best prompt seen is kept either way.
    """

    name: ClassVar[str] = "epo"

    def __init__(
        self,
        box: Box,
        seed: int = 0,
        population: int = 4,
        children: int = 8,
        lambda_min: float = 0.1,
        lambda_max: float = 10.0,
        lambdas: Any = None,
        restart_every: int = 20,
        lambda_restart: tuple[float, float] = (0.5, 4.0),
        proposals: Mapping[str, float] | str | None = None,
        topk: int = 64,
        n_replace: int = 1,
        init: Any = None,
        keep_parents: bool = True,
        **settings: Any,
    ) -> None:
        super().__init__(box, seed=seed, population=population, **settings)
        check_counts(
            self.name,
            children=(children, 1),
            restart_every=(restart_every, 0),
            topk=(topk, 1),
            n_replace=(n_replace, 1),
        )
        if lambdas is None:
            check_lambdas(self.name, lambda_min, lambda_max, lambda_restart, self.population)
        self.children = int(children)
        self.keep_parents = bool(keep_parents)
        if lambdas is not None:
            self.lambdas = np.asarray(lambdas, dtype=float).reshape(-1)
            self.population = self.lambdas.size
        else:
            self.lambdas = lambda_grid(self.population, lambda_min, lambda_max)
        self.restart_every = int(restart_every)
        self.lambda_restart = (float(lambda_restart[0]), float(lambda_restart[1]))
        self.mix = ProposalMix(
            proposals or EPO_PROPOSALS,
            {"gradient_topk": {"k": int(topk), "n_replace": int(n_replace)}},
            f"{self.name}.proposals",
        )
        self.init = None if init is None else np.atleast_2d(np.asarray(init, dtype=float))
        self.parents: np.ndarray | None = None  # (M, n) box indices
        self.parent_values = np.full(self.population, -np.inf)
        self.parent_xent = np.full(self.population, np.inf)
        self.iteration = 0
        self.front: list[FrontPoint] = []
        self.restarts: list[tuple[int, float]] = []

    @property
    def batch_size(self) -> int:
        return self.population * self.children

    def _has_parents(self) -> bool:
        return self.parents is not None or self.init is not None

    def _ask(self, n: int) -> np.ndarray:
        fresh = False
        if self.parents is None:
            if self.init is None:
                return self.box.sample(n, self.rng)  # initial population, selected in tell
            self.parents = self.init[np.arange(self.population) % len(self.init)].copy()
            fresh = True
        self._last_gradients = None
        inputs = self._inputs(self.parents, self.lambdas, self.mix)
        if fresh:  # score the given start prompts (from the gradient pass when there is one)
            if self._last_gradients is not None:
                self.parent_values = np.asarray(self._last_gradients.values, dtype=float)
                self.parent_xent = np.asarray(self._last_gradients.xentropy, dtype=float)
            else:
                self.parent_xent = self._xentropy_of(self.parents)
            self._record_start()
        rows = np.arange(n) % self.population
        self.proposal_steps += 1
        return self._propose(self.mix, inputs, rows).astype(float)

    def _record_start(self) -> None:
        """Put scored start prompts on the front and into ``best`` (they are never told)."""
        pts = [
            FrontPoint(tuple(int(v) for v in row), float(f), float(c))
            for row, f, c in zip(self.parents, self.parent_values, self.parent_xent)
            if np.isfinite(f) and np.isfinite(c)
        ]
        self.front = update_front(self.front, pts)
        i = int(np.argmax(self.parent_values))
        if self.parent_values[i] > self.best_value:
            self.best_value, self.best_x = float(self.parent_values[i]), self.parents[i].copy()

    def _xentropy_of(self, x: np.ndarray) -> np.ndarray:
        """Score ``x`` with the bound objective (charged as extra cost); sets parent values."""
        ev = self.problem.evaluate(self.space.decode(x))
        self._extra_cost += float(ev.cost)
        self.parent_values = np.where(np.isfinite(ev.values), ev.values, -np.inf)
        return np.asarray(ev.extra, dtype=float)[:, 0]

    def _tell(self, x: np.ndarray, values: np.ndarray) -> None:
        xent = self._xentropy(x, values)
        new = [
            FrontPoint(tuple(int(v) for v in row), float(f), float(c))
            for row, f, c in zip(x, values, xent)
            if np.isfinite(f) and np.isfinite(c)
        ]
        self.front = update_front(self.front, new)
        if self.parents is None or not self.keep_parents:
            pool_x, pool_f, pool_c = x, values, xent
            if not np.isfinite(values).any():
                return  # every start (or every child) was rejected: sample again
        else:
            pool_x = np.concatenate([self.parents, x])
            pool_f = np.concatenate([self.parent_values, values])
            pool_c = np.concatenate([self.parent_xent, xent])
        pick = select_per_weight(pool_f, pool_c, self.lambdas)  # (M,)
        self.parents = pool_x[pick].copy()
        self.parent_values, self.parent_xent = pool_f[pick].copy(), pool_c[pick].copy()
        self.iteration += 1
        if self.restart_every and self.iteration % self.restart_every == 0 and self.front:
            self._restart()

    def _restart(self) -> None:
        lo, hi = self.lambda_restart
        lam = float(np.exp(self.rng.uniform(np.log(lo), np.log(hi)))) if hi > 0 else 0.0
        f = np.array([p.value for p in self.front])
        c = np.array([p.xentropy for p in self.front])
        best = self.front[int(select_per_weight(f, c, np.array([lam]))[0])]
        self.parents = np.tile(np.array(best.x, dtype=float), (self.population, 1))
        self.parent_values = np.full(self.population, best.value)
        self.parent_xent = np.full(self.population, best.xentropy)
        self.restarts.append((self.iteration, lam))


class GCG(EPO):
    """Greedy Coordinate Gradient: EPO with one prompt, ``lambda = 0`` and no restarts.

    Args:
        box: the token space's box.
        seed: RNG seed.
        search_width: candidates per step (nanoGCG's ``search_width``).
        topk: top-k tokens per position from the gradient.
        n_replace: positions replaced per candidate.
        init: optional ``(n,)`` starting prompt (box indices).
        keep_parents: keep the prompt when no candidate beats it (default); ``False`` always
            moves to the best candidate, as nanoGCG does.
    """

    name: ClassVar[str] = "gcg"

    def __init__(
        self,
        box: Box,
        seed: int = 0,
        search_width: int = 64,
        topk: int = 64,
        n_replace: int = 1,
        init: Any = None,
        keep_parents: bool = True,
        **settings: Any,
    ) -> None:
        settings.pop("population", None)
        check_counts(self.name, search_width=(search_width, 1))
        super().__init__(
            box,
            seed=seed,
            population=1,
            children=search_width,
            lambdas=[0.0],
            restart_every=0,
            topk=topk,
            n_replace=n_replace,
            init=init,
            keep_parents=keep_parents,
            **settings,
        )
