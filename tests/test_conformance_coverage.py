"""Conformance enforced (issue #26, item 3): every registered strategy, space and objective has
a conformance test under tests/ and an example config in studies/.

A conformance test is a ``Test*`` class that inherits one of the suites of
:mod:`blackbox.testing` (directly or through another class) and declares the registry name it
builds as ``component = "<name>"``; the suite itself checks that the declared name is the class
its fixtures build (``test_builds_the_registered_component``), so a declaration cannot cover a
component the test never runs.  Test classes are found by reading the test files (``ast``), not
by importing them: no model, no lm-eval, no side effect of a test module's import.

An example config is any ``studies/*.yaml`` whose study (a run config, each entry of a compare
config, the inner study of a tune config) names the component, after the schema's defaults (a
``task:`` without an objective is ``lm_eval_task``).
"""

from __future__ import annotations

import ast
import warnings
from collections import defaultdict
from pathlib import Path

import pytest

from blackbox.config import load_config, read_yaml

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
STUDIES = ROOT / "studies"

# suite class -> (kind, the module that defines it)
SUITES = {
    "StrategyConformance": ("strategy", "blackbox.testing.strategies"),
    "SpaceConformance": ("space", "blackbox.testing.spaces"),
    "ObjectiveConformance": ("objective", "blackbox.testing.objectives"),
}
SUITE_OF = {kind: f"{module}.{suite}" for suite, (kind, module) in SUITES.items()}

# (kind, name) -> why it has no example config.  Empty: every component has one; add an entry
# only for a component that cannot be shown by a study config, with the reason.
NO_EXAMPLE: dict[tuple[str, str], str] = {}


def _registered() -> dict[str, list[str]]:
    from blackbox.evals.registry import OBJECTIVES
    from blackbox.search_spaces.registry import SPACES
    from blackbox.strategies import STRATEGIES

    return {
        "strategy": STRATEGIES.names(),
        "space": SPACES.names(),
        "objective": OBJECTIVES.names(),
    }


def _base_name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):  # testing.StrategyConformance
        return node.attr
    return None


def _declared_component(node: ast.ClassDef) -> str | None:
    for stmt in node.body:
        if isinstance(stmt, ast.Assign):
            targets = stmt.targets
        elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
            targets = [stmt.target]
        else:
            continue
        if any(isinstance(t, ast.Name) and t.id == "component" for t in targets):
            value = stmt.value
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                return value.value
    return None


