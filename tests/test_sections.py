"""Each component gets only its own typed section (issue #26, item 2).

A registered space or objective is built by ``from_config(section, ctx)``: ``section`` is its
own config section (``cfg.space`` / ``cfg.objective``), ``ctx`` the
:class:`~blackbox.study.context.BuildContext`, which names everything else a component may need
(the seed, the ``task:`` and ``scoring:`` sections, the space's traits and prompt layout, the
objective's banned prompt strings).  What one component needs from the other goes through
traits and the context, never through the other's config or a type-name string.

The rule is checked on the source, parsed with :mod:`ast` (the registries are imported only to
find which modules hold components):

- ``context-config``: no module of ``evals/`` or ``search_spaces/`` reads a ``.cfg`` attribute
  (``ctx.cfg``, ``self.ctx.cfg``, ``getattr(ctx, "cfg")``): the study config is the context's
  and the pipeline's;
- ``other-section``: no ``cfg.space`` / ``cfg.objective`` (on any name or attribute spelled like
  a study config: ``cfg``, ``config``, ``study_cfg``, ...);
- ``type-name``: no comparison of a ``.type`` with a string (``o.type == "logit"``,
  ``s.type in ("tokens", ...)``) and no ``match x.type``.

``other-section`` and ``type-name`` apply to the whole of every *component module* (one that
defines a registered space or objective, or one of their base classes) and to the bodies of
``from_config``, ``check_config`` and ``prompt_bans`` anywhere in the two folders; run-level
code there that receives the whole study config from the pipeline (the side-effect wrapper in
``evals/side_effects.py``) may read it.  And every registered class's builders take exactly
``(section, ctx)``, ``(section, placement)`` and ``(section)``, with ``section`` annotated as
the config class whose ``type`` is the registered name.
"""

from __future__ import annotations

import ast
import inspect
import sys
import typing
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = (ROOT / "evals", ROOT / "search_spaces")
BUILDERS = ("from_config", "check_config", "prompt_bans")
"""Methods that see a component's section: the rules hold in them wherever they are."""
CONFIG_NAMES = ("cfg", "config", "study")
"""A name or attribute spelled like one of these (or ending ``_cfg`` / ``_config``) is taken to
hold a whole study config."""

ALLOWED: dict[tuple[str, str], str] = {}
"""``(file relative to the root, rule)`` left out of the scan, each with its reason; keep this
empty.  An entry that no longer matches a finding fails."""


def _is_config_name(node: ast.expr) -> bool:
    name = (
        node.id
        if isinstance(node, ast.Name)
        else node.attr
        if isinstance(node, ast.Attribute)
        else None
    )
    if name is None:
        return False
    low = name.lower()
    return low in CONFIG_NAMES or low.endswith(("_cfg", "_config"))


