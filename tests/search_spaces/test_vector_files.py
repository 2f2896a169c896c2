"""Steering vectors out to and in from other tools' formats: llama.cpp / repeng GGUF control
vectors, lm-eval ``steered`` files and steering-vectors ``{layer: tensor}`` dicts; every bad
file is one line naming the layer, width or dtype."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from blackbox.models.layers import layer_path
from blackbox.search_spaces.steering.finishing import export_control_vector, export_steered
from blackbox.search_spaces.steering.space import Edit, SteeringSpace
from blackbox.search_spaces.steering.vector_files import read_control_vector, write_control_vector
from blackbox.search_spaces.steering.vectors import SteeringVector, load_vector_file

L, D = 4, 64


@pytest.fixture()
def space() -> SteeringSpace:
    g = torch.Generator().manual_seed(3)
    vecs = [
        SteeringVector(n, torch.randn(L, D, generator=g), torch.rand(L, generator=g) + 0.5)
        for n in ("a", "b")
    ]
    return SteeringSpace(vecs, layer_range=(0, L - 1), coeff_range=(-2, 2))


CANDIDATE = (Edit("a", 2, 0.7), Edit("b", 3, -1.3))
SAME_LAYER = (Edit("a", 1, 0.5), Edit("b", 1, 1.5))


@pytest.mark.parametrize("cand", [CANDIDATE, SAME_LAYER], ids=["two layers", "one layer"])
def test_control_vector_holds_every_addition_with_llama_cpp_numbering(
    space, tiny_llama, tmp_path, cand
) -> None:
    path = export_control_vector(space, cand, tiny_llama, tmp_path / "cv.gguf")
    reader = gguf.GGUFReader(str(path))
    arch = reader.get_field("general.architecture")
    assert bytes(arch.parts[-1]).decode() == "controlvector"
    assert bytes(reader.get_field("controlvector.model_hint").parts[-1]).decode() == "llama"
    want = space.steer_config(cand)  # layer -> (d,) the hooks add after decoder block `layer`
    assert int(reader.get_field("controlvector.layer_count").parts[-1][0]) == len(want)
    # llama.cpp adds direction.k after block k (0-based), so the names are the layers themselves
    assert sorted(t.name for t in reader.tensors) == [f"direction.{k}" for k in sorted(want)]
    for t in reader.tensors:
        assert t.tensor_type == gguf.GGMLQuantizationType.F32 and list(t.shape) == [D]
        np.testing.assert_array_equal(t.data, want[int(t.name.split(".")[1])].numpy())
    if cand == SAME_LAYER:  # two vectors on one layer: one tensor, their sum, coefficients in
        a, b = space.by_name["a"], space.by_name["b"]
        torch.testing.assert_close(
            torch.from_numpy(np.array(reader.tensors[0].data)),
            a.delta(1, 0.5) + b.delta(1, 1.5),
        )


def test_control_vector_refuses_layer_zero(space, tiny_llama, tmp_path) -> None:
    with pytest.raises(ValueError, match="llama.cpp cannot steer layer 0"):
        export_control_vector(
            space, (Edit("a", 0, 1.0), Edit("b", 2, 0.0)), tiny_llama, tmp_path / "x.gguf"
        )
    assert not (tmp_path / "x.gguf").exists()


def _hookpoints(model) -> dict[str, int]:
    return {layer_path(model, i): i for i in range(L)}


@pytest.mark.parametrize("fmt", ["steered", "gguf", "layer_dict_pt", "layer_dict_safetensors"])
def test_vector_files_come_back_in_so_coefficient_one_is_the_file(
    space, tiny_llama, tmp_path, fmt
) -> None:
    """Export the candidate, import the file as a vector: coefficient 1 at a layer adds exactly
    what the exported candidate added there, and only the file's layers carry a direction."""
    want = space.steer_config(CANDIDATE)  # {2: (d,), 3: (d,)}
    if fmt == "steered":
        path = export_steered(space, CANDIDATE, tiny_llama, tmp_path / "s.pt")
    elif fmt == "gguf":
        path = export_control_vector(space, CANDIDATE, tiny_llama, tmp_path / "s.gguf")
    elif fmt == "layer_dict_pt":
        path = tmp_path / "s.pt"
        torch.save({k: v.clone() for k, v in want.items()}, path)  # steering-vectors style
    else:
        path = tmp_path / "s.safetensors"
        save_file({str(k): v.contiguous() for k, v in want.items()}, str(path))
    vec = load_vector_file(path, "imported", L, D, _hookpoints(tiny_llama))
    assert vec.layers == (2, 3)
    for layer, delta in want.items():
        torch.testing.assert_close(vec.delta(layer, 1.0), delta, rtol=1e-6, atol=1e-6)
    assert float(vec.delta(0, 1.0).abs().max()) == 0.0  # not in the file: steers nothing


