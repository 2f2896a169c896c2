"""Documents of an objective, as token ids around the place where a prompt goes.

An objective measures a candidate over *documents*: reviews to classify, user prompts whose
completions or activations matter, or one empty document (dreaming a prompt on its own).  A
document becomes user text through a template (``{query}`` is the document), optionally a
system turn and the tokenizer's chat template; a prompt intervention (token or soft prompt)
goes where the space's *placement* says:

================ ===========================================================================
placement        where the prompt goes
================ ===========================================================================
``before_input`` first in the user text
``after_input``  right after ``{query}`` (on a line of its own when the document is not empty)
``system``       the whole system turn (needs ``chat``)
``template``     at the template's ``{prompt}`` marker
================ ===========================================================================

Every document is split at that place into ``pre`` and ``post`` ids
(:class:`~blackbox.forward.splice.Items`).  Steering has no prompt: its documents run whole as
``pre + post`` of the same split (placement ``before_input``), so an unsteered run and an empty
prompt score exactly the same token sequences.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from blackbox.errors import UserError
from blackbox.forward.splice import Items

PROMPT = "{prompt}"
SOFT = "{soft}"  # the older name of the prompt marker, still accepted
QUERY = "{query}"
_MARK = "\x00PROMPT\x00"
PLACEMENTS = ("before_input", "after_input", "system", "template")


def ids_of(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens (``[]`` for an empty text)."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def normalise_marker(text: str) -> str:
    return text.replace(SOFT, PROMPT)


def place(template: str, placement: str, document: str = "x") -> tuple[str, str | None]:
    """(user template, system template) with ``{prompt}`` put where ``placement`` says.

    Args:
        template: user text holding ``{query}`` (and ``{prompt}`` for ``template``).
        placement: one of :data:`PLACEMENTS`.
        document: the document (an empty one gets no line break after it).
    """
    template = normalise_marker(template)
    if placement not in PLACEMENTS:
        raise UserError(f"placement {placement!r}: allowed {', '.join(PLACEMENTS)}")
    if placement == "template":
        if template.count(PROMPT) != 1:
            raise UserError("placement 'template' needs exactly one {prompt} in the template")
        return template, None
    if PROMPT in template:
        raise UserError(f"placement {placement!r}: the template must not hold {{prompt}} then")
    if placement == "before_input":
        return PROMPT + template, None
    if placement == "after_input":
        if QUERY not in template:
            raise UserError("placement 'after_input' needs {query} in the template")
        return template.replace(QUERY, QUERY + ("\n" if document else "") + PROMPT, 1), None
    return template, PROMPT


def render(
    tokenizer: Any,
    user: str,
    system: str | None = None,
    chat: bool = False,
    completion_prefix: str = "",
) -> tuple[str, str]:
    """The text before and after the ``{prompt}`` marker (in ``user`` or ``system``).

    With ``chat`` the turns go through the tokenizer's chat template (generation prompt
    added) and ``completion_prefix`` follows the assistant header.
    """
    system = system or ""
    if _MARK not in user + system:  # a caller's text: its {prompt} (or {soft}) is the marker
        user = normalise_marker(user).replace(PROMPT, _MARK)
        system = normalise_marker(system).replace(PROMPT, _MARK)
    where = [t for t in (user, system) if _MARK in t]
    if len(where) != 1 or where[0].count(_MARK) != 1:
        raise UserError("the prompt must hold exactly one {prompt} marker (template or system)")
    if chat:
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": user}
        ]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        text += completion_prefix
    else:
        if system:
            raise UserError("a system turn needs chat: true")
        text = user + completion_prefix
    before, after = text.split(_MARK)
    return before, after


def layout(
    tokenizer: Any,
    documents: Sequence[str],
    template: str = QUERY,
    placement: str = "before_input",
    system: str | None = None,
    chat: bool = False,
    prefix: str = "",
    suffix: str = "",
    completion_prefix: str = "",
) -> tuple[Items, list[tuple[str, str]]]:
    """Each document as ``pre`` / ``post`` ids around the prompt's place.

    Args:
        tokenizer: the model's tokenizer.
        documents: the documents (``{query}`` of the template).
        template: user text of a document.
        placement: where the prompt goes (see the module docstring).
        system: system turn text (``{query}`` allowed; needs ``chat``).
        chat: wrap the turns in the tokenizer's chat template.
        prefix, suffix: fixed text right before and after the prompt (token spaces).
        completion_prefix: text after the assistant header (or after the user text).

    Returns:
        the items and, per document, the rendered text before and after the prompt.
    """
    pre, post, texts = [], [], []
    for doc in documents:
        user_t, system_t = place(template, placement, doc)
        if system is not None:
            if system_t is not None:
                raise UserError("placement 'system' fills the system turn; drop objective.system")
            system_t = system
        # the marker first, then the document: a document may hold any text
        user = user_t.replace(PROMPT, prefix + _MARK + suffix).replace(QUERY, doc)
        sys_text = None
        if system_t is not None:
            sys_text = system_t.replace(PROMPT, prefix + _MARK + suffix).replace(QUERY, doc)
        before, after = render(tokenizer, user, sys_text, chat, completion_prefix)
        pre.append(ids_of(tokenizer, before))
        post.append(ids_of(tokenizer, after))
        texts.append((before, after))
    return Items(pre, post), texts


def read_prompts(prompts: Sequence[str] | None, path: str | None, what: str) -> list[str]:
    """A prompt list from the config: given inline, or one per non-empty line of a file.

    Raises:
        ValueError: ``what`` named, for a missing or empty file or an empty prompt.
    """
    out = list(prompts or [])
    if path:
        file = Path(path)
        if not file.is_file():
            raise UserError(f"{what}_file: {path!r} does not exist")
        out += [line.strip() for line in file.read_text(encoding="utf-8").splitlines()]
        out = [p for p in out if p]
        if not out:
            raise UserError(f"{what}_file: {path!r} holds no prompt")
    if any(not p.strip() for p in out):
        raise UserError(f"{what}: every prompt must be a non-empty string")
    return out
