"""``blackbox export`` cannot destroy a run: targets that would replace a run file are refused,
a damaged ``result.json`` is told before anything is written, and a failing export changes
nothing (the files are staged, then moved into place together)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
import yaml

from blackbox.cli import main


def _digest(root: Path) -> dict[str, str]:
    """Every file under ``root`` (hidden ones too) -> its sha256."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished steering run on the tiny model (exports are then tried on copies)."""
    tmp = tmp_path_factory.mktemp("export_safety")
    torch.save(torch.randn(4, 64, generator=torch.Generator().manual_seed(0)), tmp / "v.pt")
    cfg = {
        "name": "safety",
        "model": {"name": str(tiny_model_dir), "device": "cpu"},
        "task": {"name": "bb_rotten_tomatoes", "search_size": 4, "heldout_size": 6},
        "space": {
            "type": "steering",
            "layers": [1, 3],
            "vectors": [{"name": "v", "file": str(tmp / "v.pt")}],
        },
        "strategy": {"name": "random", "population": 2},
        "budget": {"evaluations": 4},
    }
    (tmp / "c.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp / "run"
    assert main(["run", str(tmp / "c.yaml"), "--out", str(out), "--no-progress"]) == 0
    return out


@pytest.mark.parametrize(
    ("target", "named"),
    [
        ("study.db", "'study.db'"),
        ("config.yaml", "'config.yaml'"),
        ("result.json", "'result.json'"),
        (".lock", "'.lock'"),
        ("lm_eval", "'lm_eval'"),
        (".", "directory"),
        ("..", "directory"),
    ],
)
def test_an_export_onto_a_run_file_is_refused(
    run: Path, target: str, named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _digest(run.parent)
    out = run / target
    assert main(["export", str(run), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"blackbox: error: export: --out {str(out)!r}")
    assert f"would replace the run's {named}; give another path (default: " in err[0]
    assert _digest(run.parent) == before  # nothing written, nothing replaced


def test_a_file_format_onto_a_directory_is_refused(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _digest(run)
    assert main(["export", str(run), "--out", str(tmp_path)]) == 2
    assert "writes a file, but" in capsys.readouterr().err
    assert _digest(run) == before and list(tmp_path.iterdir()) == []


def test_every_format_into_a_file_is_refused(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--format all --out FILE``: each format would go under a file; told before the load."""
    before = _digest(run)
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    assert main(["export", str(run), "--format", "all", "--out", str(target)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"blackbox: error: export: {str(target / 'steered.pt')!r} cannot be written: "
        f"{str(target)!r} is a file, not a directory; --format all writes into a directory"
    ]
    assert _digest(run) == before and target.read_text() == "mine"


def test_a_damaged_result_json_is_told_before_anything_is_written(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "result.json").write_text("garbage{")
    before = _digest(copy)
    assert main(["export", str(copy), "--format", "all"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"blackbox: error: export: {str(copy / 'result.json')!r} is not valid JSON (Expecting "
        "value at line 1); restore it or move it away (a re-run rewrites it)"
    ]
    assert _digest(copy) == before


def test_a_failing_export_changes_nothing(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--format all`` writes steered.pt, then the GGUF fails: steered.pt stays as it was and
    no temporary file is left."""
    import shutil

    import blackbox.search_spaces.steering.finishing as steering

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "steered.pt").write_bytes(b"the previous export")
    before = _digest(copy)

    def broken(*args: object, **kw: object) -> Path:
        raise RuntimeError("disk full")

    monkeypatch.setattr(steering, "export_control_vector", broken)
    assert main(["export", str(copy), "--format", "all"]) == 1  # an internal error, logged
    assert _digest(copy) == before
    assert not [p for p in copy.iterdir() if "partial-" in p.name]


def test_export_prints_the_heldout_score_and_the_lm_eval_command(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = json.loads((run / "result.json").read_text())
    out = tmp_path / "best.pt"
    assert main(["export", str(run), "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"wrote {out}"
    assert lines[1].endswith(f"held-out {result['best']['heldout']['score']:.4f}")
    command = lines[2].split(": ", 1)[1]
    assert command.startswith("lm_eval --model steered --model_args ")
    assert f"steer_path={out.resolve()}" in command
    assert f"--include_path {(run / 'lm_eval').resolve()}" in command
    assert (
        torch.load(out, weights_only=True).keys()
        == torch.load(run / "steered.pt", weights_only=True).keys()
    )
