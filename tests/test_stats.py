"""Intervals and paired tests of per-document scores, against closed forms and scipy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest, ttest_1samp

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


def test_worse_p_is_one_sided() -> None:
    ref = np.array([1, 1, 1, 1, 1, 1, 0, 1], dtype=float)
    bad = np.array([0, 0, 1, 0, 0, 0, 0, 1], dtype=float)
    assert stats.worse_p(bad, ref) == pytest.approx(binomtest(0, 5, 0.5, alternative="less").pvalue)
    assert stats.worse_p(ref, bad) == 1.0
    rng = np.random.default_rng(2)
    a = rng.normal(size=30)
    b = a - 0.3 + 0.05 * rng.normal(size=30)
    assert stats.worse_p(b, a) == pytest.approx(ttest_1samp(b - a, 0, alternative="less").pvalue)
    assert stats.worse_p(a, b) > 0.99
