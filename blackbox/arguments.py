"""The command-line arguments every config-driven command shares (``run``, ``compare``,
``tune``): a leaf module, so the command modules in other folders add them without importing
:mod:`blackbox.cli`, which imports those modules to register their commands."""

from __future__ import annotations

import argparse


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
    p.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show the traceback of an unexpected error",
    )
