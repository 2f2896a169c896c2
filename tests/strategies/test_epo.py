from __future__ import annotations

import time

import numpy as np
import pytest
from token_toys import LinearObjective, LinearSpace, random_search, run

from blackbox.api import Problem
from blackbox.multiobjective import pareto_mask
from blackbox.pareto import FLUENCY
from blackbox.strategies.epo import EPO, GCG, lambda_grid
from blackbox.testing.strategies import TOKENS, Factory, StrategyConformance


class TestEPOConformance(StrategyConformance):
    component = "epo"
    bench = TOKENS  # token ids with exact one-hot gradients (charged as extra cost)
    budget = 600

    @pytest.fixture
    def make(self) -> Factory:
        return lambda box, seed: EPO(
            box, seed=seed, population=4, children=4, topk=8, lambda_min=0.01, lambda_max=0.1
        )


class TestGCGConformance(StrategyConformance):
    component = "gcg"
    bench = TOKENS
    budget = 600

    @pytest.fixture
    def make(self) -> Factory:
        return lambda box, seed: GCG(box, seed=seed, search_width=16, topk=8)


def test_lambda_grid() -> None:
    g = lambda_grid(4, 0.1, 10.0)
    assert np.allclose(g, [0.1, 10 ** (-1 / 3), 10 ** (1 / 3), 10.0])
    assert lambda_grid(1, 0.0, 0.0).tolist() == [0.0]


@pytest.mark.parametrize(
    "cls,kw", [(EPO, {"lambda_min": 0.01, "lambda_max": 0.1}), (GCG, {"search_width": 16})]
)
def test_beats_random_search_at_equal_budget(cls, kw) -> None:
    space, obj = LinearSpace(), LinearObjective()
    best, spent = run(cls(space.box, seed=0, topk=8, **kw), space, obj, 600)
    rs = random_search(space, obj, spent, seed=0)
    optimum = obj.w.max(1).sum()
    assert best > rs + 2.0, (best, rs, optimum)
    assert best > 0.8 * optimum


def test_ask_cost_restarts_and_front() -> None:
    space, obj = LinearSpace(), LinearObjective()
    s = EPO(space.box, seed=1, population=3, children=4, restart_every=2, topk=8)
    s.bind(Problem(space, obj))
    x = s.ask()  # initial random population: no gradient yet
    assert x.shape == (12, 6) and s.pop_extra_cost() == 0.0 and s.proposal_steps == 0
    ev = obj.evaluate(space.decode(x))
    s.tell(x, ev.values, extra=ev.extra)
    for _ in range(4):
        x = s.ask()
        assert s.pop_extra_cost() == 9.0  # 3 parents x (forward + backward)
        assert ((x >= 0) & (x <= 199)).all()
        ev = obj.evaluate(space.decode(x))
        s.tell(x, ev.values, extra=ev.extra)
    assert len(s.restarts) == 2 and s.proposal_steps == 4
    f = np.array([p.value for p in s.front])
    c = np.array([p.xentropy for p in s.front])
    assert pareto_mask(np.column_stack([f, c]), FLUENCY).all() and len(s.front) >= 1
    # parents are the per-lambda best of what was seen
    assert s.parents.shape == (3, 6)


def test_rejected_children_never_selected() -> None:
    space, obj = LinearSpace(), LinearObjective()
    s = EPO(space.box, seed=0, population=2, children=4, topk=8)
    s.bind(Problem(space, obj))
    x = s.ask()
    ev = obj.evaluate(space.decode(x))
    vals = ev.values.copy()
    vals[np.argmax(vals)] = np.nan
    s.tell(x, vals, extra=ev.extra)
    bad = tuple(x[np.argmax(ev.values)].astype(int))
    assert all(tuple(p.astype(int)) != bad for p in s.parents)


def test_init_prompt_is_scored_by_the_gradient_pass() -> None:
    space, obj = LinearSpace(), LinearObjective()
    init = np.arange(6, dtype=float)
    s = GCG(space.box, seed=0, search_width=5, topk=4, init=init)
    s.bind(Problem(space, obj))
    x = s.ask()
    assert s.pop_extra_cost() == 3.0  # one gradient pass, no separate evaluation
    assert np.isclose(s.parent_values[0], obj.evaluate([tuple(range(6))]).values[0])
    assert ((x != init).sum(1) <= 1).all()
    assert s.best_value == s.parent_values[0] and s.front[0].x == tuple(range(6))


@pytest.mark.parametrize("keep", [True, False])
def test_keep_parents_decides_whether_a_worse_child_replaces_the_prompt(keep: bool) -> None:
    space, obj = LinearSpace(), LinearObjective()
    init = np.arange(6, dtype=float)
    s = GCG(space.box, seed=0, search_width=5, topk=4, init=init, keep_parents=keep)
    s.bind(Problem(space, obj))
    x = s.ask()
    worse = s.parent_values[0] - 1.0 - 0.1 * np.arange(len(x))  # every child is worse
    s.tell(x, worse, extra=np.zeros((len(x), 1)))
    assert s.best_value > worse.max()  # the start prompt stays the best seen
    expected = init if keep else x[np.argmax(worse)]
    np.testing.assert_array_equal(s.parents[0], expected)


