"""LRP through zennit: conservation, agreement with zennit used directly, the model left untouched,
relevance at intermediate layers (the pruning criterion's API) and clear errors for unsupported models."""
from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from workbench.attribution import attribute
from workbench.attribution.methods_lrp import COMPOSITES, lrp_relevance, support, unit_scores
from workbench.capture import hook_count
from workbench.models.factory import StandardizedConv2d

pytest.importorskip("zennit")


def _resnet(block: str = "basic", c: int = 1, k: int = 3, standardize: bool = True) -> nn.Module:
    """A narrow timm ResNet with non-trivial BatchNorm statistics and (optionally) the workbench's
    standardising stem, as ``wb.models.create`` builds it."""
    from timm.models.resnet import BasicBlock, Bottleneck, ResNet

    torch.manual_seed(0)
    m = ResNet(BasicBlock if block == "basic" else Bottleneck, [1, 1, 1, 1], num_classes=k, in_chans=c,
               channels=(8, 16, 32, 64), stem_width=8)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 1.5)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.1, 0.1)
    if standardize:
        StandardizedConv2d.wrap(m.conv1, [0.5] * c, [0.25] * c)
    return m.eval()


def _snapshot(m: nn.Module) -> tuple[dict, str, list]:
    return ({k: v.clone() for k, v in m.state_dict().items()}, repr(m),
            [type(mod).__dict__.get("forward") is None or "forward" in vars(mod) for mod in m.modules()])


@pytest.mark.parametrize("block", ["basic", "bottleneck"])
@pytest.mark.parametrize("composite", ["epsilon_plus_flat", "epsilon_gamma_box", "epsilon_plus"])
def test_relevance_is_conserved_without_biases(block, composite):
    """Up to the bias of the real forward (a unit kept alive by its bias alone loses its relevance).
    Alpha-beta rules are not conservative where a unit has no negative inputs, so they are not here."""
    m = _resnet(block)
    x = torch.rand(2, 1, 32, 32)
    r = lrp_relevance(m, x, [0, 2], layers=["layer3"], composite=composite, zero_params="bias")
    logit = r.logits.gather(1, r.target[:, None])[:, 0]
    assert torch.allclose(r.input.flatten(1).sum(1), logit, rtol=2e-2, atol=1e-3)  # see the docstring
    assert torch.allclose(r.layers["layer3"].flatten(1).sum(1), logit, rtol=2e-2, atol=1e-3)  # every path passes


def test_timm_resnet_equals_zennit_on_the_torchvision_twin():
    """Our canonizers on a timm ResNet give what zennit's own ResNetCanonizer gives on torchvision's
    ResNet with the same weights (same architecture and parameter names; one block per stage here)."""
    from timm.models.resnet import BasicBlock, ResNet
    from torchvision.models.resnet import BasicBlock as TvBasic, ResNet as TvResNet
    from zennit.attribution import Gradient
    from zennit.composites import EpsilonGammaBox, EpsilonPlusFlat
    from zennit.torchvision import ResNetCanonizer

    torch.manual_seed(0)
    ours = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=3, in_chans=1).eval()
    twin = TvResNet(TvBasic, [1, 1, 1, 1], num_classes=3)
    twin.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    with torch.no_grad():
        for mod in ours.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 1.5)
    twin.load_state_dict(ours.state_dict())
    twin.eval()
    x = torch.rand(2, 1, 32, 32)
    t = torch.tensor([1, 2])
    low, high = torch.zeros_like(x), torch.ones_like(x)
    for name, comp in [("epsilon_plus_flat", EpsilonPlusFlat(canonizers=[ResNetCanonizer()])),
                       ("epsilon_gamma_box", EpsilonGammaBox(low=low, high=high, canonizers=[ResNetCanonizer()]))]:
        with Gradient(model=twin, composite=comp) as attributor:
            _, theirs = attributor(x, lambda out: nn.functional.one_hot(t, 3).to(out) * out)
        got = attribute(ours, x, target=t, method="lrp", composite=name)
        assert torch.allclose(got.raw, theirs, atol=1e-5 * theirs.abs().max()), name
    assert hook_count(ours) == 0 and hook_count(twin) == 0


@pytest.mark.parametrize("composite", COMPOSITES)
def test_every_composite_gives_finite_maps_that_depend_on_the_target(composite):
    m = _resnet("bottleneck")
    x = torch.rand(2, 1, 32, 32)
    a, b = (attribute(m, x, target=t, method="lrp", composite=composite) for t in (0, 1))
    assert torch.isfinite(a.raw).all() and not torch.allclose(a.maps, b.maps)


