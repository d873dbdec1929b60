"""DICOM as radiologists store it: modality LUT, VOI window / LUT, MONOCHROME1, spacing and view in meta;
16-bit PNGs at full depth."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from workbench.data import load
from workbench.data._readers import read_dicom, window

pydicom = pytest.importorskip("pydicom")


def write_dicom(path, stored, photometric="MONOCHROME2", **tags):
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # digital X-ray
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    for k, v in tags.items():
        setattr(ds, k, v)
    ds.PixelData = stored.astype(np.uint16).tobytes()
    ds.save_as(str(path), enforce_file_format=True)


def test_window_follows_the_standard():
    x = np.array([-100.0, 0.0, 39.5, 40.0, 79.0, 80.0, 500.0])
    y = window(x, center=40, width=80)                      # LINEAR: c - 0.5, w - 1
    assert y[0] == y[1] == 0.0 and y[-1] == 1.0 and np.all(np.diff(y) >= 0)
    np.testing.assert_allclose(window(np.array([40.0]), 40, 80, "LINEAR_EXACT"), [0.5])
    np.testing.assert_allclose(window(np.array([40.0]), 40, 80, "SIGMOID"), [0.5])
    with pytest.raises(ValueError, match="LINEAR_EXACT and SIGMOID"):
        window(x, 40, 80, "GAMMA")


def test_dicom_window_rescale_inversion_and_meta(tmp_path):
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    stored = np.tile(np.linspace(0, 4000, 16), (16, 1)).round()
    # modality LUT: HU = 2 * stored - 1000; window on HU 0..2000 (centre 1000, width 2000)
    common = dict(RescaleSlope=2, RescaleIntercept=-1000, WindowCenter=1000, WindowWidth=2000,
                  PixelSpacing=[0.139, 0.14], ViewPosition="PA")
    write_dicom(root / "images" / "a.dcm", stored, **common)
    write_dicom(root / "images" / "b.dcm", stored, photometric="MONOCHROME1", **common)
    a, meta = read_dicom(root / "images" / "a.dcm")
    hu = 2 * stored - 1000
    np.testing.assert_allclose(a, np.clip((hu - 999.5) / 1999 + 0.5, 0, 1), atol=1e-6)
    assert meta == {"window": [1000.0, 2000.0], "pixel_spacing": [0.139, 0.14], "view_position": "PA"}
    ds = load(root, split=None)
    assert ds.images.dtype == torch.float32 and ds.meta[1]["view_position"] == "PA"
    assert torch.allclose(ds[0]["image"], 1 - ds[1]["image"])   # MONOCHROME1: bone bright in both
    lazy = load(root, split=None, lazy=True)
    assert lazy[0]["meta"]["pixel_spacing"] == [0.139, 0.14] and torch.equal(lazy[0]["image"], ds[0]["image"])


def test_dicom_voi_lut_sequence(tmp_path):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    lut = Dataset()
    lut.LUTDescriptor = [4096, 0, 16]                # 4096 entries from 0, 16-bit output
    lut.add_new(0x00283006, "OW", (4095 - np.arange(4096)).astype("<u2").tobytes() * 1)  # LUTData: inverting
    stored = np.tile(np.arange(0, 4096, 256), (16, 1))
    write_dicom(tmp_path / "lut.dcm", stored, VOILUTSequence=Sequence([lut]))
    a, meta = read_dicom(tmp_path / "lut.dcm")
    np.testing.assert_allclose(a, (4095 - stored) / 65535.0, atol=1e-6)
    assert meta == {"voi": "lut"}


def test_16_bit_png_keeps_full_depth(tmp_path):
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    img = (np.arange(256, dtype=np.uint16).reshape(16, 16) * 257 + 1)   # values 8-bit would merge
    Image.fromarray(img).save(root / "images" / "x.png")
    ds = load(root, split=None)
    x = ds[0]["image"][0].numpy()
    assert ds.images.dtype == torch.float32
    np.testing.assert_allclose(x, img / 65535.0, rtol=1e-6)
    assert len(np.unique(x)) == 256
