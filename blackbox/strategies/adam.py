"""Adam on a soft prompt: the gradient baseline of soft-prompt studies.

Each :meth:`ask` takes ``steps`` Adam steps (``torch.optim.Adam``) on ``z`` against the bound
objective's differentiable loss over a minibatch of ``minibatch`` search items (seeded), and
returns the new ``z`` (one row), which the runner then scores on the whole search split like
any other candidate.  Gradient calls are charged through ``pop_extra_cost`` (a backward pass
counts as two forward passes), so budgets in forward-pass equivalents compare it fairly with
gradient-free strategies.

Runner contract (as for EPO/GCG): ``bind(problem)`` before the first ask; the problem's space
has ``embeddings(z) -> (n, d)`` (differentiable) and the problem ``loss(soft, split, idx)``,
``n_examples(split)`` (what ``idx`` indexes) and ``gradient_cost(idx)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from blackbox.api import StrategyTraits
from blackbox.errors import UserError
from blackbox.strategies.base import Box, Strategy


@dataclass(frozen=True)
class AdamSettings:
    """Settings of :class:`Adam`.

    Attributes:
        lr: learning rate in ``z`` units (the soft-prompt space scales ``z`` by the embedding
            spread, so 0.1 moves each coordinate by about a tenth of it).
        steps: Adam steps per evaluation.
        minibatch: search items per step (0: all of them).
    """

    lr: float = 0.1
    steps: int = 1
    minibatch: int = 16

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise UserError(f"adam.lr: must be > 0, got {self.lr}")
        if self.steps < 1:
            raise UserError(f"adam.steps: must be >= 1, got {self.steps}")
        if self.minibatch < 0:
            raise UserError(f"adam.minibatch: must be >= 0 (0: all items), got {self.minibatch}")


class Adam(Strategy):
    """Adam on the soft-prompt coordinates ``z`` (see the module docstring)."""

    name: ClassVar[str] = "adam"
    traits = StrategyTraits(needs_gradients=True, needs_continuous=True, population=False)
    settings_schema: ClassVar[type] = AdamSettings

    def __init__(self, box: Box, seed: int = 0, population: int = 1, **settings: Any) -> None:
        super().__init__(box, seed=seed, population=population, **settings)
        self.config = AdamSettings(**settings)
        self.z = torch.zeros(box.dim, requires_grad=True)
        self.opt = torch.optim.Adam([self.z], lr=self.config.lr)
        self.space: Any = None
        self.problem: Any = None
        self._extra = 0.0
        self.losses: list[float] = []

    @property
    def batch_size(self) -> int:
        return 1

    def bind(self, problem: Any) -> None:
        """Attach the problem: a soft-prompt space (``embeddings``) and its objective (``loss``)."""
        if not hasattr(problem.space, "embeddings") or not hasattr(problem.objective, "loss"):
            raise TypeError("adam works on soft-prompt spaces with a differentiable objective")
        self.problem, self.space = problem, problem.space

    def pop_extra_cost(self) -> float:
        """Forward-pass equivalents of the gradient steps since the last call."""
        cost, self._extra = self._extra, 0.0
        return cost

    def ask_cost(self) -> float:
        """Forward-pass equivalents the next :meth:`ask`'s gradient steps spend."""
        if self.problem is None:
            return 0.0
        n_items = self.problem.n_examples("search")
        m = self.config.minibatch
        idx = None if m == 0 or m >= n_items else list(range(m))
        return self.config.steps * self.problem.gradient_cost(idx)

    def _step(self) -> None:
        n_items = self.problem.n_examples("search")
        m = self.config.minibatch
        idx = None if m == 0 or m >= n_items else sorted(self.rng.choice(n_items, m, False))
        self.opt.zero_grad()
        loss = self.problem.loss(self.space.embeddings(self.z)[None], "search", idx)[0]
        loss.backward()
        self.opt.step()
        with torch.no_grad():
            lo = torch.as_tensor(self.box.lower, dtype=self.z.dtype)
            hi = torch.as_tensor(self.box.upper, dtype=self.z.dtype)
            self.z.copy_(torch.maximum(torch.minimum(self.z, hi), lo))
        self.losses.append(float(loss.detach()))
        self._extra += self.problem.gradient_cost(idx)

    def _ask(self, n: int) -> np.ndarray:
        if self.problem is None:
            raise RuntimeError("adam: call bind(problem) before ask")
        for _ in range(self.config.steps):
            self._step()
        row = self.z.detach().numpy().astype(np.float64)
        return np.repeat(row[None], n, axis=0)

    def _tell(self, x: np.ndarray, values: np.ndarray) -> None:
        """Adam follows its gradients; the base class keeps the best evaluated point."""
