"""Config validation: every bad field is one line naming it and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from blackbox.config import ConfigError, apply_overrides, load_config, validate

STUDIES = Path(__file__).resolve().parents[2] / "studies"


def _demo() -> dict:
    return yaml.safe_load((STUDIES / "steer_rotten_tomatoes.yaml").read_text())


@pytest.mark.parametrize("path", sorted(STUDIES.glob("steer_*.yaml")), ids=lambda p: p.name)
def test_bundled_studies_validate(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.space.vectors and cfg.task.name.startswith("bb_")


def test_unknown_key_names_field_and_allowed() -> None:
    data = _demo()
    data["space"]["layer"] = [1, 2]
    with pytest.raises(ConfigError) as info:
        validate(data)
    msg = str(info.value)
    assert "\n" not in msg
    assert "'space.layer'" in msg and "layers" in msg and "coeff" in msg


def test_wrong_type_names_field() -> None:
    data = _demo()
    data["budget"]["evaluations"] = "many"
    with pytest.raises(ConfigError, match=r"budget\.evaluations"):
        validate(data)


def test_bad_dtype_lists_allowed() -> None:
    data = _demo()
    data["model"]["dtype"] = "float8"
    with pytest.raises(ConfigError, match=r"model\.dtype.*'float32'"):
        validate(data)


def test_reversed_layer_range_rejected() -> None:
    data = _demo()
    data["space"]["layers"] = [10, 2]
    with pytest.raises(ConfigError, match=r"space.*lower bound 10 > upper 2"):
        validate(data)


def test_vector_needs_exactly_one_source() -> None:
    data = _demo()
    data["space"]["vectors"][0]["file"] = "v.pt"
    with pytest.raises(ConfigError, match=r"space\.vectors\.0"):
        validate(data)


def test_overrides_parse_yaml_scalars() -> None:
    data = apply_overrides(
        _demo(), ["budget.evaluations=12", "strategy.settings.w=0.4", "model.dtype=bf16"]
    )
    cfg = validate(data)
    assert cfg.budget.evaluations == 12
    assert cfg.strategy.settings["w"] == pytest.approx(0.4)
    assert cfg.model.dtype == "bf16"


def test_override_without_equals_is_one_line() -> None:
    with pytest.raises(ConfigError, match="expected key.path=value"):
        apply_overrides({}, ["budget.evaluations"])


def test_fingerprint_ignores_budget_and_speed_settings_only() -> None:
    a = validate(_demo())
    b = validate(apply_overrides(_demo(), ["budget.evaluations=999"]))
    s = validate(apply_overrides(_demo(), ["scoring.pack=false", "scoring.max_batch_tokens=512"]))
    c = validate(apply_overrides(_demo(), ["seed=7"]))
    d = validate(apply_overrides(_demo(), ["task.metric=acc_norm"]))
    assert a.fingerprint() == b.fingerprint() == s.fingerprint() != c.fingerprint()
    assert d.fingerprint() not in (a.fingerprint(), c.fingerprint())


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    # YAML tags that would construct Python objects are refused by safe loading.
    evil = tmp_path / "evil.yaml"
    evil.write_text("name: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(evil)


def test_stratified_subsample_balances_labels() -> None:
    from blackbox.study.pipeline import _subsample

    labels = [0] * 90 + [1] * 10
    got = _subsample(100, 20, seed=0, labels=labels)
    assert len(got) == 20 == len(set(got))
    assert sum(labels[i] for i in got) == 10  # half from the rare class
    assert got == _subsample(100, 20, seed=0, labels=labels)  # seeded
    small = _subsample(100, 30, seed=1, labels=labels)  # rare class runs out: topped up
    assert len(small) == 30 and sum(labels[i] for i in small) == 10
    assert _subsample(100, 200, seed=0) == list(range(100))


@pytest.mark.parametrize("path", sorted(STUDIES.glob("soft_*.yaml")), ids=lambda p: p.name)
def test_bundled_soft_prompt_studies_validate(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.space.type == "soft_prompt"
    assert (cfg.task is not None) == (cfg.objective.type == "lm_eval_task")


def _soft() -> dict:
    return yaml.safe_load((STUDIES / "soft_rotten_tomatoes_adam.yaml").read_text())


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda d: d.update(objective={"type": "logit", "target": "cat"}),
            "config: objective.type: 'logit' does not score a soft-prompt study; "
            "allowed: classification, behaviour, lm_eval_task",
        ),
        (
            lambda d: d.pop("objective"),
            "config: objective: a soft-prompt study needs an objective (classification, behaviour, lm_eval_task)",
        ),
        (
            lambda d: d["space"].update(init="text"),
            "config: space.init_text: init 'text' needs a non-empty init_text",
        ),
        (
            lambda d: d["space"].update(placement="middle"),
            "config: space.placement: Input should be 'before_input', 'after_input', 'system' or "
            "'template' (got 'middle')",
        ),
        (
            lambda d: d["objective"].update(data="imdb"),
            "config: objective.data: Input should be 'rotten_tomatoes' (got 'imdb')",
        ),
    ],
)
def test_soft_prompt_config_errors_are_one_line(edit, message: str) -> None:
    data = _soft()
    edit(data)
    with pytest.raises(ConfigError) as info:
        validate(data)
    assert str(info.value) == message
