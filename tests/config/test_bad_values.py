"""Config values that used to slip through (issue #27): each is one line naming the field.

Passwords in misplaced storage strings, names with a final newline, non-finite or huge numbers,
booleans read as numbers, text read as numbers in strategy settings, duplicate YAML keys,
``--set`` on list items, ``fixed_layers`` naming no vector, CONFIG paths that are no file.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from blackbox.config import ConfigError, apply_overrides, read_yaml, validate
from blackbox.errors import UserError
from blackbox.masking import mask_url

STUDIES = Path(__file__).resolve().parents[2] / "studies"


def _demo() -> dict:
    return yaml.safe_load((STUDIES / "steer_rotten_tomatoes.yaml").read_text())


def _error(overrides: list[str], data: dict | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        validate(apply_overrides(_demo() if data is None else data, overrides))
    return str(info.value)


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("user:secret@127.0.0.1:9/db", "user:***@127.0.0.1:9/db"),
        ("got 'u:se:c@r@et@host/db'", "got 'u:***@host/db'"),
        ("password=secret host=h", "password=*** host=h"),
        ("postgresql://bb:secret@h/db", "postgresql://bb:***@h/db"),
        ("postgresql://USER:PASSWORD@HOST/DB", "postgresql://USER:PASSWORD@HOST/DB"),
        ("bb:${PGPASS}@h/db", "bb:${PGPASS}@h/db"),
        ('File "x.py", line 3, in f', 'File "x.py", line 3, in f'),
    ],
)
def test_passwords_are_masked_with_or_without_a_scheme(text: str, masked: str) -> None:
    assert mask_url(text) == masked


@pytest.mark.parametrize("url", ["user:secret@127.0.0.1:9/db", "password=secret host=1.2.3.4"])
def test_a_storage_url_without_a_scheme_never_shows_its_password(url: str) -> None:
    message = _error([f"storage='{url}'"])
    assert message.startswith("config: storage: a storage URL starts with a scheme (SCHEME://)")
    assert "secret" not in message and "***" in message


def test_every_user_error_masks_a_password_it_quotes() -> None:
    assert "secret" not in str(UserError("strategy.name: unknown 'u:secret@h/db'"))
    assert "secret" not in _error(["name=u:secret@h"])


@pytest.mark.parametrize("name", ["abc\n", "abc\n\n", "\nabc", "a b"])
def test_names_are_matched_whole(name: str) -> None:
    data = _demo() | {"name": name}
    with pytest.raises(ConfigError, match=r"^config: name: .* is not a safe name"):
        validate(data)


def test_compare_labels_and_task_names_are_matched_whole() -> None:
    from blackbox.experiments.compare_config import validate_compare

    data = read_yaml(STUDIES / "compare_steer_rotten_tomatoes.yaml")
    data["strategies"][0]["label"] = "pso\n"
    with pytest.raises(ConfigError, match=r"strategies.0.label: 'pso\\n' is not a curve name"):
        validate_compare(data)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "space.coeff=[-1.0e+308, 1.0e+308]",
            "config: space.coeff: [-1e+308, 1e+308] is out of range; allowed: bounds within "
            "[-1000, 1000] (relative to the layer's residual norm)",
        ),
        ("space.coeff=[.nan, 1.0]", "config: space.coeff.0: Input should be a finite number"),
        ("space.layers=[-1, 3]", "config: space.layers: lower bound -1 is negative"),
        ("budget.seconds=.nan", "config: budget.seconds: Input should be a finite number"),
        ("scoring.racing={confidence: .nan}", "config: scoring.racing.confidence: Input should"),
        ("strategy.population=1000000", "config: strategy.population: Input should be less"),
        ("seed=true", "config: seed: a boolean (true/false) is not a number; allowed: an integer"),
        ("task.search_size=yes", "config: task.search_size: a boolean (true/false) is not a"),
        ("space.coeff=[true, 1.0]", "config: space.coeff: item 0: a boolean (true/false) is"),
        (
            "space.fixed_layers={nope: 1}",
            "config: space.fixed_layers: 'nope' is not a vector of this space; allowed: "
            "['sentiment', 'answer_bias']",
        ),
        ("space.fixed_layers={sentiment: -1}", "config: space.fixed_layers.sentiment: Input"),
    ],
)
def test_numbers_are_finite_sane_and_never_booleans(override: str, message: str) -> None:
    assert _error([override]).startswith(message)


def test_soft_prompt_bound_is_finite_and_bounded() -> None:
    data = read_yaml(STUDIES / "soft_rotten_tomatoes_cmaes.yaml")
    assert _error(["space.bound=1.0e+308"], data).startswith(
        "config: space.bound: Input should be less than or equal to 1000"
    )
    assert _error(["space.bound=.inf"], data).startswith("config: space.bound: Input should be")


def test_a_boolean_stays_a_boolean_where_one_is_allowed() -> None:
    cfg = validate(apply_overrides(_demo(), ["task.stratify=false", "scoring.racing=true"]))
    assert cfg.task.stratify is False and cfg.scoring.racing is not None


@pytest.mark.parametrize(
    ("strategy", "settings", "message"),
    [
        ("pso", {"c1": "1e400"}, "strategy.settings.c1: '1e400' is text, not a number"),
        ("pso", {"w": float("nan")}, "strategy.settings.w: nan is not a finite number"),
        ("pso", {"c2": float("inf")}, "strategy.settings.c2: inf is not a finite number"),
        ("pso", {"k": True}, "strategy.settings.k: True is a boolean, not a number"),
        ("pso", {"c1": -1.0}, "pso.c1: must be a finite number >= 0, got -1.0"),
        ("adam", {"lr": "0.1"}, "strategy.settings.lr: '0.1' is text, not a number"),
        ("nevergrad", {"budget": 10**9}, "strategy.settings.budget: 1000000000 is too large"),
        ("epo", {"lambda_max": float("nan")}, "strategy.settings.lambda_max: nan is not a"),
        ("epo", {"lambdas": [1.0, float("inf")]}, "strategy.settings.lambdas: inf is not a"),
        ("epo", {"proposals": {"swap": float("nan")}}, "strategy.settings.proposals: nan is"),
        ("epo", {"children": 0}, "epo.children: must be a whole number >= 1, got 0"),
        ("epo", {"lambda_min": 5.0, "lambda_max": 1.0}, "epo.lambda_min: 5.0 is above"),
        ("gcg", {"search_width": 0}, "gcg.search_width: must be a whole number >= 1, got 0"),
        ("token_ga", {"crossover": 2.0}, "token_ga.crossover: must be in [0, 1], got 2.0"),
        ("token_ga", {"mutation": ""}, "token_ga.mutation: unknown ['']"),
        (
            "token_ga",
            {"mutation_settings": {"swap": {"k": 1}}},
            "token_ga.mutation_settings: 'swap' takes no setting(s) ['k']; allowed: none",
        ),
    ],
)
def test_every_strategys_numeric_settings_are_checked(strategy, settings, message) -> None:
    from blackbox.strategies import make_strategy
    from blackbox.strategies.base import dummy_box

    with pytest.raises(UserError, match=re.escape(message)):
        make_strategy(strategy, dummy_box(), **settings)


def test_settings_errors_name_the_setting_in_the_config() -> None:
    """Through the config rules (before any model): ``strategy.settings.<key>: ...``."""
    data = read_yaml(STUDIES / "compare_dream.yaml")["study"] | {
        "strategy": {"name": "token_ga", "settings": {"mutation": {"": 1.0}}},
        "budget": {"cost": 100},
    }
    assert _error([], data).startswith("config: strategy.settings.mutation: unknown ['']")
    assert _error(["strategy.name=pso", "strategy.settings={w: .nan}"]).startswith(
        "config: strategy.settings.w: nan is not a finite number; allowed: a finite number"
    )


def test_settings_are_passed_on_as_their_declared_types() -> None:
    from blackbox.strategies import make_strategy
    from blackbox.strategies.base import dummy_box

    pso = make_strategy("pso", dummy_box(), c1=1, k=2)
    assert isinstance(pso.config.c1, float) and pso.config.c1 == 1.0
    epo = make_strategy("epo", dummy_box(), lambda_restart=[0.5, 2])
    assert epo.lambda_restart == (0.5, 2.0)


def test_duplicate_yaml_keys_are_refused_at_any_depth(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("name: a\nspace:\n  layers: [1, 2]\n  read: last\n  layers: [3, 4]\n")
    with pytest.raises(ConfigError) as info:
        read_yaml(path)
    assert str(info.value) == (
        f"config: {path} line 5: duplicate key 'layers' (first on line 3); give each key once"
    )
    path.write_text("a: &x {b: 1}\nc:\n  <<: *x\n  b: 2\n")  # a merge key may be overridden
    assert read_yaml(path) == {"a": {"b": 1}, "c": {"b": 2}}
    with pytest.raises(ConfigError, match=r"duplicate key 'c1' \(first on line 1\)"):
        apply_overrides({}, ["strategy.settings={c1: 1, c1: 2}"])


def test_config_paths_that_are_not_regular_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^config: '/dev/zero' is not a regular file; give a "):
        read_yaml("/dev/zero")
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n")
    with pytest.raises(ConfigError, match=r"not a YAML mapping \(got a list\)"):
        read_yaml(path)
    path.write_text("")
    with pytest.raises(ConfigError, match=r"not a YAML mapping \(got an empty file\)"):
        read_yaml(path)


def test_set_addresses_list_items_by_index() -> None:
    data = {"space": {"vectors": [{"name": "a"}, {"name": "b"}]}, "side_effects": [{"size": 2}]}
    out = apply_overrides(data, ["space.vectors.1.name=x", "side_effects[0].size=16"])
    assert out["space"]["vectors"][1]["name"] == "x" and out["side_effects"][0]["size"] == 16
    out = apply_overrides(data, ["space.vectors[0]={name: z}"])
    assert out["space"]["vectors"][0] == {"name": "z"}
    assert data["space"]["vectors"][0] == {"name": "a"}, "the input is not changed"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "space.vectors.99.name=x",
            "--set space.vectors.99.name: space.vectors: index 99 is out of range (2 items; "
            "allowed: 0..1)",
        ),
        (
            "space.vectors.x.name=1",
            "--set space.vectors.x.name: space.vectors is a list of 2 items; address an item by "
            "its index (0..1), not 'x'",
        ),
        ("seed.a=1", "--set seed.a: seed is 1, not a mapping or a list, so it has no key 'a'"),
        ("nothing[1].a=1", "--set nothing[1].a: nothing is not set, so it has no item 1"),
        ("a[1]x=1", "--set 'a[1]x=1': empty or malformed key segment 'a[1]x'"),
    ],
)
def test_set_on_lists_says_what_is_there(override: str, message: str) -> None:
    data = {"space": {"vectors": [{"name": "a"}, {"name": "b"}]}, "seed": 1}
    with pytest.raises(ConfigError) as info:
        apply_overrides(data, [override])
    assert str(info.value) == message


def test_storage_driver_missing_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from blackbox.study.storage import StorageError, check_driver

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name in ("MySQLdb", "pymysql") else real(name, *a),
    )
    if real("MySQLdb") is not None:
        pytest.skip("MySQLdb is installed here")
    with pytest.raises(StorageError) as info:
        check_driver("mysql://bb:secret@127.0.0.1:9/db")
    assert str(info.value) == (
        "storage 'mysql://bb:***@127.0.0.1:9/db': its mysql driver is not installed (No module "
        "named 'MySQLdb'); install it: pip install mysqlclient (or pymysql, with mysql+pymysql://)"
    )
    check_driver("sqlite:///x.db")  # SQLite and journal files need no driver
    check_driver("journal:///x.log")


def test_fixed_layers_and_layers_are_checked_on_the_saved_model_config() -> None:
    from types import SimpleNamespace

    from blackbox.study.pipeline import check_layers

    cfg = validate(apply_overrides(_demo(), ["space.fixed_layers={sentiment: 40}"]))
    model_config = SimpleNamespace(num_hidden_layers=30)
    with pytest.raises(ConfigError, match=r"^config: space.fixed_layers.sentiment: 40 is outside"):
        check_layers(cfg, model_config)
    cfg = validate(apply_overrides(_demo(), ["space.layers=[0, 30]"]))
    with pytest.raises(ConfigError, match=r"space.layers: \[0, 30\] is outside the model's"):
        check_layers(cfg, model_config)
    check_layers(validate(_demo()), model_config)
    check_layers(cfg, SimpleNamespace())  # no layer count in the config: left to the load
    assert np.isfinite(cfg.space.coeff).all()
