"""A token prompt as an lm-eval task variant: a YAML that includes the original task and puts
the prompt's text where the search put its tokens.

================ ===============================================================================
placement        the variant
================ ===============================================================================
``before_input`` ``description:`` = prompt + the task's own description (lm-eval puts the
                 description before the few-shot examples and the document: before everything)
``after_input``  ``doc_to_text:`` = the task's ``doc_to_text`` + prompt (between the document's
                 context and the answer's target delimiter)
================ ===============================================================================

A run in lm-eval's chat-template mode (``task.chat_template``) spliced the prompt inside the
user turn (at the start or the end of its text); there the variant's ``doc_to_text`` is prompt
+ ``doc_to_text`` (``before_input``: the description would become a system turn) or
``doc_to_text`` + prompt, and the command carries ``--apply_chat_template`` (and the run's
``--system_instruction``, ``--fewshot_as_multiturn``).  With few-shot examples lm-eval puts
``doc_to_text`` in every example too, so only a zero-shot task's variant is exact.

The prompt is wrapped in ``{% raw %}`` so lm-eval's Jinja renders it verbatim.  ``test_split``
is the run's held-out split and ``samples.json`` holds its held-out documents, so::

    lm_eval --model hf --model_args pretrained=MODEL --include_path DIR --tasks NAME \\
        --samples "$(cat DIR/samples.json)"

scores the documents the run held out.  lm-eval tokenises the text, the search scored the ids:
the two agree wherever the prompt's edges do not merge with the text around them (see
docs/exports.md for the measured agreement).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from blackbox.errors import UserError

RAW = "{{% raw %}}{}{{% endraw %}}"


def _raw(text: str) -> str:
    if "endraw" in text:
        raise UserError("export: the prompt's text holds 'endraw'; it cannot be put in Jinja")
    return RAW.format(text) if text else ""


def task_yaml_path(name: str) -> Path:
    """The YAML file lm-eval builds task ``name`` from (bundled, a YAML path or built-in)."""
    from blackbox.evals.lm_eval_tasks import BUNDLED_TASKS, materialise_tasks
    from blackbox.evals.standard_tasks import YAML_SUBDIR, standard_tasks

    if name in BUNDLED_TASKS:
        return materialise_tasks() / f"{name}.yaml"
    if name in standard_tasks():
        return materialise_tasks() / YAML_SUBDIR / f"{name}.yaml"
    if name.endswith((".yaml", ".yml")) and Path(name).is_file():
        return Path(name).absolute()
    from lm_eval.tasks import TaskManager

    entry = TaskManager(include_defaults=True).task_index.get(name)
    if isinstance(entry, dict):  # lm-eval < 0.4.10: a dict
        kind, path = entry.get("type"), entry.get("yaml_path", -1)
    else:  # an Entry (kind, yaml_path)
        kind = getattr(getattr(entry, "kind", None), "name", "").lower() or None
        path = getattr(entry, "yaml_path", None)
    if kind != "task" or path in (-1, None):
        raise UserError(
            f"export: task {name!r} is not built from one YAML file, so no variant can include it"
        )
    return Path(path)


def _doc_to_text(task: Any) -> str:
    """The task's ``doc_to_text`` as a Jinja template (a column name made one)."""
    c = task.config
    doc_to_text = c.doc_to_text
    if not isinstance(doc_to_text, str):
        raise UserError(
            f"export: task {c.task!r}'s doc_to_text is a Python function; a YAML variant "
            "cannot add the prompt to it"
        )
    if doc_to_text in (getattr(task, "features", None) or []):
        doc_to_text = "{{" + doc_to_text + "}}"  # a column name: as a template
    return doc_to_text


def variant_config(
    task: Any, base: Path, name: str, text: str, placement: str, split: str, chat: bool = False
) -> dict[str, Any]:
    """The variant's YAML content (a dict): ``include`` the task's YAML and override the field
    that puts ``text`` where ``placement`` says (``chat``: inside the user turn of lm-eval's
    chat-template mode)."""
    if getattr(task, "multiple_input", False):
        raise UserError("export: a multiple-input task (one context per choice) has no variant")
    cfg: dict[str, Any] = {"include": str(base), "task": name, "test_split": split}
    c = task.config
    if placement == "before_input" and chat:
        cfg["doc_to_text"] = _raw(text) + _doc_to_text(task)
    elif placement == "before_input":
        cfg["description"] = _raw(text) + (c.description or "")
    elif placement == "after_input":
        cfg["doc_to_text"] = _doc_to_text(task) + _raw(text)
    else:
        raise UserError(f"export: placement {placement!r} has no lm-eval task variant")
    return cfg


