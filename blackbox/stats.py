"""Uncertainty of scores that are means over documents (pure numpy / scipy).

Every held-out number blackbox reports is a mean over a sample of documents, so it comes with:

- a 95% interval of the mean: a percentile bootstrap over documents (seeded, 2000 resamples);
- for best vs baseline on the *same* documents, the paired difference with its bootstrap
  interval and a two-sided p-value: the exact McNemar test (a binomial test on the discordant
  documents) when both are 0/1 per document (accuracy), a paired bootstrap test otherwise
  (log-likelihoods, z-scores);
- for racing, a one-sided test that a candidate is worse than a reference on the documents both
  have seen (:func:`worse_p`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

N_BOOT = 2000
LEVEL = 0.95


def is_binary(x: np.ndarray) -> bool:
    """Every value is 0 or 1 (an accuracy-type metric per document)."""
    x = np.asarray(x, dtype=float)
    return bool(x.size) and bool(np.all((x == 0) | (x == 1)))


def _boot_means(x: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """``(n_boot,)`` means of resamples of ``x`` ``(D,)`` with replacement."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_boot, x.size))
    return x[idx].mean(axis=1)


def mean_interval(
    x: np.ndarray, level: float = LEVEL, n_boot: int = N_BOOT, seed: int = 0
) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean of per-document values ``x`` ``(D,)``."""
    x = np.asarray(x, dtype=float)
    if x.size < 2:
        m = float(x.mean()) if x.size else float("nan")
        return m, m
    b = _boot_means(x, n_boot, seed)
    tail = (1 - level) / 2
    return float(np.quantile(b, tail)), float(np.quantile(b, 1 - tail))


def summary(x: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """``{"mean", "ci95": [lo, hi], "n"}`` of per-document values ``x`` ``(D,)``."""
    x = np.asarray(x, dtype=float)
    lo, hi = mean_interval(x, seed=seed)
    return {"mean": float(x.mean()), "ci95": [lo, hi], "n": int(x.size)}


def mcnemar_p(a: np.ndarray, b: np.ndarray) -> tuple[float, int, int]:
    """Exact two-sided McNemar p-value of paired 0/1 outcomes ``a``, ``b`` ``(D,)``; returns
    ``(p, documents only b got right, documents only a got right)``."""
    from scipy.stats import binomtest

    a, b = np.asarray(a) > 0.5, np.asarray(b) > 0.5
    gain, loss = int(np.sum(b & ~a)), int(np.sum(a & ~b))
    if gain + loss == 0:
        return 1.0, 0, 0
    return float(binomtest(gain, gain + loss, 0.5).pvalue), gain, loss


def paired_bootstrap_p(d: np.ndarray, n_boot: int = N_BOOT, seed: int = 0) -> float:
    """Two-sided p-value of ``mean(d) == 0`` for paired differences ``d`` ``(D,)``: how often
    the mean of a resample of the centred differences is at least as far from 0."""
    d = np.asarray(d, dtype=float)
    if d.size < 2 or np.all(d == d[0]):
        return 1.0 if np.all(d == 0) else 0.0
    b = _boot_means(d - d.mean(), n_boot, seed)
    return float((np.sum(np.abs(b) >= abs(d.mean()) - 1e-15) + 1) / (n_boot + 1))


def paired(base: np.ndarray, best: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """``best - base`` on the same documents: mean, 95% interval, p-value and the test used."""
    base, best = np.asarray(base, dtype=float), np.asarray(best, dtype=float)
    if base.shape != best.shape:
        raise ValueError(f"paired: {base.shape} and {best.shape} documents differ")
    d = best - base
    lo, hi = mean_interval(d, seed=seed)
    out: dict[str, Any] = {"mean": float(d.mean()), "ci95": [lo, hi], "n": int(d.size)}
    if is_binary(base) and is_binary(best):
        p, gain, loss = mcnemar_p(base, best)
        out.update(test="mcnemar_exact", p=p, gained=gain, lost=loss)
    else:
        out.update(test="paired_bootstrap", p=paired_bootstrap_p(d, seed=seed))
    return out


def worse_p(cand: np.ndarray, ref: np.ndarray) -> float:
    """One-sided p-value that ``cand`` is worse than ``ref`` on the same documents ``(k,)``
    (small: ``cand`` cannot be expected to catch up).  0/1 values: exact binomial test on the
    discordant documents; otherwise a one-sided t-test on the differences."""
    from scipy.stats import binomtest, ttest_1samp

    cand, ref = np.asarray(cand, dtype=float), np.asarray(ref, dtype=float)
    if is_binary(cand) and is_binary(ref):
        gain, loss = (
            int(np.sum((cand > 0.5) & (ref < 0.5))),
            int(np.sum((ref > 0.5) & (cand < 0.5))),
        )
        if gain + loss == 0:
            return 1.0
        return float(binomtest(gain, gain + loss, 0.5, alternative="less").pvalue)
    d = cand - ref
    if d.size < 2:
        return 1.0
    if np.all(d == d[0]):
        return 0.0 if d[0] < 0 else 1.0
    return float(ttest_1samp(d, 0.0, alternative="less").pvalue)
