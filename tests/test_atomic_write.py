"""The one atomic writer (:mod:`blackbox.staging`): a whole new file or the old one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from blackbox.staging import Staged, atomic_write


def test_atomic_write_text_and_bytes(tmp_path: Path) -> None:
    atomic_write(tmp_path / "a" / "t.txt", "héllo\n")
    atomic_write(tmp_path / "a" / "b.bin", b"\x00\x01")
    assert (tmp_path / "a" / "t.txt").read_text() == "héllo\n"
    assert (tmp_path / "a" / "b.bin").read_bytes() == b"\x00\x01"
    atomic_write(tmp_path / "a" / "t.txt", "new")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["b.bin", "t.txt"]


def test_a_failed_commit_removes_what_it_did_not_move(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a.txt").write_text("old a")
    real = os.replace
    moved: list[str] = []

    def replace(src: str, dst: str) -> None:
        if Path(dst).name == "b.txt":
            raise OSError("disk full")
        moved.append(Path(dst).name)
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="disk full"), Staged() as staged:
        staged.path(tmp_path / "a.txt").write_text("new a")
        staged.path(tmp_path / "sub" / "b.txt").write_text("new b")
        staged.path(tmp_path / "c.txt").write_text("new c")
    assert moved == ["a.txt"]  # moved before the failure: stays
    assert (tmp_path / "a.txt").read_text() == "new a"
    # no temporary left; the folder made for b.txt stays (a commit had begun)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "a.txt",
        "sub",
    ]
