"""Workers sharing one study: a real PostgreSQL 15 server, a journal file, faults.

The multi-process tests run the real CLI (``python -m blackbox.cli worker ...``) on a tiny
random Llama saved with the real SmolLM2 tokenizer, scoring the bundled ``bb_rotten_tomatoes``
task with a steering vector read from a ``.pt`` file.  One worker is frozen (SIGSTOP) while it
holds a RUNNING trial and then SIGKILLed, so the kill is always mid-trial.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState

from blackbox.api import Evaluation
from blackbox.distributed.worker import (
    HEARTBEAT_ATTR,
    Worker,
    fail_stale_trials,
    retried_from,
    retry_callback,
)
from blackbox.optuna_internals import trial_id
from blackbox.strategies.base import Box
from blackbox.study.storage import make_storage

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "s3cret-pw"  # the postgres_url fixture's (tests/distributed/conftest.py)
BUDGET = 10


# ---------------------------------------------------------------- a tiny real study


@pytest.fixture(scope="module")
def study_config(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """Config of a tiny real study: tiny Llama dir, bb_rotten_tomatoes, a .pt vector, TPE."""
    root = tmp_path_factory.mktemp("worker_study")
    torch.save(torch.randn(4, 64, generator=torch.Generator().manual_seed(0)), root / "v.pt")
    cfg = {
        "name": "shared",
        "model": {"name": str(tiny_model_dir), "device": "cpu"},
        "task": {"name": "bb_rotten_tomatoes", "search_size": 12, "heldout_size": 2},
        "space": {"layers": [0, 3], "coeff": [-1, 1], "vectors": [{"name": "v", "file": "v.pt"}]},
        "strategy": {"name": "optuna", "settings": {"sampler": "tpe"}},
        "budget": {"evaluations": BUDGET},
    }
    cfg["space"]["vectors"][0]["file"] = str(root / "v.pt")
    path = root / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _worker(config: Path, log: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "blackbox.cli", "worker", str(config), *extra],
        cwd=ROOT,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    proc.log = log  # type: ignore[attr-defined]
    return proc


def _pid(trial: optuna.trial.FrozenTrial) -> int | None:
    who = trial.user_attrs.get("worker")
    return int(who.rsplit(":", 1)[1]) if who else None


def _kill_mid_trial(storage: Any, procs: list[subprocess.Popen], timeout: float = 240) -> int:
    """SIGKILL a worker while it holds a RUNNING trial (after >= 2 complete ones); its pid."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if all(p.poll() is not None for p in procs):
            logs = "\n".join(p.log.read_text()[-2000:] for p in procs)  # type: ignore[attr-defined]
            raise AssertionError(f"all workers ended before the kill:\n{logs}")
        try:
            study = optuna.load_study(study_name="shared", storage=storage)
            trials = study.get_trials(deepcopy=False)
        except Exception:  # the study does not exist yet
            time.sleep(0.2)
            continue
        done = sum(t.state == TrialState.COMPLETE for t in trials)
        running = [t for t in trials if t.state == TrialState.RUNNING and _pid(t)]
        if done < 2 or not running:
            time.sleep(0.1)
            continue
        pid = _pid(running[0])
        os.kill(pid, signal.SIGSTOP)  # freeze it, then check it still holds the trial
        if storage_trial_state(storage, running[0].number) == TrialState.RUNNING:
            os.kill(pid, signal.SIGKILL)
            return pid
        os.kill(pid, signal.SIGCONT)
    raise AssertionError("no worker was caught mid-trial")


def storage_trial_state(storage: Any, number: int) -> TrialState:
    return optuna.load_study(study_name="shared", storage=storage).trials[number].state


