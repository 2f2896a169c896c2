"""Uncertainty of scores that are means over documents (pure numpy / scipy).

Every held-out number blackbox reports is a mean over a sample of documents, so it comes with:

- a 95% interval of the mean: a percentile bootstrap over documents (seeded, 2000 resamples;
  our own rather than ``scipy.stats.bootstrap``, see :func:`_boot_means` for why);
- for best vs baseline on the *same* documents, the paired difference with its bootstrap
  interval and a two-sided p-value: the exact McNemar test (a binomial test on the discordant
  documents) when both are 0/1 per document (accuracy), a paired bootstrap test otherwise
  (log-likelihoods, z-scores);
- for racing, a one-sided test that a candidate cannot catch up with a reference on the split
  it is being scored on, from the documents both have seen (:func:`behind_p`).
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
    """``(n_boot,)`` means of resamples of ``x`` ``(D,)`` with replacement.

    Why not ``scipy.stats.bootstrap``: every interval and p-value here is published (result.json,
    the report, docs/ and the README) and must stay reproducible to the last digit.  scipy
    (1.17, checked) draws the same resamples from the same seeded generator, but takes its
    percentile interval with its own quantile code, which differs from ``np.quantile`` in the
    last bits (about half of 200 random cases, by up to 6e-16); its seeding keyword
    (``random_state``, then ``rng`` from 1.15) and internals change across the scipy versions
    this package accepts (``scipy>=1.10``), and it refuses a single document, which
    :func:`mean_interval` reports as a zero-width interval.  It also has no paired bootstrap
    *test*: :func:`paired_bootstrap_p` needs the resampled means of the centred differences.
    Drawing them here is three lines of numpy that no scipy release can change.
    """
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


def behind_p(cand: np.ndarray, ref: np.ndarray, n_total: int) -> float:
    """One-sided p-value that ``cand`` ends the split *at least level with* ``ref``, from their
    values on the first ``k`` of its ``n_total`` documents ``(k,)`` (small: ``cand`` cannot be
    expected to catch up on this split).

    Racing selects on the mean over the search split, so the question is not whether ``cand`` is
    worse on the population of documents but whether it can still win on *these* documents:
    the ``k`` seen are a random part of the split, so the unseen ``m = n_total - k``
    differences ``d = cand - ref`` are predicted from the seen ones, and the final sum
    ``k * mean(d) + sum(d_unseen)`` has mean ``n_total * mean(d)`` and standard deviation
    ``s * sqrt(m + m**2 / k)`` (``s``: the seen differences' standard deviation; a t
    prediction with ``k - 1`` degrees of freedom).  That is ``sqrt(n_total / m)`` times the
    t statistic of the population test: the more of the split has been seen, the less is left
    to catch up with.  The same for 0/1 values (accuracy), where the differences are -1, 0, 1.
    """
    from scipy.stats import t as student_t

    d = np.asarray(cand, dtype=float) - np.asarray(ref, dtype=float)
    k = d.size
    m = int(n_total) - k
    if m <= 0:
        return 1.0 if d.sum() >= 0 else 0.0
    if k < 2:
        return 1.0
    mean, s = float(d.mean()), float(d.std(ddof=1))
    if s == 0.0:
        return 0.0 if mean < 0 else 1.0
    stat = n_total * mean / (s * np.sqrt(m + m * m / k))
    return float(student_t.cdf(stat, df=k - 1))
