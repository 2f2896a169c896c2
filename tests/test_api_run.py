"""The Python API: ``blackbox.run(config) -> Result``.

The README's Python example runs here as written, with two strings substituted: the study path
(the demo's own YAML pointed at the tiny model, with fewer documents) and the run directory.
Its :class:`~blackbox.Result` must say what the run's ``result.json`` says, and bad input must
raise the :class:`~blackbox.UserError` the CLI turns into exit code 2, writing nothing.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

import blackbox
from blackbox.api_run import Result, _config
from blackbox.config import validate

ROOT = Path(__file__).resolve().parents[1]
STUDY = "studies/steer_rotten_tomatoes.yaml"
OUT = "runs/steer_python"


def readme_example() -> str:
    """The README's fenced ``python`` block that calls ``blackbox.run``."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    found = [b for b in blocks if "blackbox.run(" in b]
    assert len(found) == 1, f"expected one python block calling blackbox.run, got {len(found)}"
    return found[0]


def tiny_study(model: Path, tmp: Path) -> Path:
    """The demo's YAML on the tiny model (4 layers) with fewer documents."""
    cfg = yaml.safe_load((ROOT / STUDY).read_text())
    cfg["model"] = {"name": str(model), "device": "cpu", "dtype": "float32"}
    cfg["task"].update(search_size=8, heldout_size=16)
    cfg["space"]["layers"] = [0, 3]
    path = tmp / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def ran(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Execute the README example; returns its namespace, its output and the run directory."""
    tmp = tmp_path_factory.mktemp("api")
    code = readme_example()
    for literal in (f'"{STUDY}"', f'"{OUT}"'):
        assert literal in code, f"the README example no longer names {literal}"
    run_dir = tmp / "run"
    code = code.replace(f'"{STUDY}"', repr(str(tiny_study(tiny_model_dir, tmp))))
    code = code.replace(f'"{OUT}"', repr(str(run_dir)))
    namespace: dict[str, Any] = {}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, "README.md", "exec"), namespace)
    return {"ns": namespace, "out": printed.getvalue(), "run_dir": run_dir}


def test_readme_example_runs_and_its_result_is_result_json(ran: dict[str, Any]) -> None:
    result, run_dir = ran["ns"]["result"], ran["run_dir"]
    raw = json.loads((run_dir / "result.json").read_text())
    assert isinstance(result, blackbox.Result) and result.run_dir == run_dir
    assert {"config.yaml", "study.db", "result.json", "steered.pt"} <= {
        p.name for p in run_dir.iterdir()
    }
    assert result.files == tuple(run_dir / f for f in raw["files"]) and result.files
    assert all(f.is_file() for f in result.files)
    assert (result.name, result.space, result.objective, result.strategy, result.task) == (
        raw["study_name"],
        "steering",
        "lm_eval_task",
        "pso",
        "bb_rotten_tomatoes",
    )
    assert result.metric == raw["metric"] and result.seed == raw["seed"]
    assert dict(result.splits) == raw["splits"] == {"search": 8, "heldout": 16}
    assert result.evaluations == raw["evaluations"] == 16
    assert result.cost_forward_passes == raw["cost_forward_passes"]
    assert result.wall_seconds == raw["wall_seconds"]
    assert set(result.baselines) == set(raw["baselines"]) == {"unsteered"}
    for label, scores in result.baselines.items():
        for split in ("search", "heldout"):
            entry = raw["baselines"][label][split]
            assert getattr(scores, split).score == entry["score"]
            assert dict(getattr(scores, split).metrics) == entry["metrics"]
    for split in ("search", "heldout"):
        assert getattr(result.best, split).score == raw["best"][split]["score"]
        assert dict(getattr(result.best, split).metrics) == raw["best"][split]["metrics"]
    assert dict(result.best.candidate) == raw["best"]["candidate"]
    assert set(result.best.candidate) == {
        "sentiment.layer",
        "sentiment.coeff",
        "answer_bias.layer",
        "answer_bias.coeff",
    }
    st = raw["statistics"]
    assert result.statistics.method == st["method"]
    for split in ("search", "heldout"):
        got, want = getattr(result.statistics, split), st[split]
        assert got.n_documents == want["n_documents"]
        for role in ("baseline", "best"):
            iv = getattr(got, role)
            assert [iv.mean, [iv.low, iv.high], iv.n] == [
                want[role]["mean"],
                want[role]["ci95"],
                want[role]["n"],
            ]
        d = got.difference
        assert (d.mean, [d.low, d.high], d.n, d.test, d.p, d.gained, d.lost) == (
            want["difference"]["mean"],
            want["difference"]["ci95"],
            want["difference"]["n"],
            want["difference"]["test"],
            want["difference"]["p"],
            want["difference"]["gained"],
            want["difference"]["lost"],
        )
    assert json.loads(json.dumps(dict(result.raw), default=float)) == raw
    again = blackbox.load_result(run_dir)  # a finished run read back gives the same view
    assert again.best == result.best and again.statistics == result.statistics
    assert again.baselines == result.baselines and again.files == result.files


def test_readme_example_prints_the_scores_and_the_bad_input_line(ran: dict[str, Any]) -> None:
    result, out = ran["ns"]["result"], ran["out"]
    assert f"best {result.best.heldout.score:.4f}" in out
    assert "config: unknown key 'budget.evals'; allowed here: evaluations, seconds, cost" in out


def test_the_same_call_resumes(ran: dict[str, Any], tiny_model_dir: Path) -> None:
    """Running the same config into the same directory reads every evaluation back."""
    run_dir = ran["run_dir"]
    first = ran["ns"]["result"]
    again = blackbox.run(run_dir / "config.yaml", out=run_dir, overrides=["budget.evaluations=16"])
    assert again.evaluations == first.evaluations and again.raw["resumed_evaluations"] >= 16
    assert again.best == first.best and again.baselines == first.baselines


@pytest.mark.parametrize(
    ("config", "overrides", "message"),
    [
        ({"name": "x", "space": {"type": "steering"}}, (), "objective: a study needs an objective"),
        ("no/such/study.yaml", (), "config: file 'no/such/study.yaml' does not exist"),
        (STUDY, ["budget.evals=3"], "config: unknown key 'budget.evals'"),
        (STUDY, ["model.name=/no/such/model"], "model '/no/such/model': no such local directory"),
        (42, (), "config: int is not a study config"),
    ],
)
def test_bad_input_raises_the_cli_error_and_writes_nothing(
    tmp_path: Path, config: Any, overrides: Any, message: str
) -> None:
    out = tmp_path / "run"
    if isinstance(config, str) and config == STUDY:
        config = ROOT / STUDY
    with pytest.raises(blackbox.UserError, match=re.escape(message)):
        blackbox.run(config, out=out, overrides=overrides)
    assert not out.exists()


def test_readme_study_is_the_demo_with_one_prompt_of_each_list() -> None:
    """The README's YAML validates to the demo study's config, prompt lists cut to one."""
    blocks = re.findall(r"```yaml\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    shown = blackbox.load_config(ROOT / STUDY).resolved()
    for v in shown["space"]["vectors"]:
        if v.get("concept"):
            v["concept"], v["contrast"] = v["concept"][:1], v["contrast"][:1]
    assert blocks and validate(yaml.safe_load(blocks[0])).resolved() == shown


def test_config_as_path_dict_or_validated_config_with_overrides() -> None:
    path = ROOT / STUDY
    from_path = _config(path, ["budget.evaluations=3"])
    from_dict = _config(yaml.safe_load(path.read_text()), ["budget.evaluations=3"])
    from_cfg = _config(blackbox.load_config(path), ["budget.evaluations=3"])
    assert from_path == from_dict == from_cfg and from_path.budget.evaluations == 3
    cfg = blackbox.load_config(path)
    assert _config(cfg, ()) is cfg


def test_result_from_a_dict_without_statistics() -> None:
    raw = {
        "study_name": "s",
        "space": "tokens",
        "objective": "fluency",
        "strategy": "random",
        "metric": "neg_xentropy",
        "seed": 0,
        "baselines": {},
        "best": {"search": {"score": -3.0, "metrics": {}}, "heldout": None, "candidate": None},
        "statistics": {},
        "evaluations": 2,
        "cost_forward_passes": 2.0,
        "wall_seconds": 0.1,
    }
    r = Result.from_dict(raw, "runs/s")
    assert r.statistics is None and r.best.heldout is None and r.best.search.score == -3.0
    assert r.files == () and r.task is None and r.run_dir == Path("runs/s")


def test_import_blackbox_is_cheap_and_exports_its_names() -> None:
    code = (
        "import blackbox, sys; assert 'torch' not in sys.modules, 'torch'; "
        "assert 'pydantic' not in sys.modules, 'pydantic'; "
        "from blackbox import run, Result, load_config, UserError; "
        "assert 'torch' not in sys.modules, 'torch after run'; print(sorted(blackbox.__all__))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert "'run'" in out.stdout
    assert sorted(blackbox.__all__) == sorted(blackbox._EXPORTS)
    for name in blackbox.__all__:
        assert getattr(blackbox, name) is not None
    assert issubclass(blackbox.ConfigError, blackbox.UserError)
    assert set(blackbox.SPACES._classes) == {"steering", "tokens", "soft_prompt"}
    with pytest.raises(AttributeError):
        blackbox.no_such_name  # noqa: B018