def test_model_is_never_mutated_also_after_an_error():
    m = _resnet("basic")
    m.layer1.train()  # a mixed mode must come back too
    before, tree, _ = _snapshot(m)
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        ref = m.eval()(x)
    m.layer1.train()
    lrp_relevance(m, x, layers=["layer2", "conv1"], composite="epsilon_gamma_box")
    with pytest.raises(ValueError, match="target contains class"):
        lrp_relevance(m, x, [0, 7])  # fails inside the canonized model
    after, tree2, _ = _snapshot(m)
    assert all(torch.equal(before[k], after[k]) for k in before) and before.keys() == after.keys()
    assert tree == tree2 and hook_count(m) == 0
    assert isinstance(m.conv1, StandardizedConv2d) and "forward" not in vars(m.layer1[0])
    assert m.layer1.training and not m.layer2.training
    with torch.no_grad():
        assert torch.equal(m.eval()(x), ref)


def test_relevance_at_units_for_pruning():
    m = _resnet("basic")
    x = torch.rand(3, 1, 32, 32)
    r = lrp_relevance(m, x, 1, layers=["layer2.0.conv1", "fc"])
    assert r.layers["layer2.0.conv1"].shape == (3, 16, 4, 4) and r.layers["fc"].shape == (3, 3)
    s = unit_scores(r, "layer2.0.conv1")
    assert s.shape == (16,) and torch.isfinite(s).all()
    assert torch.allclose(s, r.layers["layer2.0.conv1"].sum((0, 2, 3)))
    fc = r.layers["fc"]  # only the target logit carries relevance
    assert torch.allclose(fc[:, 1], r.logits[:, 1]) and fc[:, [0, 2]].abs().max() == 0
    with pytest.raises(ValueError, match="no module"):
        lrp_relevance(m, x, layers=["layer9"])
    # without the input map (what pruning uses): the same layer relevance, no propagation below it
    r2 = lrp_relevance(m, x, 1, layers=["layer2.0.conv1", "fc"], input_relevance=False)
    assert r2.input is None and torch.equal(r2.layers["layer2.0.conv1"], r.layers["layer2.0.conv1"])
    with pytest.raises(ValueError, match="needs layers"):
        lrp_relevance(m, x, input_relevance=False)


def test_lrp_map_points_at_the_evidence():
    """A linear 'detector' of one bright patch: LRP puts the relevance on that patch."""
    net = nn.Sequential(nn.Conv2d(1, 1, 4, stride=4, bias=False), nn.ReLU(), nn.Flatten(), nn.Linear(16, 2))
    with torch.no_grad():
        net[0].weight.fill_(1.0)
        net[3].weight.zero_()
        net[3].weight[1, 5] = 1.0  # class 1 reads the patch at grid (1, 1) -> pixels 4..7
        net[3].bias.zero_()
    x = torch.rand(1, 1, 16, 16) * 0.1
    a = attribute(net, x, target=1, method="lrp", composite="epsilon_gamma_box")
    inside = a.maps[0, 4:8, 4:8].sum()
    assert torch.allclose(inside, a.maps[0].sum()) and inside > 0


@pytest.mark.parametrize("make, match", [
    (lambda: timm.create_model("vit_tiny_patch16_224", num_classes=2, img_size=32, patch_size=8, depth=1),
     "chefer"),
    (lambda: timm.create_model("convnext_atto", num_classes=2), "no exact rule"),
    (lambda: timm.create_model("seresnet18", num_classes=2), "squeeze|no exact rule"),
    (lambda: timm.create_model("densenet121", num_classes=2), "BatchNormAct2d"),
])
def test_unsupported_models_raise_clearly(make, match):
    with pytest.raises(ValueError, match=match):
        attribute(make().eval(), torch.rand(1, 3, 32, 32), method="lrp")


def test_custom_containers_need_strict_false():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                          nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.features(x))

    net = Net().eval()
    x = torch.rand(2, 1, 8, 8)
    with pytest.raises(ValueError, match="strict=False"):
        attribute(net, x, method="lrp")
    a = attribute(net, x, method="lrp", strict=False)
    assert a.maps.shape == (2, 8, 8) and support(net, strict=False) == "sequential"
    with pytest.raises(ValueError, match="composite"):
        attribute(net, x, method="lrp", strict=False, composite="alpha")
