"""Aggregation across seeds and the report, on synthetic records (no model)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml

from blackbox.multiobjective import pareto_mask
from blackbox.report import aggregate as agg
from blackbox.report.aggregate import RunCurve
from blackbox.report.compare import curve_from_trials, load_runs, resolve_storage, write_report
from blackbox.strategies.base import Box
from blackbox.study.storage import add_record, open_study

BOX = Box(np.array([0.0, -1.0]), np.array([9.0, 1.0]), np.array([True, False]), ("layer", "coeff"))


def _run(label: str, seed: int, values: list[float], costs: list[float]) -> RunCurve:
    v = np.array(values, dtype=float)
    return RunCurve(
        f"c/{label}/seed{seed}", label, seed, v, np.cumsum(costs), np.cumsum(costs) / 10
    )


def test_step_at_holds_the_last_value_and_is_nan_before_the_first() -> None:
    out = agg.step_at(
        np.array([1.0, 3.0, 5.0]), np.array([0.1, 0.2, 0.4]), np.array([0, 1, 2, 3, 6])
    )
    np.testing.assert_allclose(out, [np.nan, 0.1, 0.1, 0.2, 0.4])


def test_curves_are_monotone_with_failures_and_on_any_grid() -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(size=50)
    values[[0, 7, 20]] = np.nan
    r = _run("a", 0, list(values), list(rng.uniform(1, 5, size=50)))
    best = r.best
    assert math.isnan(best[0]) and np.all(np.diff(best[1:]) >= 0)
    grid = agg.common_grid([r.cost])
    on_grid = agg.step_at(r.cost, best, grid)
    finite = on_grid[np.isfinite(on_grid)]
    assert np.all(np.diff(finite) >= 0) and finite[-1] == np.nanmax(values)


def test_median_and_iqr_across_seeds_on_a_common_grid() -> None:
    # three seeds, different step sizes: at cost 4 their bests are 1, 2 and 4
    runs = [
        _run("a", 0, [1.0, 0.0, 0.0, 0.0], [1, 1, 1, 1]),
        _run("a", 1, [0.0, 2.0], [2, 2]),
        _run("a", 2, [4.0], [4]),
        _run("b", 0, [9.0], [1]),
    ]
    grid = np.array([0.0, 1.0, 2.0, 4.0])
    curves = agg.curves_on_grid(runs, "cost", grid)
    med, q25, q75 = curves["a"]
    assert math.isnan(med[0])
    # at 1 only seed 0 has started; at 2 seeds 0 and 1 (bests 1 and 0)
    np.testing.assert_allclose(med[1:], [1.0, 0.5, 2.0])
    np.testing.assert_allclose([q25[3], q75[3]], [1.5, 3.0])
    np.testing.assert_allclose(curves["b"][0][1:], [9.0, 9.0, 9.0])
    assert list(curves) == ["a", "b"]


def test_summary_rows_threshold_budget_and_never_reached() -> None:
    runs = [
        _run("a", 0, [0.1, 0.5, 0.9], [10, 10, 10]),
        _run("a", 1, [0.2, 0.3, 0.4], [10, 10, 10]),
        _run("a", 2, [0.8, 0.1, 0.1], [10, 10, 10]),
    ]
    runs[0].heldout_best = 0.7
    (row,) = agg.summary_rows(runs, threshold=0.75, axis="cost")
    assert row["runs"] == 3 and row["median_best"] == pytest.approx(0.8)
    assert row["iqr_best"] == pytest.approx(np.subtract(*np.percentile([0.9, 0.4, 0.8], [75, 25])))
    assert row["median_to_threshold"] == pytest.approx(20.0)  # seed 0 at 30, seed 2 at 10
    assert row["never_reached"] == 1 and row["median_heldout"] == pytest.approx(0.7)
    # a budget limit ignores the evaluation that overshoots it
    (cut,) = agg.summary_rows(runs, threshold=0.75, axis="cost", limit=20)
    assert cut["max_best"] == pytest.approx(0.8) and cut["never_reached"] == 2
    assert agg.budget_to_reach(np.array([1.0]), np.array([0.0]), 1.0) != agg.budget_to_reach(
        np.array([1.0]), np.array([1.0]), 1.0
    )


@pytest.mark.parametrize("column", ["xentropy", "kl", "drop:rte"])
def test_pareto_secondary_is_minimised_whatever_its_name(
    column: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The direction is declared (every side column is minimised), not guessed from the name
    (which read ``kl`` and ``drop:rte`` as maximised)."""
    from blackbox.report import compare

    seen: list[tuple[list[float], tuple[str, ...], list[bool]]] = []

    def spy(points: np.ndarray, directions: tuple[str, ...]) -> np.ndarray:
        mask = pareto_mask(points, directions)
        seen.append((points[:, 1].tolist(), tuple(directions), mask.tolist()))
        return mask

    monkeypatch.setattr(compare, "pareto_mask", spy)
    run = _run("a", 0, [1.0, 2.0, 0.5], [1.0, 1.0, 1.0])
    run.extra = [{column: 1.0}, {column: 3.0}, {column: 2.0}]
    assert compare._pareto([run], tmp_path / "pareto.png") == (tmp_path / "pareto.png", column)
    assert seen == [([1.0, 3.0, 2.0], ("maximize", "minimize"), [True, True, False])]


