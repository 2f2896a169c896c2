"""The finishing-step interface: what a run of one space writes after its search (a space names
its step as :attr:`~blackbox.search_spaces.base.SearchSpace.finisher`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from blackbox.errors import UserError


class Finisher:
    """What a run of one space writes after the search.

    Subclasses implement :meth:`finish` (after a run: files and result sections) and
    :meth:`export` (the best candidate's files, also from ``blackbox export``).

    Attributes:
        formats: export format name -> what it writes, starting with the file (or ``dir/``)
            it writes by default (the first format is the default, the one :meth:`finish`
            writes).
    """

    name: ClassVar[str] = ""
    formats: ClassVar[dict[str, str]] = {}

    @classmethod
    def finish(
        cls, p: Any, summary: Any, study: Any, run_dir: Path, progress: bool = True
    ) -> dict[str, Any]:
        """Write the space's files into ``run_dir``; returns sections for ``result.json``."""
        if summary.best is None or not cls.formats:  # the base step writes no file
            return {"files": []}
        return {"files": [f.name for f in cls.export(p, summary.best.candidate, run_dir)]}

    @classmethod
    def export(
        cls, p: Any, candidate: Any, run_dir: Path, out: Path | None = None, fmt: str | None = None
    ) -> list[Path]:
        """Write the files of ``candidate`` (the run's best) in format ``fmt`` (default: the
        first of :attr:`formats`); returns their paths."""
        raise NotImplementedError

    @classmethod
    def default_name(cls, fmt: str) -> str:
        """The file (or ``directory/``) that format ``fmt`` writes by default: the first word
        of its description in :attr:`formats`."""
        return cls.formats[fmt].split()[0].rstrip(":")

    @classmethod
    def check_format(cls, fmt: str | None, space: str) -> str:
        """``fmt`` or the default; one-line :class:`ValueError` for a format of another space."""
        names = list(cls.formats)
        if not names:
            raise UserError(f"export: a {space} run writes no files to export")
        if fmt is None:
            return names[0]
        if fmt not in cls.formats:
            raise UserError(
                f"export: --format {fmt}: a {space} run exports {', '.join(names)} (or all)"
            )
        return fmt
