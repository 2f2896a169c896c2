"""Staged writes: all targets move into place together, or none does."""

from __future__ import annotations

from pathlib import Path

import pytest

from blackbox.staging import Staged


def test_commit_replaces_files_and_directories(tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_text("old")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "stale.txt").write_text("old")
    with Staged() as staged:
        staged.path(tmp_path / "f.txt").write_text("new")
        d = staged.path(tmp_path / "d")
        d.mkdir()
        (d / "a.txt").write_text("new")
        assert staged.final(d / "a.txt") == tmp_path / "d" / "a.txt"
        assert (tmp_path / "f.txt").read_text() == "old"  # nothing moved before the commit
    assert (tmp_path / "f.txt").read_text() == "new"
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["a.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "f.txt"]


def test_an_exception_leaves_every_target_as_it_was(tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_text("old")
    with pytest.raises(RuntimeError), Staged() as staged:
        staged.path(tmp_path / "f.txt").write_text("new")
        staged.path(tmp_path / "g" / "new.txt").write_text("new")
        raise RuntimeError("the second format failed")
    assert (tmp_path / "f.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["f.txt"]  # g/ made, then removed