def _strings(node: ast.expr) -> bool:
    """A string constant, or a tuple / list / set of them."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str)
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return bool(node.elts) and all(_strings(e) for e in node.elts)
    return False


def _is_type(node: ast.expr) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "type"


def _getattr_of(node: ast.AST, names: tuple[str, ...]) -> str | None:
    """``getattr(x, "<name>", ...)`` with a name of ``names``: that name."""
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in ("getattr", "hasattr")
        and len(node.args) >= 2
        and isinstance(node.args[1], ast.Constant)
        and node.args[1].value in names
    ):
        return str(node.args[1].value)
    return None


def findings(tree: ast.AST, whole_module: bool) -> list[tuple[str, int, str]]:
    """``(rule, line, what)`` for every breach in a parsed module: ``context-config``
    everywhere; ``other-section`` and ``type-name`` in the whole module (``whole_module``: a
    component module) or only inside :data:`BUILDERS`."""
    out: list[tuple[str, int, str]] = []

    def visit(node: ast.AST, strict: bool) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in BUILDERS:
            strict = True
        if isinstance(node, ast.Attribute) and node.attr == "cfg":
            out.append(("context-config", node.lineno, f"{ast.unparse(node)}"))
        if _getattr_of(node, ("cfg",)):
            out.append(("context-config", node.lineno, ast.unparse(node)))
        if strict:
            if (
                isinstance(node, ast.Attribute)
                and node.attr in ("space", "objective")
                and _is_config_name(node.value)
            ):
                out.append(("other-section", node.lineno, ast.unparse(node)))
            if (
                isinstance(node, ast.Call)
                and _getattr_of(node, ("space", "objective"))
                and _is_config_name(node.args[0])
            ):
                out.append(("other-section", node.lineno, ast.unparse(node)))
            if isinstance(node, ast.Compare):
                sides = [node.left, *node.comparators]
                if any(_is_type(s) for s in sides) and any(_strings(s) for s in sides):
                    out.append(("type-name", node.lineno, ast.unparse(node)))
            if isinstance(node, ast.Match) and _is_type(node.subject):
                out.append(("type-name", node.lineno, f"match {ast.unparse(node.subject)}"))
        for child in ast.iter_child_nodes(node):
            visit(child, strict)

    visit(tree, whole_module)
    return sorted(set(out), key=lambda f: (f[1], f[0], f[2]))


def component_files() -> set[Path]:
    """Files defining a registered space or objective, or one of their base classes, under the
    two folders."""
    from blackbox.evals.registry import OBJECTIVES
    from blackbox.search_spaces.registry import SPACES

    out: set[Path] = set()
    for registry in (SPACES, OBJECTIVES):
        for _, cls in registry.items():
            for k in cls.__mro__:
                try:
                    src = inspect.getsourcefile(k)
                except TypeError:  # built-in (object)
                    continue
                if src is None:
                    continue
                path = Path(src).resolve()
                if any(path.is_relative_to(f) for f in FOLDERS):
                    out.add(path)
    return out


def scan() -> tuple[list[str], set[tuple[str, str]]]:
    """Every breach in ``evals/`` and ``search_spaces/`` (``file:line rule: source``), without
    the allowed ones, and which allowed entries matched."""
    components = component_files()
    breaches: list[str] = []
    seen: set[tuple[str, str]] = set()
    files = sorted(p.resolve() for folder in FOLDERS for p in folder.rglob("*.py"))
    for path in files:
        if "__pycache__" in path.parts:
            continue
        rel = path.relative_to(ROOT).as_posix()
        tree = ast.parse(path.read_text(), rel)
        for rule, line, what in findings(tree, whole_module=path in components):
            if (rel, rule) in ALLOWED:
                seen.add((rel, rule))
                continue
            breaches.append(f"{rel}:{line} {rule}: {what}")
    return breaches, seen


# -- the scanner finds what it should ---------------------------------------------------------
PLANTED = """
class Space:
    @classmethod
    def from_config(cls, section, ctx):
        a = ctx.cfg.seed
        b = getattr(ctx, "cfg")
        o = study_cfg.objective
        if o.type == "logit":
            pass
        if section.type in ("tokens", "soft_prompt"):
            pass
        match o.type:
            case "logit":
                pass
        return cls()


def helper(cfg, ctx):
    return cfg.space.placement, cfg.seed
"""


def test_finds_every_planted_breach_in_a_builder() -> None:
    got = [(rule, line) for rule, line, _ in findings(ast.parse(PLANTED), whole_module=False)]
    assert got == [
        ("context-config", 5),
        ("context-config", 6),
        ("other-section", 7),
        ("type-name", 8),
        ("type-name", 10),
        ("type-name", 12),
    ]


def test_a_component_module_is_scanned_whole() -> None:
    got = [(rule, line) for rule, line, _ in findings(ast.parse(PLANTED), whole_module=True)]
    assert ("other-section", 19) in got  # the helper outside the builder


def test_ordinary_code_is_not_flagged() -> None:
    clean = """
class Objective:
    @classmethod
    def from_config(cls, section, ctx):
        lay = ctx.layout_kw(section)
        if ctx.placement == "template" or prep.kind != "loglikelihood":
            pass
        if task.config.output_type == "generate_until":
            pass
        w, cfg = load(section.file)
        return cls(problem.space, cfg.get("hook_name"), ctx.space_traits, section.type)
