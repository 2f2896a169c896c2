"""A coordinator and three workers, as real processes on a tiny real study: the same trials and
best as one process at the same seed, through SIGKILLed workers and a SIGKILLed coordinator.

The study: a tiny random Llama saved with the real SmolLM2 tokenizer, the bundled
``bb_rotten_tomatoes`` task (12 search documents), a steering vector read from a ``.pt`` file,
a population of 6 and 24 evaluations (4 generations).  The reference is ``blackbox run`` in
this process into an SQLite run directory.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState

from blackbox.distributed.remote import STATE_ATTR
from blackbox.study.storage import make_storage

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "s3cret-pw"  # the postgres_url fixture's (tests/distributed/conftest.py)
POPULATION, BUDGET = 6, 24
STRATEGIES = {
    "pso": {"name": "pso", "population": POPULATION},
    "cma": {"name": "nevergrad", "population": POPULATION, "settings": {"optimizer": "CMA"}},
}
BEAT = ["--heartbeat=1", "--grace=6"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """A vector file, and ``model``: a link to the shared tiny Llama dir (read-only)."""
    root = tmp_path_factory.mktemp("remote_assets")
    (root / "model").symlink_to(tiny_model_dir)
    torch.save(torch.randn(4, 64, generator=torch.Generator().manual_seed(0)), root / "v.pt")
    return root


def _config(assets: Path, strategy: str, name: str) -> Path:
    cfg = {
        "name": name,
        "model": {"name": str(assets / "model"), "device": "cpu"},
        "task": {"name": "bb_rotten_tomatoes", "search_size": 12, "heldout_size": 2},
        "space": {
            "layers": [0, 3],
            "coeff": [-4, 4],
            "vectors": [{"name": "v", "file": str(assets / "v.pt")}],
        },
        "strategy": STRATEGIES[strategy],
        "budget": {"evaluations": BUDGET},
        "seed": 7,
    }
    path = assets / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def reference(assets: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Single-process runs, one per strategy: result.json and the final search records."""
    from blackbox.config import load_config
    from blackbox.study.pipeline import run_config

    out = {}
    for strategy in STRATEGIES:
        run_dir = tmp_path_factory.mktemp(f"ref_{strategy}")
        cfg = load_config(_config(assets, strategy, f"remote_{strategy}"))
        result = run_config(cfg, run_dir, progress=False)
        url = f"sqlite:///{run_dir / 'study.db'}"
        out[strategy] = (result, _records(url, cfg.name))
    return out


def _records(storage: Any, name: str) -> dict[tuple[int, int], tuple[Any, ...]]:
    """Every final search evaluation by (generation, index): params, state, value; asserts
    no row was counted twice."""
    out: dict[tuple[int, int], tuple[Any, ...]] = {}
    for t in optuna.load_study(study_name=name, storage=storage).trials:
        a = t.user_attrs
        if a.get("kind") != "search":
            continue
        default = "" if a.get("remote") else "non-finite"  # the runner's NaN record: no error
        final = t.state == TrialState.COMPLETE or (
            t.state == TrialState.FAIL and str(a.get("error", default)).startswith("non-finite")
        )
        if final:
            key = (a["generation"], a["index"])
            assert key not in out, f"row {key} counted twice"
            out[key] = (t.params, t.state, t.value)
    return out


def _blackbox(*args: str, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "blackbox.cli", *args],
        cwd=ROOT,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    proc.log = log  # type: ignore[attr-defined]
    return proc


def _coordinator(config: Path, url: str, out: Path, log: Path) -> subprocess.Popen:
    return _blackbox(
        "run",
        str(config),
        "--storage",
        url,
        "--remote",
        "--no-progress",
        "--out",
        str(out),
        log=log,
    )


def _trials(storage: Any, name: str) -> list[optuna.trial.FrozenTrial]:
    try:
        return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    except Exception:  # not created yet
        return []


def _wait_for(what: str, cond: Any, procs: list[subprocess.Popen], timeout: float = 240) -> Any:
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = cond()
        if got:
            return got
        dead = [p for p in procs if p.poll() is not None]
        if dead:
            raise AssertionError(f"ended before {what}:\n" + dead[0].log.read_text()[-3000:])  # type: ignore[attr-defined]
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _check_same(result: dict[str, Any], records: dict, reference: tuple[dict, dict]) -> None:
    ref_result, ref_records = reference
    assert len(records) == len(ref_records) == BUDGET
    assert records == ref_records
    for key in ("search", "heldout", "candidate"):
        assert result["best"][key] == ref_result["best"][key], key
    assert result["evaluations"] == BUDGET


