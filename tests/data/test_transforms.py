"""workbench.data.transforms: samples and batches, masks follow geometric transforms exactly."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from workbench.data import ArrayDataset
from workbench.data import transforms as T

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def blobs(b=4, h=24, w=20, device="cpu"):
    """A batch whose image encodes its masks: image = lung + 2 * heart (distinct values)."""
    g = torch.Generator().manual_seed(0)
    lung = torch.rand(b, h, w, generator=g) > 0.6
    heart = torch.zeros(b, h, w, dtype=torch.bool)
    heart[:, 5:15, 4:12] = True
    img = (lung.float() + 2 * heart.float())[:, None] / 3
    return {"image": img.to(device), "masks": {"lung": lung.to(device), "heart": heart.to(device)},
            "mask_present": {"lung": torch.ones(b, dtype=torch.bool), "heart": torch.ones(b, dtype=torch.bool)},
            "label": torch.zeros(b, dtype=torch.long)}


def decode(img):
    v = (img[:, 0] * 3).round().long()
    return v % 2 == 1, v >= 2


@pytest.mark.parametrize("device", DEVICES)
def test_random_affine_masks_follow_exactly(device):
    batch = blobs(device=device)
    before = {k: v.clone() for k, v in batch["masks"].items()}
    aug = T.RandomAffine(degrees=30, translate=0.1, scale=(0.8, 1.2), interpolation="nearest", seed=0)
    out = aug(batch)
    lung, heart = decode(out["image"])
    assert torch.equal(out["masks"]["lung"], lung) and torch.equal(out["masks"]["heart"], heart)
    assert out["masks"]["lung"].dtype == torch.bool and out["image"].device.type == device
    assert not torch.equal(out["masks"]["heart"][0], out["masks"]["heart"][1])  # one draw per sample
    assert all(torch.equal(batch["masks"][k], before[k]) for k in before)     # input untouched
    # a single sample follows too
    s = {"image": batch["image"][0], "masks": {k: v[0] for k, v in batch["masks"].items()}}
    o = T.RandomAffine(degrees=45, translate=0.2, interpolation="nearest", seed=3)(s)
    lung, heart = decode(o["image"][None])
    assert torch.equal(o["masks"]["lung"], lung[0]) and torch.equal(o["masks"]["heart"], heart[0])


def test_random_affine_bilinear_masks_match_nearest_and_seed_reproducible():
    batch = blobs()
    a = T.RandomAffine(degrees=20, translate=0.1, seed=5)(batch)
    b = T.RandomAffine(degrees=20, translate=0.1, interpolation="nearest", seed=5)(batch)
    assert all(torch.equal(a["masks"][k], b["masks"][k]) for k in a["masks"])
    assert not torch.equal(a["image"], b["image"])
    torch.manual_seed(1)
    c = T.RandomAffine(degrees=20)(batch)
    torch.manual_seed(1)
    d = T.RandomAffine(degrees=20)(batch)
    assert torch.equal(c["image"], d["image"])


def test_affine_exact_geometry():
    m = torch.zeros(8, 8, dtype=torch.bool)
    m[1:3, 5:7] = True
    s = {"image": m.float()[None], "masks": {"a": m}}
    assert torch.equal(T.affine(s, angle=90.0)["masks"]["a"], torch.rot90(m, 1, (0, 1)))  # counter-clockwise
    shifted = torch.zeros_like(m)
    shifted[2:4, 7:] = True
    out = T.affine(s, translate=(2, 1))
    assert torch.equal(out["masks"]["a"], shifted) and torch.equal(out["image"][0] > 0.5, shifted)
    ident = T.affine(s)
    assert torch.equal(ident["masks"]["a"], m) and torch.allclose(ident["image"], s["image"])
    r = torch.rand(6, 10) > 0.5  # non-square: 180 degrees is a double flip
    assert torch.equal(T.affine({"image": r.float()[None], "masks": {"r": r}}, angle=180.0)["masks"]["r"],
                       r.flip(0).flip(1))


def test_resize_sample_and_batch():
    batch = blobs(b=2, h=8, w=10)
    out = T.Resize((16, 20))(batch)
    assert out["image"].shape == (2, 1, 16, 20) and out["masks"]["lung"].shape == (2, 16, 20)
    want = batch["masks"]["lung"].repeat_interleave(2, 1).repeat_interleave(2, 2)
    assert torch.equal(out["masks"]["lung"], want)
    down = T.Resize(5)({"image": batch["image"][0], "masks": {"lung": batch["masks"]["lung"][0]}})
    assert down["image"].shape == (1, 5, 5) and down["masks"]["lung"].dtype == torch.bool
    ref = F.interpolate(batch["masks"]["lung"][:1, None].float(), size=(5, 5), mode="nearest-exact")[0, 0] > 0.5
    assert torch.equal(down["masks"]["lung"], ref)
    u8 = T.resize_images(torch.full((3, 1, 8, 8), 200, dtype=torch.uint8), 4)
    assert u8.dtype == torch.uint8 and (u8 == 200).all()


def test_to_channels_and_normalize():
    img = torch.rand(2, 1, 4, 4)
    rgb = T.ToChannels(3)(img)
    assert rgb.shape == (2, 3, 4, 4) and torch.equal(rgb[:, 2], img[:, 0])
    col = torch.zeros(3, 2, 2)
    col[0] = 1.0
    assert torch.allclose(T.ToChannels(1)(col), torch.full((1, 2, 2), 0.299))
    with pytest.raises(ValueError, match="1 -> 3"):
        T.to_channels(torch.zeros(2, 4, 4), 3)
    s = {"image": torch.ones(3, 2, 2), "masks": {"m": torch.ones(2, 2, dtype=torch.bool)}}
    n = T.Normalize([0.5, 0.5, 0.5], [0.25, 0.5, 1.0])(s)
    assert torch.allclose(n["image"][:, 0, 0], torch.tensor([2.0, 1.0, 0.5])) and n["masks"] is s["masks"]
    with pytest.raises(ValueError, match="one per channel"):
        T.Normalize([0.5, 0.5], [1.0, 1.0])(s)


def test_horizontal_flip_and_swap():
    batch = blobs(b=3)
    batch["masks"] = {"left_lung": batch["masks"]["lung"], "right_lung": batch["masks"]["heart"]}
    batch["mask_present"] = {"left_lung": torch.tensor([True, False, True]),
                             "right_lung": torch.tensor([True, True, True])}
    with pytest.warns(UserWarning, match="swap="):
        plain = T.RandomHorizontalFlip(1.0, seed=0)(batch)
    assert torch.equal(plain["image"], batch["image"].flip(-1))
    assert torch.equal(plain["masks"]["left_lung"], batch["masks"]["left_lung"].flip(-1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sw = T.RandomHorizontalFlip(1.0, swap={"left_lung": "right_lung"}, seed=0)(batch)
    assert torch.equal(sw["masks"]["left_lung"], batch["masks"]["right_lung"].flip(-1))
    assert torch.equal(sw["masks"]["right_lung"], batch["masks"]["left_lung"].flip(-1))
    assert sw["mask_present"]["right_lung"].tolist() == [True, False, True]
    s = {"image": batch["image"][0], "masks": {"left_lung": batch["masks"]["left_lung"][0]}}
    o = T.RandomHorizontalFlip(1.0, swap={"left_lung": "right_lung"})(s)
    assert list(o["masks"]) == ["right_lung"]
    assert torch.equal(T.RandomHorizontalFlip(0.0)(batch)["image"], batch["image"])
    half = T.RandomHorizontalFlip(0.5, seed=1)(blobs(b=16))
    flipped = [not torch.equal(half["image"][i], blobs(b=16)["image"][i]) for i in range(16)]
    assert 0 < sum(flipped) < 16


def test_compose_on_dataset_samples_and_batches():
    b = blobs(b=4, h=16, w=16)
    aug = T.Compose([T.Resize(32, interpolation="nearest"), T.RandomAffine(10, interpolation="nearest", seed=0), T.ToChannels(3)])
    ds = ArrayDataset(b["image"], torch.zeros(4), classes=("a", "b"), task="binary", masks=b["masks"], transform=aug)
    batch = ds.batch([0, 1, 2])
    assert batch["image"].shape == (3, 3, 32, 32) and batch["masks"]["heart"].shape == (3, 32, 32)
    lung, heart = decode(batch["image"][:, :1])
    assert torch.equal(batch["masks"]["heart"], heart) and torch.equal(batch["masks"]["lung"], lung)
    sample = ds[1]
    assert sample["image"].shape == (3, 32, 32) and sample["masks"]["lung"].shape == (32, 32)
    assert T.Resize(8)(torch.rand(1, 16, 16)).shape == (1, 8, 8)  # bare tensors work too
    with pytest.raises(TypeError, match="'image' entry"):
        aug([1, 2, 3])


def test_random_intensity():
    batch = blobs(b=6)
    aug = T.RandomIntensity(brightness=0.1, contrast=0.2, gamma=(0.8, 1.2), noise=0.02, seed=0)
    out = aug(batch)
    assert out["image"].shape == batch["image"].shape and 0 <= out["image"].min() and out["image"].max() <= 1
    assert out["masks"] is batch["masks"] and not torch.equal(out["image"], batch["image"])
    again = T.RandomIntensity(brightness=0.1, contrast=0.2, gamma=(0.8, 1.2), noise=0.02, seed=0)(batch)
    assert torch.equal(out["image"], again["image"])
    assert torch.equal(T.RandomIntensity()(batch)["image"], batch["image"])
    with pytest.raises(ValueError, match=">= 0"):
        T.RandomIntensity(brightness=-1)
