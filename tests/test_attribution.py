"""Attribution verb, registry and methods: invariants on tiny models (seconds on a CPU)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import timm
import torch
from torch import nn

import workbench.attribution as A
from workbench.attribution import METHODS, Attribution, attribute, baseline_like, normalise, register_method
from workbench.capture import hook_count

VIT_ONLY = {"attention_rollout", "chefer"}
CNN_ONLY = {"deeplift", "lrp"}
FAST = {  # small settings so every method runs in well under a second here
    "integrated_gradients": {"n_steps": 8},
    "smoothgrad": {"nt_samples": 3},
    "gradient_shap": {"n_samples": 4},
    "shap_gradient": {"n_samples": 4},
    "shap_partition": {"max_evals": 40},
    "feature_ablation": {"n_segments": 16},
    "occlusion": {"window": 8, "stride": 8},
    "rise": {"n_masks": 40},
    "xrai": {"base_kw": {"n_steps": 4}, "scales": (100, 500)},
}


def _cnn(c: int = 1, k: int = 3) -> nn.Module:
    """A narrow timm ResNet (BasicBlock, one block per stage, widths 8-64): ResNet-18's layout."""
    from timm.models.resnet import BasicBlock, ResNet

    return ResNet(BasicBlock, [1, 1, 1, 1], num_classes=k, in_chans=c, channels=(8, 16, 32, 64), stem_width=8)


def _vit(c: int = 1, size: int = 32, k: int = 3) -> nn.Module:
    return timm.create_model("vit_tiny_patch16_224", num_classes=k, in_chans=c, img_size=size, patch_size=8,
                             depth=2, embed_dim=48, num_heads=3, pretrained=False)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {k: f(c).eval() for k, f, c in [(("cnn", 1), _cnn, 1), (("cnn", 3), _cnn, 3),
                                             (("vit", 1), _vit, 1), (("vit", 3), _vit, 3)]}


def _state(m: nn.Module) -> dict:
    return {k: v.clone() for k, v in m.state_dict().items()}


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("method", [pytest.param(n, marks=pytest.mark.slow) if n.startswith("shap") else n
                                    for n in METHODS.names()])  # shap: ~10 s import + ~40 s numba JIT
def test_every_method_shape_finite_no_hooks(models, method, channels):
    arch = "vit" if method in VIT_ONLY else "cnn"
    archs = [arch] if method in VIT_ONLY | CNN_ONLY else ["cnn", "vit"]
    for arch in archs:
        m = models[(arch, channels)]
        before = _state(m)
        x = torch.rand(2, channels, 32, 32)
        x0 = x.clone()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            a = attribute(m, x, method=method, **FAST.get(method, {}))
        assert isinstance(a, Attribution) and a.method == method
        assert a.maps.shape == (2, 32, 32) and a.maps.dtype == torch.float32
        assert torch.isfinite(a.maps).all()
        assert a.target.shape == (2,) and a.target.dtype == torch.long
        if a.raw is not None:
            assert a.raw.shape == x.shape
        assert hook_count(m) == 0
        assert torch.equal(x, x0)  # inputs untouched
        assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())
        assert all(p.grad is None for p in m.parameters())


@pytest.mark.parametrize("baseline", [None, 0.0])
def test_integrated_gradients_completeness(models, baseline):
    """Sums to f(x) - f(reference), for the default reference (the blurred image) and for black."""
    m = models[("cnn", 1)]
    x = torch.rand(3, 1, 32, 32)
    kw = {} if baseline is None else {"baseline": baseline}
    a = attribute(m, x, target=1, method="integrated_gradients", n_steps=64, **kw)
    assert str(a.params["baseline"]) == ("blur" if baseline is None else "0.0")
    with torch.no_grad():
        gap = m(x)[:, 1] - m(baseline_like(x, "blur" if baseline is None else baseline))[:, 1]
    total = a.raw.sum((1, 2, 3))
    assert torch.allclose(total, gap, atol=1e-3 + 1e-2 * gap.abs().max().item())
    assert a.params["delta"].shape == (3,)
    assert torch.allclose(a.params["delta"].abs(), (total - gap).abs(), atol=1e-4)


