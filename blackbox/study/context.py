"""What a space or an objective needs to build itself, beyond its own config section.

Every registered space and objective has ``from_config(section, ctx)``: ``section`` is its own
typed config section (``cfg.space`` or ``cfg.objective``) and ``ctx`` a :class:`BuildContext`,
which hands it the loaded model, the lm-eval task (loaded once), the study-wide settings (seed,
scoring, task section) and what one component needs from the other, each as a named value:
the space's traits and prompt layout (placement, prefix, suffix) for the objective, the
objective's banned prompt strings for the space.  A component never reads ``ctx.cfg``
(``tests/test_sections.py`` enforces it): the study config is this class's and the
pipeline's.  A leaf module: it imports no other part of the pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from blackbox.config.schema import StudyConfig
from blackbox.sections import ConfigError

if TYPE_CHECKING:
    from blackbox.api import SpaceTraits
    from blackbox.config.schema import ScoringConfig
    from blackbox.config.task import TaskConfig
    from blackbox.evals.sections import Documents


@dataclass
class BuildContext:
    """Shared inputs of the builders of one study.

    Attributes:
        cfg: the validated study config (the pipeline's: a component reads the named
            properties below, never this).
        loaded: the :class:`~blackbox.models.LoadedModel`.
        seconds: set-up time per stage (filled by builders).
        warnings: the study's warnings so far (see :meth:`warn`).
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

    # -- the model --------------------------------------------------------------------------------
    @property
    def model(self) -> Any:
        return self.loaded.model

    @property
    def tokenizer(self) -> Any:
        return self.loaded.tokenizer

    @property
    def model_key(self) -> str:
        """``name|dtype``: the model and the precision it runs in (a key for caches of what is
        computed from the model, such as contrastive steering vectors)."""
        return f"{self.cfg.model.name}|{self.cfg.model.dtype}"

    def check_layer(self, field_name: str, layer: int) -> None:
        """A one-line error unless ``layer`` is a decoder block of the model."""
        from blackbox.models.layers import num_layers

        n = num_layers(self.model)
        if not 0 <= layer < n:
            raise ConfigError(f"config: {field_name}: {layer} is outside 0..{n - 1}")

    # -- study-wide settings ----------------------------------------------------------------------
    @property
    def seed(self) -> int:
        """The study's seed (subsamples, initial prompts)."""
        return int(self.cfg.seed)

    @property
    def task_config(self) -> TaskConfig | None:
        """The study's ``task:`` section (``None``: the study has no lm-eval task)."""
        return self.cfg.task

    @property
    def scoring(self) -> ScoringConfig:
        """The study's ``scoring:`` section (batching, trunk reuse, packing, racing)."""
        return self.cfg.scoring

    def objective_kw(self, max_rows: int = 64) -> dict[str, Any]:
        """Batching of the spliced forward: rows per call and memory for cached ``pre``."""
        sc = self.scoring
        return {"max_rows": sc.max_rows or max_rows, "cache_mb": max(64, sc.trunk_cache_mb // 2)}

    # -- what the objective needs from the space --------------------------------------------------
    @property
    def space_traits(self) -> SpaceTraits:
        """The traits of the study's space (its class's: known before the space is built)."""
        from blackbox.search_spaces.registry import SPACES

        return SPACES.get(self.cfg.space.type).traits

    @property
    def has_prompt(self) -> bool:
        """The space splices a prompt into documents (its traits' intervention is ``prompt``:
        tokens, soft prompts), rather than changing the model (hooks: steering)."""
        from blackbox.api import PROMPT

        return self.space_traits.intervention == PROMPT

    @property
    def placement(self) -> str:
        """Where the prompt goes in each document: the space's ``placement`` when it splices a
        prompt (:attr:`has_prompt`), else ``before_input`` (steering: the document whole)."""
        from blackbox.config.rules import prompt_placement

        return prompt_placement(self.cfg) or "before_input"

    @property
    def prompt_prefix(self) -> str:
        """Fixed text the space puts right before its prompt (``""``: none)."""
        return str(getattr(self.cfg.space, "prefix", "") or "") if self.has_prompt else ""

    @property
    def prompt_suffix(self) -> str:
        """Fixed text the space puts right after its prompt (``""``: none)."""
        return str(getattr(self.cfg.space, "suffix", "") or "") if self.has_prompt else ""

    def layout_kw(self, section: Documents) -> dict[str, Any]:
        """How a document becomes ``pre`` / ``post`` ids (see
        :func:`~blackbox.evals.documents.layout`): the objective's template, system turn and
        chat (from its ``section``); the space's placement, prefix and suffix (steering: the
        document whole)."""
        return {
            "template": section.template,
            "placement": self.placement,
            "system": section.system,
            "chat": section.chat,
            "prefix": self.prompt_prefix,
            "suffix": self.prompt_suffix,
        }

    # -- what the space needs from the objective --------------------------------------------------
    @property
    def prompt_bans(self) -> tuple[str, ...]:
        """Strings a searched prompt may not contain under the study's objective (its class's
        :meth:`~blackbox.evals.base.Objective.prompt_bans` of its section: a ``logit``
        objective's target word), known before the objective is built (``blackbox export``
        builds the space alone)."""
        from blackbox.evals.registry import OBJECTIVES

        o = self.cfg.objective
        return tuple(OBJECTIVES.get(o.type).prompt_bans(o))

    # -- lm-eval --------------------------------------------------------------------------------
    def task(self) -> Any:
        """The study's lm-eval task (loaded once)."""
        if self._task is None:
            from blackbox.evals.lm_eval_splits import load_task

            tc = self.task_config
            assert tc is not None
            self._task = load_task(tc.name)
            from blackbox.evals.lm_eval_generate import cap_generation

            cap_generation(self._task, tc.max_gen_toks)
        return self._task

    def lm(self) -> Any:
        """An lm-eval ``HFLM`` around the loaded model (its tokenisation)."""
        if self._lm is None:
            from blackbox.evals.lm_eval_splits import build_lm

            self._lm = build_lm(self.loaded)
        return self._lm

    # -- documents --------------------------------------------------------------------------------
    def documents(self, section: Documents) -> dict[str, list[str]]:
        """An objective's documents by split, from its ``section``: ``search`` (one empty
        document when none are given: a prompt scored on its own) and ``heldout`` when held-out
        prompts are given."""
        from blackbox.evals.documents import read_prompts

        try:
            docs = read_prompts(section.prompts, section.prompts_file, "objective.prompts")
            held = read_prompts(
                section.heldout_prompts, section.heldout_prompts_file, "objective.heldout_prompts"
            )
        except ValueError as exc:
            raise ConfigError(f"config: {exc}") from None
        out = {"search": docs or [""]}
        if held:
            out["heldout"] = held
        return out
