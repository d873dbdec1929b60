"""workbench.data.load: every source, MedMNIST offline, folder datasets and bad input."""
from __future__ import annotations

import socket
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import workbench.data as wd
from workbench.data import ArrayDataset, load, shared_data_path
from workbench.data import npz as npz_mod
from workbench.data.transforms import resize_masks

CXR_STRUCTURES = {"left_lung", "right_lung", "cardiomediastinum", "airways", "ground_glass_opacity",
                  "consolidation", "device", "pleural_effusion", "pneumothorax"}


# ----------------------------------------------------------------------------- helpers
@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""
    def refuse(*a, **k):
        raise AssertionError("network access attempted")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """No shared data and an empty data/ folder: only what the test puts there exists."""
    monkeypatch.setattr(npz_mod, "shared_data_path", lambda: None)
    monkeypatch.setenv("WORKBENCH_DATA", str(tmp_path / "data"))
    return tmp_path


def write_npz(path: Path, n=(10, 4, 6), hw=(12, 12), classes=2, rgb=False, label_shape="n1", **extra):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, k in zip(("train", "val", "test"), n):
        shape = (k, *hw, 3) if rgb else (k, *hw)
        arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        lab = (np.arange(k) % classes).astype(np.uint8)
        arrays[f"{split}_labels"] = lab[:, None] if label_shape == "n1" else lab
    arrays.update(extra)
    np.savez(path, **arrays)
    return path


