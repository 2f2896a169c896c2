"""Config validation: every bad field is one line naming it and what is allowed."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest
import yaml

from blackbox.config import ConfigError, apply_overrides, load_config, validate

STUDIES = Path(__file__).resolve().parents[2] / "studies"


def _demo() -> dict:
    return yaml.safe_load((STUDIES / "steer_rotten_tomatoes.yaml").read_text())


@pytest.mark.parametrize("path", sorted(STUDIES.glob("steer_*.yaml")), ids=lambda p: p.name)
def test_bundled_studies_validate(path: Path) -> None:
    from blackbox.evals.lm_eval_tasks import is_offline

    cfg = load_config(path)
    assert cfg.space.vectors and (cfg.task is None or is_offline(cfg.task.name))


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
    speed = ["scoring.pack=false", "scoring.max_batch_tokens=512", "scoring.gen_rows=8"]
    s = validate(apply_overrides(_demo(), speed))
    c = validate(apply_overrides(_demo(), ["seed=7"]))
    d = validate(apply_overrides(_demo(), ["task.metric=acc_norm"]))
    assert a.fingerprint() == b.fingerprint() == s.fingerprint() != c.fingerprint()
    assert d.fingerprint() not in (a.fingerprint(), c.fingerprint())


def test_gen_rows_is_a_whole_number_of_rows() -> None:
    assert validate(_demo()).scoring.gen_rows == 64
    for bad in ("0", "-4", "abc"):
        with pytest.raises(ConfigError, match="scoring.gen_rows"):
            validate(apply_overrides(_demo(), [f"scoring.gen_rows={bad}"]))


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
            lambda d: d.update(objective={"type": "fluency"}),
            "config: objective.type: 'fluency' cannot score a soft-prompt space (continuous "
            "embeddings): it reads a prompt's token ids, and only a token space has them; "
            "spaces it scores: tokens",
        ),
        (
            lambda d: d.update(strategy={"name": "gcg"}),
            "config: strategy.name: 'gcg' cannot search a soft-prompt space (continuous "
            "embeddings): it proposes token ids from a vocabulary, which only a token space "
            "has; strategies for soft_prompt with classification: adam, nevergrad, optuna, "
            "pso, random; 'gcg' works on: tokens",
        ),
        (
            lambda d: d.pop("objective"),
            "config: objective: a study needs an objective (lm_eval_task with a task:, "
            "classification, behaviour, reference, neuron, residual_direction, "
            "feature_direction, lp_features, logit or fluency)",
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


def test_every_bundled_study_validates_and_its_combination_can_run() -> None:
    for path in sorted(STUDIES.glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        if "strategies" in data or "tune" in data:
            continue  # compare and tune configs (tested with their commands)
        cfg = load_config(path)
        assert cfg.objective.type and cfg.space.type, path.name


def test_older_configs_are_migrated_to_one_schema() -> None:
    steer = validate(_demo())
    assert steer.objective.type == "lm_eval_task"  # a task and no objective: score the task
    dream = validate(
        {
            "name": "d",
            "space": {"type": "tokens", "chat_template": True},
            "objective": {"type": "neuron", "layer": 1, "index": 2},
            "strategy": {"name": "epo"},
        }
    )
    assert dream.objective.chat is True and "chat_template" not in dream.space.model_fields
    soft = _soft()
    soft["objective"]["projection"] = {"beam_k": 2}
    soft["space"]["projection"] = {"repair_steps": 1}  # as --set space.projection.x=... makes
    cfg = validate(soft)
    assert cfg.space.projection.beam_k == 2 and cfg.space.projection.repair_steps == 1
    assert cfg.space.baseline == "Is this review positive or negative?"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda d: d["strategy"].update(name="adam"),
            "config: strategy.name: 'adam' cannot search a steering space (integer layers and "
            "coefficients, applied as hooks): it takes gradient steps on continuous "
            "coordinates; strategies for steering with lm_eval_task: nevergrad, optuna, pso, "
            "random; 'adam' works on: soft_prompt",
        ),
        (
            lambda d: d.update(objective={"type": "neuron", "layer": 3, "index": 1}),
            "config: task: objective 'neuron' does not read a task; remove it",
        ),
        (
            lambda d: (
                d.pop("task"),
                d.update(objective={"type": "neuron", "layer": 3, "index": 1}),
            ),
            "config: objective.prompts: steering has no prompt of its own, so 'neuron' must be "
            "measured over a prompt set; give objective.prompts (a list) or "
            "objective.prompts_file (one prompt per line)",
        ),
        (
            lambda d: d["space"].update(coeff=[float("nan"), 0.1]),
            "config: space.coeff.0: Input should be a finite number (got nan)",
        ),
    ],
)
def test_combinations_are_checked_before_any_model_loads(edit, message: str) -> None:
    data = _demo()
    edit(data)
    with pytest.raises(ConfigError) as info:
        validate(data)
    assert str(info.value) == message


def test_settings_that_cannot_meet_the_space_say_what_would() -> None:
    data = yaml.safe_load((STUDIES / "dream_neuron.yaml").read_text())
    bad = apply_overrides(data, ["strategy.name=nevergrad", "strategy.settings={optimizer: CMA}"])
    with pytest.raises(
        ConfigError,
        match=r"'nevergrad' with \{'optimizer': 'CMA'\} cannot search "
        r"a token space .*; use a discrete optimizer on token ids: ",
    ):
        validate(bad)
    ok = apply_overrides(
        data, ["strategy.name=nevergrad", "strategy.settings={optimizer: DiscreteOnePlusOne}"]
    )
    assert validate(ok).strategy.settings["optimizer"] == "DiscreteOnePlusOne"
    with pytest.raises(ConfigError, match="sampler tpe, random or nsga2"):
        validate(
            apply_overrides(data, ["strategy.name=optuna", "strategy.settings={sampler: cmaes}"])
        )


@pytest.mark.parametrize(
    ("strategy", "settings", "message"),
    [
        ("epo", {"children": "many"}, "strategy.settings.children: 'many' is not valid for 'epo'"),
        (
            "token_ga",
            {"crossover": [1]},
            "strategy.settings.crossover: [1] is not valid for 'token_ga'",
        ),
        ("adam", {"lr": "fast"}, "strategy.settings.lr: 'fast' is not valid for 'adam'"),
        ("optuna", {"sampler": 3}, "strategy.settings.sampler: 3 is not valid for 'optuna'"),
    ],
)
def test_strategy_settings_are_type_checked(strategy, settings, message) -> None:
    """Settings declared by a dataclass or by ``__init__`` are checked against their types."""
    import numpy as np

    from blackbox.strategies import make_strategy
    from blackbox.strategies.base import Box

    box = Box(np.zeros(2), np.ones(2), np.array([False, False]), ("a", "b"))
    with pytest.raises(ValueError, match=re.escape(message)):
        make_strategy(strategy, box, **settings)


def test_well_typed_settings_pass_the_check() -> None:
    import numpy as np

    from blackbox.strategies import make_strategy
    from blackbox.strategies.base import Box

    box = Box(np.zeros(2), np.ones(2), np.array([False, False]), ("a", "b"))
    assert make_strategy("pso", box, c1=1, w=0.5).config.c1 == 1  # an int is a fine float
    make_strategy("nevergrad", box, optimizer="CMA", budget=100)


def test_a_directory_or_non_utf8_config_is_named(tmp_path) -> None:
    from blackbox.config import read_yaml

    with pytest.raises(ConfigError, match=r"is a directory; give a YAML file"):
        read_yaml(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"name: x\n\xff\xfe: 1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml line 2: not UTF-8 text \(byte 0xff\)"):
        read_yaml(bad)


def test_max_gen_toks_enters_the_fingerprint_only_when_set() -> None:
    """Studies stored before ``task.max_gen_toks`` existed keep their fingerprint (and resume);
    setting it changes what is scored, so it changes the fingerprint."""
    import hashlib
    import json

    a = validate(_demo())
    data = {k: v for k, v in a.resolved().items() if k not in ("budget", "storage", "scoring")}
    data = {k: v for k, v in data.items() if v is not None}
    for key in ("max_gen_toks", "chat_template", "system_instruction", "fewshot_as_multiturn"):
        del data["task"][key]  # the config as it was before the fields existed
    before = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
    assert a.fingerprint() == before
    capped = validate(apply_overrides(_demo(), ["task.max_gen_toks=32"]))
    assert capped.fingerprint() != a.fingerprint()


def test_chat_template_fields_enter_the_fingerprint_only_when_set() -> None:
    """Studies stored before ``task.chat_template``, ``task.system_instruction`` and
    ``task.fewshot_as_multiturn`` existed keep their fingerprint (and resume); turning the chat
    template on, or changing how it renders, changes what is scored and the fingerprint."""
    import hashlib
    import json

    a = validate(_demo())
    data = {k: v for k, v in a.resolved().items() if k not in ("budget", "storage", "scoring")}
    data = {k: v for k, v in data.items() if v is not None}
    for key in ("max_gen_toks", "chat_template", "system_instruction", "fewshot_as_multiturn"):
        del data["task"][key]  # the config as it was before the fields existed
    before = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
    assert a.fingerprint() == before
    off = validate(apply_overrides(_demo(), ["task.chat_template=false"]))
    assert off.fingerprint() == before
    chat = ["task.chat_template=true"]
    prints = {
        validate(apply_overrides(_demo(), chat + extra)).fingerprint()
        for extra in (
            [],
            ["task.system_instruction=Be brief."],
            ["task.fewshot_as_multiturn=false"],
        )
    }
    assert len(prints) == 3 and before not in prints


def test_config_error_lives_in_errors_and_is_re_exported() -> None:
    """Objectives and spaces raise it without importing the config package (no folder cycle)."""
    import blackbox
    from blackbox import errors, sections

    assert ConfigError is errors.ConfigError is sections.ConfigError is blackbox.ConfigError
    assert issubclass(ConfigError, errors.UserError)


def test_guard_task_config_is_the_task_section_the_guard_names() -> None:
    from blackbox.config.schema import TaskConfig
    from blackbox.config.side_effects import GuardSideEffectConfig

    item = GuardSideEffectConfig(type="guard", task="rte", metric="acc_norm", search_size=8)
    want = TaskConfig(name="rte", metric="acc_norm", search_size=8, heldout_size=100)
    assert item.task_config() == want
    assert GuardSideEffectConfig(type="guard", task="arc_easy").task_config() == TaskConfig(
        name="arc_easy", metric="acc", search_size=32, heldout_size=100
    )


def test_the_schema_is_assembled_from_the_registries() -> None:
    """The study schema's ``space:`` and ``objective:`` unions are the registries' sections, in
    registration order (no list of names is written twice), each section's ``type`` literal its
    registered name, and each registered class names that same section."""
    from blackbox.config.schema import ObjectiveSection, SpaceSection, StudyConfig, study_schema
    from blackbox.evals.registry import OBJECTIVES
    from blackbox.registry import section_type
    from blackbox.search_spaces.registry import SPACES

    assert study_schema() is StudyConfig
    for union, registry in ((ObjectiveSection, OBJECTIVES), (SpaceSection, SPACES)):
        members = typing.get_args(typing.get_args(union)[0])
        assert list(members) == registry.sections()
        assert [section_type(m) for m in members] == registry.ordered_names()
        for name, cls in registry.items():
            assert cls.config is registry.section(name), name
