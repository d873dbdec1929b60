"""Cross-checks against peer libraries on identical inputs: pytorch-grad-cam and captum."""
from __future__ import annotations

import copy

import pytest
import timm
import torch

from workbench.attribution import attribute
from workbench.capture import hook_count

pgc = pytest.importorskip("pytorch_grad_cam")
captum_attr = pytest.importorskip("captum.attr")


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    a, b = a - a.mean(), b - b.mean()
    return float((a @ b) / (a.norm() * b.norm() + 1e-12))


def _pgc_cam(model, layer, x, targets, reshape=None):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    peer = copy.deepcopy(model)  # pytorch-grad-cam calls .eval() and keeps hooks on what it gets
    with GradCAM(model=peer, target_layers=[layer(peer)], reshape_transform=reshape) as cam:
        return torch.from_numpy(cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in targets]))


def test_cnn_gradcam_matches_pytorch_grad_cam():
    from timm.models.resnet import BasicBlock, ResNet

    torch.manual_seed(0)
    m = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=3, in_chans=1, channels=(8, 16, 32, 64), stem_width=8).eval()
    x = torch.rand(3, 1, 64, 64)
    ours = attribute(m, x, target=[0, 1, 2], method="gradcam")
    assert ours.params["layer"] == "layer2"
    theirs = _pgc_cam(m, lambda p: p.layer2, x, [0, 1, 2])
    for i in range(3):
        if ours.maps[i].max() > 0 and theirs[i].max() > 0:
            assert _corr(ours.maps[i], theirs[i]) >= 0.99
    assert hook_count(m) == 0


def test_vit_gradcam_matches_pytorch_grad_cam():
    torch.manual_seed(0)
    m = timm.create_model("vit_tiny_patch16_224", num_classes=3, in_chans=3, img_size=32, patch_size=4, depth=2,
                          embed_dim=48, num_heads=3, pretrained=False).eval()
    x = torch.rand(2, 3, 32, 32)
    ours = attribute(m, x, target=[1, 2], method="gradcam")
    assert ours.params["layer"] == "blocks.1.norm1" and ours.params["cam_size"] == (8, 8)

    def reshape(t, h=8, w=8):  # pytorch-grad-cam's ViT recipe: drop CLS, tokens -> (B, D, h, w)
        return t[:, 1:].reshape(t.shape[0], h, w, t.shape[2]).permute(0, 3, 1, 2)

    theirs = _pgc_cam(m, lambda p: p.blocks[-1].norm1, x, [1, 2], reshape)
    for i in range(2):
        assert _corr(ours.maps[i], theirs[i]) >= 0.99


@pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")
def test_saliency_and_ig_equal_captum():
    from captum.attr import IntegratedGradients, Saliency

    torch.manual_seed(0)
    m = timm.create_model("vit_tiny_patch16_224", num_classes=3, in_chans=1, img_size=32, patch_size=8, depth=2,
                          embed_dim=48, num_heads=3, pretrained=False).eval()
    x = torch.rand(2, 1, 32, 32)
    t = torch.tensor([2, 0])
    ours = attribute(m, x, target=t, method="saliency")
    theirs = Saliency(m).attribute(x, target=t)
    assert torch.allclose(ours.raw, theirs, atol=1e-6)
    ours = attribute(m, x, target=t, method="integrated_gradients", n_steps=16, baseline=0.0)
    theirs = IntegratedGradients(m).attribute(x, baselines=torch.zeros_like(x), target=t, n_steps=16)
    assert torch.allclose(ours.raw, theirs, atol=1e-6)


def _minmax(a: torch.Tensor) -> torch.Tensor:
    a = a - a.flatten(1).amin(1).view(-1, 1, 1)
    return a / (a.flatten(1).amax(1).view(-1, 1, 1) + 1e-7)


def _pgc(cls_name, model, layers, x, targets, reshape=None):
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    peer = copy.deepcopy(model)
    with getattr(pytorch_grad_cam, cls_name)(model=peer, target_layers=[f(peer) for f in layers],
                                             reshape_transform=reshape) as cam:
        return torch.from_numpy(cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in targets]))


@pytest.mark.parametrize("method, peer", [("hirescam", "HiResCAM"), ("layercam", "LayerCAM")])
def test_hirescam_and_layercam_equal_pytorch_grad_cam(method, peer):
    """Same numbers (pytorch-grad-cam returns min-max scaled maps: compare scaled), CNN and ViT tokens."""
    from timm.models.resnet import BasicBlock, ResNet

    torch.manual_seed(0)
    m = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=3, in_chans=1, channels=(8, 16, 32, 64), stem_width=8).eval()
    x = torch.rand(3, 1, 64, 64)
    ours = attribute(m, x, target=[0, 1, 2], method=method)
    theirs = _pgc(peer, m, [lambda p: p.layer2], x, [0, 1, 2])
    assert (_minmax(ours.maps) - theirs).abs().max() < 1e-3
    v = timm.create_model("vit_tiny_patch16_224", num_classes=3, in_chans=3, img_size=32, patch_size=4, depth=2,
                          embed_dim=48, num_heads=3, pretrained=False).eval()
    xv = torch.rand(2, 3, 32, 32)
    ours = attribute(v, xv, target=[1, 2], method=method)
    theirs = _pgc(peer, v, [lambda p: p.blocks[-1].norm1], xv, [1, 2],
                  lambda t: t[:, 1:].reshape(t.shape[0], 8, 8, t.shape[2]).permute(0, 3, 1, 2))
    assert (_minmax(ours.maps) - theirs).abs().max() < 1e-3
    assert hook_count(m) == 0 and hook_count(v) == 0


@pytest.mark.parametrize("cam, peer", [("layercam", "LayerCAM"), ("gradcam", "GradCAM")])
def test_cam_fusion_mean_equals_pytorch_grad_cam_multi_layer(cam, peer):
    from timm.models.resnet import BasicBlock, ResNet

    torch.manual_seed(0)
    m = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=3, in_chans=1, channels=(8, 16, 32, 64), stem_width=8).eval()
    x = torch.rand(3, 1, 64, 64)
    ours = attribute(m, x, target=[0, 1, 2], method="cam_fusion", layers=["layer1", "layer2", "layer3"],
                     cam=cam, fusion="mean")
    theirs = _pgc(peer, m, [lambda p: p.layer1, lambda p: p.layer2, lambda p: p.layer3], x, [0, 1, 2])
    assert (_minmax(ours.maps) - theirs).abs().max() < 1e-3
