"""``model.dtype: auto`` in a run: result.json says what ran and why, the saved config names the
precision, and a resumed run (or an old run made before ``auto`` existed) goes on in it
without timing again."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

import blackbox
from blackbox.models import precision

ROOT = Path(__file__).resolve().parents[2]


def _study(model: Path, tmp: Path, dtype: str | None) -> Path:
    cfg = yaml.safe_load((ROOT / "studies/steer_rotten_tomatoes.yaml").read_text())
    cfg["model"] = {"name": str(model), "device": "cpu"}
    if dtype is not None:
        cfg["model"]["dtype"] = dtype
    cfg["task"].update(search_size=8, heldout_size=8)
    cfg["space"]["layers"] = [0, 3]
    cfg["budget"] = {"evaluations": 8}
    path = tmp / f"study_{dtype}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _no_timing(*_: Any, **__: Any) -> Any:
    raise AssertionError("a resumed run must not time the precision again")


def test_auto_run_records_its_precision_and_resumes_in_it(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    study = _study(tiny_model_dir, tmp_path, None)  # the default is auto
    run_dir = tmp_path / "run"
    first = blackbox.run(study, out=run_dir, progress=False)
    result = json.loads((run_dir / "result.json").read_text())
    chosen = result["precision"]["chosen"]
    assert result["precision"]["requested"] == "auto"
    assert "too few for bf16 to pay" in result["precision"]["reason"]  # a tiny test model
    assert result["dtype"] == chosen in ("float32", "bfloat16")
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["model"]["dtype"] == chosen

    monkeypatch.setattr(precision, "choose_and_convert", _no_timing)
    again = blackbox.run(study, out=run_dir, progress=False, overrides=["budget.evaluations=12"])
    result = json.loads((run_dir / "result.json").read_text())
    assert result["precision"]["requested"] == "auto" and result["dtype"] == chosen
    assert result["precision"]["reason"].startswith("resumed:")
    assert again.raw["resumed_evaluations"] >= first.evaluations


def test_a_run_stored_in_float32_resumes_under_auto(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs stored before ``auto`` was the default name float32; the same study YAML (no
    dtype) now means auto, and must still resume them."""
    run_dir = tmp_path / "run"
    blackbox.run(_study(tiny_model_dir, tmp_path, "float32"), out=run_dir, progress=False)
    monkeypatch.setattr(precision, "choose_and_convert", _no_timing)
    again = blackbox.run(_study(tiny_model_dir, tmp_path, None), out=run_dir, progress=False)
    result = json.loads((run_dir / "result.json").read_text())
    assert result["dtype"] == "float32" and result["precision"]["reason"].startswith("resumed:")
    assert again.raw["resumed_evaluations"] >= 8


def test_a_named_dtype_is_reported_as_named(tiny_model_dir: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    blackbox.run(_study(tiny_model_dir, tmp_path, "float32"), out=run_dir, progress=False)
    result = json.loads((run_dir / "result.json").read_text())
    assert result["precision"] == {
        "requested": "float32",
        "chosen": "float32",
        "reason": "named in the config",
    }


def test_adopt_dtype_matches_the_stored_fingerprint() -> None:
    from blackbox.config import validate

    data = yaml.safe_load((ROOT / "studies/steer_rotten_tomatoes.yaml").read_text())
    data["model"].pop("dtype", None)
    auto = validate(data)
    assert auto.model.dtype == "auto"
    stored = auto.with_dtype("bfloat16").fingerprint()
    assert auto.adopt_dtype(stored, "joined")
    assert auto.model.dtype == "bfloat16" and auto.fingerprint() == stored
    other = validate(data)
    assert not other.adopt_dtype("0123456789abcdef", "no match") and other.model.dtype == "auto"


def test_a_faster_bf16_refused_by_the_check_is_a_kept_warning(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bf16 measured faster but failing the exactness check switches a faster path off: the
    run says so in result.json's warnings, not only in ``precision``."""
    monkeypatch.setattr(precision, "MIN_PARAMETERS", 0)
    monkeypatch.setattr(precision, "_time_pair", lambda *a, **k: (0.03, 0.01))
    monkeypatch.setattr(precision, "AGREEMENT", 1.01)
    run_dir = tmp_path / "run"
    blackbox.run(_study(tiny_model_dir, tmp_path, None), out=run_dir, progress=False)
    result = json.loads((run_dir / "result.json").read_text())
    assert result["dtype"] == "float32" and result["precision"]["check"]["passed"] is False
    assert any("fails the exactness check" in w for w in result["warnings"])