def _check_study(storage: Any, killed_pid: int, workers: int) -> None:
    """Budget reached, nothing lost or counted twice, the killed trials failed and retried."""
    trials = optuna.load_study(study_name="shared", storage=storage).trials
    states = [t.state for t in trials]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states, [
        (t.number, t.state.name, _pid(t), retried_from(t), t.datetime_start, t.datetime_complete)
        for t in trials
    ]
    assert BUDGET <= len(complete) <= BUDGET + workers - 1
    killed = [t for t in trials if _pid(t) == killed_pid and t.state == TrialState.FAIL]
    assert killed, "the killed worker's trial is FAIL"
    for t in killed:
        retries = [r for r in trials if retried_from(r) == t.number]
        # a retry whose own worker stalled past the grace period may itself be failed and
        # retried (a false stale mark on a loaded machine); exactly one retry completes
        done = [r for r in retries if r.state == TrialState.COMPLETE]
        assert len(done) == 1, f"trial {t.number}: one completed retry, got {retries}"
        assert all(r.state == TrialState.FAIL for r in retries if r not in done)
        assert all(r.params == t.params for r in retries)
        assert _pid(done[0]) != killed_pid
    origins = [retried_from(t) for t in complete if retried_from(t) is not None]
    assert len(origins) == len(set(origins)), "a retried trial completed twice"
    assert not any(trials[o].state == TrialState.COMPLETE for o in origins)
    for t in complete:
        a = t.user_attrs
        assert a["kind"] == "search" and set(a["candidate"]) == {"v.layer", "v.coeff"}
        assert a["metrics"]["acc"] == pytest.approx(t.value) and a["cost"] > 0


def _wait_all(procs: list[subprocess.Popen], timeout: float = 300) -> list[int]:
    deadline = time.time() + timeout
    for p in procs:
        p.wait(timeout=max(1.0, deadline - time.time()))
    return [p.returncode for p in procs]


@pytest.mark.postgres
def test_three_workers_on_postgres_survive_a_sigkill(
    postgres_url: str, study_config: Path, tmp_path: Path
) -> None:
    beat = ["--heartbeat=1", "--grace=8", f"--storage={postgres_url}"]
    logs = [tmp_path / f"w{i}.log" for i in range(3)]
    procs = [_worker(study_config, log, *beat) for log in logs]
    try:
        pid = _kill_mid_trial(make_storage(postgres_url), procs)
        codes = dict(zip([p.pid for p in procs], _wait_all(procs)))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert codes.pop(pid) == -signal.SIGKILL
    assert list(codes.values()) == [0, 0], [log.read_text() for log in logs]
    _check_study(make_storage(postgres_url), pid, workers=3)
    text = "".join(log.read_text() for log in logs)
    assert PASSWORD not in text and "postgres:***@127.0.0.1" in text
    assert "stale trial(s) failed" in text


def test_three_workers_on_a_journal_file_survive_a_sigkill(
    study_config: Path, tmp_path: Path
) -> None:
    url = f"journal://{tmp_path / 'study.log'}"
    log = tmp_path / "workers.log"
    parent = _worker(
        study_config,
        log,
        "--workers=3",
        "--batch=2",
        "--heartbeat=1",
        "--grace=8",
        "--storage",
        url,
    )
    storage = make_storage(url)
    try:
        pid = _kill_mid_trial(storage, [parent])
        assert parent.wait(timeout=300) == 1, log.read_text()  # one child died of SIGKILL
    finally:
        if parent.poll() is None:
            parent.kill()
    _check_study(make_storage(url), pid, workers=3)


def test_sigint_finishes_the_batch_and_the_same_command_resumes(
    study_config: Path, tmp_path: Path
) -> None:
    # a budget the worker cannot finish between its first complete trial and the signal
    args = ["--storage", f"journal://{tmp_path / 'study.log'}", "--set=budget.evaluations=40"]
    proc = _worker(study_config, tmp_path / "a.log", *args)
    storage = make_storage(f"journal://{tmp_path / 'study.log'}")
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        try:
            trials = optuna.load_study(study_name="shared", storage=storage).trials
        except Exception:
            trials = []
        if any(t.state == TrialState.COMPLETE for t in trials):
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130, (tmp_path / "a.log").read_text()
    first = optuna.load_study(study_name="shared", storage=make_storage(args[1])).trials
    assert first and all(t.state.is_finished() for t in first)
    assert "interrupted" in (tmp_path / "a.log").read_text()
    again = _worker(study_config, tmp_path / "b.log", *args)
    assert again.wait(timeout=300) == 0, (tmp_path / "b.log").read_text()
    trials = optuna.load_study(study_name="shared", storage=make_storage(args[1])).trials
    assert sum(t.state == TrialState.COMPLETE for t in first) < 40  # stopped early
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 40
    assert [t.number for t in trials[: len(first)]] == [t.number for t in first]


