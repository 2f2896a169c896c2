"""Internal-activation objectives: exact against a plain forward, under a token prompt, a soft
prompt and steering hooks, on five architectures (GPT-NeoX included); z-scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from blackbox.api import Problem, PromptIntervention
from blackbox.evals.activation import (
    FeatureDirectionObjective,
    LpFeaturesObjective,
    NeuronObjective,
    ResidualDirectionObjective,
    load_direction,
    lp_combine,
)
from blackbox.evals.documents import layout
from blackbox.forward.hooks import add_per_row
from blackbox.models.layers import decoder_layers, mlp_output_projection, mlp_width
from blackbox.search_spaces.soft_prompt.space import SoftPromptSpace
from blackbox.search_spaces.steering.space import SteeringSpace
from blackbox.search_spaces.steering.vectors import SteeringVector
from blackbox.search_spaces.tokens.space import TokenSpace
from blackbox.testing.objectives import ObjectiveConformance

ARCHS = ["llama", "gpt2", "qwen2", "gemma", "neox"]
DOCS = ["The sea is", "A cat sat on"]


@pytest.fixture(scope="module")
def items(tokenizer):
    return layout(tokenizer, DOCS, placement="after_input")[0]


def _reads(model, seqs: list[list[int]], layer: int, embeds: list[torch.Tensor] | None = None):
    """Per sequence: the residual after ``layer`` and the MLP input of ``layer``, last token."""
    res, mlp = [], []
    for i, ids in enumerate(seqs):
        store = {}
        h1 = decoder_layers(model)[layer].register_forward_hook(
            lambda m, a, o, store=store: store.setdefault(
                "res", o[0] if isinstance(o, tuple) else o
            )
        )
        h2 = mlp_output_projection(model, layer).register_forward_pre_hook(
            lambda m, a, store=store: store.setdefault("mlp", a[0])
        )
        with torch.no_grad():
            if embeds is None:
                model(input_ids=torch.tensor([ids]))
            else:
                model(inputs_embeds=embeds[i][None])
        h1.remove(), h2.remove()
        res.append(store["res"][0, -1].float())
        mlp.append(store["mlp"][0, -1].float())
    return torch.stack(res), torch.stack(mlp)


@pytest.mark.parametrize("arch", ARCHS)
def test_every_activation_objective_equals_a_plain_forward(arch, request, items) -> None:
    model = request.getfixturevalue(f"tiny_{arch}")
    layer, index = 2, 7
    g = torch.Generator().manual_seed(0)
    d = model.config.hidden_size if hasattr(model.config, "hidden_size") else model.config.n_embd
    v = torch.randn(d, generator=g)
    dirs = torch.randn(3, d, generator=g)
    splits = {"search": items}
    objs = {
        "neuron": NeuronObjective(model, splits, layer, index),
        "direction": ResidualDirectionObjective(model, splits, layer, v),
        "feature": FeatureDirectionObjective(model, splits, layer, v, bias=0.5),
        "lp": LpFeaturesObjective(model, splits, layer, dirs, offsets=0.1, p=0.5),
    }
    prompts = [[300, 301, 302], [400, 401, 402]]
    seqs = [[pre + p + post for pre, post in zip(items.pre, items.post)] for p in prompts]
    for name, obj in objs.items():
        ev = obj.evaluate(PromptIntervention.of_ids(prompts))
        for c in range(2):
            res, mlp = _reads(model, seqs[c], layer)
            want = {
                "neuron": mlp[:, index],
                "direction": (res @ v) / (res.norm(dim=-1) * v.norm()),
                "feature": res @ v + 0.5,
                "lp": lp_combine(res @ dirs.T, torch.full((3,), 0.1), 0.5),
            }[name].mean()
            assert ev.values[c] == pytest.approx(float(want), abs=1e-4), (name, c)
        assert ev.cost == 2 * len(DOCS)
    assert mlp_width(model, layer) > index


def test_hooks_and_soft_prompts_read_the_same_positions(tiny_llama, items) -> None:
    obj = NeuronObjective(tiny_llama, {"search": items}, 1, 3)
    # steering: add 2.0 * v at layer 0 on every position, compare with a hooked plain forward
    v = torch.linspace(-1, 1, 64)
    from blackbox.api import HookIntervention

    def apply(model, rows, repeat=1):
        return add_per_row(model, {0: torch.stack([2.0 * v * float(r) for r in rows])}, repeat)

    hooks = HookIntervention(apply, [0, 0], ["off", "on"])
    ev = obj.evaluate(hooks)
    seqs = [pre + post for pre, post in zip(items.pre, items.post)]
    with add_per_row(tiny_llama, {0: 2.0 * v}):
        _, on = _reads(tiny_llama, seqs, 1)
    _, off = _reads(tiny_llama, seqs, 1)
    assert ev.values[0] == pytest.approx(float(off[:, 3].mean()), abs=1e-5)
    assert ev.values[1] == pytest.approx(float(on[:, 3].mean()), abs=1e-5)
    # a soft prompt equal to token embeddings scores as those tokens
    ids = [[300, 301]]
    soft = tiny_llama.get_input_embeddings()(torch.tensor(ids[0])).detach()
    a = obj.evaluate(PromptIntervention.of_ids(ids)).values[0]
    b = obj.evaluate(PromptIntervention.of_embeddings([soft])).values[0]
    assert a == pytest.approx(b, abs=1e-5)


def test_z_scores_against_random_candidates(tiny_llama, tokenizer) -> None:
    items = layout(tokenizer, [""], chat=True)[0]  # dreaming: the prompt alone in a user turn
    space = TokenSpace(tokenizer, n_tokens=3)
    obj = ResidualDirectionObjective(
        tiny_llama, {"search": items}, 2, torch.randn(64), standardise=True
    )
    problem = Problem(space, obj)
    raw = problem.evaluate(space.sample(5, np.random.default_rng(1)))
    assert obj.metric == "alignment" and not obj.calibrated
    cal = obj.calibrate(problem, 32, seed=0)
    assert cal["candidates"] == 32 and cal["sigma"] > 0 and cal["cost"] <= 32
    z = problem.evaluate(space.sample(5, np.random.default_rng(1)))
    assert obj.metric == "z"
    want = (raw.values - cal["mu"]) / cal["sigma"]
    ok = np.isfinite(raw.values)
    np.testing.assert_allclose(z.values[ok], want[ok], atol=1e-5)
    np.testing.assert_allclose(
        [m["alignment"] for m, k in zip(z.metrics, ok) if k], raw.values[ok], atol=1e-6
    )


def test_neuron_finds_the_mlp_of_every_architecture_or_says_why() -> None:
    import transformers

    moe = transformers.AutoModelForCausalLM.from_config(
        transformers.MixtralConfig(
            vocab_size=100,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            num_local_experts=2,
        )
    )
    with pytest.raises(ValueError, match="MixtralDecoderLayer: no single MLP output projection"):
        mlp_output_projection(moe, 0)


def test_load_direction_reads_rows_of_an_sae_decoder(tmp_path) -> None:
    w = torch.randn(5, 8)
    torch.save({"W_dec": w}, tmp_path / "sae.pt")
    assert torch.equal(load_direction(tmp_path / "sae.pt", 3), w[3])
    assert torch.equal(load_direction(tmp_path / "sae.pt", [0, 4]), w[[0, 4]])
    from safetensors.torch import save_file

    save_file({"direction": w[1].contiguous()}, str(tmp_path / "v.safetensors"))
    assert torch.equal(load_direction(tmp_path / "v.safetensors"), w[1])


def test_lp_combine_rewards_joint_activation() -> None:
    one = lp_combine(torch.tensor([[2.0, 0.0]]), torch.zeros(2), 0.5)
    both = lp_combine(torch.tensor([[1.0, 1.0]]), torch.zeros(2), 0.5)
    assert float(both) > float(one)  # same sum, p < 1 prefers spreading it
    assert float(lp_combine(torch.tensor([[-1.0, -2.0]]), torch.zeros(2), 0.5)) == 0.0


class TestNeuronConformance(ObjectiveConformance):
    component = "neuron"

    @pytest.fixture
    def problem(self, tiny_qwen2, tokenizer):
        items = layout(tokenizer, DOCS, placement="before_input")[0]
        obj = NeuronObjective(tiny_qwen2, {"search": items}, 1, 11, max_rows=3)  # several chunks
        return Problem(TokenSpace(tokenizer, n_tokens=3), obj)

    @pytest.fixture
    def candidates(self, problem):
        return problem.space.sample(5, np.random.default_rng(0))


def _direction(d: int, rows: int | None = None, seed: int = 0) -> torch.Tensor:
    """A random direction ``(d,)`` (or ``rows`` of them, ``(rows, d)``)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(d, generator=g) if rows is None else torch.randn(rows, d, generator=g)


