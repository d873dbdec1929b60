"""CUDA paths: every verb on a GPU gives the CPU's answer (skips with a reason without CUDA).

These run wherever a CUDA device is present (a GPU workstation, a lent GPU machine); CI's CPU
runners skip them. TF32 is switched off inside the comparisons so that a difference means a
device-handling bug, not reduced-precision matrix products.
"""
from __future__ import annotations

import copy

import pytest
import timm
import torch
from torch import nn

from test_attribution import CNN_ONLY, FAST, VIT_ONLY, _cnn, _vit  # the same tiny models and settings
from workbench.attribution import METHODS, attribute
from workbench.capture import hook_count

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none here)"),
]

STOCHASTIC = {"smoothgrad", "gradient_shap", "shap_gradient"}  # CUDA and CPU draw different noise


@pytest.fixture(autouse=True)
def _exact_float32():
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-3) -> None:
    """Equal up to float32 reordering: max difference <= rel x the larger map's max magnitude."""
    scale = max(a.abs().max().item(), b.abs().max().item(), 1e-12)
    assert (a - b).abs().max().item() <= rel * scale, (a - b).abs().max().item() / scale


@pytest.mark.parametrize("method", METHODS.names())
def test_every_method_on_cuda_matches_cpu(method):
    arch = ["vit"] if method in VIT_ONLY else ["cnn"] if method in CNN_ONLY else ["cnn", "vit"]
    for name in arch:
        torch.manual_seed(0)
        cpu = (_cnn() if name == "cnn" else _vit()).eval()
        gpu = copy.deepcopy(cpu).cuda()
        x = torch.rand(3, 1, 32, 32)
        kw = FAST.get(method, {})
        ref = attribute(cpu, x, target=[0, 1, 2], method=method, **kw)
        # model on the GPU, images on the CPU: maps come back on the CPU
        got = attribute(gpu, x, target=[0, 1, 2], method=method, **kw)
        assert got.maps.device.type == "cpu" and got.maps.shape == (3, 32, 32)
        assert torch.isfinite(got.maps).all() and hook_count(gpu) == 0
        # images on the GPU: maps stay there; chunked runs agree with whole-batch ones
        on_gpu = attribute(gpu, x.cuda(), target=[0, 1, 2], method=method, internal_batch_size=2, **kw)
        assert on_gpu.maps.device.type == "cuda"
        if method in STOCHASTIC:
            continue
        _close(got.maps, ref.maps)
        _close(on_gpu.maps.cpu(), ref.maps)


def test_attribute_device_argument_copies_model_to_cuda():
    m = _cnn().eval()
    x = torch.rand(2, 1, 32, 32)
    a = attribute(m, x, target=1, method="integrated_gradients", n_steps=8, device="cuda")
    assert next(m.parameters()).device.type == "cpu"  # the caller's model stays put
    _close(a.maps, attribute(m, x, target=1, method="integrated_gradients", n_steps=8).maps)


def test_fit_uses_bf16_autocast_on_cuda_and_learns():
    import workbench.train as wt
    from workbench.data._base import ArrayDataset

    g = torch.Generator().manual_seed(0)
    y = torch.arange(256) % 2
    x = torch.rand(256, 1, 16, 16, generator=g) * 0.5
    x[y == 1, :, 2:8, 2:8] += 0.5
    ds = ArrayDataset((x * 255).to(torch.uint8), y, classes=("neg", "pos"), task="binary")
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                          nn.Linear(256, 2))
    seen = []
    model[-1].register_forward_hook(lambda mod, inp, out: seen.append((mod.training, out.dtype)))
    hist = wt.fit(model, ds, ds, epochs=6, batch_size=32, lr=1e-2, device="cuda", progress=False)
    assert next(model.parameters()).dtype == torch.float32 and next(model.parameters()).is_cuda
    assert {d for training, d in seen if training} == {torch.bfloat16}  # every training step ran in bf16 autocast
    assert hist.rows[-1]["loss"] < hist.rows[0]["loss"]
    res = wt.evaluate(model, ds, device="cuda")
    assert res.auc > 0.9


def test_attention_rollout_and_chefer_on_cuda_match_cpu():
    from workbench.attention import attention_maps, chefer_relevance, rollout

    torch.manual_seed(0)
    cpu = _vit().eval()
    x = torch.rand(2, 1, 32, 32)
    ref, got = attention_maps(cpu, x, device="cpu"), attention_maps(cpu, x, device="cuda")
    assert next(cpu.parameters()).device.type == "cpu"
    _close(rollout(got).cpu(), rollout(ref))
    _close(chefer_relevance(cpu, x, target=1, device="cuda").cpu(), chefer_relevance(cpu, x, target=1))


def test_dcmm_vit_trains_under_bf16_on_cuda():
    from workbench.models.dcmm import enable_dcmm

    torch.manual_seed(0)
    vit = enable_dcmm(timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=2, img_size=16,
                                        patch_size=4, depth=1, embed_dim=24, num_heads=2), communities=3).cuda()
    x = torch.rand(32, 3, 16, 16, device="cuda")
    y = (x[:, 0, :8].mean((1, 2)) > x[:, 0, 8:].mean((1, 2))).long()
    opt = torch.optim.AdamW(vit.parameters(), lr=3e-3)
    losses = []
    vit.train()
    for _ in range(30):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = nn.functional.cross_entropy(vit(x).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    attn = vit.blocks[0].attn
    assert attn.membership.w_pi.grad is not None and attn.membership.w_pi.grad.abs().sum() > 0


def test_deletion_insertion_and_randomisation_on_cuda_match_cpu():
    from workbench.evaluation.faithfulness import deletion_insertion
    from workbench.evaluation.sanity import randomisation_test

    torch.manual_seed(0)
    m = _cnn().eval()
    x = torch.rand(3, 1, 32, 32)
    maps = torch.rand(3, 32, 32)
    ref = deletion_insertion(m, x, maps, target=1, steps=8, baseline="zero")
    got = deletion_insertion(m, x, maps, target=1, steps=8, baseline="zero", device="cuda")
    for k in ("deletion", "insertion"):
        _close(torch.as_tensor(getattr(got, k)).cpu(), torch.as_tensor(getattr(ref, k)), rel=1e-4)
    r_cpu = randomisation_test(m, x, "saliency", target=1, progress=False)
    r_gpu = randomisation_test(copy.deepcopy(m).cuda(), x, "saliency", target=1, progress=False)
    assert list(r_gpu["layer"]) == list(r_cpu["layer"])  # the same seed randomises to the same weights
    assert (r_gpu["spearman"] - r_cpu["spearman"]).abs().max() < 1e-3
    r_auto = randomisation_test(copy.deepcopy(m).cuda(), x, "saliency", progress=False)  # target: GPU prediction
    assert len(r_auto) == len(r_cpu) and r_auto["spearman"].between(-1, 1).all()


def test_checkpoint_loads_onto_cuda(tmp_path):
    import workbench as wb
    from workbench.models import checkpoint

    m = wb.models.create("resnet18", num_classes=2, in_chans=1)
    checkpoint.save(m, tmp_path / "m")
    back = checkpoint.load(tmp_path / "m", device="cuda")
    assert next(back.parameters()).is_cuda
    x = torch.rand(2, 1, 64, 64)
    _close(back.eval()(x.cuda()).cpu(), m.eval()(x).detach())
