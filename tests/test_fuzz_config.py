"""Property-based fuzzing of every study config in studies/ (issue #27, item 3).

Each example takes one bundled config, changes one field (a wrong type, NaN or infinity, a huge
or negative number, an empty, unicode or path-like string, a password-bearing URL, a removed or
an unknown key, a duplicated list item or YAML key) and validates the result through the code
``blackbox run`` / ``compare`` / ``tune`` runs before the model loads: the YAML file read with
the same loader, the schema, then :func:`blackbox.study.pipeline.check` (combination rules,
strategy settings built on a dummy box, files, layers against the saved model config, storage).

The property: it ends in success or in a :class:`~blackbox.errors.UserError` whose message is
one line naming a part of the changed field's path; never another exception; no password in
the message; nothing written in the working directory.  NaN, infinity or a boolean in a
numeric field is always an error.  A few subprocess runs of the real CLI check the same from
the outside (exit code 2, one ``blackbox: error:`` line, no traceback, nothing written).

Bounded for CI (``derandomize``: the same examples every run): ``BLACKBOX_FUZZ_EXAMPLES``
(default 25 per config and test, 750 examples, about a minute on two cores) raises it for a
longer run on demand, e.g. ``BLACKBOX_FUZZ_EXAMPLES=500 pytest tests/test_fuzz_config.py``.
"""

from __future__ import annotations

import itertools
import math
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from blackbox.config.loading import read_yaml  # noqa: E402
from blackbox.errors import UserError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STUDIES = sorted((ROOT / "studies").glob("*.yaml"))
EXAMPLES = int(os.environ.get("BLACKBOX_FUZZ_EXAMPLES", "25"))
PASSWORD = "hunter2secret"
COUNTER = itertools.count()

Path_ = tuple[Any, ...]


def _paths(node: Any, prefix: Path_ = ()) -> list[Path_]:
    """Every key and list index of a parsed config, containers included (depth first)."""
    out: list[Path_] = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


def _get(node: Any, path: Path_) -> Any:
    for p in path:
        node = node[p]
    return node


SPECIAL_VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    1,
    2**31,
    2**64,
    10**30,
    -(10**30),
    0.5,
    -0.5,
    1e308,
    -1e308,
    float("nan"),
    float("inf"),
    float("-inf"),
    "",
    " ",
    "\n",
    "abc\n",
    "x" * 5000,
    "é∂ƒ😀\u202e",
    "1e400",
    "nan",
    "1.5",
    "-1",
    "true",
    "../../../etc/passwd",
    "/dev/zero",
    "/nonexistent/dir/file.yaml",
    "~",
    "${NO_SUCH_FUZZ_VARIABLE}",
    ".",
    "..",
    "C:\\Windows",
    f"user:{PASSWORD}@127.0.0.1:9/db",
    f"password={PASSWORD} host=127.0.0.1",
    f"postgresql://bb:{PASSWORD}@127.0.0.1:9/db",
    f"mysql://bb:{PASSWORD}@127.0.0.1:9/db",
    "redis://127.0.0.1/0",
    [],
    {},
    [None],
    [1, 2, 3],
    [float("nan"), 1.0],
    [True, False],
    {"a": 1},
    ["a", "a"],
]

VALUES = st.one_of(
    st.sampled_from(SPECIAL_VALUES),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.lists(st.one_of(st.integers(-5, 50), st.floats(-1e3, 1e3)), max_size=4),
)

# (kind, path index, value): replace the field; remove it; add an unknown key next to it;
# duplicate a list item; give a YAML key twice
MUTATIONS = st.tuples(
    st.sampled_from(["replace"] * 6 + ["remove", "unknown_key", "duplicate_item", "yaml_dup"]),
    st.integers(min_value=0, max_value=10_000),
    VALUES,
)


