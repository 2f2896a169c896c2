"""A user's own components (issue #26's "done when"): a toy strategy, a toy space and a toy
objective, each defined in this one module with (for the space and the objective) its config
section, and registered with one registry line each, pass the conformance suites imported from
:mod:`blackbox.testing`, exactly as the bundled components do.  The space and the objective are
built as the pipeline builds every component: ``from_config(section, ctx)`` with their own
config section and a :class:`~blackbox.study.context.BuildContext`.  Registered, their sections
are in the study schema (assembled from the registries): a config naming them validates, and a
whole study runs from it through :func:`blackbox.run`.

They are registered for each of their tests only (the ``registered`` fixture) and unregistered
after it, so no other test sees them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pytest
import yaml

from blackbox import OBJECTIVES, SPACES, STRATEGIES, Box, Evaluation, Objective, SearchSpace, Strict
from blackbox.api import POINT, ObjectiveTraits, PointIntervention, Problem, SpaceTraits
from blackbox.evals.base import doc_range
from blackbox.strategies.base import Strategy
from blackbox.study.context import BuildContext
from blackbox.testing import ObjectiveConformance, SpaceConformance, StrategyConformance
from blackbox.testing.strategies import Factory


class ToyHillClimb(Strategy):
    """A (1 + population) evolution strategy: Gaussian steps around the best point told, the
    step shrinking by 0.7 whenever no child improves on it."""

    name: ClassVar[str] = "toy_hill_climb"

    def __init__(self, box: Box, seed: int = 0, population: int = 8) -> None:
        super().__init__(box, seed=seed, population=population)
        self.sigma = 0.3 * (box.upper - box.lower)
        self.centre: np.ndarray | None = None
        self.centre_value = -np.inf

    def _ask(self, n: int) -> np.ndarray:
        if self.centre is None:
            return self.box.sample(n, self.rng)
        return self.centre + self.sigma * self.rng.standard_normal((n, self.box.dim))

    def _tell(self, x: np.ndarray, values: np.ndarray) -> None:
        i = int(np.argmax(values))
        if values[i] > self.centre_value:
            self.centre, self.centre_value = x[i].copy(), float(values[i])
        else:
            self.sigma = self.sigma * 0.7


class ToyPointsConfig(Strict):
    """The toy space's config section."""

    type: Literal["toy_points"] = "toy_points"
    top: float = 4.0


class ToyPointSpace(SearchSpace[tuple[float, ...]]):
    """Three coordinates (the first a whole number in 0..``top``), handed to the objective as
    points."""

    traits = SpaceTraits(POINT, continuous=True)
    config = ToyPointsConfig

    def __init__(self, top: float = 4.0) -> None:
        self._box = Box(
            np.array([0.0, -1.0, -1.0]), np.array([top, 1.0, 1.0]), np.array([True, False, False])
        )

    @classmethod
    def from_config(cls, section: ToyPointsConfig, ctx: BuildContext) -> ToyPointSpace:
        return cls(section.top)

    @property
    def box(self) -> Box:
        return self._box

    def decode(self, x: np.ndarray) -> list[tuple[float, ...]]:
        return [tuple(float(v) for v in row) for row in self.box.clip(np.atleast_2d(x))]

    def encode(self, candidates: Sequence[tuple[float, ...]]) -> np.ndarray:
        return np.asarray(candidates, dtype=float).reshape(len(candidates), self.dim)

    def intervention(self, candidates: Sequence[tuple[float, ...]]) -> PointIntervention:
        return PointIntervention(self.encode(candidates), [tuple(c) for c in candidates])

    def describe(self, candidate: tuple[float, ...]) -> dict[str, Any]:
        return dict(zip(self.box.names, candidate))


class ToyDistanceConfig(Strict):
    """The toy objective's config section."""

    type: Literal["toy_distance"] = "toy_distance"