def test_saliency_equals_autograd(models):
    m = models[("vit", 3)]
    x = torch.rand(2, 3, 32, 32)
    a = attribute(m, x, target=torch.tensor([0, 2]), method="saliency", abs=False)
    xr = x.clone().requires_grad_(True)
    out = m(xr)
    (g,) = torch.autograd.grad(out[0, 0] + out[1, 2], xr)
    assert torch.allclose(a.raw, g, atol=1e-6)
    assert torch.allclose(a.maps, g.sum(1), atol=1e-6)


def test_gradcam_default_layer_adapts_to_size():
    cnn = timm.create_model("resnet18", num_classes=2, in_chans=1, pretrained=False)
    assert A.default_cam_layer(cnn, (224, 224)) == "layer4"  # 7x7
    assert A.default_cam_layer(cnn, (64, 64)) == "layer2"  # 8x8, not layer4's 2x2
    assert A.default_cam_layer(cnn, (16, 16)) == "act1"  # nothing reaches 7 px: the finest stage
    assert A.default_cam_layer(_vit(1), (32, 32)) == "blocks.1.norm1"
    a = attribute(_cnn(1), torch.rand(1, 1, 64, 64), method="gradcam")
    assert a.params["layer"] == "layer2" and a.params["cam_size"] == (8, 8)
    assert (a.maps >= 0).all()


def test_gradcam_probe_without_feature_info():
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4), nn.Conv2d(4, 4, 3, padding=1),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    assert A.default_cam_layer(net, (32, 32)) == "4"  # last 4-D output at least 7 px (8x8)
    assert hook_count(net) == 0


def test_coarse_gradcam_warns(models):
    with pytest.warns(UserWarning, match="coarser"):
        attribute(_cnn(1), torch.rand(1, 1, 64, 64), method="gradcam", layer="layer4")


def test_target_changes_map(models):
    m = models[("cnn", 1)]
    x = torch.rand(1, 1, 32, 32)
    a0 = attribute(m, x, target=0, method="input_x_gradient")
    a1 = attribute(m, x, target=1, method="input_x_gradient")
    assert not torch.allclose(a0.maps, a1.maps)
    with torch.no_grad():
        pred = m(x).argmax(1)
    assert torch.equal(attribute(m, x, method="integrated_gradients", n_steps=4).target, pred)
    assert torch.equal(attribute(m, x, method="saliency").target, pred)


def test_bad_inputs(models):
    m = models[("cnn", 1)]
    x = torch.rand(2, 1, 32, 32)
    with pytest.raises(ValueError, match="valid attribution methods are: .*integrated_gradients"):
        attribute(m, x, method="lime")
    with pytest.raises(ValueError, match="model has 3 outputs"):
        attribute(m, x, target=3, method="saliency")
    with pytest.raises(ValueError, match="model has 3 outputs"):
        attribute(m, x, target=[0, -1], method="integrated_gradients")
    with pytest.raises(ValueError, match="one class per image"):
        attribute(m, x, target=[0, 1, 2], method="saliency")
    with pytest.raises(TypeError, match="integer class"):
        attribute(m, x, target=torch.tensor([0.5, 1.0]), method="saliency")
    with pytest.raises(TypeError, match="n_step"):
        attribute(m, x, method="integrated_gradients", n_step=8)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        attribute(m, torch.rand(32, 32), method="saliency")
    with pytest.raises(ValueError, match="meta"):
        attribute(m, torch.empty(2, 1, 32, 32, device="meta"), method="saliency")
    with pytest.raises(ValueError, match="vision transformer"):
        attribute(m, x, method="attention_rollout")
    with pytest.raises(ValueError, match="DeepLift has no rule"):
        attribute(models[("vit", 1)], x, method="deeplift")
    assert hook_count(m) == 0


