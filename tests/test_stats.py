"""Intervals and paired tests of per-document scores, against closed forms and scipy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest, ttest_1samp
from scipy.stats import t as student_t

from blackbox import stats


def test_bootstrap_interval_covers_the_mean_and_matches_the_normal_width() -> None:
    rng = np.random.default_rng(0)
    x = (rng.random(400) < 0.6).astype(float)
    s = stats.summary(x)
    lo, hi = s["ci95"]
    assert lo < s["mean"] < hi and s["n"] == 400
    se = np.sqrt(x.mean() * (1 - x.mean()) / x.size)
    assert hi - lo == pytest.approx(2 * 1.96 * se, rel=0.1)  # the normal approximation's width
    assert stats.summary(x) == s  # seeded


def test_bootstrap_numbers_are_pinned_to_the_last_digit() -> None:
    """Published intervals and p-values stay reproducible: the resampling (seed 0, 2000 draws)
    and the quantiles are our own (see ``stats._boot_means`` for why not scipy's bootstrap)."""
    x = np.arange(25, dtype=float) % 7 / 3
    assert stats.mean_interval(x) == (0.6666666666666665, 1.16)
    d = np.sin(np.arange(30.0))
    assert stats.mean_interval(d) == (-0.20439476488981378, 0.2891857883019642)
    assert stats.paired_bootstrap_p(d) == 0.7476261869065467
    assert stats.paired_bootstrap_p(d + 0.3) == 0.004997501249375313
    assert stats.mean_interval(np.array([0.25])) == (0.25, 0.25)  # scipy refuses one document


def test_mcnemar_is_the_exact_binomial_test_on_discordant_documents() -> None:
    base = np.array([1, 1, 0, 0, 1, 0, 0, 0, 1, 0], dtype=float)
    best = np.array([1, 0, 1, 1, 1, 1, 1, 0, 1, 1], dtype=float)
    out = stats.paired(base, best)
    assert out["test"] == "mcnemar_exact" and (out["gained"], out["lost"]) == (5, 1)
    assert out["p"] == pytest.approx(binomtest(5, 6, 0.5).pvalue)
    assert out["mean"] == pytest.approx(0.4) and out["n"] == 10
    assert out["ci95"][0] <= 0.4 <= out["ci95"][1]
    assert stats.paired(base, base)["p"] == 1.0


def test_continuous_values_use_the_paired_bootstrap() -> None:
    rng = np.random.default_rng(1)
    base = rng.normal(size=200)
    shifted = stats.paired(base, base + 0.5 + 0.1 * rng.normal(size=200))
    assert shifted["test"] == "paired_bootstrap" and shifted["p"] < 0.01
    noise = stats.paired(base, base + 0.1 * rng.normal(size=200))
    assert noise["p"] > 0.05
    with pytest.raises(ValueError, match="documents differ"):
        stats.paired(base, base[:3])


def test_behind_p_is_one_sided_and_knows_how_much_of_the_split_is_left() -> None:
    rng = np.random.default_rng(2)
    a = rng.normal(size=32)
    b = a - 0.3 + 0.5 * rng.normal(size=32)
    population = ttest_1samp(b - a, 0, alternative="less").pvalue
    # with half of a 64-document split seen, the t statistic grows by sqrt(64 / 32)
    stat = ttest_1samp(b - a, 0).statistic * np.sqrt(2)
    assert stats.behind_p(b, a, 64) == pytest.approx(student_t.cdf(stat, df=31))
    assert stats.behind_p(b, a, 64) < population  # less is left to catch up with
    assert stats.behind_p(b, a, 10**9) == pytest.approx(population, rel=1e-3)  # huge split
    assert stats.behind_p(a, b, 64) > 0.99
    ref = np.array([1, 1, 1, 1, 1, 1, 0, 1], dtype=float)
    bad = np.array([0, 0, 1, 0, 0, 0, 0, 1], dtype=float)
    assert stats.behind_p(bad, ref, 64) < stats.behind_p(bad, ref, 10**6) < 0.05
    assert stats.behind_p(ref, ref, 64) == 1.0  # level: never stopped
    assert stats.behind_p(bad, ref, 8) == 0.0 and stats.behind_p(ref, bad, 8) == 1.0  # all seen


@pytest.mark.parametrize("binary", [True, False])
def test_behind_p_stops_a_candidate_that_would_have_caught_up_rarely(binary: bool) -> None:
    """The false-stop rate, measured: over random orders of splits on which the candidate ends
    level with or above the reference, a look after 16 or 32 of 64 documents at level 0.05
    stops it at most about 5% of the time (a t approximation, so a margin)."""
    rng = np.random.default_rng(0)
    n, looks, stops, trials = 64, (16, 32), 0, 0
    while trials < 4000:
        if binary:
            ref = (rng.random(n) < 0.6).astype(float)
            cand = np.where(rng.random(n) < 0.3, 1 - ref, ref)  # ~30% discordant
        else:
            ref = rng.normal(size=n)
            cand = ref + rng.normal(scale=0.5, size=n)
        if cand.sum() < ref.sum():
            continue  # only candidates that end level or above
        trials += 1
        order = rng.permutation(n)
        k = looks[trials % 2]
        stops += stats.behind_p(cand[order[:k]], ref[order[:k]], n) < 0.05
    assert stops / trials < 0.07
