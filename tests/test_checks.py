"""workbench._checks: the validation layer every public verb calls at its boundary."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import workbench as wb
from workbench import _checks as C


@pytest.fixture(scope="module")
def vit():
    return wb.models.create("vit_tiny", num_classes=2, img_size=32, in_chans=1, patch_size=8, depth=1,
                            embed_dim=32, num_heads=2)


@pytest.fixture(scope="module")
def cnn():
    return wb.models.create("resnet18", num_classes=2, img_size=32, in_chans=1)


def test_model_input(vit, cnn):
    assert C.model_input(vit) == C.InputSpec(1, (32, 32), (8, 8), (0.0, 1.0))
    assert C.model_input(cnn) == C.InputSpec(1, None, None, (0.0, 1.0))
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3))
    m.input_range = None
    assert C.model_input(m) == C.InputSpec(3, None, None, None)


def test_images_pass_through_without_copy(vit):
    x = torch.rand(2, 1, 32, 32)
    assert C.check_images(x, vit) is x
    assert C.check_images(x[0]).shape == (1, 1, 32, 32)  # one (C, H, W) image
    assert C.check_images(np.random.rand(1, 1, 8, 8).astype(np.float32)).shape == (1, 1, 8, 8)


def test_images_hint_at_0_255_and_standardised():
    with pytest.raises(ValueError, match=r"look like 0-255 pixel values: divide them by 255"):
        C.check_images(torch.rand(2, 1, 8, 8) * 255)
    with pytest.raises(ValueError, match=r"look standardised"):
        C.check_images((torch.rand(2, 1, 8, 8) - 0.5) / 0.25)


def test_images_small_excursions_pass():
    # augmentation (bilinear/bicubic resampling, intensity jitter) strays a hair outside [0, 1]
    C.check_images(torch.rand(2, 1, 8, 8) * 1.08 - 0.04)
    with pytest.raises(ValueError, match="1.2"):
        C.check_images(torch.full((1, 1, 4, 4), 1.2))


def test_images_nonfinite_named():
    x = torch.rand(3, 1, 8, 8)
    x[1, 0, 2, 2] = float("nan")
    x[2, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"1 NaN and 1 inf pixels, in images \[1, 2\] of 3"):
        C.check_images(x)


def test_images_model_range_opt_out():
    m = torch.nn.Conv2d(1, 1, 3)
    x = (torch.rand(1, 1, 8, 8) - 0.5) / 0.25
    with pytest.raises(ValueError, match="model.input_range"):
        C.check_images(x, m)
    m.input_range = None
    C.check_images(x, m)
    m.input_range = (-3, 3)
    C.check_images(x, m)
    with pytest.raises(ValueError, match="non-finite"):
        C.check_images(x * float("inf"), m)


@pytest.mark.parametrize("bad, err, says", [
    ([torch.rand(1, 8, 8)], TypeError, "torch.stack"),
    (torch.rand(8, 8), ValueError, r"image\[None, None\]"),
    (torch.rand(0, 1, 8, 8), ValueError, "empty"),
    (torch.randint(0, 255, (1, 1, 8, 8)), TypeError, r"float\(\) / 255"),
    (torch.randint(0, 255, (1, 1, 8, 8), dtype=torch.uint8), TypeError, "uint8"),
    (torch.rand(1, 1, 8, 8) > 0.5, TypeError, "bool"),
])
def test_images_bad_types_and_shapes(bad, err, says):
    with pytest.raises(err, match=says):
        C.check_images(bad)


def test_images_uint8_when_allowed():
    x = torch.randint(0, 255, (1, 1, 8, 8), dtype=torch.uint8)
    assert C.check_images(x, allow_uint8=True) is x


def test_images_against_model(vit, cnn):
    with pytest.raises(ValueError, match=r"3 channel\(s\).*takes 1.*ToChannels\(1\)"):
        C.check_images(torch.rand(1, 3, 32, 32), vit)
    with pytest.raises(ValueError, match=r"48x48.*built for 32x32.*resize_images"):
        C.check_images(torch.rand(1, 1, 48, 48), vit)
    C.check_images(torch.rand(1, 1, 48, 48), cnn)  # CNNs take any size


def test_labels():
    assert C.check_labels(torch.tensor([[0.0], [1.0]]), num_outputs=2).tolist() == [0, 1]
    assert C.check_labels(np.array([True, False])).dtype == torch.long
    with pytest.raises(ValueError, match=r"fractional values \(e.g. \[0.2"):
        C.check_labels(torch.tensor([0.2, 1.0]))
    with pytest.raises(ValueError, match=r"class\(es\) \[2\].*2 outputs"):
        C.check_labels(torch.tensor([0, 2]), num_outputs=2)
    with pytest.raises(ValueError, match="NaN"):
        C.check_labels(torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match="3 rows but there are 2 images"):
        C.check_labels(torch.tensor([0, 1, 1]), n=2)
    with pytest.raises(TypeError, match="numeric"):
        C.check_labels(["a", "b"])
    ml = C.check_labels(torch.tensor([[0, 1, 1], [1, 0, 0]]), task="multilabel", num_outputs=3)
    assert ml.dtype == torch.float32
    with pytest.raises(ValueError, match="0/1"):
        C.check_labels(torch.tensor([[0.5, 1.0]]), task="multilabel")
    with pytest.raises(ValueError, match="2 columns but the model has 3"):
        C.check_labels(torch.tensor([[0, 1]]), task="multilabel", num_outputs=3)


def test_outputs():
    C.check_outputs(2, num_classes=2, task="binary")
    with pytest.raises(ValueError, match="3 outputs but the data has 2 classes"):
        C.check_outputs(3, num_classes=2, task="binary")


def test_dataset():
    ds = wb.data.ArrayDataset(torch.rand(2, 1, 4, 4), torch.tensor([0, 1]), classes=("a", "b"), task="binary")
    assert C.check_dataset(ds) is ds
    with pytest.raises(TypeError, match="plain list of 2 items"):
        C.check_dataset([ds[0], ds[1]])
    with pytest.raises(ValueError, match="empty"):
        C.check_dataset(ds.subset([]))
    with pytest.raises(ValueError, match="empty"):
        C.check_dataset((torch.rand(0, 1, 4, 4), torch.zeros(0)))
    with pytest.raises(TypeError, match="int"):
        C.check_dataset(3)


def test_masks():
    images = torch.rand(2, 1, 8, 8)
    m = {"a": torch.zeros(2, 8, 8, dtype=torch.bool)}
    assert C.check_masks(m, images) == m
    assert C.check_masks({"masks": m, "mask_present": {}}, images) == m
    with pytest.raises(ValueError, match=r"16x16 but the images are 8x8.*resize_masks"):
        C.check_masks({"a": torch.zeros(2, 16, 16)}, images)
    with pytest.raises(ValueError, match="holds 3 images but there are 2"):
        C.check_masks({"a": torch.zeros(3, 8, 8)}, images)
    with pytest.raises(ValueError, match="every mask"):
        C.check_masks(m, images, nonempty=True)
    with pytest.raises(TypeError, match="dict"):
        C.check_masks(["a"], images)


def test_output_path(tmp_path):
    p = C.check_output_path(tmp_path / "new" / "deeper" / "fig.png")
    assert p.parent.is_dir() and not p.exists() and not list(p.parent.iterdir())  # the probe is gone
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
        C.check_output_path(f / "out.png")
    with pytest.raises(NotADirectoryError, match="is a file"):
        C.check_output_path(f, directory=True)
    with pytest.raises(IsADirectoryError, match="is a folder"):
        C.check_output_path(tmp_path)
    with pytest.raises(PermissionError, match="not writable"):
        C.check_output_path("/sys/workbench_probe/out.png")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_device_without_gpu():
    with pytest.raises(ValueError, match="CUDA GPU.*device='auto'"):
        C.check_device("cuda")
    with pytest.raises(ValueError, match="not a valid torch device"):
        C.check_device("tpu")
    assert C.check_device("cpu").type == "cpu"


def test_common_arguments():
    assert C.check_int(3, "epochs") == 3
    assert C.check_int(np.int64(0), "n", minimum=0) == 0
    for bad, err in ((0, ValueError), (2.5, TypeError), (True, TypeError), ("3", TypeError)):
        with pytest.raises(err, match="epochs must be an int >= 1"):
            C.check_int(bad, "epochs")
    assert C.check_int(None, "n", none_ok=True) is None
    assert C.check_number(0.5, "ci", low=0, high=1, low_open=True, high_open=True) == 0.5
    for bad in (1.0, float("nan"), -0.1):
        with pytest.raises(ValueError, match=r"ci must be a number in \(0, 1\)"):
            C.check_number(bad, "ci", low=0, high=1, low_open=True, high_open=True)
    with pytest.raises(TypeError, match="lr"):
        C.check_number("fast", "lr", low=0)
    assert C.check_choice("a", "mode", ("a", "b")) == "a"
    with pytest.raises(ValueError, match=r"mode must be one of \['a', 'b'\]"):
        C.check_choice("c", "mode", ("a", "b"))
    assert C.check_index(-1, 4) == 3
    with pytest.raises(ValueError, match=r"index=4 is out of range for 4 images"):
        C.check_index(4, 4)
    with pytest.raises(TypeError, match="augment must be callable"):
        C.check_callable("flip", "augment")
    with pytest.raises(TypeError, match="torch.nn.Module"):
        C.check_model("resnet18")


def test_data_checks_images_as_the_model_sees_them(cnn):
    x, y = torch.rand(4, 1, 32, 32), torch.tensor([0, 1, 0, 1])
    images, labels = C.check_data((x, y.float()), cnn)
    assert images is x and labels.dtype == torch.long
    with pytest.raises(ValueError, match="data images range from .* 0-255"):
        C.check_data((x * 255, y), cnn)
    ds = wb.data.ArrayDataset(x.repeat(1, 3, 1, 1), y, classes=("a", "b"), task="binary")
    with pytest.raises(ValueError, match=r"train images have 3 channel\(s\)"):
        C.check_data(ds, cnn, name="train")
    standardised = wb.data.ArrayDataset((x - 0.5) / 0.25, y, classes=("a", "b"), task="binary")
    with pytest.raises(ValueError, match="look standardised"):
        C.check_data(standardised, cnn)


def test_result_check():
    class Atlas:
        structures = ()

        def best_per_structure(self):
            return None

    a = Atlas()
    assert C.check_result(a, ("best_per_structure", "structures"), "an Atlas (workbench.sae.atlas)") is a
    with pytest.raises(TypeError, match=r"expected an Atlas \(workbench.sae.atlas\); got dict"):
        C.check_result({}, ("best_per_structure",), "an Atlas (workbench.sae.atlas)")