def test_without_extra_the_strategy_computes_and_charges_xentropy() -> None:
    space, obj = LinearSpace(), LinearObjective()
    s = EPO(space.box, seed=0, population=2, children=3, topk=8)
    s.bind(Problem(space, obj))
    x = s.ask()
    s.tell(x, obj.evaluate(space.decode(x)).values)
    assert s.pop_extra_cost() == 6.0


@pytest.mark.slow
def test_epo_end_to_end_on_embedded_model() -> None:
    from blackbox.evals.activation import NeuronObjective
    from blackbox.models import load_model
    from blackbox.search_spaces.tokens.space import TokenSpace

    t0 = time.time()
    from blackbox.evals.documents import layout

    lm = load_model()
    space = TokenSpace(lm.tokenizer, n_tokens=4, banned=["the"])
    items = layout(lm.tokenizer, [""], prefix="<|im_start|>user\n")[0]
    obj = NeuronObjective(lm.model, {"search": items}, layer=15, index=100)
    obj.enable_fluency()
    s = EPO(space.box, seed=0, population=2, children=4, topk=32, restart_every=2)
    s.bind(Problem(space, obj))
    first = None
    spent = 0.0
    for _ in range(3):
        x = s.ask()
        cands = space.decode(x)
        ev = obj.evaluate(space.intervention(cands))
        assert not any("the" in c.text.lower() for c, v in zip(cands, ev.values) if np.isfinite(v))
        s.tell(x, ev.values, extra=ev.extra)
        spent += ev.cost + s.pop_extra_cost()
        first = ev.values[np.isfinite(ev.values)].max() if first is None else first
    assert s.best_value >= first and s.front
    assert spent <= 3 * 8 + 3 * 2 * 2
    assert time.time() - t0 < 60


def test_banned_strings_never_evaluated_tiny_model() -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from blackbox.evals.logit import LogitObjective
    from blackbox.models import load_tokenizer
    from blackbox.search_spaces.tokens.space import TokenSpace
    from blackbox.strategies.genetic import TokenGA

    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=49152,
    )
    model = LlamaForCausalLM(cfg).eval()
    tok = load_tokenizer()
    banned = ["an", "e"]
    from blackbox.evals.documents import layout

    space = TokenSpace(tok, n_tokens=3, banned=banned)
    items = layout(tok, [""], prefix="Hi")[0]
    obj = LogitObjective(
        model, {"search": items}, target_id=tok.encode(" cat", add_special_tokens=False)[0]
    )
    obj.enable_fluency()
    for s in (
        EPO(space.box, seed=0, population=2, children=4, topk=16),
        TokenGA(
            space.box, seed=0, population=6, mutation={"gradient_topk": 0.5, "multi_resample": 0.5}
        ),
    ):
        s.bind(Problem(space, obj))
        scored = total = 0
        for _ in range(3):
            x = s.ask()
            s.pop_extra_cost()
            cands = space.decode(x)
            ev = obj.evaluate(space.intervention(cands))
            total += len(cands)
            for c, v in zip(cands, ev.values):
                if np.isfinite(v):
                    scored += 1
                    assert not any(b in c.text.lower() for b in banned), c.text
            s.tell(x, ev.values)  # no extra: read from obj.recent_xentropy, no extra pass
            assert s.pop_extra_cost() == 0.0
        assert scored >= 0.8 * total  # invalid children are re-proposed before evaluation


def test_a_budget_spent_by_the_random_start_is_a_kept_warning(capsys) -> None:
    """EPO's random start took the whole budget: the run says it was a random search (on
    stderr and in result.json's warnings), instead of ending silently."""
    from types import SimpleNamespace

    from blackbox.study.pipeline import _warnings

    space = LinearSpace()
    s = EPO(space.box, seed=1, population=3, children=4, topk=8)
    from blackbox.study.context import BuildContext

    p = SimpleNamespace(
        context=BuildContext(None, None, warnings=["earlier"]),  # type: ignore[arg-type]
        strategy=s,
        config=SimpleNamespace(strategy=SimpleNamespace(name="epo")),
    )
    summary = SimpleNamespace(evaluations=12, search_cost=336.0)
    got = _warnings(p, summary)
    assert got[0] == "earlier" and got[1].startswith(
        "budget: the run ended before epo's first proposal step; its random start (12 "
        "evaluations, 336 forward-pass equivalents) took the whole budget"
    )
    assert "blackbox: warning: budget: the run ended before" in capsys.readouterr().err
    s.proposal_steps = 1
    p.context = BuildContext(None, None, warnings=["earlier"])  # type: ignore[arg-type]
    assert _warnings(p, summary) == ["earlier"]
