"""Side-effect configs: a bad one is one line, exit code 2, before the model loads."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from blackbox.config.loading import validate
from blackbox.evals.side_effects import config_spec

ROOT = Path(__file__).resolve().parents[2]
BASE = yaml.safe_load((ROOT / "studies" / "steer_rotten_tomatoes_side_effects.yaml").read_text())


@dataclass(frozen=True)
class Parts:
    """An expected message by its stable parts: how it starts and fragments it contains (the
    list of offline tasks it names may grow)."""

    start: str
    contains: tuple[str, ...] = ()


def _matches(line: str, expected: str | Parts) -> bool:
    if isinstance(expected, Parts):
        return line.startswith(expected.start) and all(f in line for f in expected.contains)
    return line == expected


def _id(expected: str | Parts) -> str:
    return (expected.start if isinstance(expected, Parts) else expected)[:40]


CASES = [
    (
        {"side_effects": [{"type": "fluency"}]},
        "config: side_effects.0.type: 'fluency' is a token prompt's self cross-entropy; the "
        "steering space has no token ids (use kl or guard)",
    ),
    (
        {"side_effects": [{"type": "kl", "max": -1}]},
        "config: side_effects.0.max: Input should be greater than or equal to 0 (got -1)",
    ),
    (
        {"side_effects": [{"type": "guard", "task": "bb_nope"}]},
        Parts(
            "config: side_effects.0.task: unknown bundled task 'bb_nope'; offline tasks: ",
            ("bb_rotten_tomatoes", "arc_easy", "rte", "`lm_eval ls tasks`"),
        ),
    ),
    (
        {"side_effects": [{"type": "kl", "texts_file": "/nonexistent/texts.txt"}]},
        "config: side_effects.0.texts_file: '/nonexistent/texts.txt' does not exist",
    ),
    (
        {"side_effects": [{"type": "kl"}, {"type": "kl", "max": 1}]},
        "config: side_effects: 'kl' is measured twice; keep one entry",
    ),
    (
        {"strategy": {"name": "optuna", "settings": {"sampler": "cmaes"}}},
        "config: strategy.settings.sampler: 'cmaes' is single-objective and unconstrained; "
        "with side_effects use one of ('tpe', 'nsga2', 'gp') (or random)",
    ),
]


@pytest.mark.parametrize(("change", "expected"), CASES, ids=[_id(c[1]) for c in CASES])
def test_bad_side_effects_one_line_exit_2(
    change: dict, expected: str | Parts, tmp_path: Path
) -> None:
    # a model that cannot load: reaching it would print another error
    cfg = {**BASE, **change, "model": {"name": str(tmp_path / "no-model")}}
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "blackbox.cli", "run", str(config), "--out", str(out)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert last.startswith("blackbox: error: "), proc.stderr[-2000:]
    assert _matches(last.removeprefix("blackbox: error: "), expected), last
    assert not out.exists()


def test_side_effects_change_the_fingerprint_only_when_given() -> None:
    plain = {k: v for k, v in BASE.items() if k != "side_effects"}
    a, b = validate(plain), validate(BASE)
    assert a.fingerprint() != b.fingerprint()
    assert "side_effects" not in a.resolved() or a.resolved()["side_effects"] is None
    spec = config_spec(b)
    assert spec.names == ["acc", "kl", "drop:rte"]
    assert spec.directions == ["maximize", "minimize", "minimize"]
    assert [c.bound for c in spec.columns] == [0.1, 3.0]
