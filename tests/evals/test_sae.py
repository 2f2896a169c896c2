"""feature_direction / lp_features read a sae-lens style SAE directory by feature index; every
mismatch (width, layer, shape, dtype, feature index) is one line."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from blackbox.evals.activation import _file_direction, load_direction
from blackbox.evals.sae import load_sae_decoder, sae_layer
from blackbox.sections import ConfigError

D_SAE, D_IN = 8, 64


def _sae(root: Path, hook: str = "blocks.2.hook_resid_post", w_dec=None, **cfg) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    w = torch.randn(D_SAE, D_IN, generator=g) if w_dec is None else w_dec
    save_file(
        {"W_dec": w, "W_enc": torch.randn(D_IN, D_SAE, generator=g), "b_dec": torch.zeros(D_IN)},
        str(root / "sae_weights.safetensors"),
    )
    (root / "cfg.json").write_text(
        json.dumps({"d_in": D_IN, "d_sae": D_SAE, "hook_name": hook, "dtype": "float32", **cfg})
    )
    return root


def test_sae_decoder_row_is_the_feature_direction(tmp_path, tiny_llama) -> None:
    path = _sae(tmp_path / "sae")
    w, cfg = load_sae_decoder(path)
    assert w.shape == (D_SAE, D_IN) and cfg["d_sae"] == D_SAE
    torch.testing.assert_close(load_direction(path, 5), w[5])
    ctx = SimpleNamespace(model=tiny_llama)
    v = _file_direction(str(path), "objective.file", ctx, row=5, layer=2)
    torch.testing.assert_close(v, w[5])
    rows = _file_direction(str(path), "objective.file", ctx, row=[1, 3], matrix=True, layer=2)
    torch.testing.assert_close(rows, w[[1, 3]])


@pytest.mark.parametrize(
    ("hook", "layer"),
    [
        ("blocks.3.hook_resid_post", 3),
        ("blocks.3.hook_resid_pre", 2),
        ("model.layers.1", 1),
        ("blocks.3.hook_mlp_out", None),
    ],
)
def test_sae_layer_from_hook_name(hook, layer) -> None:
    assert sae_layer({"hook_name": hook}) == layer
    assert sae_layer({"metadata": {"hook_name": hook}}) == layer  # sae-lens >= 6 layout


def _bad(tmp: Path, name: str) -> tuple[Path, dict, str]:
    """(directory, _file_direction kwargs, expected message)."""
    sae = tmp / name
    if name == "width":
        _sae(sae, w_dec=torch.randn(D_SAE, 32), d_in=32)
        return (
            sae,
            {"row": 1},
            f"config: objective.file: the SAE in {str(sae)!r} has d_in 32; the model's width is 64",
        )
    if name == "layer":
        _sae(sae, hook="blocks.1.hook_resid_post")
        return (
            sae,
            {"row": 1, "layer": 2},
            (
                f"config: objective.layer: 2, but the SAE in {str(sae)!r} reads the output of layer "
                "1 (blocks.1.hook_resid_post)"
            ),
        )
    if name == "feature index":
        _sae(sae)
        return (
            sae,
            {"row": D_SAE},
            (
                f"config: objective.file: give the feature index with row: (0..{D_SAE - 1}) for the "
                f"SAE in {str(sae)!r}"
            ),
        )
    if name == "dtype":
        _sae(sae, w_dec=torch.ones(D_SAE, D_IN, dtype=torch.int32))
        return (
            sae,
            {"row": 1},
            (
                f"config: objective.file: SAE directory {str(sae)!r}: W_dec has dtype torch.int32; "
                "expected a float tensor"
            ),
        )
    if name == "shape":
        _sae(sae, w_dec=torch.randn(D_IN, D_SAE))  # stored transposed
        return (
            sae,
            {"row": 1},
            (
                f"config: objective.file: SAE directory {str(sae)!r}: W_dec has shape (64, 8); "
                "cfg.json says (d_sae, d_in) = (8, 64)"
            ),
        )
    sae.mkdir()
    (sae / "cfg.json").write_text("{}")
    return (
        sae,
        {"row": 1},
        (
            f"config: objective.file: SAE directory {str(sae)!r}: no sae_weights.safetensors (a "
            "sae-lens SAE directory)"
        ),
    )


@pytest.mark.parametrize("name", ["width", "layer", "feature index", "dtype", "shape", "missing"])
def test_bad_sae_directories_are_one_line(name, tmp_path, tiny_llama) -> None:
    path, kw, message = _bad(tmp_path, name)
    kw.setdefault("layer", 2)
    with pytest.raises(ConfigError) as err:
        _file_direction(str(path), "objective.file", SimpleNamespace(model=tiny_llama), **kw)
    assert str(err.value) == message
