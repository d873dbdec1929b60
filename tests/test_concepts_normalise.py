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


# -- match_intensities: histogram matching at the input ----------------------------------------------
def test_match_quantiles_equals_scikit_image_for_one_reference_image() -> None:
    from skimage.exposure import match_histograms

    from workbench.concepts.normalise import match_quantiles, source_quantiles

    g = torch.Generator().manual_seed(0)
    src, ref = torch.rand(1, 1, 32, 32, generator=g) ** 2, torch.rand(1, 1, 32, 32, generator=g)
    ours = match_quantiles(src, source_quantiles(ref, levels=4096))
    theirs = torch.from_numpy(match_histograms(src[0, 0].numpy(), ref[0, 0].numpy())).float()
    # the same map up to scikit-image's upper-rank CDF against our mid-rank one: within one step between
    # neighbouring reference values
    gaps = ref.flatten().sort().values.diff()
    assert (ours[0, 0] - theirs).abs().max() <= gaps.max()
    assert (ours[0, 0] - theirs).abs().mean() < 0.5 * gaps.mean()   # half a rank step on average
    assert torch.equal(ours.flatten().argsort(), src.flatten().argsort())   # monotone: ranks kept


def test_a_monotone_site_style_is_undone_for_every_model_and_the_model_is_left_alone() -> None:
    """Contrast, gamma and brightness (a monotone map) leave each image's ranks unchanged, so matching
    onto that image's own intensities restores it: the adapted model predicts as on the original."""
    x = _images(1)
    shifted = (0.55 * x ** 1.6 + 0.12).clamp(0, 1)
    for model in (_cnn(), _vit()):
        before = copy.deepcopy(model.state_dict())
        adapted = wc.match_intensities(model, x, levels=4096)
        with torch.no_grad():
            want, got, plain = model(x), adapted(shifted), model(shifted)
        assert (got - want).abs().max() < 0.1 * (plain - want).abs().max()
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
        assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())
    assert adapted.intensity_matching["layer"] == "patch_embed"


def test_match_intensities_keeps_a_cbm_and_does_not_depend_on_the_batch() -> None:
    torch.manual_seed(0)
    cbm = wc.create("resnet18", concepts=["a", "b"], num_classes=2, img_size=32, in_chans=1).eval()
    adapted = wc.match_intensities(cbm, _images(8), levels=256)
    assert isinstance(adapted, type(cbm)) and adapted.intensity_matching["layer"] == "backbone.conv1"
    x = 0.5 * _images(6, seed=3)
    whole = wc.predict(adapted, x).probs
    one = torch.cat([wc.predict(adapted, x[i:i + 1]).probs for i in range(6)])
    torch.testing.assert_close(whole, one)
    both = wc.test_time_normalise(adapted, prior=16)   # composes
    assert wc.predict(both, x).probs.shape == (6, 2)


def test_match_intensities_bad_input() -> None:
    class Scaled(nn.Module):   # the image is changed before any layer sees it
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(32 * 32, 2)

        def forward(self, x):
            return self.lin((2 * x).flatten(1))

    with pytest.raises(ValueError, match="no layer of the model receives the input image"):
        wc.match_intensities(Scaled(), _images(2))
    with pytest.raises(ValueError, match="must be images the model takes"):
        wc.match_intensities(_vit(), torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match="levels"):
        wc.match_intensities(_cnn(), _images(2), levels=1)