class ToyDistance(Objective):
    """Minus a point's squared distance to each of 5 "documents" (targets), averaged: a value
    per document, so it races like a real objective."""

    traits = ObjectiveTraits(interventions=frozenset({POINT}), per_document=True)
    config = ToyDistanceConfig
    metric = "neg_distance"

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.targets = np.random.default_rng(seed).uniform(-1, 1, size=(5, 3))  # (D, dim)
        self._splits = {"search": None}

    @classmethod
    def from_config(cls, section: ToyDistanceConfig, ctx: BuildContext) -> ToyDistance:
        return cls(seed=ctx.seed)  # its targets drawn from the study's seed

    def n_examples(self, split: str = "search") -> int:
        return len(self.targets)

    def _score(self, iv: PointIntervention, split: str, limit: Any) -> Evaluation:  # type: ignore[override]
        start, stop = doc_range(limit, len(self.targets))
        d = -(((iv.points[:, None] - self.targets[None, start:stop]) ** 2).sum(-1))  # (C, D)
        values = d.mean(1)
        return Evaluation(
            values=values,
            metrics=[{self.metric: float(v)} for v in values],
            cost=float(d.size),  # one per document per candidate
            per_doc=list(d),
        )


@contextmanager
def toys_registered() -> Iterator[None]:
    """The three toys registered (one registry line each), and unregistered on the way out."""
    try:
        STRATEGIES.add(ToyHillClimb)
        SPACES.add(ToyPointSpace, "toy_points")
        OBJECTIVES.add(ToyDistance, "toy_distance")
        yield
    finally:
        for registry, name in (
            (STRATEGIES, "toy_hill_climb"),
            (SPACES, "toy_points"),
            (OBJECTIVES, "toy_distance"),
        ):
            if name in registry:
                registry.unregister(name)


@pytest.fixture
def registered() -> Iterator[None]:
    with toys_registered():
        yield


@pytest.mark.usefixtures("registered")
class TestToyStrategyConformance(StrategyConformance):
    component = "toy_hill_climb"

    @pytest.fixture
    def make(self) -> Factory:
        return lambda box, seed: STRATEGIES.get("toy_hill_climb")(box, seed=seed, population=8)


def context(seed: int = 0) -> BuildContext:
    """A build context for components that need no model (the toys read only the seed)."""
    from blackbox.config import validate

    cfg = validate(
        {
            "name": "toys",
            "seed": seed,
            "space": {"type": "tokens"},
            "objective": {"type": "fluency"},
            "strategy": {"name": "random"},
            "budget": {"evaluations": 1},
        }
    )
    return BuildContext(cfg, loaded=None)


@pytest.mark.usefixtures("registered")
class TestToySpaceConformance(SpaceConformance):
    component = "toy_points"

    @pytest.fixture
    def space(self) -> ToyPointSpace:
        return SPACES.get("toy_points").from_config(ToyPointsConfig(), context())


@pytest.mark.usefixtures("registered")
class TestToyObjectiveConformance(ObjectiveConformance):
    component = "toy_distance"

    @pytest.fixture
    def problem(self) -> Problem:
        ctx = context()
        return Problem(
            SPACES.get("toy_points").from_config(ToyPointsConfig(), ctx),
            OBJECTIVES.get("toy_distance").from_config(ToyDistanceConfig(), ctx),
        )

    @pytest.fixture
    def candidates(self, problem: Problem) -> list[tuple[float, ...]]:
        return problem.space.sample(4, np.random.default_rng(0))


def test_the_toys_are_registered_only_inside_the_context() -> None:
    before = (STRATEGIES.names(), SPACES.names(), OBJECTIVES.names())
    assert "toy_hill_climb" not in STRATEGIES and "toy_points" not in SPACES
    with toys_registered():
        assert STRATEGIES.get("toy_hill_climb") is ToyHillClimb
        assert SPACES.get("toy_points") is ToyPointSpace
        assert OBJECTIVES.get("toy_distance") is ToyDistance
    assert (STRATEGIES.names(), SPACES.names(), OBJECTIVES.names()) == before


def test_a_component_without_from_config_is_refused_at_registration() -> None:
    """``from_config`` is abstract for registered components: the registry line of a space or
    objective that cannot be built from its section fails, naming the class."""

    class Unbuildable(ToyPointSpace):
        from_config = SearchSpace.from_config  # the base's placeholder

    class Loose(ToyDistance):
        from_config = Objective.from_config

    with pytest.raises(TypeError, match="space 'nope': Unbuildable does not define from_config"):
        SPACES.add(Unbuildable, "nope")
    with pytest.raises(TypeError, match="objective 'nope': Loose does not define from_config"):
        OBJECTIVES.add(Loose, "nope")
    assert "nope" not in SPACES and "nope" not in OBJECTIVES
    with pytest.raises(NotImplementedError):
        SearchSpace.from_config(ToyPointsConfig(), context())
    assert ToyDistance.from_config(ToyDistanceConfig(), context(seed=3)).targets.tolist() == (
        ToyDistance(seed=3).targets.tolist()
    )