"""
    assert findings(ast.parse(clean), whole_module=True) == []


def test_the_scan_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "evals"
    folder.mkdir()
    (folder / "bad.py").write_text(PLANTED)
    module = sys.modules[__name__]
    monkeypatch.setattr(module, "ROOT", tmp_path)
    monkeypatch.setattr(module, "FOLDERS", (folder,))
    breaches, _ = scan()
    assert breaches and all(b.startswith("evals/bad.py:") for b in breaches)
    assert "evals/bad.py:5 context-config: ctx.cfg" in breaches


# -- the rule holds ----------------------------------------------------------------------------
def test_components_read_only_their_own_section_and_the_context() -> None:
    breaches, seen = scan()
    assert not breaches, (
        "a component reads beyond its own section (use the BuildContext's named values or a "
        "declared trait; see tests/test_sections.py):\n" + "\n".join(breaches)
    )
    assert seen == set(ALLOWED), f"allowed entries no longer needed: {set(ALLOWED) - seen}"


def test_component_files_cover_the_registered_modules() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in component_files()}
    for f in (
        "search_spaces/base.py",
        "search_spaces/steering/space.py",
        "search_spaces/tokens/space.py",
        "search_spaces/soft_prompt/space.py",
        "evals/base.py",
        "evals/lm_eval_task.py",
        "evals/behaviour.py",
        "evals/activation.py",
        "evals/logit.py",
        "evals/classification.py",
        "evals/fluency.py",
    ):
        assert f in names, f


def _registered() -> list[tuple[str, str, type]]:
    from blackbox.evals.registry import OBJECTIVES
    from blackbox.search_spaces.registry import SPACES

    return [("space", n, c) for n, c in SPACES.items()] + [
        ("objective", n, c) for n, c in OBJECTIVES.items()
    ]


@pytest.mark.parametrize(
    ("kind", "name", "cls"), _registered(), ids=[f"{k}:{n}" for k, n, _ in _registered()]
)
def test_builders_take_the_section_and_the_context(kind: str, name: str, cls: type) -> None:
    """``from_config(section, ctx)`` (``check_config(section, placement)``, ``prompt_bans(section)``
    for objectives), ``section`` annotated with the config class whose ``type`` is ``name``."""
    want = {"from_config": ["section", "ctx"]}
    if kind == "objective":
        want |= {"check_config": ["section", "placement"], "prompt_bans": ["section"]}
    for method, params in want.items():
        sig = inspect.signature(getattr(cls, method))
        assert list(sig.parameters) == params, (cls.__name__, method, list(sig.parameters))
    section = inspect.signature(cls.from_config).parameters["section"].annotation
    assert section not in ("Any", "StudyConfig", inspect.Parameter.empty), (cls.__name__, section)
    section_cls = cls.config
    assert section == section_cls.__name__, (
        f"{cls.__name__}.from_config: {section} is not its section"
    )
    types = typing.get_args(section_cls.model_fields["type"].annotation)
    assert name in types, (cls.__name__, section, types)


# -- what the context names --------------------------------------------------------------------
def _context(space: dict, objective: dict) -> Any:
    from blackbox.config import validate
    from blackbox.study.context import BuildContext

    cfg = validate(
        {
            "name": "sections",
            "seed": 7,
            "space": space,
            "objective": objective,
            "strategy": {"name": "random"},
            "budget": {"evaluations": 1},
        }
    )
    return BuildContext(cfg, loaded=None)


TOKENS = {"type": "tokens", "placement": "after_input", "prefix": "P:", "suffix": ":S"}
STEERING = {"type": "steering", "vectors": [{"name": "v", "unembed": ["a", "b"]}], "layers": [0, 1]}
LOGIT = {"type": "logit", "target": " cat ", "prompts": ["hi"], "template": "Q: {query}"}


def test_the_context_hands_an_objective_the_spaces_prompt_layout() -> None:
    ctx = _context(TOKENS, LOGIT)
    assert ctx.has_prompt and ctx.space_traits.vocabulary and ctx.seed == 7
    assert ctx.layout_kw(ctx.cfg.objective) == {
        "template": "Q: {query}",
        "placement": "after_input",
        "system": None,
        "chat": False,
        "prefix": "P:",
        "suffix": ":S",
    }
    steer = _context(STEERING, LOGIT)  # no prompt: the document whole
    assert not steer.has_prompt and steer.placement == "before_input"
    assert (steer.prompt_prefix, steer.prompt_suffix) == ("", "")


def test_the_context_hands_a_space_the_objectives_prompt_bans() -> None:
    assert _context(TOKENS, LOGIT).prompt_bans == ("cat",)
    assert _context(TOKENS, {**LOGIT, "ban_variants": False}).prompt_bans == ()
    assert _context(TOKENS, {"type": "fluency"}).prompt_bans == ()
