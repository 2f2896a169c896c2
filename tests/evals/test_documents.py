"""Documents as ids around the prompt's place: placements, chat turns, prompt files."""

from __future__ import annotations

import pytest

from blackbox.evals.documents import layout, place, read_prompts, render


def test_place_puts_the_marker_where_the_placement_says() -> None:
    assert place("Review: {query}\nAnswer:", "after_input") == (
        "Review: {query}\n{prompt}\nAnswer:",
        None,
    )
    assert place("Q: {query}", "after_input", document="") == ("Q: {query}{prompt}", None)
    assert place("Q: {query}", "before_input") == ("{prompt}Q: {query}", None)
    assert place("Q: {query}", "system") == ("Q: {query}", "{prompt}")
    assert place("Q: {soft} {query}", "template") == ("Q: {prompt} {query}", None)
    with pytest.raises(ValueError, match="allowed before_input"):
        place("Q: {query}", "middle")
    with pytest.raises(ValueError, match="exactly one {prompt}"):
        place("Q: {query}", "template")


def test_render_splits_chat_turns_at_the_marker(tokenizer) -> None:
    before, after = render(tokenizer, "Q: hi", "{prompt}", chat=True)
    assert before.endswith("system\n") and "Q: hi" in after and after.endswith("assistant\n")
    with pytest.raises(ValueError, match="exactly one"):
        render(tokenizer, "no marker")
    with pytest.raises(ValueError, match="needs chat"):
        render(tokenizer, "{prompt}", "a system turn")


def test_layout_keeps_documents_whole_and_tokenises_each_side(tokenizer) -> None:
    docs = ["It was {prompt} great", ""]  # a document may hold any text, even the marker
    items, texts = layout(tokenizer, docs, "Review: {query}", "after_input", prefix="<", suffix=">")
    assert texts[0] == ("Review: It was {prompt} great\n<", ">")
    assert texts[1] == ("Review: <", ">")
    ids = tokenizer("Review: It was {prompt} great\n<", add_special_tokens=False)["input_ids"]
    assert items.pre[0] == ids and len(items) == 2
    with pytest.raises(ValueError, match="fills the system turn"):
        layout(tokenizer, ["x"], placement="system", system="Be nice.", chat=True)


def test_read_prompts_from_a_list_and_a_file(tmp_path) -> None:
    f = tmp_path / "p.txt"
    f.write_text("first\n\n  second  \n")
    assert read_prompts(["a"], str(f), "objective.prompts") == ["a", "first", "second"]
    with pytest.raises(ValueError, match="objective.prompts_file: .* does not exist"):
        read_prompts(None, str(tmp_path / "none.txt"), "objective.prompts")
    (tmp_path / "e.txt").write_text("\n \n")
    with pytest.raises(ValueError, match="holds no prompt"):
        read_prompts(None, str(tmp_path / "e.txt"), "objective.prompts")
    with pytest.raises(ValueError, match="non-empty string"):
        read_prompts(["ok", "  "], None, "objective.prompts")
