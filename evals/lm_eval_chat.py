"""lm-eval's chat-template mode (``lm_eval --apply_chat_template``) for task fitness.

:class:`ChatFormat` is what a ``task:`` config asks for (system instruction, few-shot examples
as turns or one turn) and the keywords that build the same requests in lm-eval's evaluator,
``simple_evaluate`` and the ``lm_eval`` command line; :func:`check_chat` refuses what the mode
cannot do; :class:`ChatRenderer` renders contexts through the model's chat template exactly as
``HFLM.apply_chat_template`` does and remembers where the last user turn's text lies, so a prompt
can be spliced inside that turn (:func:`splice_positions`).
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from blackbox.errors import UserError
from blackbox.evals.lm_eval_generate import token_at


@dataclass(frozen=True)
class ChatFormat:
    """lm-eval's chat-template mode: ``simple_evaluate(apply_chat_template=True,
    system_instruction=..., fewshot_as_multiturn=...)``, i.e. ``lm_eval --apply_chat_template
    [--system_instruction TEXT] [--fewshot_as_multiturn]``.

    Attributes:
        system_instruction: a system turn before the task's description (``None``: none).
        fewshot_as_multiturn: few-shot examples as user/assistant turns (lm-eval's default
            with a chat template), else collapsed into one user turn.
    """

    system_instruction: str | None = None
    fewshot_as_multiturn: bool = True

    @classmethod
    def of(cls, task_cfg: Any) -> ChatFormat | None:
        """The format a ``task:`` config asks for (``None``: plain contexts)."""
        if task_cfg is None or not getattr(task_cfg, "chat_template", False):
            return None
        multiturn = getattr(task_cfg, "fewshot_as_multiturn", None) is not False
        return cls(getattr(task_cfg, "system_instruction", None), multiturn)

    def build_kw(self, renderer: Any, lm: Any) -> dict[str, Any]:
        """``task.build_all_requests``'s keywords, as lm-eval's ``evaluate`` passes them."""
        return {
            "system_instruction": self.system_instruction,
            "apply_chat_template": True,
            "fewshot_as_multiturn": self.fewshot_as_multiturn,
            "chat_template": renderer,
            "tokenizer_name": getattr(lm, "tokenizer_name", ""),
        }

    def simple_evaluate_kw(self) -> dict[str, Any]:
        """``lm_eval.simple_evaluate``'s keywords that build the same requests."""
        return {
            "apply_chat_template": True,
            "system_instruction": self.system_instruction,
            "fewshot_as_multiturn": self.fewshot_as_multiturn,
        }

    def cli_args(self) -> str:
        """The ``lm_eval`` arguments that build the same requests (shell-quoted).  The few-shot
        setting is always named: lm-eval 0.4.13's ``--apply_chat_template`` implies
        ``--fewshot_as_multiturn``, older 0.4.x releases did not."""
        args = "--apply_chat_template"
        if self.system_instruction is not None:  # "=": an instruction may start with "-"
            args += " " + shlex.quote(f"--system_instruction={self.system_instruction}")
        return args + (
            " --fewshot_as_multiturn"
            if self.fewshot_as_multiturn
            else " --fewshot_as_multiturn false"
        )


def check_chat(task: Any, lm: Any) -> None:
    """What lm-eval's chat-template mode needs: a tokenizer with a chat template, and a task
    whose requests hold a context (not perplexity).  One-line :class:`UserError`."""
    if task.config.output_type == "loglikelihood_rolling":
        raise UserError(
            f"task {task.config.task!r} scores perplexity (loglikelihood_rolling), whose texts "
            "lm-eval never renders through a chat template; allowed: false"
        )
    tok = getattr(lm, "tokenizer", None)
    if not getattr(tok, "chat_template", None):
        name = getattr(tok, "name_or_path", "") or type(tok).__name__
        raise UserError(
            f"the model's tokenizer ({name}) has no chat template, so lm-eval's "
            "--apply_chat_template cannot render the task; allowed: false, or a model whose "
            "tokenizer has one (an instruct or chat model)"
        )


_OPEN, _CLOSE = "\ue000", "\ue001"
"""Private-use characters marking a user turn's text in a second rendering (no template
changes them)."""


class ChatRenderer:
    """lm-eval's ``chat_template`` callable (``HFLM.apply_chat_template``, the same string)
    that also remembers, per rendered context, the character span of its last user turn's
    text: rendered a second time with that text between two markers, the text before the
    first marker and after the second must be the rendering's start and end.

    Attributes:
        spans: rendered context -> ``(start, end)`` of the last user turn's text (``None``
            when it cannot be located: no user turn, or a template that rewrites the markers).
    """

    def __init__(self, lm: Any) -> None:
        self.lm = lm
        self.spans: dict[str, tuple[int, int] | None] = {}

    def __call__(
        self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True
    ) -> str:
        text = self.lm.apply_chat_template(
            chat_history, add_generation_prompt=add_generation_prompt
        )
        if text not in self.spans:
            self.spans[text] = self._user_span(text, chat_history, add_generation_prompt)
        return text

    def _user_span(
        self, text: str, history: list[dict[str, str]], add_generation_prompt: bool
    ) -> tuple[int, int] | None:
        users = [i for i, m in enumerate(history) if m.get("role") == "user"]
        if not users:
            return None
        marked = [dict(m) for m in history]
        marked[users[-1]]["content"] = _OPEN + str(marked[users[-1]]["content"]) + _CLOSE
        try:
            r = self.lm.apply_chat_template(marked, add_generation_prompt=add_generation_prompt)
        except Exception:  # a template that refuses the marked text: no span
            return None
        if r.count(_OPEN) != 1 or r.count(_CLOSE) != 1 or r.index(_CLOSE) < r.index(_OPEN):
            return None
        before, after = r[: r.index(_OPEN)], r[r.index(_CLOSE) + 1 :]
        if len(before) + len(after) > len(text):
            return None
        if not (text.startswith(before) and text.endswith(after)):
            return None
        return len(before), len(text) - len(after)


def splice_positions(
    encode: Any, context: str, span: tuple[int, int] | None, ids: Sequence[int]
) -> tuple[int, int]:
    """Where a prompt goes in ``ids`` (``context``'s tokens): the token boundaries at the
    start and the end of the user turn's text ``span`` (without a span: before and after the
    whole context, as without a chat template)."""
    if span is None:
        return 0, len(ids)
    return tuple(token_at(encode, context, min(c, len(context)), ids) for c in span)  # type: ignore[return-value]