def _mutate(data: dict[str, Any], kind: str, where: int, value: Any) -> tuple[str, Path_]:
    """Apply one mutation in place; return the YAML text to validate and the changed path."""
    paths = _paths(data)
    path = paths[where % len(paths)]
    parent, key = _get(data, path[:-1]), path[-1]
    if kind == "replace":
        parent[key] = value
    elif kind == "remove":
        del parent[key]
    elif kind == "unknown_key":
        target = _get(data, path)
        if isinstance(target, dict):
            target["fuzz_unknown_key"] = value
            path = (*path, "fuzz_unknown_key")
        elif isinstance(parent, dict):
            parent["fuzz_unknown_key"] = value
            path = (*path[:-1], "fuzz_unknown_key")
        else:
            parent[key] = value
    elif kind == "duplicate_item":
        items = [p for p in paths if isinstance(p[-1], int)]
        if items:
            path = items[where % len(items)]
            parent = _get(data, path[:-1])
            parent.append(parent[path[-1]])
        else:
            parent[key] = value
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    if kind == "yaml_dup":  # a top-level key given twice: the loader must refuse it
        top = str(path[0])
        text += yaml.safe_dump({top: value}, allow_unicode=True)
        path = (top,)
    return text, path


def _kind(study: Path) -> str:
    return study.name.split("_", 1)[0] if study.name.startswith(("compare_", "tune_")) else "run"


def _validate(kind: str, config: Path) -> None:
    """What the CLI runs before the model loads, in-process (see the module docstring)."""
    from blackbox.study.pipeline import check

    if kind == "compare":
        from blackbox.experiments.compare_config import load_compare
        from blackbox.study.storage import probe_storage

        cfg = load_compare(config)  # checks every entry with pipeline.check
        if cfg.storage:
            probe_storage(cfg.storage)
    elif kind == "tune":
        from blackbox.experiments.tune import load_tune

        tuned = load_tune(config)
        check(tuned.study)
        if tuned.storage:
            from blackbox.study.storage import probe_storage

            probe_storage(tuned.storage)
    else:
        from blackbox.config import load_config

        check(load_config(config))


def _numeric_poison(original: Any, value: Any) -> bool:
    """NaN, infinity or a boolean put in place of a plain number: always an error."""
    number = isinstance(original, int | float) and not isinstance(original, bool)
    if not number:
        return False
    return isinstance(value, bool) or (isinstance(value, float) and not math.isfinite(value))


# Older configs' fields that the schema moves between space and objective
# (:func:`blackbox.config.schema._migrate`): an error may name the field where it ended up
MOVED = ("chat_template", "objective.chat", "objective.projection", "objective.baseline")


def _names_field(message: str, path: Path_) -> bool:
    """The message names a key of the changed path (or, for a moved field, where it went)."""
    named = any(str(p) in message for p in path if not isinstance(p, int))
    return named or any(m in message for m in MOVED)


# bounded and reproducible for CI; BLACKBOX_FUZZ_EXAMPLES runs longer on demand
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def warm() -> None:
    """Import the pipeline once (torch, transformers) so examples time the checks only."""
    import blackbox.study.pipeline  # noqa: F401


