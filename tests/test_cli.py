"""The CLI's last line of defence: an unexpected error is one line and a log, and a run
directory is held by one process at a time (an OS lock the kernel releases on any death)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from blackbox import cli
from blackbox.config import ConfigError
from blackbox.study.rundir import lock_dir


def test_an_unexpected_error_is_one_line_and_a_log(monkeypatch, capsys, tmp_path) -> None:
    def boom(_args):
        raise RuntimeError("postgresql://u:hunter2@h/db went away\nsecond line")

    monkeypatch.setattr(cli, "cmd_data", boom)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    assert cli.main(["data"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("blackbox: unexpected error: RuntimeError: ")
    assert "hunter2" not in err[0] and "--debug" in err[0]
    logs = list(tmp_path.glob("blackbox-error-*.log"))
    assert len(logs) == 1 and str(logs[0]) in err[0]
    text = logs[0].read_text()
    assert "Traceback" in text and "boom" in text and "hunter2" not in text
    with pytest.raises(RuntimeError):  # --debug: the traceback itself
        cli.main(["--debug", "data"])


@pytest.mark.parametrize(
    ("exc", "code", "start"),
    [
        (ValueError("too many values to unpack (expected 2)"), 1, "blackbox: unexpected error: "),
        (IndexError("shape mismatch"), 1, "blackbox: unexpected error: "),
        (ConfigError("config: seed: bad"), 2, "blackbox: error: config: seed: bad"),
    ],
    ids=["a library's ValueError is a bug", "IndexError", "a UserError is bad input"],
)
def test_only_user_errors_are_exit_2(monkeypatch, capsys, tmp_path, exc, code, start) -> None:
    """A ValueError from inside a library (BLOOM's alibi unpacking) is an internal error:
    exit 1 and a log, not "bad input"; only the UserError types are exit 2."""

    def boom(_args):
        raise exc

    monkeypatch.setattr(cli, "cmd_data", boom)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    assert cli.main(["data"]) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(start)
    assert len(list(tmp_path.glob("blackbox-error-*.log"))) == (code == 1)


def _hold_lock(path: Path) -> subprocess.Popen:
    code = (
        "import sys, time; from pathlib import Path; from blackbox.study.rundir import lock_dir;"
        f"lock_dir(Path({str(path)!r})); print('locked', flush=True); time.sleep(120)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def test_a_held_run_dir_is_refused_naming_the_holder_and_freed_by_sigkill(tmp_path) -> None:
    holder = _hold_lock(tmp_path)
    try:
        with pytest.raises(
            ConfigError, match=rf"in use by another blackbox process \(PID {holder.pid}\)"
        ):
            lock_dir(tmp_path)
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    lock_dir(tmp_path)  # no stale lock after a SIGKILL
    assert (tmp_path / ".lock").read_text() == str(os.getpid())


def test_a_second_run_on_a_held_directory_exits_2_at_once(tmp_path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = _hold_lock(run_dir)
    try:
        t0 = time.perf_counter()
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "blackbox.cli",
                "run",
                str(Path(__file__).parents[1] / "studies/steer_rotten_tomatoes.yaml"),
                "--out",
                str(run_dir),
                "--no-progress",
                "--set=model.name=" + str(tmp_path / "no-model"),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert last == (
        f"blackbox: error: {str(run_dir)!r} is in use by another blackbox process "
        f"(PID {holder.pid}); wait for it or use another --out"
    )
    assert time.perf_counter() - t0 < 60
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]  # nothing else written


_IMPORTS = """
import sys
from blackbox.cli import main
code = main(sys.argv[1:])
heavy = ("torch", "transformers.modeling_utils", "nevergrad", "lm_eval")
heavy = sorted(m for m in heavy if m in sys.modules)
print(code, ",".join(heavy) or "-")
"""


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (["run", "{bad}"], "2"),  # a config error is told before the heavy libraries load
        (["run", "{bad}", "--set", "budget="], "2"),
        (["worker", "--help"], None),  # a command's help loads only that command
        (["worker", "{bad}", "--storage", "sqlite:///x.db"], "2"),
        (["compare", "{bad}"], "2"),
        (["tune", "{bad}"], "2"),
        (["report", "{missing}"], "2"),
        (["export", "{missing}"], "2"),
    ],
    ids=["run", "run --set", "worker --help", "worker", "compare", "tune", "report", "export"],
)
def test_config_errors_and_help_do_not_wait_for_torch(tmp_path, argv, code) -> None:
    """The parser imports only the command it runs, and every command validates its input
    (config, run directory) before torch, transformers or nevergrad (~4-8 s of imports
    here) are imported."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodel: {name: smollm2}\ntask: {name: bb_rotten_tomatoes}\n")
    args = [a.format(bad=bad, missing=tmp_path / "missing") for a in argv]
    out = subprocess.run(
        [sys.executable, "-c", _IMPORTS, *args], capture_output=True, text=True, timeout=120
    )
    if code is None:  # --help exits 0 through argparse
        assert out.returncode == 0 and "--storage" in out.stdout
    else:
        assert out.stdout.split() == [code, "-"], out.stdout + out.stderr
        assert out.stderr.count("\n") == 1 and out.stderr.startswith("blackbox: error: "), (
            out.stderr
        )


