"""wc.test_time_normalise: batch statistics mixed with the source's (Schneider et al. 2020), for
batch-norm models and for ViTs (token statistics), on a copy."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import workbench as wb
from workbench import concepts as wc


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return wb.models.create("resnet18", 3, 32, 1).eval()


def _vit() -> nn.Module:
    torch.manual_seed(0)
    return wb.models.create("vit_tiny", 3, 32, 1, patch_size=8, depth=2, embed_dim=32, num_heads=2).eval()


def _images(n: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 1, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_batch_norm_prior_zero_uses_the_batch_statistics_and_leaves_the_model_alone() -> None:
    model = _cnn()
    before = copy.deepcopy(model.state_dict())
    x = 0.5 * _images() + 0.3
    adapted = wc.test_time_normalise(model, prior=0)
    assert adapted.test_time_normalisation["kind"] == "batch norm"
    ref = copy.deepcopy(model)
    for m in ref.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.train()
            m.momentum = 0.0   # batch statistics, running ones untouched
    with torch.no_grad():
        assert torch.allclose(adapted(x), ref(x), atol=1e-4)
        assert not torch.allclose(adapted(x), model(x), atol=1e-3)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert not any(m._forward_hooks for m in model.modules())


def test_a_large_prior_keeps_the_source_statistics() -> None:
    for model, kw in ((_cnn(), {}), (_vit(), {"source": _images(32, seed=3)})):
        adapted = wc.test_time_normalise(model, prior=1e9, **kw)
        x = 0.6 * _images() + 0.2
        with torch.no_grad():
            assert torch.allclose(adapted(x), model(x), atol=1e-4)


@pytest.mark.parametrize("make", [_cnn, _vit])
def test_a_global_intensity_change_is_undone(make) -> None:
    """Contrast and brightness change every channel of the first (linear) layer affinely; standardising
    that layer per channel over the batch removes it, so the adapted model predicts the changed batch
    as it predicts the original one; the plain model does not."""
    model = make()
    x = _images(24)
    shifted = 0.5 * x + 0.25
    adapted = wc.test_time_normalise(model, _images(32, seed=3), prior=0)
    with torch.no_grad():
        gap_adapted = (adapted(shifted) - adapted(x)).abs().max()
        gap_plain = (model(shifted) - model(x)).abs().max()
    assert gap_adapted < 0.05 * gap_plain


def test_vit_layers_are_mapped_onto_the_source_statistics() -> None:
    model = _vit()
    source = _images(32, seed=3)
    adapted = wc.test_time_normalise(model, source, prior=0)
    assert adapted.test_time_normalisation["layers"] == ["patch_embed", "blocks.0", "blocks.1"]
    wrapped = adapted.get_submodule("patch_embed")
    out = {}
    h = wrapped.register_forward_hook(lambda m, i, o: out.setdefault("t", o))
    with torch.no_grad():
        adapted(0.3 * _images(20) + 0.5)
    h.remove()
    t = out["t"].reshape(-1, out["t"].shape[-1])
    with torch.no_grad():
        ref = model.patch_embed(source).reshape(-1, t.shape[-1])
    assert torch.allclose(t.mean(0), ref.mean(0), atol=1e-4)
    assert torch.allclose(t.std(0), ref.std(0), rtol=1e-3, atol=1e-4)


def test_a_cbm_stays_a_cbm() -> None:
    torch.manual_seed(0)
    cbm = wc.create("resnet18", concepts=["a", "b"], num_classes=3, img_size=32, in_chans=1).eval()
    adapted = wc.test_time_normalise(cbm)
    assert isinstance(adapted, wc.ConceptBottleneck)
    p = wc.predict(adapted, _images(8))
    assert p.concepts.shape == (8, 2) and torch.allclose(p.probs.sum(1), torch.ones(8), atol=1e-5)


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="prior"):
        wc.test_time_normalise(_cnn(), prior=-1)
    with pytest.raises(ValueError, match="source="):
        wc.test_time_normalise(_vit())
    with pytest.raises(ValueError, match="unknown layer"):
        wc.test_time_normalise(_vit(), _images(), layers=["blocks.9"])
    with pytest.raises(ValueError, match="no BatchNorm layer"):
        wc.test_time_normalise(nn.Sequential(nn.Flatten(), nn.Linear(1024, 3)), _images())
    with pytest.raises(ValueError, match=r"\(B, tokens, C\)"):
        wc.test_time_normalise(_vit(), _images(), layers=["head"])
    with pytest.raises(TypeError):
        wc.test_time_normalise("resnet18")