@pytest.mark.parametrize("study", STUDIES, ids=[p.name for p in STUDIES])
@FUZZ
@given(mutation=MUTATIONS)
def test_one_mutated_field_is_accepted_or_one_named_line(
    study: Path,
    mutation: tuple[str, int, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    warm: None,
) -> None:
    kind, where, value = mutation
    data = read_yaml(study)
    paths = _paths(data)
    original = _get(data, paths[where % len(paths)]) if kind == "replace" else None
    text, path = _mutate(data, kind, where, value)
    work = tmp_path / f"cwd-{next(COUNTER)}"
    work.mkdir()
    config = work.parent / f"{work.name}.yaml"
    config.write_text(text, encoding="utf-8")
    monkeypatch.chdir(work)
    monkeypatch.delenv("NO_SUCH_FUZZ_VARIABLE", raising=False)
    try:
        _validate(_kind(study), config)
    except UserError as exc:
        message = str(exc)
        assert "\n" not in message and message.strip(), repr(message)
        assert _names_field(message, path), (path, message)
        assert PASSWORD not in message, message
    else:
        assert kind != "yaml_dup", "a duplicate key was accepted"
        assert not _numeric_poison(original, value), (path, value, "accepted")
    assert list(work.iterdir()) == [], "nothing written"


SET_TEXT = st.one_of(
    st.sampled_from(
        [
            "",
            "x",
            "null",
            "[]",
            "{}",
            ".nan",
            ".inf",
            "-.inf",
            "true",
            "1e400",
            "-1",
            "[1, 2",
            "{a: 1, a: 2}",
            "!!python/object/apply:os.system [echo]",
            "*anchor",
            "&a [*a]",
            f"user:{PASSWORD}@h/db",
            "'quoted",
            "a=b=c",
            "\u202e",
            "[.nan, 1.0]",
            "99999999999999",
        ]
    ),
    st.text(max_size=16),
)


@pytest.mark.parametrize("study", STUDIES[::4], ids=[p.name for p in STUDIES[::4]])
@FUZZ
@given(
    where=st.integers(0, 10_000),
    form=st.sampled_from(["dots", "brackets", "past_end"]),
    text=SET_TEXT,
)
def test_a_set_override_is_accepted_or_one_named_line(
    study: Path,
    where: int,
    form: str,
    text: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    warm: None,
) -> None:
    """``--set KEY=VALUE`` on any field (list items by index, ``a.1.b`` or ``a[1].b``, or one
    past the end), the value any YAML text: accepted, or one line naming the key."""
    from blackbox.config.loading import apply_overrides

    data = read_yaml(study)
    paths = _paths(data)
    path = list(paths[where % len(paths)])
    past_end = False
    if form == "past_end":
        lists = [p for p in paths if isinstance(p[-1], int)]
        if lists:
            p = list(lists[where % len(lists)])
            p[-1] = len(_get(data, tuple(p[:-1]))) + where % 3
            path, past_end = p, True
    if form == "brackets":
        key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
    else:
        key = ".".join(str(p) for p in path)
    item = f"{key}={text}"
    work = tmp_path / f"cwd-{next(COUNTER)}"
    work.mkdir()
    monkeypatch.chdir(work)
    try:
        applied = apply_overrides(data, [item])
        config = work.parent / f"{work.name}.yaml"
        config.write_text(yaml.safe_dump(applied, allow_unicode=True), encoding="utf-8")
        _validate(_kind(study), config)
    except UserError as exc:
        message = str(exc)
        assert "\n" not in message and message.strip(), repr(message)
        assert _names_field(message, tuple(path)) or key in message, (item, message)
        assert PASSWORD not in message, message
    else:
        assert not past_end, f"{item!r} accepted"
    assert list(work.iterdir()) == [], "nothing written"


# The outside view: the real CLI on a few mutated configs.  The model points at a directory
# that does not exist, so a config the checks accept stops at the model (exit 2, one line)
# instead of running a study.
CLI_CASES: list[tuple[str, str, Callable[[dict[str, Any]], None]]] = [
    ("steer_rotten_tomatoes.yaml", "coeff", lambda d: d["space"].update(coeff=[-1e308, 1e308])),
    ("steer_rotten_tomatoes.yaml", "c1", lambda d: d["strategy"]["settings"].update(c1="1e400")),
    ("steer_rotten_tomatoes.yaml", "w", lambda d: d["strategy"]["settings"].update(w=math.nan)),
    ("steer_rotten_tomatoes.yaml", "seed", lambda d: d.update(seed=True)),
    ("steer_rotten_tomatoes.yaml", "storage", lambda d: d.update(storage=f"u:{PASSWORD}@h/db")),
    ("tokens_rotten_tomatoes.yaml", "n_tokens", lambda d: d["space"].update(n_tokens=10**9)),
    ("dream_neuron.yaml", "objective", lambda d: d["objective"].update(layer=-3)),
    ("soft_rotten_tomatoes_adam.yaml", "bound", lambda d: d["space"].update(bound=math.inf)),
]


@pytest.mark.parametrize(
    ("study", "field", "edit"), CLI_CASES, ids=[f"{s}:{f}" for s, f, _ in CLI_CASES]
)
def test_cli_on_a_mutated_study_is_one_line_exit_2(
    study: str, field: str, edit: Callable[[dict[str, Any]], None], tmp_path: Path
) -> None:
    data = read_yaml(ROOT / "studies" / study)
    edit(data)
    data["model"] = {"name": str(tmp_path / "no-model"), "device": "cpu"}
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(data))
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "blackbox.cli", "run", str(config), "--no-progress"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("blackbox: error: ") and field in lines[0], lines[0]
    assert "Traceback" not in proc.stderr and PASSWORD not in proc.stderr + proc.stdout
    assert list(work.iterdir()) == [], "nothing written"