def _stop_all(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_cma_on_a_journal_file_with_three_worker_processes_matches_one_process(
    assets: Path, reference: dict[str, Any], tmp_path: Path
) -> None:
    """``blackbox worker --workers 3 --devices cpu,cpu,cpu`` (one parent, three children)."""
    config = _config(assets, "cma", "remote_cma")
    url = f"journal://{tmp_path / 'study.log'}"
    workers = _blackbox(
        "worker",
        str(config),
        "--storage",
        url,
        "--devices=cpu,cpu,cpu",
        *BEAT,
        log=tmp_path / "workers.log",
    )
    coord = _coordinator(config, url, tmp_path / "run", tmp_path / "coord.log")
    try:
        assert coord.wait(timeout=400) == 0, coord.log.read_text()[-3000:]  # type: ignore[attr-defined]
        assert workers.wait(timeout=120) == 0, workers.log.read_text()[-3000:]  # type: ignore[attr-defined]
    finally:
        _stop_all([coord, workers])
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    trials = _trials(make_storage(url), "remote_cma")
    _check_same(result, _records(make_storage(url), "remote_cma"), reference["cma"])
    scorers = {t.user_attrs["worker"] for t in trials if t.user_attrs.get("remote")}
    assert len(scorers) >= 2, "the generations were spread over several workers"
    text = workers.log.read_text()  # type: ignore[attr-defined]
    assert text.count("on cpu: scoring a coordinator's generations, an even share") == 3


@pytest.mark.postgres
def test_pso_on_postgres_survives_a_killed_worker_and_a_killed_coordinator(
    postgres_url: str, assets: Path, reference: dict[str, Any], tmp_path: Path
) -> None:
    """Three worker processes; one is SIGKILLed while it holds a RUNNING trial of generation
    >= 1 (its trial is failed and retried by another), then the coordinator is SIGKILLed
    while generation >= 2 is queued and restarted with the same command: the same trials
    and best as one process, no row lost or counted twice."""
    config = _config(assets, "pso", "remote_pso")
    storage = make_storage(postgres_url)
    logs = [tmp_path / f"w{i}.log" for i in range(3)]
    workers = [
        _blackbox("worker", str(config), "--storage", postgres_url, "--batch=2", *BEAT, log=log)
        for log in logs
    ]
    run_dir = tmp_path / "run"
    coord = _coordinator(config, postgres_url, run_dir, tmp_path / "coord1.log")
    procs = [*workers, coord]
    try:

        def running_in_generation() -> optuna.trial.FrozenTrial | None:
            for t in _trials(storage, "remote_pso"):
                a = t.user_attrs
                if (
                    t.state == TrialState.RUNNING
                    and a.get("worker")
                    and a.get("generation", 0) >= 1
                ):
                    return t
            return None

        while True:  # freeze its worker, check it still holds the trial, then kill it
            victim = _wait_for("a running trial", running_in_generation, procs)
            pid = int(victim.user_attrs["worker"].rsplit(":", 1)[1])
            os.kill(pid, signal.SIGSTOP)
            now = [t for t in _trials(storage, "remote_pso") if t.number == victim.number]
            if now[0].state == TrialState.RUNNING:
                break
            os.kill(pid, signal.SIGCONT)
        os.kill(pid, signal.SIGKILL)
        killed = next(p for p in workers if p.pid == pid)
        assert killed.wait(timeout=30) == -signal.SIGKILL
        procs.remove(killed)

        def queued(generation: int) -> bool:
            return any(
                t.user_attrs.get("generation") == generation and t.state == TrialState.WAITING
                for t in _trials(storage, "remote_pso")
            )

        _wait_for("generation 2 queued", lambda: queued(2) or queued(3), procs, timeout=600)
        coord.kill()
        assert coord.wait(timeout=30) == -signal.SIGKILL
        procs.remove(coord)
        again = _coordinator(config, postgres_url, run_dir, tmp_path / "coord2.log")
        procs.append(again)
        assert again.wait(timeout=400) == 0, again.log.read_text()[-3000:]  # type: ignore[attr-defined]
        codes = [p.wait(timeout=120) for p in procs if p is not again]
        assert codes == [0, 0], [log.read_text()[-2000:] for log in logs]
    finally:
        _stop_all(procs)
    trials = _trials(storage, "remote_pso")
    assert (
        optuna.load_study(study_name="remote_pso", storage=storage).user_attrs[STATE_ATTR] == "done"
    )
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    dead = [t for t in trials if t.number == victim.number]
    assert dead[0].state == TrialState.FAIL, "the killed worker's trial failed"
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
    # a just-claimed trial may hold only some of its params (the worker suggests them one by
    # one): the row it was enqueued with is its fixed params
    enqueued = victim.system_attrs.get("fixed_params") or victim.params
    assert [t.state for t in retries] == [TrialState.COMPLETE]
    assert retries[0].params == enqueued
    result = json.loads((run_dir / "result.json").read_text())
    _check_same(result, _records(storage, "remote_pso"), reference["pso"])
    assert result["resumed_evaluations"] >= POPULATION  # the restarted coordinator read back
    text = "".join(
        log.read_text() for log in [*logs, tmp_path / "coord1.log", tmp_path / "coord2.log"]
    )
    assert PASSWORD not in text and "stale trial(s) failed" in text