def make_folder(root: Path, *, n=6, hw=(16, 16), csv=True, split_col=True, labels=None, rgb_ids=()):
    """images/<id>.png, masks/lung for the first 4 ids, masks/heart for all, labels.csv."""
    (root / "images").mkdir(parents=True)
    (root / "masks" / "lung").mkdir(parents=True)
    (root / "masks" / "heart").mkdir(parents=True)
    rng = np.random.default_rng(1)
    ids = [f"im{i:02d}" for i in range(n)]
    masks = {}
    for k, i in enumerate(ids):
        img = rng.integers(0, 256, hw, dtype=np.uint8)
        if i in rgb_ids:
            Image.fromarray(np.stack([img, img // 2, 255 - img], -1)).save(root / "images" / f"{i}.png")
        else:
            Image.fromarray(img).save(root / "images" / f"{i}.png")
        heart = np.zeros(hw, bool)
        heart[2 + k % 3:9, 3:11] = True
        Image.fromarray(heart.astype(np.uint8) * 255).save(root / "masks" / "heart" / f"{i}.png")
        masks[("heart", i)] = heart
        if k < 4:
            lung = rng.random(hw) > 0.6
            Image.fromarray(lung.astype(np.uint8) * 255).save(root / "masks" / "lung" / f"{i}.png")
            masks[("lung", i)] = lung
    if csv:
        labels = labels or ["pos" if k % 2 else "neg" for k in range(n)]
        lines = ["id,label,site,age" + (",split" if split_col else "")]
        for k, i in enumerate(ids):
            split = ["train", "train", "train", "val", "test", "test"][k % 6]
            lines.append(f"{i},{labels[k]},S{k % 2},{40 + k}" + (f",{split}" if split_col else ""))
        (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return ids, masks


# ----------------------------------------------------------------------------- paths
def test_shared_data_path_env(monkeypatch, tmp_path):
    monkeypatch.setenv("WORKBENCH_SHARED_DATA", str(tmp_path))
    assert shared_data_path() == tmp_path
    monkeypatch.setenv("WORKBENCH_SHARED_DATA", str(tmp_path / "nope"))
    with pytest.warns(UserWarning, match="not a folder"):
        assert shared_data_path() is None


def test_reexports():
    for name in ("load", "ArrayDataset", "BaseDataset", "collate", "label_map", "shared_data_path",
                 "transforms", "resize_masks"):
        assert hasattr(wd, name)
    assert wd.phantom.__name__ == "workbench.data.phantom"


# ----------------------------------------------------------------------------- phantom
def test_phantom_forwarding_with_standin(monkeypatch):
    seen = {}

    def fake_load_phantom(**kw):
        seen.update(kw)
        n, s = kw["n"], kw["size"]
        return ArrayDataset(torch.zeros(n, 1, s, s, dtype=torch.uint8), torch.zeros(n), classes=("a", "b"),
                            task="binary", masks={"body": torch.ones(n, s, s, dtype=torch.bool)})

    monkeypatch.setitem(sys.modules, "workbench.data.phantom",
                        types.SimpleNamespace(load_phantom=fake_load_phantom))
    ds = load("phantom", split="val", n=3, seed=7, channels=3, task="abnormal", data_dir="/tmp/x")
    assert seen == {"split": "val", "n": 3, "size": 128, "seed": 7, "task": "abnormal", "data_dir": "/tmp/x"}
    assert ds.images.shape == (3, 3, 128, 128)


def test_phantom_real():
    ds = load("phantom", n=4, size=48, seed=1, cache=False, progress=False)
    assert len(ds) == 4 and ds.images.shape[-2:] == (48, 48)
    assert {"left_lung", "right_lung", "heart"} <= set(ds.structures)
    b = ds.batch([0, 1])
    assert b["image"].shape == (2, 1, 48, 48) and b["masks"]["left_lung"].dtype == torch.bool


# ----------------------------------------------------------------------------- MedMNIST (real files)
@pytest.mark.realdata
def test_breastmnist_labels_n(shared_data, no_network):
    path = shared_data / "medmnist" / "breastmnist.npz"
    assert np.load(path)["train_labels"].ndim == 1  # this copy stores (N,)
    ds = load(path)
    assert len(ds) == 546 and ds.images.shape == (546, 1, 28, 28) and ds.images.dtype == torch.uint8
    assert ds.task == "binary" and ds.classes == ("malignant", "normal, benign")
    assert ds.labels.shape == (546,) and set(ds.labels.tolist()) == {0, 1}
    assert ds[0]["image"].max() <= 1.0


@pytest.mark.realdata
def test_pneumoniamnist_labels_n1_via_medmnist_source(shared_data, no_network, monkeypatch):
    monkeypatch.setenv("WORKBENCH_SHARED_DATA", str(shared_data))
    ds = load("medmnist:pneumoniamnist", split="test", size=32, channels=3)
    assert len(ds) == 624 and ds.labels.shape == (624,)
    assert ds.classes == ("normal", "pneumonia") and ds.images.shape == (624, 3, 32, 32)
    ds = load("medmnist:breastmnist", split="val", data_dir=shared_data / "medmnist", n=10)
    assert len(ds) == 10


# ----------------------------------------------------------------------------- MedMNIST (offline logic)
def test_medmnist_local_file_no_network(isolated, no_network):
    write_npz(isolated / "breastmnist.npz")
    ds = load("medmnist:breastmnist", split="val", data_dir=isolated)
    assert len(ds) == 4 and ds.classes == ("malignant", "normal, benign")


def test_medmnist_offline_missing_file_says_what_to_do(isolated, monkeypatch):
    class FailingDownload:
        def __init__(self, **kw):
            raise RuntimeError("Automatic download failed! (no network in this test)")

    fake = types.SimpleNamespace(INFO=npz_mod._info(), BreastMNIST=FailingDownload)
    monkeypatch.setitem(sys.modules, "medmnist", fake)
    with pytest.raises(FileNotFoundError, match=r"breastmnist\.npz was not found locally.*download failed.*"
                                                r"WORKBENCH_SHARED_DATA"):
        load("medmnist:breastmnist")
    with pytest.raises(FileNotFoundError, match="download=False"):
        load("medmnist:breastmnist", download=False)


def test_medmnist_download_lands_in_data_dir(isolated, monkeypatch):
    class FakeDownload:
        def __init__(self, split, download, root, size):
            write_npz(Path(root) / ("breastmnist.npz" if size == 28 else f"breastmnist_{size}.npz"),
                      hw=(size, size))

    monkeypatch.setitem(sys.modules, "medmnist", types.SimpleNamespace(INFO=npz_mod._info(), BreastMNIST=FakeDownload))
    ds = load("medmnist:breastmnist@64", split="test")
    assert ds.images.shape[-2:] == (64, 64)
    assert (isolated / "data" / "medmnist" / "breastmnist_64.npz").is_file()


def test_medmnist_size_falls_back_to_local_file(isolated, no_network, monkeypatch):
    monkeypatch.setitem(sys.modules, "medmnist", types.SimpleNamespace(INFO=npz_mod._info()))
    write_npz(isolated / "breastmnist.npz", hw=(28, 28))
    with pytest.warns(UserWarning, match="not available offline"):
        ds = load("medmnist:breastmnist", size=64, data_dir=isolated)
    assert ds.images.shape == (10, 1, 64, 64)
    with pytest.raises(FileNotFoundError):  # an explicit @64 is strict
        load("medmnist:breastmnist@64", data_dir=isolated)


def test_medmnist_bad_names():
    with pytest.raises(ValueError, match="valid names: .*breastmnist"):
        load("medmnist:nosuchmnist")
    with pytest.raises(ValueError, match="3D volumes"):
        load("medmnist:organmnist3d")
    with pytest.raises(ValueError, match="28, 64, 128, 224"):
        load("medmnist:breastmnist@50")


# ----------------------------------------------------------------------------- .npz files
def test_npz_unknown_name_classes_and_resize(tmp_path):
    path = write_npz(tmp_path / "mine.npz", n=(9, 3, 3), classes=3, label_shape="n")
    ds = load(path, split="val", size=24)
    assert ds.classes == ("0", "1", "2") and ds.task == "multiclass"
    assert ds.images.shape == (3, 1, 24, 24) and ds.images.dtype == torch.uint8
    ds = load(path, split="test", n=2, channels=3)
    assert ds.images.shape == (2, 3, 12, 12) and ds.ids[0] == "mine_test_000000"


def test_npz_rgb_and_binary(tmp_path):
    ds = load(write_npz(tmp_path / "rgb.npz", rgb=True))
    assert ds.images.shape == (10, 3, 12, 12) and ds.task == "binary" and ds.classes == ("0", "1")


def test_npz_multilabel(tmp_path):
    lab = np.eye(3, dtype=np.uint8)[np.arange(10) % 3]
    path = write_npz(tmp_path / "ml.npz", train_labels=lab)
    with pytest.raises(ValueError, match="task='multilabel'"):
        load(path)
    ds = load(path, task="multilabel")
    assert ds.task == "multilabel" and ds.labels.shape == (10, 3) and ds.labels.dtype == torch.float32


@pytest.mark.parametrize("extra, match", [
    ({"train_labels": np.zeros(7, np.uint8)}, r"has shape \(7,\) but there are 10 images"),
    ({"train_labels": np.zeros((10, 2, 2), np.uint8)}, r"expected \(N,\) or \(N, 1\)"),
    ({"train_labels": np.full(10, np.nan)}, "NaN"),
    ({"train_labels": np.full(10, 0.5)}, "non-integer"),
    ({"train_images": np.full((10, 12, 12), np.nan, np.float32)}, "NaN"),
    ({"train_images": np.zeros((10, 4, 12, 12, 2), np.uint8)}, r"expected \(N, H, W\)"),
])
def test_npz_bad_arrays(tmp_path, extra, match):
    with pytest.raises(ValueError, match=match):
        load(write_npz(tmp_path / "bad.npz", **extra))


def test_npz_missing_keys_lists_them(tmp_path):
    np.savez(tmp_path / "x.npz", images=np.zeros((2, 4, 4), np.uint8), labels=np.zeros(2))
    with pytest.raises(ValueError, match=r"has keys \['images', 'labels'\] but .* needs 'train_images'"):
        load(tmp_path / "x.npz")
    path = write_npz(tmp_path / "y.npz")
    with pytest.raises(ValueError, match="split must be one of"):
        load(path, split="holdout")


def test_npz_corrupt_file(tmp_path):
    bad = tmp_path / "broken.npz"
    bad.write_bytes(b"this is not a zip archive at all")
    with pytest.raises(ValueError, match=r"could not read .*broken\.npz"):
        load(bad)


# ----------------------------------------------------------------------------- folder datasets
def test_folder_dataset(tmp_path):
    ids, masks = make_folder(tmp_path / "ds")
    ds = load(tmp_path / "ds", split="train")
    assert ds.ids == ids[:3] and ds.classes == ("neg", "pos") and ds.task == "binary"
    assert ds.labels.tolist() == [0, 1, 0]
    assert ds.meta[1] == {"site": "S1", "age": 41, "split": "train"}
    assert ds.structures == ("heart", "lung") and ds.images.shape == (3, 1, 16, 16)
    assert torch.equal(ds.masks["heart"][2], torch.from_numpy(masks[("heart", ids[2])]))
    test = load(tmp_path / "ds", split="test")
    assert test.ids == ids[4:6]
    assert test.mask_present["lung"].tolist() == [False, False]  # not annotated there
    assert "lung" not in test[0]["masks"] and "heart" in test[0]["masks"]
    assert len(load(tmp_path / "ds", split=None)) == 6


def test_folder_resize_keeps_masks_exact(tmp_path):
    ids, masks = make_folder(tmp_path / "ds")
    ds = load(tmp_path / "ds", split=None, size=32)
    assert ds.images.shape == (6, 1, 32, 32)
    for k, i in enumerate(ids):
        want = torch.from_numpy(masks[("heart", i)]).repeat_interleave(2, 0).repeat_interleave(2, 1)
        assert torch.equal(ds.masks["heart"][k], want)
    small = load(tmp_path / "ds", split=None, size=(8, 12))
    assert small.images.shape == (6, 1, 8, 12)
    assert torch.equal(small.masks["lung"][0], resize_masks(torch.from_numpy(masks[("lung", ids[0])]), (8, 12)))


def test_folder_label_options(tmp_path):
    make_folder(tmp_path / "a", labels=["2", "0", "1", "2", "0", "1"])
    ds = load(tmp_path / "a", split=None)
    assert ds.classes == ("0", "1", "2") and ds.labels.tolist() == [2, 0, 1, 2, 0, 1]
    with pytest.raises(ValueError, match=r"no label column 'finding'; its columns are \['id', 'label'.*label_column"):
        load(tmp_path / "a", label_column="finding")
    ds = load(tmp_path / "a", split=None, label_column="site")
    assert ds.classes == ("S0", "S1") and "label" in ds.meta[0]
    ds = load(tmp_path / "a", split=None, label_column=None)
    assert ds.classes == ("unlabelled",) and ds.labels.tolist() == [0] * 6


def test_folder_without_csv_or_split(tmp_path):
    make_folder(tmp_path / "nocsv", csv=False)
    ds = load(tmp_path / "nocsv")
    assert len(ds) == 6 and ds.classes == ("unlabelled",)
    make_folder(tmp_path / "nosplit", split_col=False)
    with pytest.warns(UserWarning, match="no 'split' column"):
        assert len(load(tmp_path / "nosplit", split="test")) == 6
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(load(tmp_path / "nosplit")) == 6
    make_folder(tmp_path / "withsplit")
    with pytest.raises(ValueError, match=r"no rows with split == 'holdout'; its splits are \['test', 'train', 'val'\]"):
        load(tmp_path / "withsplit", split="holdout")


def test_folder_rgb_and_channels(tmp_path):
    make_folder(tmp_path / "ds", rgb_ids=("im01",))
    ds = load(tmp_path / "ds", split=None)
    assert ds.images.shape == (6, 3, 16, 16)
    assert torch.equal(ds.images[0, 0], ds.images[0, 1])  # grey images repeated
    assert load(tmp_path / "ds", split=None, channels=1).images.shape == (6, 1, 16, 16)


def test_folder_multilabel(tmp_path):
    make_folder(tmp_path / "ds")
    csv = tmp_path / "ds" / "labels.csv"
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join([lines[0] + ",a,b"] + [l + f",{k % 2},{(k + 1) % 2}" for k, l in enumerate(lines[1:])]))
    ds = load(tmp_path / "ds", split=None, label_column=["a", "b"])
    assert ds.task == "multilabel" and ds.labels[0].tolist() == [0.0, 1.0]


def test_folder_bad_mask_size(tmp_path):
    ids, _ = make_folder(tmp_path / "ds")
    Image.fromarray(np.zeros((10, 16), np.uint8)).save(tmp_path / "ds" / "masks" / "heart" / f"{ids[1]}.png")
    with pytest.raises(ValueError, match=r"mask .*heart.*im01\.png is 16x10 .* image im01\.png is 16x16"):
        load(tmp_path / "ds")


def test_folder_corrupt_image(tmp_path):
    ids, _ = make_folder(tmp_path / "ds")
    (tmp_path / "ds" / "images" / f"{ids[0]}.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ValueError, match=r"could not read image .*im00\.png.*corrupt"):
        load(tmp_path / "ds")


def test_folder_sizes_differ(tmp_path):
    ids, _ = make_folder(tmp_path / "ds")
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "ds" / "images" / f"{ids[2]}.png")
    for f in (tmp_path / "ds" / "masks").glob(f"*/{ids[2]}.png"):
        f.unlink()
    with pytest.raises(ValueError, match="differ in size.*pass size="):
        load(tmp_path / "ds")
    assert load(tmp_path / "ds", size=16).images.shape == (3, 1, 16, 16)


def test_folder_csv_problems(tmp_path):
    make_folder(tmp_path / "ds")
    csv = tmp_path / "ds" / "labels.csv"
    csv.write_text(csv.read_text() + "ghost,pos,S0,1,train\n")
    with pytest.raises(ValueError, match=r"without an image .*ghost"):
        load(tmp_path / "ds")
    csv.write_text("name,label\nim00,pos\n")
    with pytest.raises(ValueError, match="needs an 'id' column"):
        load(tmp_path / "ds")
    csv.write_text("id,label\nim00,pos\nim01,\n")
    with pytest.raises(ValueError, match=r"empty for 1 row\(s\) \(ids \['im01'\]\)"):
        with pytest.warns(UserWarning, match="no row"):
            load(tmp_path / "ds")


def test_folder_float_images_nan_and_ids_with_extension(tmp_path):
    make_folder(tmp_path / "ds", csv=False)
    img = np.full((16, 16), 0.5, np.float32)
    Image.fromarray(img, mode="F").save(tmp_path / "ds" / "images" / "im01.tif")
    (tmp_path / "ds" / "images" / "im01.png").unlink()
    (tmp_path / "ds" / "labels.csv").write_text("id,label\n" + "\n".join(f"im{k:02d}.png,{k % 2}" for k in range(6)))
    ds = load(tmp_path / "ds")
    assert ds.images.dtype == torch.float32 and torch.allclose(ds.images[1], torch.tensor(0.5))
    assert ds.ids[0] == "im00" and ds.classes == ("0", "1")
    img[3, 3] = np.nan
    Image.fromarray(img, mode="F").save(tmp_path / "ds" / "images" / "im01.tif")
    with pytest.raises(ValueError, match=r"im01\.tif contains NaN"):
        load(tmp_path / "ds")


def test_not_a_folder_dataset(tmp_path):
    write_npz(tmp_path / "a.npz")
    with pytest.raises(ValueError, match=r"no images/ folder.*a\.npz"):
        load(tmp_path)


def test_folder_dicom_needs_pydicom(tmp_path):
    make_folder(tmp_path / "ds", csv=False)
    (tmp_path / "ds" / "images" / "scan.dcm").write_bytes(b"\0" * 200)
    try:
        import pydicom  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install pydicom"):
            load(tmp_path / "ds")
    else:
        with pytest.raises(ValueError, match=r"scan\.dcm"):
            load(tmp_path / "ds")


@pytest.mark.realdata
def test_cxr_anatomy(shared_data):
    root = shared_data / "cxr_anatomy"
    with pytest.raises(ValueError, match="label_column='finding'"):
        load(root)
    ds = load(root, label_column="finding", size=64)
    assert len(ds) == 100 and ds.images.shape == (100, 1, 64, 64) and ds.task == "multiclass"
    assert "COVID-19" in ds.classes and set(ds.structures) == CXR_STRUCTURES
    present = {k: int(v.sum()) for k, v in ds.mask_present.items()}
    assert present["left_lung"] == 99 and present["pneumothorax"] == 1 and present["device"] == 31
    assert {"view", "sex", "age"} <= set(ds.meta[0])
    b = ds.batch(range(4))
    assert b["masks"]["left_lung"].shape == (4, 64, 64) and b["mask_present"]["device"].shape == (4,)
    # patient's left lung is on the image's right
    lung = ds.masks["left_lung"][ds.mask_present["left_lung"]].float()
    assert lung[..., 32:].sum() > lung[..., :32].sum()


# ----------------------------------------------------------------------------- dispatch errors
def test_unknown_source_lists_valid_forms(tmp_path):
    with pytest.raises(ValueError, match=r'"phantom".*"medmnist:<name>".*breastmnist.*\.npz.*folder'):
        load("nonsense")
    with pytest.raises(ValueError, match='Did you mean "medmnist:breastmnist"'):
        load("breastmnist")
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(ValueError, match="is a file but not a .npz"):
        load(tmp_path / "a.txt")
    with pytest.raises(FileNotFoundError, match="no such .npz"):
        load(tmp_path / "missing.npz")
    with pytest.raises(TypeError, match="source must be a string or a path"):
        load(3)


def test_bad_options(tmp_path):
    path = write_npz(tmp_path / "m.npz")
    with pytest.raises(TypeError, match=r"unexpected option\(s\) \['shortcut'\]"):
        load(path, shortcut=0.9)
    with pytest.raises(ValueError, match="label_column applies to folder datasets only"):
        load("medmnist:breastmnist", label_column="finding")
    with pytest.raises(ValueError, match="channels must be 1, 3"):
        load(path, channels=2)


def _write_dicom(path, pixels, photometric="MONOCHROME2"):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # digital X-ray
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(str(path), enforce_file_format=True)


def test_folder_reads_dicom_with_photometric_inversion(tmp_path):
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    ramp = np.tile(np.linspace(0, 4095, 16), (16, 1))
    _write_dicom(root / "images" / "a.dcm", ramp)
    _write_dicom(root / "images" / "b.dcm", ramp, photometric="MONOCHROME1")
    ds = load(root)
    a, b = ds[0]["image"][0], ds[1]["image"][0]
    assert a.shape == (16, 16) and float(a[0, 0]) == 0.0 and float(a[0, -1]) == pytest.approx(1.0)
    assert torch.allclose(a, 1.0 - b)  # MONOCHROME1 is inverted so bone is bright in both
