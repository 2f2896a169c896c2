"""Adam on soft prompts: descends the real loss, charges its gradients, replays on resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from blackbox.api import Problem
from blackbox.evals.classification import Classification
from blackbox.search_spaces.soft_prompt.space import SoftPromptSpace
from blackbox.strategies import make_strategy
from blackbox.strategies.adam import Adam
from blackbox.study.runner import Budget, Runner
from blackbox.study.storage import open_study
from blackbox.testing.strategies import SOFT, Factory, StrategyConformance

ROWS = [
    {"query": "A warm, funny film.", "gold": 1},
    {"query": "Dull and far too long.", "gold": 0},
    {"query": "The best thing this year.", "gold": 1},
    {"query": "I walked out.", "gold": 0},
]


class TestAdamConformance(StrategyConformance):
    """On the closed-form soft-prompt bench; minibatches of 2 of its 8 documents make the seed
    matter (Adam starts every run at ``z = 0``)."""

    component = "adam"
    bench = SOFT

    @pytest.fixture
    def make(self) -> Factory:
        return lambda box, seed: Adam(box, seed=seed, lr=0.1, minibatch=2)


@pytest.fixture(scope="module")
def setup(tiny_llama, tokenizer):
    layout = {"template": "Review: {query}\nAnswer:", "placement": "after_input"}
    obj = Classification.from_rows(
        tiny_llama, tokenizer, {"search": ROWS}, ["negative", "positive"], layout
    )
    p0 = tiny_llama.get_input_embeddings().weight[[100, 200, 300]].detach()
    sigma = float(tiny_llama.get_input_embeddings().weight.std())
    return obj, p0, sigma


def test_adam_descends_the_loss_and_charges_backward_passes(setup) -> None:
    obj, p0, sigma = setup
    space = SoftPromptSpace(p0, sigma)
    adam = make_strategy("adam", space.box, seed=0, lr=0.5, minibatch=0)
    adam.bind(Problem(space, obj))
    for _ in range(8):
        x = adam.ask()
        assert x.shape == (1, space.dim)
        adam.tell(x, -obj.loss(space.embeddings(torch.tensor(x[0]))[None]).detach().numpy())
    assert adam.losses[-1] < adam.losses[0]
    assert adam.pop_extra_cost() == 8 * 3 * len(ROWS) and adam.pop_extra_cost() == 0


def test_minibatches_are_seeded_subsets(setup) -> None:
    obj, p0, sigma = setup
    space = SoftPromptSpace(p0, sigma, subspace_dim=8)
    runs = []
    for _ in range(2):
        adam = Adam(space.box, seed=3, lr=0.3, minibatch=2)
        adam.bind(Problem(space, obj))
        runs.append(np.vstack([adam.ask() for _ in range(3)]))
        assert adam.pop_extra_cost() == 3 * 3 * 2
    np.testing.assert_array_equal(runs[0], runs[1])


def test_settings_and_binding_are_checked(setup) -> None:
    obj, p0, sigma = setup
    box = SoftPromptSpace(p0, sigma).box
    with pytest.raises(ValueError, match="adam.lr: must be > 0"):
        Adam(box, lr=0.0)
    with pytest.raises(ValueError, match="adam.minibatch"):
        Adam(box, minibatch=-1)
    with pytest.raises(RuntimeError, match="bind"):
        Adam(box).ask()
    with pytest.raises(TypeError, match="soft-prompt spaces"):
        Adam(box).bind(Problem(object(), obj))


def test_runner_records_full_rows_and_a_resume_replays_them(setup, tmp_path) -> None:
    """Rows of more than 256 dims go into one attribute; a resumed run reads every step back."""
    obj, p0, sigma = setup
    space = SoftPromptSpace(torch.cat([p0, p0[:2]]), sigma)  # 5 x 64 = 320 dims
    url = f"sqlite:///{tmp_path / 'study.db'}"

    def run(evals: int):
        study = open_study(url, "adam", space.box, "fp")
        adam = Adam(space.box, seed=0, lr=0.3, minibatch=2)
        return Runner(
            space,
            obj,
            adam,
            study,
            Budget(evaluations=evals),
            heldout_split=None,
            progress=False,
            baselines={},
        ).run(), study

    first, _ = run(4)
    again, study = run(6)
    assert first.evaluations == 4 and again.resumed == 4 and again.evaluations == 6
    trials = study.get_trials()
    assert len(trials) == 6 and not trials[0].params and len(trials[0].user_attrs["x"]) == space.dim
    assert again.history[:4] == first.history
    # the gradient steps are charged: 3 x 2 items per step, plus 4 items per evaluation
    assert again.search_cost == pytest.approx(6 * (3 * 2 + len(ROWS)))