def conformance_tests() -> dict[tuple[str, str], list[str]]:
    """``(kind, component) -> ["tests/...py::TestClass", ...]`` for every ``Test*`` class
    under tests/ that inherits a suite and declares (or inherits) a ``component``."""
    classes: dict[str, list[tuple[str, list[str], str | None]]] = defaultdict(list)
    for path in sorted(TESTS.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        rel = path.relative_to(ROOT).as_posix()
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                bases = [b for b in map(_base_name, node.bases) if b]
                classes[node.name].append((rel, bases, _declared_component(node)))

    def resolve(name: str, file: str, seen: frozenset[str]) -> tuple[str | None, str | None]:
        """(suite, component) of class ``name`` (one in ``file`` first, else any file)."""
        if name in SUITES:
            return name, None
        if name in seen or name not in classes:
            return None, None
        defs = classes[name]
        _, bases, component = next((d for d in defs if d[0] == file), defs[0])
        for base in bases:
            suite, inherited = resolve(base, file, seen | {name})
            if suite is not None:
                return suite, component or inherited
        return None, None

    found: dict[tuple[str, str], list[str]] = defaultdict(list)
    for name, defs in classes.items():
        if not name.startswith("Test"):
            continue  # pytest collects Test* classes only
        for file, _, _ in defs:
            suite, component = resolve(name, file, frozenset())
            if suite is not None and component is not None:
                found[(SUITES[suite][0], component)].append(f"{file}::{name}")
    return found


def example_configs() -> dict[tuple[str, str], list[str]]:
    """``(kind, name) -> [study file, ...]`` for every component a studies/*.yaml uses."""
    from blackbox.experiments.compare_config import validate_compare

    found: dict[tuple[str, str], list[str]] = defaultdict(list)
    for path in sorted(STUDIES.glob("*.yaml")):
        data = read_yaml(path)
        if "strategies" in data:  # blackbox compare: every entry's study
            cfg = validate_compare(data)
            studies = [cfg.study_for(e, t) for e in cfg.strategies for t in cfg.tasks or [None]]
        elif "tune" in data:  # blackbox tune: the inner study
            from blackbox.experiments.tune import load_tune

            studies = [load_tune(path).study]
        else:
            studies = [load_config(path)]
        for study in studies:
            for kind, name in (
                ("strategy", study.strategy.name),
                ("space", study.space.type),
                ("objective", study.objective.type),
            ):
                if path.name not in found[(kind, name)]:
                    found[(kind, name)].append(path.name)
    return found


def missing_conformance(
    registered: dict[str, list[str]], found: dict[tuple[str, str], list[str]]
) -> list[str]:
    """One line per registered component without a conformance test, naming it."""
    return [
        f"{kind} {name!r}: no conformance test; add a Test* class under tests/ that inherits "
        f'{SUITE_OF[kind]} and declares component = "{name}"'
        for kind, names in registered.items()
        for name in names
        if not found.get((kind, name))
    ]


def missing_examples(
    registered: dict[str, list[str]], examples: dict[tuple[str, str], list[str]]
) -> list[str]:
    """One line per registered component that no studies/*.yaml uses (and NO_EXAMPLE does not
    excuse), naming it."""
    return [
        f"{kind} {name!r}: no studies/*.yaml uses it; add a small example study (or, if it "
        f"cannot have one, an entry with the reason in NO_EXAMPLE of {Path(__file__).name})"
        for kind, names in registered.items()
        for name in names
        if not examples.get((kind, name)) and (kind, name) not in NO_EXAMPLE
    ]


@pytest.fixture(scope="module")
def registered() -> dict[str, list[str]]:
    return _registered()


def test_the_scan_finds_the_suites_subclasses() -> None:
    """The scan itself: known subclasses are found under their declared names (the optuna
    samplers' several classes each), toy components of a test module included."""
    found = conformance_tests()
    assert "tests/strategies/test_pso.py::TestPSOConformance" in found[("strategy", "pso")]
    assert "tests/test_toy_components.py::TestToySpaceConformance" in found[("space", "toy_points")]
    assert len(found[("strategy", "optuna")]) >= 4


def test_a_component_without_either_is_named() -> None:
    """What a new component without a conformance test or an example config is told."""
    registered = {"strategy": ["pso", "shiny_new"], "space": [], "objective": []}
    found = {("strategy", "pso"): ["tests/strategies/test_pso.py::TestPSOConformance"]}
    assert missing_conformance(registered, found) == [
        "strategy 'shiny_new': no conformance test; add a Test* class under tests/ that "
        "inherits blackbox.testing.strategies.StrategyConformance and declares "
        'component = "shiny_new"'
    ]
    (line,) = missing_examples(registered, {("strategy", "pso"): ["steer.yaml"]})
    assert line.startswith("strategy 'shiny_new': no studies/*.yaml uses it")


def test_every_registered_component_has_a_conformance_test(registered) -> None:
    missing = missing_conformance(registered, conformance_tests())
    assert not missing, "\n".join(missing)


def test_every_registered_component_has_an_example_config(registered) -> None:
    examples = example_configs()
    missing = missing_examples(registered, examples)
    assert not missing, "\n".join(missing)
    stale = [key for key in NO_EXAMPLE if examples.get(key)]
    assert not stale, f"NO_EXAMPLE lists components that now have an example config: {stale}"
    for (kind, name), why in NO_EXAMPLE.items():  # said, not silently skipped
        warnings.warn(f"{kind} {name!r} has no example config: {why}", stacklevel=1)