def test_every_extra_command_is_registered_for_the_top_level_help() -> None:
    parser = cli._parser([])
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(cli.EXTRA_COMMAND_MODULES) | set(cli.BUILTIN_COMMANDS) == set(sub.choices)


def test_the_summary_names_the_exported_side_effects_choice(capsys) -> None:
    """Search scores tie: the best found (trial 1) is not the side-effects rule's choice
    (trial 8, the one steered.pt holds); the summary prints both, the exported one named."""
    from blackbox.cli import _print_summary

    result = {
        "splits": {"search": 4, "heldout": 4},
        "task": "t",
        "metric": "acc",
        "space": "steering",
        "strategy": "random",
        "seed": 0,
        "baselines": {},
        "best": {
            "search": {"score": 0.5},
            "heldout": {"score": 0.25},
            "candidate": {"v.layer": 1, "v.coeff": 0.3},
        },
        "side_effects": {
            "chosen": {
                "trial": 8,
                "candidate": {"v.layer": 2, "v.coeff": 0.1},
                "search": {"score": 0.5, "kl": 0.01},
                "heldout": {"score": 0.75, "kl": 0.02},
            }
        },
        "evaluations": 9,
        "resumed_evaluations": 0,
        "cache_hits": 0,
        "cost_forward_passes": 36,
        "wall_seconds": 1.0,
    }
    _print_summary(result)
    out = capsys.readouterr().out
    assert "best candidate: {'v.layer': 1, 'v.coeff': 0.3}" in out
    assert (
        "exported candidate (trial 8, the side-effects rule's choice: search 0.5000, held-out "
        "0.7500): {'v.layer': 2, 'v.coeff': 0.1}"
    ) in out
    result["side_effects"]["chosen"]["candidate"] = result["best"]["candidate"]
    _print_summary(result)
    assert "exported candidate" not in capsys.readouterr().out  # the same: said once


def test_the_summary_reports_the_attribution_cost_on_its_own_line(capsys) -> None:
    from blackbox.cli import _print_summary

    result = {
        "splits": {"search": 4},
        "objective": "neuron",
        "metric": "z",
        "space": "tokens",
        "strategy": "epo",
        "seed": 0,
        "baselines": {},
        "best": {"search": {"score": 5.0}, "heldout": None, "candidate": {"text": "a b"}},
        "prompt": {
            "text": "a b",
            "attribution": [{"drop": 0.5}, {"drop": -0.25}],
            "attribution_cost": 123.0,
        },
        "evaluations": 9,
        "resumed_evaluations": 0,
        "cache_hits": 0,
        "cost_forward_passes": 600,
        "wall_seconds": 1.0,
    }
    _print_summary(result)
    assert (
        "per-token attribution: 123 forward-pass equivalents after the search, outside its "
        "budget; 1 position(s) have a single-token swap that scores higher"
    ) in capsys.readouterr().out