# ---------------------------------------------------------------- in-process, no model


class _Space:
    box = Box(np.array([-1.0]), np.array([1.0]), np.array([False]), ("c",))

    def decode(self, x: np.ndarray) -> list[float]:
        return [float(r[0]) for r in x]

    def describe(self, c: float) -> dict[str, float]:
        return {"c": c}

    def intervention(self, cands: list[float]) -> list[float]:
        return list(cands)  # the toy objective reads the values themselves


class _NaNBelowZero:
    """Scores ``c``; NaN for negative ``c``."""

    def evaluate(self, cands: list[float], split: str = "search") -> Evaluation:
        vals = np.array([c if c >= 0 else np.nan for c in cands])
        return Evaluation(values=vals, metrics=[{"acc": v} for v in vals], cost=float(len(cands)))


def test_nan_score_is_a_failed_trial_and_the_worker_goes_on(tmp_path: Path) -> None:
    storage = make_storage(f"journal://{tmp_path / 's.log'}")
    study = optuna.create_study(
        storage=storage, direction="maximize", sampler=optuna.samplers.RandomSampler(seed=1)
    )
    s = Worker(study, _Space(), _NaNBelowZero(), budget=5, batch=2, log=lambda m: None).run()
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert len(complete) == 5 and s.told == 5 and s.failed == len(failed) > 0
    assert all(t.params["c"] < 0 and "non-finite" in t.user_attrs["error"] for t in failed)
    assert all(t.user_attrs["metrics"]["acc"] is None for t in failed)


def test_journal_stale_check_fails_and_retries_once(tmp_path: Path) -> None:
    storage = make_storage(f"journal://{tmp_path / 's.log'}")
    study = optuna.create_study(storage=storage, direction="maximize")
    dist = {"c": optuna.distributions.FloatDistribution(-1, 1)}
    dead = study.ask(dist)
    storage.set_trial_system_attr(trial_id(dead), HEARTBEAT_ATTR, time.time() - 100)
    alive = study.ask(dist)
    time.sleep(1.2)  # both started over a second ago; only the live one beats
    storage.set_trial_system_attr(trial_id(alive), HEARTBEAT_ATTR, time.time())
    cb = retry_callback(max_retry=1)
    assert fail_stale_trials(study, grace=1, callback=cb) == 1
    assert fail_stale_trials(study, grace=1, callback=cb) == 0  # failed once only
    trials = study.trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING]
    assert retried_from(trials[2]) == dead.number and trials[2].params == trials[0].params
    # the retry inherits the dead trial's 100 s old beat; once picked up it is not stale
    retry = study.ask(dist)
    assert retry.number == trials[2].number
    assert study.trials[2].system_attrs[HEARTBEAT_ATTR] < time.time() - 99
    assert fail_stale_trials(study, grace=5, callback=cb) == 0
    assert study.trials[2].state == TrialState.RUNNING