def test_steered_coefficient_is_folded_in(tmp_path) -> None:
    v = torch.randn(D)
    entry = {"steering_vector": v, "steering_coefficient": 2.5, "action": "add"}
    torch.save({"layers.1": dict(entry, bias=None, head_index=None)}, tmp_path / "s.pt")
    vec = load_vector_file(tmp_path / "s.pt", "s", L, D)  # default hookpoint pattern
    torch.testing.assert_close(vec.delta(1, 1.0), 2.5 * v)


def _gguf(path: Path, tensors: dict[str, np.ndarray], arch: str = "controlvector") -> Path:
    w = gguf.GGUFWriter(str(path), arch)
    for name, t in tensors.items():
        w.add_tensor(name, t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


BAD = {
    "gguf width": (
        lambda p: write_control_vector({1: torch.ones(32)}, p / "v.gguf"),
        "layer 1 has width 32; the model's is 64",
    ),
    "gguf layer count": (
        lambda p: write_control_vector({7: torch.ones(D)}, p / "v.gguf"),
        "layer 7 but the model has 4 layers (0..3)",
    ),
    "gguf dtype": (
        lambda p: _gguf(p / "v.gguf", {"direction.1": np.ones(D, np.float16)}),
        "direction.1 has dtype F16; expected F32",
    ),
    "gguf layer 0": (
        lambda p: _gguf(p / "v.gguf", {"direction.0": np.ones(D, np.float32)}),
        "direction.0 (llama.cpp layers start at 1)",
    ),
    "gguf model": (
        lambda p: _gguf(p / "v.gguf", {"token_embd.weight": np.ones(D, np.float32)}, "llama"),
        "a GGUF 'llama' model, not a control vector (architecture 'controlvector')",
    ),
    "steered hookpoint": (
        lambda p: torch.save({"layers.1.mlp": {"steering_vector": torch.ones(D)}}, p / "v.pt"),
        "hookpoint 'layers.1.mlp' is not a decoder layer of this model (blackbox steers "
        "decoder-layer outputs)",
    ),
    "steered width": (
        lambda p: torch.save({"layers.1": {"steering_vector": torch.ones(D + 1)}}, p / "v.pt"),
        "layer 1 has width 65; the model's is 64",
    ),
    "layer dict dtype": (
        lambda p: torch.save({1: torch.ones(D, dtype=torch.long)}, p / "v.pt"),
        "layer 1 has dtype torch.int64; expected a float tensor",
    ),
    "layer dict layer count": (
        lambda p: torch.save({4: torch.ones(D)}, p / "v.pt"),
        "layer 4 but the model has 4 layers (0..3)",
    ),
    "matrix dtype": (
        lambda p: torch.save(torch.ones(L, D, dtype=torch.int32), p / "v.pt"),
        "dtype torch.int32; expected a float tensor",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_vector_files_are_one_line(case, tiny_llama, tmp_path) -> None:
    make, message = BAD[case]
    make(tmp_path)
    path = next(tmp_path.glob("v.*"))
    with pytest.raises(ValueError) as err:
        load_vector_file(path, "v", L, D, _hookpoints(tiny_llama))
    text = str(err.value)
    assert "\n" not in text and text == f"vector file {str(path)!r}: {message}"


def test_read_control_vector_sums_directions_of_one_layer_across_files(tmp_path) -> None:
    a = write_control_vector({1: torch.ones(D), 2: torch.full((D,), 2.0)}, tmp_path / "a.gguf")
    out = read_control_vector(a)
    assert sorted(out) == [1, 2] and float(out[2][0]) == 2.0
