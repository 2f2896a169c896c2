"""Seeded, stratified subsamples of documents."""

from __future__ import annotations

from blackbox.evals.sampling import subsample


def test_stratified_subsample_balances_labels() -> None:

    labels = [0] * 90 + [1] * 10
    got = subsample(100, 20, seed=0, labels=labels)
    assert len(got) == 20 == len(set(got))
    assert sum(labels[i] for i in got) == 10  # half from the rare class
    assert got == subsample(100, 20, seed=0, labels=labels)  # seeded
    small = subsample(100, 30, seed=1, labels=labels)  # rare class runs out: topped up
    assert len(small) == 30 and sum(labels[i] for i in small) == 10
    assert subsample(100, 200, seed=0) == list(range(100))
