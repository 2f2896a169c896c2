"""The lm-eval task variant of a token prompt: the YAML fields it overrides, and the token check
that tells when lm-eval's tokenisation of the text is not the searched ids."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from blackbox.evals.lm_eval_tasks import load_tasks, quiet_lm_eval
from blackbox.finishing.lm_eval_variant import exact_requests, task_yaml_path, variant_config
from blackbox.models.loading import LoadedModel

TASK = "bb_rotten_tomatoes"


@pytest.fixture(scope="module")
def task():
    with quiet_lm_eval():
        return next(iter(load_tasks([TASK]).values()))


def test_variant_overrides_description_or_doc_to_text_verbatim(task) -> None:
    text = "{{ not jinja }} x"
    before = variant_config(task, task_yaml_path(TASK), "v", text, "before_input", "test")
    assert before == {
        "include": str(task_yaml_path(TASK)),
        "task": "v",
        "test_split": "test",
        "description": "{% raw %}{{ not jinja }} x{% endraw %}",
    }
    after = variant_config(task, task_yaml_path(TASK), "v", text, "after_input", "test")
    assert (
        after["doc_to_text"] == task.config.doc_to_text + "{% raw %}{{ not jinja }} x{% endraw %}"
    )
    with pytest.raises(ValueError, match="placement 'system' has no lm-eval task variant"):
        variant_config(task, task_yaml_path(TASK), "v", text, "system", "test")


@pytest.mark.parametrize(
    ("ids", "placement", "exact"),
    [
        ([44162, 14670, 44317, 32977], "after_input", True),  # ' punk seatssectsALE'
        ([44162, 14670, 44317, 32977], "before_input", False),  # 'ALE' + 'Review' -> one word
        ([3032, 314, 1342], "before_input", True),
    ],
)
def test_exact_requests_finds_prompts_whose_edges_merge(
    task, tiny_llama, tokenizer, tmp_path: Path, ids, placement, exact
) -> None:
    loaded = LoadedModel(tiny_llama, tokenizer, "tiny", Path("."), "cpu", "float32", 0.0)
    text = tokenizer.decode(ids)
    cfg = variant_config(task, task_yaml_path(TASK), "v_check", text, placement, "test")
    (tmp_path / "v_check.yaml").write_text(yaml.safe_dump(cfg))
    n, total = exact_requests(loaded, task, tmp_path, "v_check", ids, placement, "test", [0, 1, 2])
    assert total == 6 and (n == total) is exact