def test_deeplift_on_resnet_sums_to_delta(models):
    m = models[("cnn", 1)]
    x = torch.rand(2, 1, 32, 32)
    assert attribute(m, x, target=0, method="deeplift").params["baseline"] == "blur"  # the default reference
    a = attribute(m, x, target=0, method="deeplift", baseline=0.0)
    with torch.no_grad():
        gap = m(x)[:, 0] - m(torch.zeros_like(x))[:, 0]
    assert torch.allclose(a.raw.sum((1, 2, 3)), gap, atol=1e-3 + 1e-3 * gap.abs().max().item())
    assert any(getattr(mod, "inplace", False) for mod in m.modules())  # the caller's model keeps inplace ReLUs


def test_train_mode_restored(models):
    m = _cnn(1)
    m.train()
    m.layer1.eval()  # mixed modes come back exactly
    modes = {n: mod.training for n, mod in m.named_modules()}
    for method in ("saliency", "gradcam", "integrated_gradients"):
        attribute(m, torch.rand(2, 1, 32, 32), method=method, **FAST.get(method, {}))
        assert {n: mod.training for n, mod in m.named_modules()} == modes


class _Boom(nn.Module):
    """A CNN whose forward fails after its first layers ran (hooks are in place by then)."""

    num_classes = 2

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        h = self.act(self.conv(x))
        raise RuntimeError("boom")


@pytest.mark.parametrize("method", ["gradcam", "saliency", "integrated_gradients", "deeplift", "occlusion",
                                    "smoothgrad", "gradient_shap"])
def test_no_hook_after_exception(method):
    m = _Boom().train()
    with pytest.raises(RuntimeError, match="boom"):
        attribute(m, torch.rand(2, 1, 16, 16), target=0, method=method,
                  **({"layer": "conv"} if method == "gradcam" else FAST.get(method, {})))
    assert hook_count(m) == 0
    assert m.training and m.conv.training


def test_dtypes_and_devices(models):
    m = models[("cnn", 1)]
    x = torch.rand(2, 1, 32, 32)
    ref = attribute(m, x, target=0, method="saliency")
    a64 = attribute(m, x.double(), target=0, method="saliency")
    assert a64.maps.dtype == torch.float32 and torch.allclose(a64.maps, ref.maps, atol=1e-5)
    u8 = (x * 255).round().to(torch.uint8)
    a8 = attribute(m, u8, target=0, method="saliency")
    assert torch.allclose(a8.maps, attribute(m, u8.float() / 255, target=0, method="saliency").maps)
    one = attribute(m, x[0], target=0, method="saliency")  # (C, H, W) -> (1, H, W)
    assert one.maps.shape == (1, 32, 32)
    cpu = attribute(m, x, target=0, method="saliency", device="cpu")
    assert torch.allclose(cpu.maps, ref.maps)
    if not torch.cuda.is_available():
        pytest.skip("no second device here: images-on-another-device path needs CUDA")
    xc = x.cuda()  # pragma: no cover - GPU machines
    a = attribute(m, xc, target=0, method="saliency")  # model on CPU, images on GPU
    assert a.maps.device == xc.device and next(m.parameters()).device.type == "cpu"


def test_internal_batch_size_same_result(models):
    m = models[("cnn", 1)]
    x = torch.rand(3, 1, 32, 32)
    for method, kw in [("saliency", {}), ("integrated_gradients", {"n_steps": 4}),
                       ("occlusion", {"window": 16, "stride": 16})]:
        full = attribute(m, x, method=method, **kw)
        small = attribute(m, x, method=method, internal_batch_size=2, **kw)
        assert torch.allclose(full.maps, small.maps, atol=1e-5), method
        assert torch.equal(full.target, small.target)


class _Const(nn.Module):
    num_classes = 2

    def __init__(self):
        super().__init__()
        self.b = nn.Parameter(torch.tensor([0.3, -0.2]))

    def forward(self, x):
        return self.b.expand(x.shape[0], 2) + 0 * x.sum((1, 2, 3))[:, None]


