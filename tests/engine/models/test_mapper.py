"""The FFCLIP mapper's defaults and its edit rule (the numerics are checked against the original
implementation by the conformance tests in tests/engine/test_conformance.py)."""

from __future__ import annotations

import torch

from ffclip.engine.models.mapper import ChannelAttention, DynamicMapper, SemanticModulation


def test_the_defaults_are_the_ffhq_mapper() -> None:
    """18 W+ layers of 512 channels, 4 blocks: the official FFHQ checkpoint's shapes."""
    mapper = DynamicMapper()
    assert mapper.n_latent == 18 and len(mapper.att_mapper) == 4
    shapes = {k: tuple(v.shape) for k, v in mapper.state_dict().items()}
    assert shapes["att_mapper.0.attention_layer.k_matrix.weight"] == (18, 1)
    assert shapes["att_mapper.3.q_matrix.weight"] == (512, 512)
    assert {k: tuple(v.shape) for k, v in SemanticModulation().state_dict().items()} == {
        k.removeprefix("att_mapper.0."): v for k, v in shapes.items() if k.startswith("att_mapper.0.")
    }
    attention = ChannelAttention()
    assert attention.k_matrix.weight.shape == (18, 1) and attention.q_matrix.weight.shape == (512, 512)


def test_edit_adds_strength_times_delta() -> None:
    torch.manual_seed(0)
    mapper = DynamicMapper(n_latent=3, dim=8).eval()
    w, e = torch.randn(2, 3, 8), torch.randn(2, 1, 8)
    with torch.no_grad():
        delta = mapper(w, e)
        assert torch.allclose(mapper.edit(w, e), w + delta)  # α = 1 by default: the paper's edit
        assert torch.allclose(mapper.edit(w, e, strength=-0.5), w - 0.5 * delta)