def _record(study: optuna.Study, kind: str, g: int, i: int, x: list[float], v: float, **kw) -> None:
    attrs = {"kind": kind, "generation": g, "index": i, "cost": 4.0, "seconds": 0.5}
    attrs["candidate"] = {"v.layer": int(x[0]), "v.coeff": x[1]}
    add_record(study, BOX, np.array(x), v, {**attrs, **kw})


def _fake_run(storage: str, label: str, seed: int, values: list[float]) -> None:
    study = open_study(storage, f"cmp/{label}/seed{seed}", BOX, "fp")
    for k, a in {"compare": "cmp", "label": label, "seed": seed, "budget": {"cost": 8.0}}.items():
        study.set_user_attr(k, a)
    _record(study, "baseline", -1, 0, [0, 0.0], 0.1)
    xs = [[1 + j, 0.1 * j] for j in range(len(values))]
    for j, (x, v) in enumerate(zip(xs, values)):
        _record(study, "search", j // 2, j % 2, x, v, extra={"xentropy": 5.0 - v})
    best = int(np.nanargmax(values))
    _record(study, "heldout", -1, 0, [0, 0.0], 0.05)
    _record(study, "heldout", -1, 1, xs[best], values[best] - 0.1)


def test_report_from_storage_alone(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'compare.db'}"
    _fake_run(url, "pso", 0, [0.2, 0.6, 0.4])
    _fake_run(url, "pso", 1, [0.3, float("nan"), 0.5])
    _fake_run(url, "random", 0, [0.1, 0.2, 0.3])
    runs, meta = load_runs(url)
    by_name = {r.name: r for r in runs}
    r = by_name["cmp/pso/seed0"]
    assert r.heldout_best == pytest.approx(0.5) and r.heldout_baseline == pytest.approx(0.05)
    assert r.baseline == pytest.approx(0.1) and r.cost.tolist() == [4.0, 8.0, 12.0]
    assert meta["budget"] == {"cost": 8.0}
    assert resolve_storage(str(tmp_path))[0] == url.replace(str(tmp_path), str(tmp_path.resolve()))
    path = write_report(url, tmp_path / "out", threshold=0.5)
    text = path.read_text()
    for f in ("best_vs_cost.png", "best_vs_seconds.png", "landscape.png", "pareto.png"):
        assert (tmp_path / "out" / f).stat().st_size > 1000 and f in text
    # the budget (cost 8) cuts the third evaluation: pso's seed 0 best 0.6, seed 1 best 0.3
    assert "| pso | 2 | 0.4500 |" in text
    assert "| random | 1 | 0.2000 |" in text and "1/1 |" in text


def test_curve_from_trials_without_search_is_none() -> None:
    assert curve_from_trials("x", {}, []) is None


def test_a_directory_whose_runs_live_on_a_server_is_read_from_its_saved_storage(
    tmp_path: Path,
) -> None:
    """``report DIR`` takes the storage named in DIR's compare.yaml / config.yaml; ``--storage``
    overrides it; a masked password asks for ``--storage``."""
    from blackbox.report.compare import resolve_storage
    from blackbox.study.storage import StorageError

    journal = f"journal:///{tmp_path}/runs.log"
    (tmp_path / "compare.yaml").write_text(yaml.safe_dump({"storage": journal}))
    assert resolve_storage(str(tmp_path)) == (journal, tmp_path)
    other = f"sqlite:///{tmp_path}/other.db"
    assert resolve_storage(str(tmp_path), other) == (other, tmp_path)
    (tmp_path / "compare.yaml").write_text(yaml.safe_dump({"storage": "postgresql://u:***@h/db"}))
    with pytest.raises(StorageError, match="masked in .*compare.yaml'; pass --storage URL"):
        resolve_storage(str(tmp_path))


def test_held_out_intervals_and_raced_costs_reach_the_report(tmp_path: Path) -> None:
    """A run's held-out best shows its 95% interval over documents; a raced (PRUNED) trial
    counts its cost on the curve but is never a best."""
    from blackbox import stats

    url = f"sqlite:///{tmp_path / 'compare.db'}"
    study = open_study(url, "cmp/pso/seed0", BOX, "fp")
    study.set_user_attr("label", "pso")
    _record(study, "search", 0, 0, [1, 0.1], 0.5)
    attrs = {"kind": "search", "generation": 0, "index": 1, "cost": 2.0, "seconds": 0.1}
    add_record(study, BOX, np.array([2, 0.2]), 0.9, {**attrs, "raced": {"documents": 2}}, 2)
    docs = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0]
    _record(study, "heldout", -1, 0, [1, 0.1], float(np.mean(docs)), label="best", per_doc=docs)
    (run,) = load_runs(url)[0]
    assert run.cost.tolist() == [4.0, 6.0] and run.final == pytest.approx(0.5)
    assert run.heldout_ci == pytest.approx(stats.mean_interval(np.array(docs)))
    text = write_report(url, tmp_path / "out", threshold=0.5).read_text()
    lo, hi = run.heldout_ci
    assert f"| 0.7500 [{lo:.3f}, {hi:.3f}] |" in text
