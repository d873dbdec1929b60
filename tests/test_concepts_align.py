"""wc.test_time_align: a new site's field of view, contrast, brightness and gamma undone at the input
by matching the model's feature statistics to the source's, with no labels and no training."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import workbench as wb
from workbench import concepts as wc
from workbench.concepts.align import InputAlignment

STYLE = {"fov": 1.15, "contrast": 0.7, "gamma": 1.4, "brightness": 0.08}


def _acquire(x: torch.Tensor, fov: float, contrast: float, gamma: float, brightness: float) -> torch.Tensor:
    """The phantom's acquisition (without blur and noise) applied to images: what InputAlignment inverts."""
    y = (brightness + contrast * (x - 0.45) + 0.45).clamp(0, 1) ** gamma
    theta = torch.tensor([[fov, 0.0, 0.0], [0.0, fov, 0.0]]).expand(len(y), 2, 3)
    grid = F.affine_grid(theta, list(y.shape), align_corners=False)
    return F.grid_sample(y, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@pytest.fixture(scope="module")
def chest() -> dict:
    src = wb.data.load("phantom", split="train", n=96, size=32, sites="A", progress=False)
    x = src.batch(range(len(src)))["image"]
    return {"source": x[:64], "site": _acquire(x[64:], **STYLE), "paired": x[64:]}


def _vit() -> nn.Module:
    torch.manual_seed(0)
    return wb.models.create("vit_tiny", 3, 32, 1, patch_size=8, depth=2, embed_dim=32, num_heads=2).eval()


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return wb.models.create("resnet18", 3, 32, 1).eval()


def test_inverse_map_undoes_the_acquisition_it_models(chest):
    x = chest["paired"]
    back = InputAlignment(**STYLE)(_acquire(x, **STYLE))
    inner = (slice(None), slice(None), slice(6, 26), slice(6, 26))   # zoom-out borders are lost for good
    assert (back - x)[inner].abs().mean() < 0.02 < (_acquire(x, **STYLE) - x)[inner].abs().mean()
    assert torch.equal(InputAlignment()(x), x)


@pytest.mark.parametrize("make", [_vit, _cnn], ids=["vit", "resnet"])
def test_alignment_brings_features_and_outputs_back_without_changing_the_model(chest, make):
    model = make()
    before = copy.deepcopy(model.state_dict())
    aligned = wc.test_time_align(model, chest["source"], chest["site"], max_evals=200, progress=False)
    info = aligned.test_time_alignment
    assert info["distance_after"] < 0.3 * info["distance_before"]
    with torch.no_grad():
        ref = model(chest["paired"])          # the same images as acquired at the source
        err_raw = (model(chest["site"]) - ref).abs().mean()
        err_aligned = (aligned(chest["site"]) - ref).abs().mean()
    assert err_aligned < 0.3 * err_raw
    assert abs(info["params"]["fov"] - STYLE["fov"]) < 0.05 and abs(info["params"]["contrast"] - STYLE["contrast"]) < 0.1
    for k, v in before.items():
        torch.testing.assert_close(model.state_dict()[k], v)
    assert info["stem"] in dict(model.named_modules())


def test_source_images_stay_near_the_identity(chest):
    model = _vit()
    aligned = wc.test_time_align(model, chest["source"], chest["paired"], max_evals=150)
    p = aligned.test_time_alignment["params"]
    assert abs(p["fov"] - 1) < 0.05 and abs(p["contrast"] - 1) < 0.15 and abs(p["brightness"]) < 0.08
    x = chest["paired"]
    with torch.no_grad():
        assert (aligned(x) - model(x)).abs().mean() < 0.25 * (model(chest["site"]) - model(x)).abs().mean()


def test_normalising_an_aligned_model_measures_the_source_unaligned(chest):
    model = _vit()
    aligned = wc.test_time_align(model, chest["source"], chest["site"], max_evals=60)
    a = wc.test_time_normalise(aligned, chest["source"], prior=16)
    b = wc.test_time_normalise(model, chest["source"], prior=16)
    for (na, ma), (nb, mb) in zip(a.named_buffers(), b.named_buffers()):
        if "source_" in na:
            torch.testing.assert_close(ma, mb)
    with torch.no_grad():
        torch.testing.assert_close(a(chest["site"]), b(_align_like(aligned, chest["site"])))


def _align_like(aligned: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return InputAlignment(**aligned.test_time_alignment["params"])(x)


def test_align_bad_input(chest):
    model = _vit()
    with pytest.raises(ValueError, match="needs source="):
        wc.test_time_align(model, None, chest["site"])
    with pytest.raises(ValueError, match="unknown layer"):
        wc.test_time_align(model, chest["source"], chest["site"], layers=["blocks.9"])
    with pytest.raises(ValueError, match="channel"):
        wc.test_time_align(model, chest["source"], chest["site"].repeat(1, 3, 1, 1))
    with pytest.raises(ValueError, match="max_evals"):
        wc.test_time_align(model, chest["source"], chest["site"], max_evals=2)

    class NoConv(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bn = nn.BatchNorm1d(4)

        def forward(self, x):
            return self.bn(x.flatten(1)[:, :4].unsqueeze(-1))

    with pytest.raises(ValueError, match="no Conv2d"):
        wc.test_time_align(NoConv().eval(), chest["source"], chest["site"])