def heldout_documents(cfg: Any) -> tuple[Any, str, list[int]]:
    """The run's lm-eval task, its held-out split and the held-out document indices (the
    seeded draw of :func:`~blackbox.evals.lm_eval_splits.task_splits`)."""
    from blackbox.evals.lm_eval_splits import load_task, task_splits
    from blackbox.evals.lm_eval_tasks import quiet_lm_eval

    with quiet_lm_eval():
        task = load_task(cfg.task.name)
    heldout = task_splits(task, cfg.task, cfg.seed)["heldout"]
    docs = heldout.samples
    if docs is None:  # the whole held-out split
        docs = range(len(task.dataset[heldout.split]))
    return task, heldout.split, [int(i) for i in docs]


def exact_requests(
    loaded: Any,
    task: Any,
    variant: Path,
    name: str,
    ids: list[int],
    placement: str,
    split: str,
    docs: list[int],
    chat: Any = None,
) -> tuple[int, int]:
    """How many held-out requests lm-eval tokenises, under the variant, into exactly the ids
    the search scored (``ids`` before the context or between context and continuation; with
    ``chat``, lm-eval's chat-template mode, at the start or the end of the user turn's text)."""
    from lm_eval.tasks import TaskManager

    from blackbox.evals.lm_eval_requests import prepare_split
    from blackbox.evals.lm_eval_splits import build_lm
    from blackbox.evals.lm_eval_tasks import quiet_lm_eval

    lm = build_lm(loaded)
    with quiet_lm_eval():
        vt = TaskManager(include_defaults=False, include_path=str(variant)).load([name])["tasks"]
        got = prepare_split(vt[name], lm, split, docs, False, chat).pairs
        searched = prepare_split(task, lm, split, docs, False, chat)
    want = searched.pairs
    where = searched.splice_at or [(0, len(co)) for co, _ in want]
    exact = 0
    for (cv, uv), (co, uo), (a, b) in zip(got, want, where):
        at = a if placement == "before_input" else b
        ctx = list(co[:at]) + list(ids) + list(co[at:])
        exact += (list(cv), list(uv)) == (ctx, list(uo))
    return exact, len(want)


def write_task_variant(
    cfg: Any, text: str, out_dir: Path, loaded: Any = None, ids: list[int] | None = None
) -> list[Path]:
    """Write ``<task>_<run>.yaml``, ``samples.json`` (the held-out documents) and
    ``prompt.txt`` into ``out_dir``; returns their paths.

    Args:
        cfg: the run's :class:`~blackbox.config.schema.StudyConfig` (an lm-eval task study).
        text: the prompt's text.
        out_dir: the ``--include_path`` directory.
        loaded, ids: the model and the prompt's ids: with both, the held-out requests are
            checked token for token (:func:`exact_requests`) and a mismatch is one note line.
    """
    if cfg.task is None or cfg.objective.type != "lm_eval_task":
        raise UserError(
            f"export: --format lm_eval needs a run whose objective is an lm-eval task (this "
            f"run's is {cfg.objective.type!r})"
        )
    from blackbox.evals.lm_eval_chat import ChatFormat

    task, split, docs = heldout_documents(cfg)
    base_name = task.config.task
    name = f"{base_name}_{cfg.name}"
    chat = ChatFormat.of(cfg.task)
    content = variant_config(
        task, task_yaml_path(cfg.task.name), name, text, cfg.space.placement, split, bool(chat)
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.yaml", out_dir / "samples.json", out_dir / "prompt.txt"]
    header = (  # DIR, not this path: the export writes under a temporary name, then moves
        f"# blackbox run {cfg.name!r}: the searched prompt {cfg.space.placement.replace('_', ' ')}"
        f" of {base_name}.\n# lm_eval --model hf --model_args pretrained=MODEL --include_path "
        f'DIR --tasks {name} --samples "$(cat DIR/samples.json)"'
        + (" " + chat.cli_args().replace("\n", "\n# ") if chat is not None else "")
        + "  # DIR: this directory\n"  # (a system instruction's line breaks: still comments)
    )
    paths[0].write_text(header + yaml.safe_dump(content, sort_keys=False, allow_unicode=True))
    paths[1].write_text(json.dumps({name: docs}))
    paths[2].write_text(text)
    if loaded is not None and ids is not None:
        exact, total = exact_requests(
            loaded, task, out_dir, name, ids, cfg.space.placement, split, docs, chat
        )
        if exact < total:
            import sys

            print(
                f"blackbox: note: lm-eval tokenises {total - exact} of {total} held-out requests "
                "of the variant differently from the searched ids (the prompt's edge merges with "
                "the text beside it); its score is then an approximation",
                file=sys.stderr,
            )
    return paths