@pytest.mark.postgres
def test_storage_password_is_masked_in_run_outputs(
    postgres_url: str, study_config: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "blackbox.cli", "run", str(study_config), "--out", str(out)]
        + ["--no-progress", f"--set=storage={postgres_url}", "--set=name=masked"]
        + ["--set=budget.evaluations=2", "--set=strategy.population=2"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = (out / "result.json").read_text()
    assert "postgres:***@127.0.0.1" in result
    for text in (result, (out / "config.yaml").read_text(), proc.stdout, proc.stderr):
        assert PASSWORD not in text


@pytest.mark.postgres
def test_storage_password_from_the_environment_never_reaches_a_file(
    postgres_url: str, study_config: Path, tmp_path: Path
) -> None:
    """``${VAR}`` in the URL is read when the storage opens: config.yaml keeps the placeholder;
    an unset variable is one line, exit 2, and no run directory."""
    url = postgres_url.replace(PASSWORD, "${BB_TEST_PG_PASSWORD}")
    secret = PASSWORD + "@/x"  # percent-encoded when substituted

    def run(out: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "blackbox.cli", "run", str(study_config), "--out", str(out)]
            + ["--no-progress", f"--set=storage={url}", "--set=name=envpw"]
            + ["--set=budget.evaluations=2", "--set=strategy.population=2"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    base = {k: v for k, v in os.environ.items() if k != "BB_TEST_PG_PASSWORD"}
    missing = run(tmp_path / "missing", base)
    assert missing.returncode == 2
    assert (
        missing.stderr.strip()
        .splitlines()[-1]
        .endswith("environment variable BB_TEST_PG_PASSWORD is not set")
    )
    assert not (tmp_path / "missing").exists()
    out = tmp_path / "run"
    proc = run(out, {**base, "BB_TEST_PG_PASSWORD": secret})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "${BB_TEST_PG_PASSWORD}" in (out / "config.yaml").read_text()
    for text in (
        (out / "result.json").read_text(),
        (out / "config.yaml").read_text(),
        proc.stdout,
        proc.stderr,
    ):
        assert PASSWORD not in text


@pytest.mark.postgres
def test_the_url_given_to_blackbox_opens_the_study_in_optuna_and_the_dashboard(
    postgres_url: str,
) -> None:
    """One storage URL for every tool: a plain ``postgresql://`` URL (psycopg 3, the driver
    SQLAlchemy 2.x means by it) opens blackbox's study unchanged in Optuna and through
    optuna-dashboard's own storage loader."""
    from optuna_dashboard._storage_url import get_storage

    from blackbox.study.storage import open_study

    box = Box(np.zeros(1), np.ones(1), np.zeros(1, dtype=bool), names=("x",))
    study = open_study(postgres_url, "one_url", box, "fp")
    study.add_trial(
        optuna.trial.create_trial(
            params={"x": 0.25},
            distributions={"x": optuna.distributions.FloatDistribution(0.0, 1.0)},
            value=0.5,
        )
    )
    assert postgres_url.startswith("postgresql://")
    for storage in (postgres_url, get_storage(postgres_url)):
        other = optuna.load_study(study_name="one_url", storage=storage)
        assert [(t.params, t.value) for t in other.trials] == [({"x": 0.25}, 0.5)]


def test_a_worker_with_other_overrides_is_refused_before_the_model_loads(
    study_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The coordinator made the study with ``--set seed=1``; a worker without it is told at
    once (before its model load), and the message names ``--set``."""
    from blackbox.cli import main
    from blackbox.config import load_config
    from blackbox.strategies.base import dummy_box
    from blackbox.study.storage import open_study

    url = f"sqlite:///{tmp_path / 'x.db'}"
    made = load_config(study_config, ["seed=1"])
    open_study(url, made.name, dummy_box(), made.fingerprint())
    broken = tmp_path / "model"  # a model the worker cannot load: it must not get that far
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    code = main(["worker", str(study_config), f"--storage={url}", f"--set=model.name={broken}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("blackbox: error: study 'shared' in ")
    assert "was made with another config" in err[0] and "the same --set overrides" in err[0]


def test_spawned_workers_say_which_one_died() -> None:
    from blackbox.distributed.worker_cli import _exit_reason

    assert _exit_reason(-signal.SIGKILL).startswith("was killed by SIGKILL")
    assert _exit_reason(2).startswith("stopped on bad input")
    assert _exit_reason(1) == "failed with exit code 1 (its message is above)"
