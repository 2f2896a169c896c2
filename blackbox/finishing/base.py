"""The finishing-step interface."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar


class Finisher:
    """What a run of one space writes after the search.

    Subclasses implement :meth:`finish` (after a run: files and result sections) and
    :meth:`export` (the best candidate's files, also from ``blackbox export``).
    """

    name: ClassVar[str] = ""

    @classmethod
    def finish(
        cls, p: Any, summary: Any, study: Any, run_dir: Path, progress: bool = True
    ) -> dict[str, Any]:
        """Write the space's files into ``run_dir``; returns sections for ``result.json``."""
        if summary.best is None:
            return {"files": []}
        return {"files": [f.name for f in cls.export(p, summary.best.candidate, run_dir)]}

    @classmethod
    def export(cls, p: Any, candidate: Any, run_dir: Path, out: Path | None = None) -> list[Path]:
        """Write the files of ``candidate`` (the run's best); returns their paths."""
        raise NotImplementedError
