"""TorchXRayVision models: their input scaling inside the model (so they take [0, 1] images), logits,
checkpoints and weights from a local file; built without downloading weights."""
from __future__ import annotations

import os

import pytest
import torch

import workbench as wb

xrv = pytest.importorskip("torchxrayvision")
from workbench.models.xrv import XRVModel  # noqa: E402

LABELS = xrv.models.model_urls["densenet121-res224-all"]["labels"]


def tiny(resolution=32):
    torch.manual_seed(0)
    net = xrv.models.DenseNet(block_config=(1, 1), growth_rate=8, num_init_features=8, bn_size=2, num_classes=18)
    return XRVModel(net, "densenet", LABELS, resolution).eval()


def test_scaling_happens_inside_and_matches_torchxrayvision():
    m = tiny()
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(m.scale(x), (2 * x - 1) * 1024)
        ref = m.net((2 * x - 1) * 1024)   # TorchXRayVision's own forward on its own input range
        torch.testing.assert_close(m(x), ref)
        torch.testing.assert_close(m(x.repeat(1, 3, 1, 1)), ref, rtol=1e-4, atol=1e-4)   # RGB averaged
        small = torch.rand(1, 1, 16, 16)
        up = torch.nn.functional.interpolate(small, size=(32, 32), mode="bilinear", antialias=True)
        torch.testing.assert_close(m(small), m.net((2 * up - 1) * 1024))                  # resized to native
    with pytest.raises(ValueError, match="square images"):
        m(torch.rand(1, 1, 16, 24))
    att = wb.attribute(m, torch.rand(2, 1, 16, 16), method="saliency")
    assert att.maps.shape == (2, 16, 16) and att.maps.abs().sum() > 0


@pytest.mark.slow
def test_densenet121_and_resnet50_built_without_weights(tmp_path, monkeypatch):
    m = wb.models.create("xrv:densenet121-res224-all", pretrained=False)
    assert m.targets == tuple(LABELS) and m.workbench_config["num_classes"] == 18
    assert m.workbench_config["img_size"] == [224, 224] and m.workbench_config["in_chans"] == 1
    x = torch.rand(1, 1, 64, 64)
    m.eval()
    with torch.no_grad():
        y = m(x)
    wb.models.save(m, tmp_path / "m")
    with torch.no_grad():
        torch.testing.assert_close(wb.models.load(tmp_path / "m").eval()(x), y)
    # pretrained weights from TorchXRayVision's cache folder (a local file: no download)
    url = xrv.models.model_urls["densenet121-res224-all"]["weights_url"]
    torch.save(m.net, tmp_path / os.path.basename(url))
    p = wb.models.create("xrv:densenet121-res224-all", cache_dir=tmp_path).eval()
    assert p.workbench_config["pretrained"] is True and p.op_threshs.shape == (18,)
    with torch.no_grad():
        torch.testing.assert_close(p(x), y)
    head = wb.models.create("xrv:densenet121-res224-all", num_classes=2, cache_dir=tmp_path)
    assert head(x).shape == (1, 2) and torch.equal(head.net.features.conv0.weight, p.net.features.conv0.weight)
    monkeypatch.setattr(xrv.utils, "download", lambda *a, **k: (_ for _ in ()).throw(OSError("no internet")))
    with pytest.raises(RuntimeError, match=r"could not load .*densenet121-res224-nih.*download https://.*pretrained=False"):
        wb.models.create("xrv:densenet121-res224-nih", cache_dir=tmp_path / "empty")
    with pytest.raises(ValueError, match=r"unknown TorchXRayVision weights 'densenet999'.*xrv:resnet50-res512-all"):
        wb.models.create("xrv:densenet999")
    r = wb.models.create("xrv:resnet50-res512-all", pretrained=False)
    assert r.workbench_config["img_size"] == [512, 512] and r.eval()(x).shape == (1, 18)
