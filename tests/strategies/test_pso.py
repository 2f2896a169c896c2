"""PSO: conformance, parity of the velocity update with pyswarms, swarm bookkeeping."""

from __future__ import annotations

import numpy as np
import pytest
from pyswarms.backend.handlers import VelocityHandler
from pyswarms.backend.operators import compute_velocity
from pyswarms.backend.swarms import Swarm

from blackbox.strategies.base import Box
from blackbox.strategies.pso import PSO, velocity_update
from blackbox.testing.strategies import BOX, Factory, StrategyConformance, neg_sphere


class TestPSOConformance(StrategyConformance):
    component = "pso"

    @pytest.fixture(params=["global", "local"])
    def make(self, request: pytest.FixtureRequest) -> Factory:
        return lambda box, seed: PSO(box, seed=seed, population=8, topology=request.param)


def _state(n: int = 6, dim: int = 3, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.normal(size=(n, dim)) for k in ("velocity", "position", "pbest_pos")} | {
        "best_pos": rng.normal(size=dim)
    }


def test_velocity_update_matches_pyswarms_compute_velocity() -> None:
    s = _state()
    swarm = Swarm(
        position=s["position"].copy(),
        velocity=s["velocity"].copy(),
        options={"c1": 0.5, "c2": 0.3, "w": 0.9},
        pbest_pos=s["pbest_pos"].copy(),
        best_pos=s["best_pos"].copy(),
    )
    np.random.seed(7)
    expected = compute_velocity(swarm, None, VelocityHandler(strategy="unmodified"))
    got = velocity_update(**s, c1=0.5, c2=0.3, w=0.9, rng=np.random.RandomState(7))
    np.testing.assert_array_equal(got, expected)


def test_velocity_update_is_pure_and_seeded_by_its_generator() -> None:
    s = _state()
    before = {k: v.copy() for k, v in s.items()}
    a = velocity_update(**s, c1=1.5, c2=1.5, w=0.7, rng=np.random.default_rng(1))
    b = velocity_update(**s, c1=1.5, c2=1.5, w=0.7, rng=np.random.default_rng(1))
    c = velocity_update(**s, c1=1.5, c2=1.5, w=0.7, rng=np.random.default_rng(2))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    for k in s:
        np.testing.assert_array_equal(s[k], before[k])


def test_velocity_update_terms_and_clamp() -> None:
    s = _state()
    inertia = velocity_update(**s, c1=0.0, c2=0.0, w=0.5, rng=np.random.default_rng(0))
    np.testing.assert_allclose(inertia, 0.5 * s["velocity"])
    # at its own best and the swarm best, a particle keeps only its inertia
    at_best = dict(s, pbest_pos=s["position"], best_pos=s["position"])
    np.testing.assert_allclose(
        velocity_update(**at_best, c1=2, c2=2, w=0.5, rng=np.random.default_rng(0)),
        0.5 * s["velocity"],
    )
    big = velocity_update(**s, c1=50, c2=50, w=1.0, rng=np.random.default_rng(0), clamp=0.1)
    assert np.abs(big).max() == pytest.approx(0.1)


def test_ask_must_be_the_whole_swarm() -> None:
    pso = PSO(BOX, seed=0, population=6)
    assert pso.ask().shape == (6, BOX.dim)
    with pytest.raises(ValueError, match="population == 6"):
        pso.ask(4)


def test_repeated_ask_returns_the_same_swarm_and_tell_moves_it() -> None:
    pso = PSO(BOX, seed=0, population=6)
    x = pso.ask()
    np.testing.assert_array_equal(pso.ask(), x)
    pso.tell(x, neg_sphere(x))
    assert pso.iteration == 1
    assert not np.array_equal(pso.ask(), x)


def test_tell_rejects_points_that_were_not_asked() -> None:
    pso = PSO(BOX, seed=0, population=6)
    x = pso.ask()
    with pytest.raises(ValueError, match="last ask"):
        pso.tell(x[::-1], neg_sphere(x))
    with pytest.raises(ValueError, match="last ask"):
        pso.tell(x[:3], neg_sphere(x[:3]))
    assert (pso.best_x, pso.best_value, pso.n_told, pso.iteration) == (None, -np.inf, 0, 0)


def test_pbest_and_gbest_follow_the_told_values() -> None:
    pso = PSO(BOX, seed=0, population=6)
    x = pso.ask()
    values = np.arange(6.0)
    pso.tell(x, values)
    np.testing.assert_array_equal(pso.swarm.pbest_cost, -values)  # pyswarms minimises
    assert pso.swarm.best_cost == -5.0
    np.testing.assert_array_equal(pso.box.clip(pso._lo + pso.swarm.best_pos * pso._span), x[5])


def test_integer_positions_stay_continuous_inside_with_fair_bins() -> None:
    box = Box(np.array([0.0]), np.array([2.0]), np.array([True]))
    pso = PSO(box, seed=0, population=3000)
    assert not np.allclose(pso.swarm.position, np.rint(pso.swarm.position))
    counts = np.bincount(pso.ask()[:, 0].astype(int), minlength=3)
    assert np.all(np.abs(counts - 1000) < 120), counts  # end values get a full bin too


def test_all_non_finite_first_round_still_moves() -> None:
    pso = PSO(BOX, seed=0, population=4)
    x = pso.ask()
    pso.tell(x, np.full(4, np.nan))
    assert np.all(np.isfinite(pso.ask()))


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"topology": "ring"}, "pso.topology"),
        ({"boundary": "random"}, "pso.boundary"),
        ({"p": 3}, "pso.p"),
        ({"clamp": 0.0}, "pso.clamp"),
        ({"topology": "local", "k": 9}, "pso.k"),
    ],
)
def test_bad_settings_are_one_line_value_errors(settings: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        PSO(BOX, seed=0, population=8, **settings)
    assert "\n" not in str(info.value)