class TestResidualDirectionConformance(ObjectiveConformance):
    """Under a soft prompt (3 vectors of the tiny model's 64 dimensions, 8-dim subspace)."""

    component = "residual_direction"

    @pytest.fixture
    def problem(self, tiny_qwen2, tokenizer):
        items = layout(tokenizer, DOCS, placement="after_input")[0]
        obj = ResidualDirectionObjective(tiny_qwen2, {"search": items}, 2, _direction(64))
        p0 = tiny_qwen2.get_input_embeddings().weight[[300, 301, 302]].detach().clone()
        return Problem(SoftPromptSpace(p0, sigma=0.05, subspace_dim=8), obj)

    @pytest.fixture
    def candidates(self, problem):
        return problem.space.sample(4, np.random.default_rng(0))


class TestFeatureDirectionConformance(ObjectiveConformance):
    """Under steering hooks (two random vectors over the tiny model's 4 layers)."""

    component = "feature_direction"

    @pytest.fixture
    def problem(self, tiny_qwen2, tokenizer):
        items = layout(tokenizer, DOCS, placement="before_input")[0]
        obj = FeatureDirectionObjective(tiny_qwen2, {"search": items}, 3, _direction(64), bias=0.5)
        g = torch.Generator().manual_seed(1)
        vecs = [
            SteeringVector(n, torch.randn(4, 64, generator=g), torch.full((4,), 2.0))
            for n in ("a", "b")
        ]
        return Problem(SteeringSpace(vecs, layer_range=(0, 2), coeff_range=(-3.0, 3.0)), obj)

    @pytest.fixture
    def candidates(self, problem):
        return problem.space.sample(4, np.random.default_rng(0))


class TestLpFeaturesConformance(ObjectiveConformance):
    component = "lp_features"

    @pytest.fixture
    def problem(self, tiny_qwen2, tokenizer):
        items = layout(tokenizer, DOCS, placement="before_input")[0]
        obj = LpFeaturesObjective(
            tiny_qwen2, {"search": items}, 2, _direction(64, rows=3), offsets=-1.0, p=0.5
        )
        return Problem(TokenSpace(tokenizer, n_tokens=3), obj)

    @pytest.fixture
    def candidates(self, problem):
        return problem.space.sample(4, np.random.default_rng(0))