TOY_STUDY = {
    "name": "toys",
    "seed": 3,
    "space": {"type": "toy_points", "top": 2.0},
    "objective": {"type": "toy_distance"},
    "strategy": {"name": "toy_hill_climb", "population": 4},
    "budget": {"evaluations": 12},
}


def test_a_registered_toy_is_in_the_schema_and_runs_a_whole_study(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Once registered (one line each), the toys' sections are in the study schema: a config
    naming them validates, a wrong field of theirs is one line naming it, and the study runs end
    to end through :func:`blackbox.run` as a bundled one does (storage, result.json, the
    resolved config); unregistered, the same config is refused, naming what is allowed."""
    import blackbox
    from blackbox.config import ConfigError, validate

    study = {**TOY_STUDY, "model": {"name": str(tiny_model_dir), "device": "cpu"}}
    with pytest.raises(
        ConfigError, match=r"objective\.type: 'toy_distance' is not a known type; allowed"
    ):
        validate(study)
    with toys_registered():
        cfg = validate(study)
        assert isinstance(cfg.space, ToyPointsConfig) and cfg.space.top == 2.0
        assert isinstance(cfg.objective, ToyDistanceConfig)
        with pytest.raises(ConfigError) as bad:
            validate({**study, "space": {"type": "toy_points", "top": "high"}})
        assert str(bad.value).startswith("config: space.top:") and "\n" not in str(bad.value)
        result = blackbox.run(study, out=tmp_path / "run")
        from blackbox.errors import UserError
        from blackbox.study.export import export_run

        with pytest.raises(UserError, match="a toy_points run writes no files to export"):
            export_run(tmp_path / "run")  # the base finishing step: nothing, said in one line
    raw = json.loads((tmp_path / "run" / "result.json").read_text())
    assert (result.space, result.objective, result.strategy) == (
        "toy_points",
        "toy_distance",
        "toy_hill_climb",
    )
    assert raw["evaluations"] == 12 and raw["files"] == []  # the base finishing step
    best = raw["best"]
    assert result.best.search.score == best["search"]["score"] <= 0  # minus a squared distance
    assert best["candidate"]["x0"] in (0.0, 1.0, 2.0)  # the integer axis, within top 2
    toy = ToyDistance(seed=3)  # the study's seed draws the targets: the score is recomputed
    point = np.array([[best["candidate"][f"x{i}"] for i in range(3)]])
    iv = ToyPointSpace(2.0).intervention([tuple(point[0])])
    assert toy.evaluate(iv).values[0] == pytest.approx(best["search"]["score"])
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["space"] == {"type": "toy_points", "top": 2.0}
    with pytest.raises(ConfigError, match="toy_distance. is not a known type"):
        validate(study)  # unregistered again


def test_a_registered_toy_space_can_be_compared() -> None:
    """``blackbox compare``'s schema follows the registries too: a comparison whose study and
    extra spaces are the toy's validates while it is registered, and each entry's study config
    takes the toy space's section (another ``top``); unregistered, it is one line naming the
    unknown type."""
    from blackbox.config import ConfigError
    from blackbox.experiments.compare_config import validate_compare

    data = {
        "study": {k: v for k, v in TOY_STUDY.items() if k not in ("strategy", "budget")},
        "spaces": {"wide": {"type": "toy_points", "top": 8.0}},
        "strategies": [{"name": "toy_hill_climb"}, {"name": "random", "space": "wide"}],
        "seeds": [0],
        "budget": {"evaluations": 8},
    }
    with toys_registered():
        cmp = validate_compare(data)
        wide = cmp.study_for(cmp.strategies[1])
        assert isinstance(wide.space, ToyPointsConfig) and wide.space.top == 8.0
        assert cmp.study_for(cmp.strategies[0]).space.top == 2.0
    with pytest.raises(ConfigError, match=r"is not a known type; allowed"):
        validate_compare(data)
