"""Baselines for integrated gradients, DeepLIFT and GradientSHAP: completeness per baseline, expected
gradients and DeepLIFT-SHAP against captum, seeds, and clear errors."""
from __future__ import annotations

import pytest
import torch

from workbench.attribution import attribute, baseline_set
from workbench.attribution.baselines import resolve


@pytest.fixture(scope="module")
def cnn():
    from timm.models.resnet import BasicBlock, ResNet

    torch.manual_seed(0)
    return ResNet(BasicBlock, [1, 1, 1, 1], num_classes=3, in_chans=1, channels=(8, 16, 32, 64), stem_width=8).eval()


@pytest.mark.parametrize("baseline", [0.0, "blur", "mean", "uniform"])
def test_integrated_gradients_is_complete_for_every_baseline(cnn, baseline):
    x = torch.rand(2, 1, 32, 32)
    a = attribute(cnn, x, target=[0, 2], method="integrated_gradients", baseline=baseline, n_steps=64)
    ref = resolve(x, baseline)
    with torch.no_grad():
        gap = cnn(x)[[0, 1], [0, 2]] - cnn(ref)[[0, 1], [0, 2]]
    assert torch.allclose(a.raw.flatten(1).sum(1), gap, atol=0.05 * gap.abs().max() + 1e-5)  # ReLU kinks: ~1 %
    assert str(a.params["baseline"]) == str(baseline)


def test_expected_gradients_and_deeplift_shap_equal_captum(cnn):
    from captum.attr import DeepLiftShap, GradientShap

    x = torch.rand(2, 1, 32, 32)
    refs = baseline_set(torch.rand(12, 1, 32, 32), n=6, seed=1)
    ours = attribute(cnn, x, target=1, method="integrated_gradients", baseline=refs, n_steps=8, seed=3)
    again = attribute(cnn, x, target=1, method="integrated_gradients", baseline=refs, n_steps=8, seed=3)
    assert torch.equal(ours.raw, again.raw)
    import numpy as np

    state = np.random.get_state()
    torch.manual_seed(3)
    np.random.seed(3)
    theirs = GradientShap(cnn).attribute(x, baselines=refs.images, target=torch.tensor([1, 1]), n_samples=8, stdevs=0.0)
    np.random.set_state(state)
    assert torch.allclose(ours.raw, theirs, atol=1e-6)
    dl = attribute(cnn, x, target=1, method="deeplift", baseline=refs, n_references=6, seed=0)
    chosen = refs.sample(6, x, 0)
    import copy

    work = copy.deepcopy(cnn)
    for m in work.modules():
        if getattr(m, "inplace", False):
            m.inplace = False
    theirs = DeepLiftShap(work).attribute(x, baselines=chosen, target=torch.tensor([1, 1]))
    assert torch.allclose(dl.raw, theirs, atol=1e-5)


def test_uniform_and_sets_are_seeded(cnn):
    x = torch.rand(2, 1, 32, 32)
    a, b = (attribute(cnn, x, target=0, method="integrated_gradients", baseline="uniform", seed=s, n_steps=8)
            for s in (0, 1))
    assert not torch.allclose(a.raw, b.raw)
    pool = torch.rand(30, 1, 32, 32)
    assert torch.equal(baseline_set(pool, n=5, seed=0).images, baseline_set(pool, n=5, seed=0).images)
    assert not torch.equal(baseline_set(pool, n=5, seed=0).images, baseline_set(pool, n=5, seed=1).images)


def test_baseline_set_from_a_dataset_and_bad_baselines(cnn):
    import workbench as wb

    train = wb.data.load("phantom", split="train", n=12, size=32, progress=False)
    s = baseline_set(train, n=4)
    assert s.images.shape == (4, 1, 32, 32) and s.images.dtype == torch.float32 and s.images.max() <= 1
    x = torch.rand(3, 1, 32, 32)
    with pytest.raises(ValueError, match=r"baseline has shape \(2, 1, 32, 32\) but the images are \(3, 1, 32, 32\)"):
        attribute(cnn, x, method="integrated_gradients", baseline=torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match="meta"):
        attribute(cnn, x, method="deeplift", baseline=torch.zeros(1, 1, 32, 32, device="meta"))
    with pytest.raises(ValueError, match="same channels and size"):
        attribute(cnn, x, method="gradient_shap", baselines=baseline_set(torch.rand(4, 1, 16, 16)))
    with pytest.raises(ValueError, match="not one of"):
        attribute(cnn, x, method="integrated_gradients", baseline="white-ish")
    with pytest.raises(TypeError, match="dataset"):
        baseline_set([1, 2, 3])
    a = attribute(cnn, x, method="integrated_gradients", baseline=torch.zeros(1, 1, 32, 32, dtype=torch.float64), n_steps=4)
    assert a.maps.dtype == torch.float32  # another dtype (or device) is converted
