"""Optuna's private names are reached through one module only (an Optuna release that moves
one breaks ``blackbox/optuna_internals.py`` alone), on the Optuna range pyproject pins."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import optuna
import pytest
from packaging.specifiers import SpecifierSet

from blackbox.optuna_internals import storage_of, study_id, trial_id

ROOT = Path(__file__).resolve().parents[1]
PRIVATE = {"_storage", "_study_id", "_trial_id"}


def _sources() -> list[Path]:
    return [
        p
        for folder in ("blackbox", "evals", "search_spaces", "benchmarks")
        for p in sorted((ROOT / folder).rglob("*.py"))
        if p.name != "optuna_internals.py"
    ]


def test_no_other_module_names_an_optuna_private() -> None:
    found = []
    for path in _sources():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in PRIVATE:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: .{node.attr}")
            if (
                isinstance(node, ast.ImportFrom)
                and node.module
                and node.module.startswith("optuna")
            ):
                private = [p for p in node.module.split(".") if p.startswith("_")]
                if private:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: from {node.module}")
    assert not found, "use blackbox.optuna_internals:\n" + "\n".join(found)


def test_the_installed_optuna_is_in_the_pinned_range() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    pin = re.search(r'"optuna([<>=!~][^"]*)"', text)
    assert pin, "pyproject pins optuna"
    spec = SpecifierSet(pin.group(1))
    assert spec.contains(optuna.__version__), (optuna.__version__, str(spec))
    assert any(s.operator == "<" for s in spec), "an upper bound: the internals may move"


@pytest.mark.parametrize("kind", ["memory", "sqlite", "journal"])
def test_the_accessors_reach_each_storage(kind: str, tmp_path: Path) -> None:
    from blackbox.study.storage import make_storage

    storage = {
        "memory": None,
        "sqlite": f"sqlite:///{tmp_path / 's.db'}",
        "journal": f"journal://{tmp_path / 'j.log'}",
    }[kind]
    if isinstance(storage, str):
        storage = make_storage(storage)
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    trial = study.ask()
    study.tell(trial, 1.0)
    frozen = study.trials[0]
    store = storage_of(study)
    assert store.get_study_id_from_name("s") == study_id(study)
    assert trial_id(trial) == trial_id(frozen)
    assert store.get_trial(trial_id(frozen)).value == 1.0
