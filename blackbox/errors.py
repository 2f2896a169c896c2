"""The error types that mean *bad input*: the CLI prints their one-line message and exits 2.

Every other exception is an internal error (a bug): one line, exit 1, the traceback in a log
file (``--debug`` shows it).  This module imports nothing at import time (a message is masked
with :mod:`blackbox.masking`, which needs only ``re``), so the CLI can tell the two apart
without loading torch.
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input from the user (config, model, task, data, storage, arguments): the message
    is one line naming what is wrong and what is allowed.  A ``ValueError`` so that callers
    that validated with ``ValueError`` keep working.

    A password the message quotes is masked (:func:`blackbox.masking.mask_url`): a storage
    URL pasted into another field, or one whose scheme was forgotten, is never shown whole.
    """

    def __init__(self, *args: object) -> None:
        if args and isinstance(args[0], str):
            from blackbox.masking import mask_url  # re and reprlib only: still light

            args = (mask_url(args[0]), *args[1:])
        super().__init__(*args)


class ConfigError(UserError):
    """A configuration problem; the message is one line naming the field.

    Here rather than in :mod:`blackbox.config` (which re-exports it) so that objectives and
    search spaces can raise it without importing the config package that reads their
    registries."""
