"""No import cycles between the suite's folders (issue #26: components as folders).

Every module of ``blackbox/``, ``evals/`` (``blackbox.evals``) and ``search_spaces/``
(``blackbox.search_spaces``) is parsed with :mod:`ast`; every import counts, at the top of a
module or inside a function (a deferred import still ties the folders together), and so does a
module named in a string by a module that calls ``importlib.import_module`` (the CLI's command
table), except those under ``if TYPE_CHECKING:``.  A module belongs to its folder (``blackbox/study``, ``evals``,
``search_spaces``, ...); a module directly in ``blackbox/`` is a node of its own
(``blackbox/cli.py``).  The test fails on any strongly connected set of two or more nodes not in
:data:`ALLOWED`.

Run as a script (``python tests/test_layering.py``) it prints every cycle with the imports that
make it.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# where each import prefix lives on disk
SOURCES = {
    "blackbox.evals": ROOT / "evals",
    "blackbox.search_spaces": ROOT / "search_spaces",
    "blackbox": ROOT / "blackbox",
}

ALLOWED: dict[tuple[str, str], str] = {}
"""Imports (importing file, imported module) left out of the cycle check, each with its reason;
keep this empty or as short as possible.  An entry that no longer matches an import fails."""


def modules() -> dict[str, Path]:
    """``{dotted module name: file}`` for every first-party module."""
    out: dict[str, Path] = {}
    for prefix, folder in SOURCES.items():
        for f in folder.rglob("*.py"):
            rel = f.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            if "__pycache__" in parts:
                continue
            out[".".join([prefix, *parts])] = f
    return out


def node(module: str, mods: dict[str, Path]) -> str:
    """The folder (or top-level module) ``module`` belongs to."""
    for prefix in ("blackbox.evals", "blackbox.search_spaces"):
        if module == prefix or module.startswith(prefix + "."):
            return prefix.split(".")[1]
    parts = module.split(".")
    if len(parts) == 1:
        return "blackbox/__init__.py"
    if (ROOT / "blackbox" / parts[1]).is_dir():
        return f"blackbox/{parts[1]}"
    return f"blackbox/{parts[1]}.py"


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> list[tuple[ast.ImportFrom | ast.Import, int]]:
    """Every import statement outside ``if TYPE_CHECKING:`` bodies (with its line)."""
    found: list[tuple[ast.ImportFrom | ast.Import, int]] = []

    def visit(n: ast.AST) -> None:
        if isinstance(n, ast.If) and _is_type_checking(n.test):
            for child in n.orelse:
                visit(child)
            return
        if isinstance(n, (ast.Import, ast.ImportFrom)):
            found.append((n, n.lineno))
        for child in ast.iter_child_nodes(n):
            visit(child)

    visit(tree)
    return found


def _by_name(tree: ast.AST, mods: dict[str, Path]) -> list[tuple[str, int]]:
    """Modules a module imports by name (``importlib.import_module(name)``): when it calls
    ``import_module``, every string in it that names a first-party module (the CLI's command
    table, the package's lazy exports)."""
    calls = any(
        isinstance(n, ast.Call)
        and (getattr(n.func, "attr", None) or getattr(n.func, "id", None)) == "import_module"
        for n in ast.walk(tree)
    )
    if not calls:
        return []
    return [
        (n.value, n.lineno)
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and "." in n.value
        if n.value in mods
    ]


def imported(module: str, path: Path, mods: dict[str, Path]) -> list[tuple[str, int]]:
    """First-party modules ``module`` imports (statements, and by name), with their lines."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = _by_name(tree, mods)
    for stmt, line in _imports(tree):
        if isinstance(stmt, ast.Import):
            targets = [a.name for a in stmt.names]
        else:
            base = stmt.module or ""
            if stmt.level:
                up = package.split(".")
                up = up[: len(up) - (stmt.level - 1)]
                base = ".".join([*up, *([base] if base else [])])
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in stmt.names
            ]
        for t in targets:
            while t and t not in mods:  # ``import blackbox.x.y`` of a name inside a module
                t = t.rpartition(".")[0]
            if t:
                out.append((t, line))
    return out


def graph(
    allowed: dict[tuple[str, str], str] | None = None,
) -> tuple[dict[tuple[str, str], list[str]], set[tuple[str, str]]]:
    """``{(from node, to node): ["file:line imports module", ...]}`` between different nodes,
    without the ``allowed`` imports, and which of those were seen."""
    mods = modules()
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    seen: set[tuple[str, str]] = set()
    for m, path in sorted(mods.items()):
        a = node(m, mods)
        rel = path.relative_to(ROOT).as_posix()
        for t, line in sorted(set(imported(m, path, mods)), key=lambda p: (p[1], p[0])):
            if (rel, t) in (allowed or {}):
                seen.add((rel, t))
                continue
            b = node(t, mods)
            if a != b:
                edges[a, b].append(f"{rel}:{line} imports {t}")
    return edges, seen


def cycles(edges: dict[tuple[str, str], list[str]]) -> list[frozenset[str]]:
    """Strongly connected sets of two or more nodes (Tarjan)."""
    succ: dict[str, set[str]] = defaultdict(set)
    for a, b in edges:
        succ[a].add(b)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[frozenset[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(succ[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(frozenset(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted({n for e in edges for n in e}):
        if v not in index:
            strong(v)
    return out


def describe(comp: frozenset[str], edges: dict[tuple[str, str], list[str]]) -> str:
    lines = [" <-> ".join(sorted(comp))]
    for (a, b), why in sorted(edges.items()):
        if a in comp and b in comp:
            lines.append(
                f"  {a} -> {b}: {why[0]}" + (f" (+{len(why) - 1})" if len(why) > 1 else "")
            )
    return "\n".join(lines)


def test_reads_imports_inside_functions_and_skips_type_checking(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from blackbox.cli import main\n"
        "def f():\n    from blackbox import stats\n    import blackbox.report.compare\n"
    )
    mods = modules()
    got = [t for t, _ in imported("blackbox.x", src, mods)]
    assert got == ["blackbox.stats", "blackbox.report.compare"]


def test_finds_a_planted_cycle() -> None:
    edges = {("a", "b"): ["x"], ("b", "c"): ["y"], ("c", "a"): ["z"], ("c", "d"): ["w"]}
    assert cycles(edges) == [frozenset("abc")]


def test_no_folder_level_import_cycles() -> None:
    edges, seen = graph(ALLOWED)
    found = cycles(edges)
    assert not found, "folder-level import cycles:\n" + "\n".join(describe(c, edges) for c in found)
    assert seen == set(ALLOWED), f"allowed imports no longer made: {set(ALLOWED) - seen}"


LIGHT = ("torch", "transformers", "lm_eval", "nevergrad", "pyswarms", "optuna", "numpy")
"""What a config section module may not import: the schema is assembled from the sections and
validated before any of these load."""


def test_each_space_folder_stands_alone_and_its_section_is_light() -> None:
    """A space's folder (``search_spaces/<space>/``) imports no other space's folder, so a
    space is added or removed as one folder; its ``config.py`` imports pydantic and leaf modules
    only (nothing of torch, numpy or the libraries), as ``evals/sections.py`` does."""
    mods = modules()
    spaces = sorted(
        p.name for p in (ROOT / "search_spaces").iterdir() if (p / "config.py").exists()
    )
    assert {"steering", "tokens", "soft_prompt"} <= set(spaces)
    for space in spaces:
        own = f"blackbox.search_spaces.{space}"
        for f in sorted((ROOT / "search_spaces" / space).rglob("*.py")):
            module = own + "." + f.stem if f.stem != "__init__" else own
            for target, line in imported(module, f, mods):
                other = target.split(".")[2] if target.count(".") >= 2 else ""
                assert other not in spaces or other == space, f"{f}:{line} imports {target}"
    sections = [ROOT / "search_spaces" / s / "config.py" for s in spaces] + [
        ROOT / "evals" / "sections.py"
    ]
    for f in sections:
        tree = ast.parse(f.read_text(), str(f))
        for stmt, line in _imports(tree):
            names = [a.name for a in stmt.names] if isinstance(stmt, ast.Import) else [stmt.module]
            for name in names:
                assert (name or "").split(".")[0] not in LIGHT, f"{f}:{line} imports {name}"
                if name and name.startswith("blackbox."):
                    assert name in ("blackbox.sections", "blackbox.errors") or (
                        name.startswith("blackbox.evals.sections")
                    ), f"{f}:{line} imports {name}"


def main() -> int:
    edges, _ = graph()
    found = cycles(edges)
    for c in found:
        print(describe(c, edges))
    print(f"{len(found)} cycle(s) counting every import")
    edges, _ = graph(ALLOWED)
    left = cycles(edges)
    print(f"{len(left)} cycle(s) without the allowed imports: {sorted(ALLOWED)}")
    return int(bool(left))


if __name__ == "__main__":
    raise SystemExit(main())
