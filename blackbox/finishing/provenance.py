"""What a run's numbers rest on, and their uncertainty, for ``result.json``.

``statistics``: for the search and held-out splits, the score of the first baseline and of the
best with a 95% bootstrap interval over documents, and the paired difference best - baseline
with its interval and p-value (:func:`blackbox.stats.paired`: exact McNemar for accuracies, a
paired bootstrap otherwise).  Objectives whose value is not a mean over documents have none.

``provenance`` (lm-eval task objectives): the task, its splits and the document indices used
for search and for held-out scoring, and the ``lm_eval`` commands that reproduce the held-out
numbers: ``RUN/lm_eval/`` holds a task YAML that includes the original task with the run's
held-out split as its ``test_split``, and lm-eval's own ``--samples`` picks the documents.  A
run in lm-eval's chat-template mode (``task.chat_template``) adds ``--apply_chat_template``
(and ``--system_instruction``, ``--fewshot_as_multiturn``) to every command.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import yaml

from blackbox import stats


def _pair(base: Any, best: Any, seed: int) -> dict[str, Any] | None:
    if base is None or best is None or base.per_doc is None or best.per_doc is None:
        return None
    if base.per_doc.shape != best.per_doc.shape:
        return None
    return {
        "n_documents": int(best.per_doc.size),
        "baseline": stats.summary(base.per_doc, seed),
        "best": stats.summary(best.per_doc, seed),
        "difference": stats.paired(base.per_doc, best.per_doc, seed),
    }


def statistics(summary: Any, seed: int = 0) -> dict[str, Any]:
    """``{"search": ..., "heldout": ...}`` (a split is absent when it has no per-document
    values); every interval is seeded with ``seed``."""
    out: dict[str, Any] = {}
    for split, base, best in (
        ("search", summary.baseline, summary.best),
        ("heldout", summary.heldout_baseline, summary.heldout_best),
    ):
        got = _pair(base, best, seed)
        if got is not None:
            out[split] = got
    if out:
        out["method"] = (
            f"95% percentile bootstrap over documents ({stats.N_BOOT} resamples, seed {seed}); "
            "difference: exact McNemar test for 0/1 metrics, paired bootstrap otherwise"
        )
    return out


def _command(
    model: str,
    task: str,
    include: Path,
    samples: Path,
    steer: Path | None,
    peft: Path | None = None,
    task_cfg: Any = None,
) -> str:
    kind = "steered" if steer is not None else "hf"
    args = f"pretrained={model}" + (f",steer_path={steer}" if steer is not None else "")
    args += f",peft={peft}" if peft is not None else ""
    return (
        f"lm_eval --model {kind} --model_args {shlex.quote(args)} --include_path "
        f"{shlex.quote(str(include))} --tasks {task} --samples "
        f'"$(cat {shlex.quote(str(samples))})"' + chat_args(task_cfg)
    )


def chat_args(task_cfg: Any) -> str:
    """`` --apply_chat_template ...`` for a ``task:`` config in lm-eval's chat-template mode
    (``""`` otherwise): the arguments that make ``lm_eval`` build the run's requests."""
    from blackbox.evals.lm_eval_chat import ChatFormat

    chat = ChatFormat.of(task_cfg)
    return "" if chat is None else " " + chat.cli_args()


