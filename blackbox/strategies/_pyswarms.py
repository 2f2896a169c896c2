"""Import pyswarms without its logging side effects.

On import (and whenever a backend handler is built) pyswarms' ``Reporter`` reconfigures the
*root* logger and opens ``report.log`` in the current directory.  We load it with ``LOG_CFG``
pointing at an empty logging config and then turn ``Reporter._setup_logger`` into a no-op.
"""

from __future__ import annotations

import os
from pathlib import Path

_EMPTY_CONFIG = Path(__file__).with_name("pyswarms_logging.yaml")


def _import_quietly() -> None:
    previous = os.environ.get("LOG_CFG")
    os.environ["LOG_CFG"] = str(_EMPTY_CONFIG)
    try:
        from pyswarms.utils.reporter import reporter
    finally:
        if previous is None:
            os.environ.pop("LOG_CFG", None)
        else:
            os.environ["LOG_CFG"] = previous
    reporter.Reporter._setup_logger = lambda self, path=None: None


_import_quietly()