def test_all_zero_maps_are_defined():
    m = _Const()
    x = torch.rand(2, 1, 16, 16)
    for method in ("saliency", "integrated_gradients", "occlusion"):
        a = attribute(m, x, method=method, **FAST.get(method, {}))
        assert torch.count_nonzero(a.maps) == 0
        for mode in ("maxabs", "minmax", "positive", "sum"):
            n = normalise(a, mode)
            assert torch.isfinite(n).all() and torch.count_nonzero(n) == 0
        a.plot()


def test_normalise_modes():
    m = torch.tensor([[[-2.0, 1.0], [0.0, 1.0]]])
    assert torch.allclose(normalise(m), m / 2)
    assert normalise(m, "minmax").min() == 0 and normalise(m, "minmax").max() == 1
    assert (normalise(m, "positive") >= 0).all()
    assert torch.isclose(normalise(m, "sum").abs().sum(), torch.tensor(1.0))
    with pytest.raises(ValueError, match="mode"):
        normalise(m, "zscore")


def test_register_method_adds_and_rejects_duplicates(models):
    @register_method("_test_sign")
    def _sign(model, images, target):
        return torch.sign(images - 0.5)

    try:
        a = attribute(models[("cnn", 1)], torch.rand(2, 1, 32, 32), target=1, method="_test_sign")
        assert a.raw is not None and a.maps.shape == (2, 32, 32)
        with pytest.raises(ValueError, match="already registered"):
            register_method("_test_sign")(_sign)
    finally:
        METHODS._items.pop("_test_sign", None)


def test_slic_segments_and_window():
    seg = A.slic_segments(torch.rand(2, 1, 64, 64), n_segments=20)
    assert seg.shape == (2, 1, 64, 64) and seg.min() == 0 and 5 <= int(seg.max()) + 1 <= 60
    assert A.default_window(64, 64) == (8, 8) and A.default_window(224, 224) == (28, 28)


def test_attribution_grid_figure(models):
    import matplotlib

    matplotlib.use("Agg")
    from workbench.viz.attribution import attribution_grid

    m = models[("cnn", 1)]
    x = torch.rand(3, 1, 32, 32)
    masks = {"left_lung": torch.zeros(3, 32, 32, dtype=torch.bool), "heart": torch.zeros(3, 32, 32, dtype=torch.bool)}
    masks["left_lung"][:, 4:20, 4:14] = True
    masks["heart"][:, 16:28, 14:26] = True
    attrs = [attribute(m, x, method=k, **FAST.get(k, {})) for k in ("saliency", "integrated_gradients", "gradcam")]
    fig = attribution_grid(x, attrs, masks=masks, indices=[0, 2])
    axes = fig.get_axes()
    assert len(axes) == 6
    assert axes[0].get_ylabel() == "saliency" and len(axes[0].lines) >= 2
    fig2 = attribution_grid({"image": x, "masks": masks}, {a.method: a for a in attrs}, normalise=False, legend=False)
    assert len(fig2.get_axes()) == 9
    with pytest.raises(ValueError, match="images are"):
        attribution_grid(x[:2], attrs)
    ax = attrs[0].plot(1, image=x)
    assert ax.get_title().startswith("saliency")
    import matplotlib.pyplot as plt

    plt.close("all")


def test_smoothed_maps_keep_mass_and_move_the_maximum_off_noise():
    """A one-pixel spike beside a broad blob: the raw maximum is the spike, the smoothed one is the blob."""
    m = torch.zeros(1, 32, 32)
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    m[0] += 0.6 * torch.exp(-((yy - 20) ** 2 + (xx - 20) ** 2) / 8)
    m[0, 5, 5] = 1.0
    a = Attribution(m, None, "saliency", torch.zeros(1, dtype=torch.long), {"n": 1})
    s = a.smoothed(1.0)
    assert int(a.maps[0].argmax()) == 5 * 32 + 5
    assert int(s.maps[0].argmax()) == 20 * 32 + 20
    assert float(s.maps.sum()) == pytest.approx(float(m.sum()), rel=1e-3)
    assert s.params == {"n": 1, "smooth_sigma": 1.0} and a.params == {"n": 1} and s.raw is None
    assert torch.equal(a.smoothed(0).maps, a.maps)
    with pytest.raises(ValueError, match="sigma"):
        a.smoothed(-1)


