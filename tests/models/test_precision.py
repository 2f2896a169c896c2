"""``model.dtype: auto`` (blackbox.models.precision): the choice, the check and the load."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from blackbox.models import precision
from blackbox.models.loading import load_model


def _fake_timings(monkeypatch: pytest.MonkeyPatch, fp32: float, bf16: float) -> None:
    """Time the tiny model as if it were large, and make the block timer report ``fp32`` /
    ``bf16`` seconds (the real timer still runs, so the captured inputs are exercised)."""
    real = precision._time_pair
    monkeypatch.setattr(precision, "MIN_PARAMETERS", 0)

    def timed(block: Any, args: tuple, kwargs: dict) -> tuple[float, float]:
        real(block, args, kwargs)
        return fp32, bf16

    monkeypatch.setattr(precision, "_time_pair", timed)


def _params(model: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_auto_measures_both_precisions_on_the_real_timer(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(precision, "MIN_PARAMETERS", 0)  # time the tiny model for real
    loaded = load_model(str(tiny_model_dir), device="cpu", dtype="auto")
    choice = loaded.precision
    assert choice is not None and choice.requested == "auto"
    assert set(choice.block_seconds) == {"float32", "bfloat16"}
    assert all(s > 0 for s in choice.block_seconds.values())
    ratio = choice.block_seconds["float32"] / choice.block_seconds["bfloat16"]
    assert choice.chosen == ("bfloat16" if ratio >= precision.MARGIN else "float32")
    assert loaded.dtype == choice.chosen
    assert next(loaded.model.parameters()).dtype == getattr(torch, choice.chosen)
    assert choice.reason.startswith(choice.chosen + ":")
    json.dumps(choice.to_dict())  # result.json-ready


def test_auto_keeps_float32_when_bf16_is_slower(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_timings(monkeypatch, fp32=0.010, bf16=0.030)
    loaded = load_model(str(tiny_model_dir), device="cpu", dtype="auto")
    assert loaded.dtype == "float32" and loaded.precision.chosen == "float32"
    assert "slower" in loaded.precision.reason and "0.33x" in loaded.precision.reason
    assert loaded.precision.check is None  # the check only runs for a faster bf16
    exact = load_model(str(tiny_model_dir), device="cpu", dtype="float32").model
    assert all(
        torch.equal(a, b) for a, b in zip(_params(loaded.model).values(), _params(exact).values())
    )


def test_auto_keeps_float32_when_bf16_is_barely_faster(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_timings(monkeypatch, fp32=0.0105, bf16=0.010)  # 1.05x < MARGIN: precision wins the tie
    loaded = load_model(str(tiny_model_dir), device="cpu", dtype="auto")
    assert loaded.dtype == "float32"
    assert f"less than {precision.MARGIN:g}x" in loaded.precision.reason


def test_auto_takes_bf16_when_faster_and_exact(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_timings(monkeypatch, fp32=0.030, bf16=0.010)
    loaded = load_model(str(tiny_model_dir), device="cpu", dtype="auto")
    choice = loaded.precision
    assert loaded.dtype == "bfloat16" and choice.chosen == "bfloat16"
    assert choice.check["passed"] and choice.check["top1_agreement"] >= precision.AGREEMENT
    assert "3.00x faster" in choice.reason
    # converting after the fp32 load rounds exactly as loading in bf16 does
    named = load_model(str(tiny_model_dir), device="cpu", dtype="bfloat16").model
    got, want = _params(loaded.model), _params(named)
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in got)


def test_auto_refuses_a_faster_bf16_that_fails_the_check(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_timings(monkeypatch, fp32=0.030, bf16=0.010)
    monkeypatch.setattr(precision, "AGREEMENT", 1.01)  # no precision can agree on > 100%
    loaded = load_model(str(tiny_model_dir), device="cpu", dtype="auto")
    assert loaded.dtype == "float32"
    assert "fails the exactness check" in loaded.precision.reason
    assert loaded.precision.check["passed"] is False
    # the fp32 weights were never rounded
    exact = load_model(str(tiny_model_dir), device="cpu", dtype="float32").model
    assert all(
        torch.equal(a, b) for a, b in zip(_params(loaded.model).values(), _params(exact).values())
    )


def test_compare_logprobs() -> None:
    ref = torch.log_softmax(torch.randn(2, 5, 11, generator=torch.Generator().manual_seed(0)), -1)
    same = precision.compare_logprobs(ref, ref.clone())
    assert same == {"mean_abs_logprob_diff": 0.0, "top1_agreement": 1.0, "passed": True}
    shifted = precision.compare_logprobs(ref, ref - 2 * precision.TOLERANCE)
    assert not shifted["passed"] and math.isclose(
        shifted["mean_abs_logprob_diff"], 2 * precision.TOLERANCE, rel_tol=1e-4
    )
    broken = ref.clone()
    broken[0, 0, 0] = float("nan")
    assert precision.compare_logprobs(ref, broken)["passed"] is False


def test_cuda_rule() -> None:
    assert precision.cuda_choice(True).chosen == "bfloat16"
    assert precision.cuda_choice(False).chosen == "float32"


def test_a_tiny_model_stays_float32_untimed(tiny_model_dir: Path) -> None:
    """Tiny models (every test model) are never timed: the choice would be noise, and two
    processes of one study could choose differently."""
    loaded = load_model(str(tiny_model_dir), device="cpu", dtype="auto")
    assert loaded.dtype == "float32" and loaded.precision.block_seconds == {}
    assert "too few for bf16 to pay" in loaded.precision.reason


def test_named_dtype_measures_nothing(tiny_model_dir: Path) -> None:
    assert load_model(str(tiny_model_dir), device="cpu", dtype="bf16").precision is None
