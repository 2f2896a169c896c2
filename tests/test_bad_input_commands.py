"""Bad input to every command (``compare``, ``tune``, ``worker``, ``export``, ``report``, and
``run`` rows that need no tiny model): one clear line, exit 2, nothing written, within a time
bound that rules out a model load.  ``tests/test_bad_input.py`` holds the ``run`` rows.

Each case runs the real CLI in a fresh directory and checks the exact last line of stderr.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

# Seconds a rejected command may take: the CLI's imports take a few seconds on a slow CPU; the
# embedded model's load alone takes longer than this, so a row that passes loaded no model.
TIME_BOUND = 45.0
DEAD = "postgresql://bb:hunter2@127.0.0.1:9/db"  # nothing listens on port 9
DEAD_MASKED = "postgresql://bb:***@127.0.0.1:9/db"
REFUSED = (
    '(psycopg.OperationalError) connection failed: connection to server at "127.0.0.1", port 9 failed: '
    "Connection refused"
)
MODEL = "smollm2-135m-instruct"  # never loaded: every row fails before


def study(**top: Any) -> dict[str, Any]:
    """A valid steering study config on the embedded model."""
    cfg: dict[str, Any] = {
        "name": "s",
        "model": {"name": MODEL, "device": "cpu"},
        "task": {"name": "bb_rotten_tomatoes", "search_size": 2, "heldout_size": 2},
        "space": {
            "layers": [0, 3],
            "vectors": [{"name": "v", "concept": ["good"], "contrast": ["bad"]}],
        },
        "strategy": {"name": "random", "population": 2},
        "budget": {"evaluations": 2},
    }
    cfg.update(top)
    return cfg


def compare(**top: Any) -> dict[str, Any]:
    """A valid compare config."""
    base = {k: v for k, v in study().items() if k not in ("strategy", "budget")}
    cfg: dict[str, Any] = {
        "study": base,
        "strategies": [{"name": "pso"}, {"name": "random"}],
        "seeds": [0, 1],
        "budget": {"cost": 20},
    }
    cfg.update(top)
    return cfg


def tune(**top: Any) -> dict[str, Any]:
    """A valid tune config."""
    cfg: dict[str, Any] = {
        "study": study(strategy={"name": "pso", "population": 2}),
        "tune": {"trials": 2, "params": {"c1": {"low": 0.1, "high": 2.0}}},
    }
    cfg.update(top)
    return cfg


def soft(**space: Any) -> dict[str, Any]:
    return study(space={"type": "soft_prompt", "n_tokens": 2, **space}, strategy={"name": "adam"})


Prep = Callable[[Path], tuple[list[str], dict[str, str]]]


def cfg(command: str, data: Any, *args: str, env: dict[str, str] | None = None) -> Prep:
    """``blackbox COMMAND c.yaml ARGS`` with ``data`` (a dict or YAML text) as c.yaml."""

    def prep(tmp: Path) -> tuple[list[str], dict[str, str]]:
        text = data if isinstance(data, str) else yaml.safe_dump(data)
        (tmp / "c.yaml").write_text(text)
        out = [] if command in ("worker",) else ["--out", str(tmp / "out")]
        return [command, str(tmp / "c.yaml"), *out, *args], env or {}

    return prep


def run_dir(storage: str | None, *args: str, command: str = "export") -> Prep:
    """``blackbox COMMAND RUN_DIR ARGS`` on a directory holding only a saved config."""

    def prep(tmp: Path) -> tuple[list[str], dict[str, str]]:
        d = tmp / "r"
        d.mkdir()
        (d / "config.yaml").write_text(yaml.safe_dump(study(storage=storage)))
        return [command, str(d), *args], {}

    return prep


def argv(
    *args: str, env: dict[str, str] | None = None, files: dict[str, str] | None = None
) -> Prep:
    """``blackbox ARGS`` (``{tmp}`` filled in), with ``files`` written first."""

    def prep(tmp: Path) -> tuple[list[str], dict[str, str]]:
        for name, text in (files or {}).items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_text(text)
        return [a.replace("{tmp}", str(tmp)) for a in args], env or {}

    return prep


CASES: list[tuple[str, Prep, str]] = [
    # --- run (rows that need no model at all) ------------------------------------------------
    (
        "run: storage password from an unset variable",
        cfg("run", study(storage="postgresql://bb:${BB_NO_SUCH_VAR}@127.0.0.1:9/db")),
        "storage 'postgresql://bb:${BB_NO_SUCH_VAR}@127.0.0.1:9/db': environment variable "
        "BB_NO_SUCH_VAR is not set",
    ),
    (
        "run: unreachable storage (checked before the model loads)",
        cfg("run", study(storage=DEAD)),
        f"storage '{DEAD_MASKED}': cannot be reached ({REFUSED})",
    ),
    (
        "run: journal file in a missing directory",
        cfg("run", study(storage="journal:///no/such/dir/j.log")),
        "storage 'journal:///no/such/dir/j.log': the file's directory does not exist",
    ),
    (
        "run: sqlite file in a missing directory",
        cfg("run", study(storage="sqlite:////no/such/dir/s.db")),
        "storage 'sqlite:////no/such/dir/s.db': the file's directory does not exist",
    ),
    (
        "run: subspace larger than the soft prompt",
        cfg("run", soft(subspace_dim=10**6)),
        "config: space.subspace_dim: 1000000 is larger than the soft prompt itself (2 x 576); "
        "use null for the full space",
    ),
    (
        "run: a NaN coefficient bound",
        cfg("run", study(space={**study()["space"], "coeff": [float("nan"), 0.1]})),
        "config: space.coeff.0: Input should be a finite number (got nan)",
    ),
    (
        "run: model name empty",
        cfg("run", study(model={"name": ""})),
        "config: model.name: String should have at least 1 character (got '')",
    ),
    (
        "run: budget of zero evaluations",
        cfg("run", study(budget={"evaluations": 0})),
        "config: budget.evaluations: Input should be greater than or equal to 1 (got 0)",
    ),
    (
        "run: CONFIG missing",
        argv("run", "{tmp}/nope.yaml"),
        "config: file '{tmp}/nope.yaml' does not exist",
    ),
    (
        "run: --set without '='",
        cfg("run", study(), "--set", "seed"),
        "--set 'seed': expected key.path=value",
    ),
    # --- compare ----------------------------------------------------------------------------
    (
        "compare: unknown strategy",
        cfg("compare", compare(strategies=[{"name": "annealing"}])),
        "config: strategies.annealing: strategy.name: unknown name 'annealing'; allowed: "
        "['adam', 'epo', 'gcg', 'nevergrad', 'optuna', 'pso', 'random', 'token_ga']",
    ),
    (
        "compare: no seeds",
        cfg("compare", compare(seeds=[])),
        "config: seeds: List should have at least 1 item after validation, not 0",
    ),
    (
        "compare: a negative seed",
        cfg("compare", compare(seeds=[0, -3])),
        "config: seeds.1: Input should be greater than or equal to 0 (got -3)",
    ),
    (
        "compare: a task name that is a path",
        cfg("compare", compare(tasks=["../etc"])),
        "config: tasks: '../etc': each task names its report's directory, so it must be a task "
        "name (letters, digits, '_', '.', '-'), not a path; a task YAML goes in study.task.name "
        "of a one-task comparison",
    ),
    (
        "compare: unreachable storage",
        cfg("compare", compare(storage=DEAD)),
        f"storage '{DEAD_MASKED}': cannot be reached ({REFUSED})",
    ),
    (
        "compare: storage password from an unset variable",
        cfg("compare", compare(storage="postgresql://bb:${BB_NO_SUCH_VAR}@h/db")),
        "storage 'postgresql://bb:${BB_NO_SUCH_VAR}@h/db': environment variable "
        "BB_NO_SUCH_VAR is not set",
    ),
    (
        "compare: --out an existing file",
        argv(
            "compare",
            "{tmp}/c.yaml",
            "--out",
            "{tmp}/c.yaml",
            files={"c.yaml": yaml.safe_dump(compare())},
        ),
        "--out: '{tmp}/c.yaml' exists and is not a directory",
    ),
    (
        "compare: study name '..'",
        cfg("compare", compare(study={**compare()["study"], "name": ".."})),
        "config: study.name: '..' (2 characters) is not a safe name; allowed: 1-100 of letters, "
        "digits, '_', '.', '-', not starting with '.' or '-'",
    ),
    (
        "compare: a budget of no kind",
        cfg("compare", compare(budget={})),
        "config: budget: set evaluations, seconds or cost",
    ),
    (
        "compare: pso setting of the wrong type",
        cfg("compare", compare(strategies=[{"name": "pso", "settings": {"w": "heavy"}}])),
        "config: strategies.pso: strategy.settings.w: 'heavy' is not valid for 'pso' (input "
        "should be a valid number, unable to parse string as a number; declared type: float)",
    ),
    # --- tune -------------------------------------------------------------------------------
    (
        "tune: a parameter the strategy does not have",
        cfg("tune", tune(tune={"trials": 2, "params": {"c9": {"low": 0, "high": 1}}})),
        "config: tune.params.c9: not a setting of 'pso'; allowed: population, boundary, c1, "
        "c2, clamp, k, p, topology, w",
    ),
    (
        "tune: zero trials",
        cfg("tune", tune(tune={"trials": 0, "params": {"c1": {"low": 0.1, "high": 2.0}}})),
        "config: tune.trials: Input should be greater than or equal to 1 (got 0)",
    ),
    (
        "tune: unknown pruner",
        cfg(
            "tune",
            tune(tune={"trials": 2, "pruner": "guess", "params": {"c1": {"low": 0.1, "high": 2}}}),
        ),
        "config: tune.pruner: Input should be 'median', 'hyperband', 'successive_halving' or "
        "'none' (got 'guess')",
    ),
    (
        "tune: unreachable storage",
        cfg("tune", tune(storage=DEAD)),
        f"storage '{DEAD_MASKED}': cannot be reached ({REFUSED})",
    ),
    (
        "tune: a range with low above high",
        cfg("tune", tune(tune={"trials": 2, "params": {"c1": {"low": 2.0, "high": 0.1}}})),
        "config: tune.params.c1: give low <= high (or choices)",
    ),
    (
        "tune: --out an existing file",
        argv(
            "tune",
            "{tmp}/c.yaml",
            "--out",
            "{tmp}/c.yaml",
            files={"c.yaml": yaml.safe_dump(tune())},
        ),
        "--out: '{tmp}/c.yaml' exists and is not a directory",
    ),
    # --- worker -----------------------------------------------------------------------------
    (
        "worker: unreachable storage",
        cfg("worker", study(strategy={"name": "optuna"}), "--storage", DEAD),
        f"storage '{DEAD_MASKED}': cannot be reached ({REFUSED})",
    ),
    (
        "worker: storage password from an unset variable",
        cfg(
            "worker",
            study(strategy={"name": "optuna"}),
            "--storage",
            "postgresql://bb:${BB_NO_SUCH_VAR}@h/db",
        ),
        "storage 'postgresql://bb:${BB_NO_SUCH_VAR}@h/db': environment variable "
        "BB_NO_SUCH_VAR is not set",
    ),
    (
        "worker: unknown storage scheme",
        cfg("worker", study(strategy={"name": "optuna"}), "--storage", "redis://h/0"),
        "--storage: 'redis' is not a storage URL scheme; allowed: sqlite:///FILE, "
        "postgresql://USER:PASSWORD@HOST/DB, mysql://..., journal:///FILE (got 'redis://h/0')",
    ),
    (
        "worker: unknown config key",
        cfg(
            "worker",
            study(strategy={"name": "optuna"}, colour="red"),
            "--storage",
            "sqlite:///x.db",
        ),
        "config: unknown key 'colour'; allowed here: name, seed, model, task, objective, space, "
        "strategy, budget, scoring, storage, side_effects",
    ),
    (
        "worker: a negative worker count",
        cfg(
            "worker",
            study(strategy={"name": "optuna"}),
            "--storage",
            "sqlite:///x.db",
            "--workers",
            "-2",
        ),
        "worker: --workers must be >= 1, got -2",
    ),
    # --- export -----------------------------------------------------------------------------
    (
        "export: not a run directory",
        argv("export", "{tmp}"),
        "'{tmp}' is not a run directory (no config.yaml)",
    ),
    (
        "export: missing directory",
        argv("export", "{tmp}/nope"),
        "'{tmp}/nope' is not a run directory (no config.yaml)",
    ),
    (
        "export: masked storage password, no --storage",
        run_dir(DEAD_MASKED),
        "export: the run's storage password is masked in '{tmp}/r/config.yaml'; pass --storage URL",
    ),
    (
        "export: unreachable --storage",
        run_dir(DEAD_MASKED, "--storage", DEAD),
        f"storage '{DEAD_MASKED}': cannot be reached ({REFUSED})",
    ),
    (
        "export: a config.yaml that is not YAML",
        argv("export", "{tmp}/r", files={"r/config.yaml": "a: [unclosed\n"}),
        "run dir '{tmp}/r': its config.yaml cannot be read as YAML",
    ),
    # --- report -----------------------------------------------------------------------------
    (
        "report: missing path",
        argv("report", "{tmp}/nope"),
        "report: '{tmp}/nope' is neither a directory, a file nor a storage URL",
    ),
    (
        "report: a directory with no storage",
        argv("report", "{tmp}"),
        "report: '{tmp}' holds none of compare.db, study.db, tune.db and names no storage; pass "
        "--storage URL",
    ),
    (
        "report: masked storage password, no --storage",
        run_dir(DEAD_MASKED, command="report"),
        "report: the storage password is masked in '{tmp}/r/config.yaml'; pass --storage URL",
    ),
    (
        "report: unreachable storage URL",
        argv("report", DEAD),
        f"storage '{DEAD_MASKED}': cannot be reached ({REFUSED})",
    ),
    (
        "report: a file that is not a database",
        argv("report", "{tmp}/x.db", files={"x.db": "not sqlite"}),
        "storage 'sqlite:///{tmp}/x.db': cannot be opened ((sqlite3.DatabaseError) file is not "
        "a database)",
    ),
    (
        "report: storage password from an unset variable",
        argv("report", "{tmp}", "--storage", "postgresql://bb:${BB_NO_SUCH_VAR}@h/db"),
        "storage 'postgresql://bb:${BB_NO_SUCH_VAR}@h/db': environment variable "
        "BB_NO_SUCH_VAR is not set",
    ),
    (
        "report: a threshold that is not a number",
        argv("report", "{tmp}", "--threshold", "high"),
        "blackbox report: error: argument --threshold: invalid float value: 'high'",
    ),
]


def _files(root: Path) -> dict[str, float]:
    return {str(p.relative_to(root)): p.stat().st_mtime for p in root.rglob("*")}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_to_any_command(case: tuple[str, Prep, str], tmp_path: Path) -> None:
    _, prep, expected = case
    args, env = prep(tmp_path)
    before = _files(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("BLACKBOX_STORAGE", "BB_NO_SUCH_VAR")}
    t0 = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "blackbox.cli",
            *args,
            *(["--no-progress"] if args[0] in ("run", "compare", "tune") else []),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    seconds = time.perf_counter() - t0
    lines = proc.stderr.strip().splitlines()
    want = expected.replace("{tmp}", str(tmp_path))
    want = want if want.startswith("blackbox ") else "blackbox: error: " + want
    assert (proc.returncode, lines[-1] if lines else "") == (2, want), proc.stderr[-3000:]
    assert _files(tmp_path) == before, "nothing written"
    assert "hunter2" not in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr
    assert seconds < TIME_BOUND, f"{seconds:.1f} s: more than a check (a model load?)"