def test_occlusion_and_ablation_replace_regions_with_a_blurred_copy_by_default():
    """The default baseline is a blurred image (in-distribution for radiographs); a constant still works.
    A model that only reads the mean of a bright square: blurring it out drops the logit there."""

    class Square(nn.Module):
        def forward(self, x):
            s = x[:, :, 12:20, 12:20].mean((1, 2, 3))
            return torch.stack([-s, s], 1)

    x = torch.zeros(1, 1, 32, 32)
    x[:, :, 12:20, 12:20] = 1.0
    for method, kw in (("occlusion", {"window": 4}), ("feature_ablation", {"segments": (torch.arange(32 * 32) // 128).view(1, 32, 32)})):
        a = attribute(Square(), x, target=1, method=method, **kw)
        assert a.params.get("baseline", "blur") == "blur" or method == "feature_ablation"
        inside, outside = a.maps[0, 12:20, 12:20].mean(), a.maps[0, :8, :8].mean()
        assert inside > 0.05 and abs(float(outside)) < 1e-6
        zero = attribute(Square(), x, target=1, method=method, baseline=0.0, **kw)
        assert zero.maps[0, 12:20, 12:20].mean() > inside  # a black fill removes more than a blur


@pytest.mark.slow  # shap import + numba JIT
@pytest.mark.parametrize("channels", [1, 3])
def test_shap_partition_equals_plain_shap_and_sums_to_the_masked_gap(models, channels):
    """Same Owen values as shap's own Image masker + Partition explainer on numpy (our masking runs
    on the model's device); they add up to f(x) - f(everything masked) per image, with the image's
    own channels (a grayscale image is explained over H*W features, not 3 copies)."""
    import shap

    m = models[("cnn", channels)]
    x = torch.rand(2, channels, 32, 32)
    t = torch.tensor([1, 2])
    a = attribute(m, x, target=t, method="shap_partition", max_evals=60)
    assert a.raw.shape == (2, channels, 32, 32) and a.params["model_evals"] <= 2 * 60 + 2
    plain = shap.maskers.Image("blur(16,16)", (32, 32, channels))  # "blur" = half the side
    for i in range(2):
        def f(z, k=int(t[i])):
            with torch.no_grad():
                return m(torch.from_numpy(z).float().permute(0, 3, 1, 2))[:, k:k + 1].numpy()

        xi = x[i:i + 1].permute(0, 2, 3, 1).numpy()
        ref = shap.explainers.Partition(f, plain)(xi, max_evals=60, batch_size=100, silent=True).values[0]
        assert np.allclose(a.raw[i].permute(1, 2, 0).numpy(), ref.reshape(32, 32, channels), atol=1e-6)
        hidden = torch.from_numpy(plain(None, xi[0])[0]).reshape(1, 32, 32, channels).permute(0, 3, 1, 2)
        with torch.no_grad():
            gap = float(m(x[i:i + 1])[0, t[i]] - m(hidden)[0, t[i]])
        assert abs(float(a.raw[i].sum()) - gap) < 1e-4 + 1e-3 * abs(gap)
    # the model's chunk size changes speed only; shap's plan is fixed by plan_batch
    small = attribute(m, x, target=t, method="shap_partition", max_evals=60, internal_batch_size=3)
    assert torch.allclose(small.raw, a.raw, atol=1e-6)
    with pytest.raises(ValueError, match="plan_batch"):
        attribute(m, x, target=t, method="shap_partition", max_evals=60, plan_batch=0)


@pytest.mark.slow
def test_shap_partition_inpaint_sees_unit_range_images():
    """OpenCV inpainting casts to 8 bits; images in [0, 1] are scaled for it and back, so the model
    sees inpainted mid-grey, not a picture quantised to 0/1."""
    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append(x.detach().clone())
            return torch.stack([x.mean((1, 2, 3)), -x.mean((1, 2, 3))], 1)

    x = 0.5 + 0.05 * torch.rand(1, 1, 24, 24)
    attribute(Probe(), x, target=0, method="shap_partition", masker="inpaint_telea", max_evals=20)
    fed = torch.cat(seen)
    assert fed.min() > 0.3 and fed.max() < 0.7


def test_smoothgrad_averages_signed_gradients_then_takes_the_magnitude():
    """Smilkov et al.'s reference: mean of gradients over noisy copies, magnitude afterwards, so the
    noise cancels. f = 0.5 * sum(x^2) has gradient x: on the black background SmoothGrad must be ~0
    (mean |x + noise| would be 0.8 sigma there), on the bright square ~1."""

    class Square(nn.Module):
        def forward(self, x):
            e = 0.5 * (x ** 2).sum((1, 2, 3))
            return torch.stack([e, -e], 1)

    x = torch.zeros(2, 1, 16, 16)
    x[:, :, 4:8, 4:8] = 1.0
    a = attribute(Square(), x, target=0, method="smoothgrad", nt_samples=200, stdevs=0.2)
    assert a.maps[:, 10:, 10:].abs().mean() < 0.05
    assert (a.maps[:, 4:8, 4:8] - 1).abs().mean() < 0.05
    signed = attribute(Square(), x, target=1, method="smoothgrad", nt_samples=200, stdevs=0.2, abs=False)
    assert (signed.maps[:, 4:8, 4:8] + 1).abs().mean() < 0.05  # d(-e)/dx = -x
    assert signed.params["abs"] is False and a.params["stdevs_abs"] == pytest.approx(0.2)


def test_integrated_gradients_default_passes_are_bounded_and_change_nothing(models):
    """Without internal_batch_size, IG runs passes of about 2**20 input values on a CPU (16 inputs of
    1 x 256 x 256 here) instead of images x steps at once; the values are those of one big pass."""
    from workbench.attribution._core import default_batch

    m = models[("cnn", 1)]
    x = torch.rand(3, 1, 256, 256)
    assert default_batch(x) == 16 and default_batch(torch.rand(2, 1, 64, 64)) == 256
    sizes = []
    h = m.register_forward_pre_hook(lambda mod, a: sizes.append(a[0].shape[0]))
    try:
        chunked = attribute(m, x, target=1, method="integrated_gradients", n_steps=8)
    finally:
        h.remove()
    assert max(sizes) <= 16
    whole = attribute(m, x, target=1, method="integrated_gradients", n_steps=8, internal_batch_size=10_000)
    torch.testing.assert_close(chunked.raw, whole.raw, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("method, kw", [("smoothgrad", {"nt_samples": 8}), ("gradient_shap", {"n_samples": 8}),
                                        ("smoothgrad", {"nt_samples": 2, "base": "integrated_gradients", "n_steps": 4})])
def test_noisy_methods_default_passes_are_bounded_and_seeded(models, method, kw):
    """SmoothGrad and GradientSHAP run passes of at most default_batch inputs (16 at 1 x 256 x 256)
    instead of images x samples at once, and the same seed and settings give the same maps (also
    GradientSHAP, whose interpolation points captum draws from numpy's global generator)."""
    m = models[("cnn", 1)]
    x = torch.rand(3, 1, 256, 256)
    sizes = []
    h = m.register_forward_pre_hook(lambda mod, a: sizes.append(a[0].shape[0]))
    try:
        a = attribute(m, x, target=1, method=method, **kw)
    finally:
        h.remove()
    assert max(sizes) <= 16 and sum(sizes) == 24  # 3 images x 8 samples (x steps), nothing dropped
    again = attribute(m, x, target=1, method=method, **kw)
    assert torch.equal(a.maps, again.maps) and torch.isfinite(a.maps).all()