def provenance(
    p: Any, run_dir: Path, files: list[str], exported: str = "best"
) -> dict[str, Any] | None:
    """The documents behind the run's numbers and the lm-eval commands that reproduce the
    held-out ones (lm-eval task objectives; ``None`` otherwise).  Writes ``RUN/lm_eval/``.

    ``exported``: whose file the run exported (``best``; ``chosen`` with side effects): the
    command reproducing it is filed under that name."""
    from blackbox.finishing.lm_eval_variant import task_yaml_path

    cfg, obj = p.config, p.objective
    if cfg.task is None or not hasattr(obj, "spec"):
        return None
    splits: dict[str, Any] = {}
    for name in obj.splits:
        spec = obj.spec(name)
        docs = spec.samples
        if docs is None:
            docs = range(len(obj.task.dataset[spec.split]))
        splits[name] = {"split": spec.split, "documents": [int(i) for i in docs]}
    out: dict[str, Any] = {"task": cfg.task.name, "metric": obj.metric, **splits}
    if cfg.task.chat_template:  # how the requests were built: lm-eval's chat-template mode
        out["chat_template"] = {
            "system_instruction": cfg.task.system_instruction,
            "fewshot_as_multiturn": cfg.task.multiturn,
        }
    if "heldout" not in splits:
        return out
    try:
        base = task_yaml_path(cfg.task.name)
    except ValueError as exc:  # a task not built from one YAML file: no variant
        out["lm_eval"] = {"note": str(exc)}
        return out
    name = f"{obj.task.config.task}_heldout"
    folder = Path(run_dir) / "lm_eval"
    folder.mkdir(parents=True, exist_ok=True)
    variant = {"include": str(base), "task": name, "test_split": splits["heldout"]["split"]}
    if cfg.task.max_gen_toks is not None:  # the run capped generation: so does the variant
        variant["generation_kwargs"] = dict(obj.task.config.generation_kwargs)
    (folder / f"{name}.yaml").write_text(
        f"# blackbox run {cfg.name!r}: {cfg.task.name} on the run's held-out split\n"
        + yaml.safe_dump(variant, sort_keys=False)
    )
    samples = folder / "samples.json"
    samples.write_text(json.dumps({name: splits["heldout"]["documents"]}))
    model = str(Path(p.loaded.path).resolve())
    where = (folder.resolve(), samples.resolve())
    commands = {"baseline": _command(model, name, *where, None, task_cfg=cfg.task)}
    if cfg.space.type == "steering" and "steered.pt" in files:
        steer = (Path(run_dir) / "steered.pt").resolve()
        commands[exported] = _command(model, name, *where, steer, task_cfg=cfg.task)
    else:
        fmt = {"tokens": "lm_eval", "soft_prompt": "peft"}.get(cfg.space.type)
        if fmt:
            commands[exported] = (
                f"blackbox export {shlex.quote(str(run_dir))} --format {fmt}  "
                "# writes the files and the lm_eval command for the best"
            )
    out["lm_eval"] = {
        "include_path": str(folder),
        "task": name,
        "samples": str(samples),
        "commands": commands,
    }
    return out


def export_command(
    result: dict[str, Any] | None,
    fmt: str,
    paths: list[Path],
    model: Path,
    task_cfg: Any = None,
) -> str | None:
    """The ``lm_eval`` command that scores the exported files on the run's held-out
    documents (``None`` for a format lm-eval does not read, or a run without an lm-eval
    task's provenance).

    Args:
        result: the run's ``result.json``.
        fmt: the export format written.
        paths: the files it wrote.
        model: the model directory.
        task_cfg: the run's ``task:`` config (its chat-template mode goes on the command).
    """
    model_s = str(Path(model).resolve())
    if fmt == "lm_eval":  # a task variant: its own include path and samples
        yaml_file = next((p for p in paths if p.suffix == ".yaml"), None)
        if yaml_file is None:
            return None
        folder = yaml_file.parent.resolve()
        samples_file = folder / "samples.json"
        return _command(model_s, yaml_file.stem, folder, samples_file, None, task_cfg=task_cfg)
    lm = ((result or {}).get("provenance") or {}).get("lm_eval") or {}
    if not {"include_path", "task", "samples"} <= set(lm):
        return None
    include, samples = Path(lm["include_path"]).resolve(), Path(lm["samples"]).resolve()
    if fmt == "steered":
        steer = next((p for p in paths if p.suffix == ".pt"), None)
        if steer is None:
            return None
        return _command(model_s, lm["task"], include, samples, steer, task_cfg=task_cfg)
    if fmt == "peft":
        adapter = next((p.parent for p in paths if p.name == "adapter_config.json"), None)
        if adapter is None:  # embeddings + template: PEFT cannot express the placement
            return None
        peft = adapter.resolve()
        return _command(model_s, lm["task"], include, samples, None, peft, task_cfg)
    return None
