"""Cascading model-parameter randomisation (Adebayo et al. 2018)."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from workbench.evaluation import randomisation_test
from workbench.evaluation.sanity import default_layers, spearman


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * 16 * 16, 2))


def _gradient(model, x, t):
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(x).gather(1, t.view(-1, 1)).sum(), x)
    return g[:, 0]


def test_caller_model_unchanged_and_correlations_drop():
    model = _cnn().train()
    before = copy.deepcopy(model.state_dict())
    x = torch.rand(3, 1, 16, 16)
    df = randomisation_test(model, x, _gradient, progress=False)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert list(df["layer"]) == ["", "5", "2", "0"]  # top-down: output first
    assert df.loc[0, "spearman"] == 1.0 and df.loc[0, "ssim"] == 1.0
    assert df["spearman"].iloc[-1] < 0.5 and df["ssim"].iloc[-1] < 0.5


def test_registry_method_and_independent_order():
    model = _cnn()
    x = torch.rand(2, 1, 16, 16)
    df = randomisation_test(model, x, "saliency", order="independent", layers=["0", "5"],
                            similarity="spearman", progress=False)
    assert list(df.columns[:3]) == ["step", "layer", "randomised"] and "ssim" not in df
    assert (df["randomised"].iloc[1:] == 1).all()


def test_bad_arguments():
    model = _cnn()
    x = torch.rand(1, 1, 16, 16)
    with pytest.raises(ValueError, match="no module"):
        randomisation_test(model, x, _gradient, layers=["nope"], progress=False)
    with pytest.raises(ValueError, match="order"):
        randomisation_test(model, x, _gradient, order="bottom_up", progress=False)
    with pytest.raises(ValueError, match="similarity"):
        randomisation_test(model, x, _gradient, similarity=("pearson",), progress=False)


def test_default_layers_for_vit():
    import timm

    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, in_chans=1, num_classes=2)
    names = default_layers(vit)
    assert "blocks.0" in names and "blocks.1" in names and names[-1] == "head"


def test_spearman_by_hand():
    a = torch.tensor([[1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 1.0, 1.0]])
    b = torch.tensor([[4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0]])
    r = spearman(a.numpy(), b.numpy())
    assert r[0] == pytest.approx(-1.0) and r[1] == 0.0
