"""What a space or an objective needs to build itself from a study config.

Every registered space and objective has ``from_config(cfg, ctx)``; :class:`BuildContext`
hands it the loaded model, the lm-eval task (loaded once), the objective's documents and how a
prompt is laid out in them, and the scoring settings.  A leaf module: it imports no other part
of the pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from blackbox.config.base import ConfigError
from blackbox.config.schema import StudyConfig


@dataclass
class BuildContext:
    """Shared inputs of the builders of one study.

    Attributes:
        cfg: the validated study config.
        loaded: the :class:`~blackbox.models.LoadedModel`.
        seconds: set-up time per stage (filled by builders).
    """

    cfg: StudyConfig
    loaded: Any
    seconds: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    _task: Any = None
    _lm: Any = None

    def warn(self, message: str) -> None:
        """A surprise that is not an error: one line on stderr now, and kept for
        ``result.json``'s ``warnings`` (so it cannot scroll past)."""
        import sys

        if message not in self.warnings:
            self.warnings.append(message)
            print(f"blackbox: warning: {message}", file=sys.stderr)

    @property
    def model(self) -> Any:
        return self.loaded.model

    @property
    def tokenizer(self) -> Any:
        return self.loaded.tokenizer

    @property
    def has_prompt(self) -> bool:
        """The space splices a prompt into documents (its traits' intervention is ``prompt``:
        tokens, soft prompts), rather than changing the model (hooks: steering)."""
        from blackbox.search_spaces.registry import SPACES

        return SPACES.get(self.cfg.space.type).traits.intervention == "prompt"

    # -- lm-eval --------------------------------------------------------------------------------
    def task(self) -> Any:
        """The study's lm-eval task (loaded once)."""
        if self._task is None:
            from blackbox.evals.lm_eval_splits import load_task

            assert self.cfg.task is not None
            self._task = load_task(self.cfg.task.name)
            from blackbox.evals.lm_eval_generate import cap_generation

            cap_generation(self._task, self.cfg.task.max_gen_toks)
        return self._task

    def lm(self) -> Any:
        """An lm-eval ``HFLM`` around the loaded model (its tokenisation)."""
        if self._lm is None:
            from blackbox.evals.lm_eval_splits import build_lm

            self._lm = build_lm(self.loaded)
        return self._lm

    # -- documents --------------------------------------------------------------------------------
    def documents(self) -> dict[str, list[str]]:
        """The objective's documents by split: ``search`` (one empty document when none are
        given: a prompt scored on its own) and ``heldout`` when held-out prompts are given."""
        from blackbox.evals.documents import read_prompts

        o = self.cfg.objective
        try:
            docs = read_prompts(o.prompts, o.prompts_file, "objective.prompts")
            held = read_prompts(
                o.heldout_prompts, o.heldout_prompts_file, "objective.heldout_prompts"
            )
        except ValueError as exc:
            raise ConfigError(f"config: {exc}") from None
        out = {"search": docs or [""]}
        if held:
            out["heldout"] = held
        return out

    def layout_kw(self) -> dict[str, Any]:
        """How a document becomes ``pre`` / ``post`` ids (see
        :func:`~blackbox.evals.documents.layout`): the objective's template, system turn and
        chat; the space's placement, prefix and suffix (steering: the document whole)."""
        o, s = self.cfg.objective, self.cfg.space
        return {
            "template": o.template,
            "placement": s.placement if self.has_prompt else "before_input",
            "system": o.system,
            "chat": o.chat,
            "prefix": getattr(s, "prefix", ""),
            "suffix": getattr(s, "suffix", ""),
        }

    def objective_kw(self, max_rows: int = 64) -> dict[str, Any]:
        """Batching of the spliced forward: rows per call and memory for cached ``pre``."""
        sc = self.cfg.scoring
        return {"max_rows": sc.max_rows or max_rows, "cache_mb": max(64, sc.trunk_cache_mb // 2)}

    def check_layer(self, field_name: str, layer: int) -> None:
        """A one-line error unless ``layer`` is a decoder block of the model."""
        from blackbox.models.layers import num_layers

        n = num_layers(self.model)
        if not 0 <= layer < n:
            raise ConfigError(f"config: {field_name}: {layer} is outside 0..{n - 1}")
