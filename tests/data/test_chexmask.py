"""CheXmask: RLE round trip, attaching masks from CSV rows the test writes, and its bad input."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from workbench.data import load
from workbench.data.chexmask import ChexmaskDataset, attach_chexmask, decode_rle, encode_rle
from workbench.data._readers import nearest


def blob(h, w, cy, cx, ry, rx):
    y, x = np.mgrid[:h, :w]
    return ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1


def test_rle_round_trip_is_exact():
    rng = np.random.default_rng(0)
    masks = [rng.random((7, 5)) > 0.5, np.zeros((4, 4), bool), np.ones((3, 6), bool),
             blob(1024, 1024, 500, 300, 350, 180) | blob(1024, 1024, 500, 720, 350, 180)]
    for m in masks:
        rle = encode_rle(m)
        assert np.array_equal(decode_rle(rle, *m.shape), m)
    assert encode_rle(np.zeros((2, 2))) == "" and not decode_rle("", 2, 2).any()
    from workbench.data.chexmask import _parse, _sample_runs
    big = masks[-1]
    for hw in ((224, 224), (100, 300), (1024, 1024), (2048, 1024)):   # sampled from the runs = decode + resize
        assert np.array_equal(_sample_runs(_parse(encode_rle(big), 1024, 1024), 1024, 1024, hw), nearest(big, hw))
    with pytest.raises(ValueError, match=r"reach pixel 13 but Height x Width is 3 x 4 = 12"):
        decode_rle("10 4", 3, 4)
    with pytest.raises(ValueError, match="odd number"):
        decode_rle("1 2 3", 3, 4)
    with pytest.raises(ValueError, match="not a run-length encoding"):
        decode_rle("1 two", 3, 4)
    with pytest.raises(ValueError, match="1-based"):
        decode_rle("0 2", 3, 4)


def make_cxr_folder(root, n=5, hw=(32, 32)):
    (root / "images").mkdir(parents=True)
    for k in range(n):
        Image.fromarray(np.full(hw, 40 * k, np.uint8)).save(root / "images" / f"{k:05d}_000.png")
    (root / "labels.csv").write_text("id,label\n" + "".join(f"{k:05d}_000,{k % 2}\n" for k in range(n)))
    return root


def write_csv(path, rows, id_column="Image Index"):
    import pandas as pd
    pd.DataFrame(rows).rename(columns={"id": id_column}).to_csv(path, index=False)
    return path


def anatomy(h, w, k):
    """Patient's right lung on the image's left, left lung on the right, heart in between."""
    return {"Right Lung": blob(h, w, h * 0.45, w * 0.28, h * 0.3, w * 0.14 + k),
            "Left Lung": blob(h, w, h * 0.45, w * 0.72, h * 0.3, w * 0.14),
            "Heart": blob(h, w, h * 0.6, w * 0.55, h * 0.15, w * 0.16)}


@pytest.fixture
def cxr(tmp_path):
    root = make_cxr_folder(tmp_path / "nih")
    truth, rows = {}, []
    for k, dice in enumerate([0.9, 0.8, 0.5, 0.95]):   # image 2 below min_dice; image 4 has no row
        masks = anatomy(32, 32, k)
        truth[k] = masks
        rows.append({"id": f"{k:05d}_000.png", "Dice RCA (Mean)": dice, "Dice RCA (Max)": 0.99, "Landmarks": "[]",
                     **{c: encode_rle(m) for c, m in masks.items()}, "Height": 32, "Width": 32})
    rows.append({**rows[0], "id": "99999_000.png"})                      # an id matching no image
    rows[3]["Heart"] = "1000 100"                                        # does not fit 32 x 32
    csv = write_csv(tmp_path / "ChestX-Ray8.csv", rows)
    return root, csv, truth


@pytest.mark.parametrize("lazy", [False, True])
def test_attach_by_id_resizes_with_the_image_and_reports(cxr, lazy):
    root, csv, truth = cxr
    ds = load(root, split=None, size=16, lazy=lazy)
    with pytest.warns(UserWarning, match=r"attached to 3 image.*1 CSV row.* matched no image.*99999_000.*1 below "
                                         r"min_dice.*1 mask.* does not fit.*00003_000.png Heart"):
        out = attach_chexmask(ds, csv)
    assert isinstance(out, ChexmaskDataset) == lazy and "left_lung" not in ds.structures  # input untouched
    r = out.chexmask
    assert (r.rows, r.matched, r.unmatched_rows, r.below_min_dice, r.images_without_row) == (5, 3, 1, 1, 2)
    assert r.id_column == "Image Index" and r.bad_rle[0][:2] == ("00003_000.png", "Heart")
    assert {"left_lung", "right_lung", "heart"} <= set(out.structures)
    assert out.mask_present["heart"].tolist() == [True, True, False, False, False]
    assert out.mask_present["left_lung"].tolist() == [True, True, False, True, False]
    b = out.batch(range(5))
    for k in (0, 1, 3):
        for col, name in (("Left Lung", "left_lung"), ("Right Lung", "right_lung")):
            assert torch.equal(b["masks"][name][k], torch.from_numpy(nearest(truth[k][col], (16, 16))))
    assert not b["masks"]["heart"][2:].any() and b["mask_present"]["heart"].tolist() == [True, True, False, False, False]
    lung = b["masks"]["left_lung"][0].float()
    assert lung[:, 8:].sum() > lung[:, :8].sum()   # the patient's left lung lies on the image's right
    with pytest.warns(UserWarning):
        assert attach_chexmask(ds, csv, min_dice=0.0).chexmask.matched == 4


def test_attach_to_subsets_other_id_columns_and_bad_input(cxr, tmp_path):
    root, csv, truth = cxr
    ds = load(root, split=None)
    sub = torch.utils.data.Subset(ds, [3, 0])
    with pytest.warns(UserWarning):
        out = attach_chexmask(sub, csv)
    assert torch.equal(out[1]["masks"]["heart"], torch.from_numpy(truth[0]["Heart"]))
    import pandas as pd
    df = pd.read_csv(csv).rename(columns={"Image Index": "file"})
    df.to_csv(tmp_path / "custom.csv", index=False)
    with pytest.raises(ValueError, match=r"no id column .*dicom_id.*id_column="):
        attach_chexmask(ds, tmp_path / "custom.csv")
    with pytest.warns(UserWarning):
        assert attach_chexmask(ds, tmp_path / "custom.csv", id_column="file").chexmask.matched == 3
    df.drop(columns=["Heart"]).to_csv(tmp_path / "noheart.csv", index=False)
    with pytest.raises(ValueError, match=r"lacks CheXmask column\(s\) \['Heart'\]"):
        attach_chexmask(ds, tmp_path / "noheart.csv", id_column="file")
    with pytest.raises(ValueError, match=r"min_dice must be a number in \[0.0, 1.0\]"):
        attach_chexmask(ds, csv, min_dice=70)
    with pytest.raises(FileNotFoundError, match="no CheXmask CSV"):
        attach_chexmask(ds, tmp_path / "missing.csv")
    with pytest.warns(UserWarning):
        twice = attach_chexmask(ds, csv)
    with pytest.raises(ValueError, match="already has masks.*overwrite=True"):
        attach_chexmask(twice, csv)


def test_lazy_masks_made_for_other_images_are_refused(tmp_path):
    root = make_cxr_folder(tmp_path / "ds", n=1, hw=(20, 32))
    m = anatomy(40, 40, 0)
    csv = write_csv(tmp_path / "m.csv", [{"id": "00000_000", "Dice RCA (Mean)": 0.9, "Height": 40, "Width": 40,
                                          **{c: encode_rle(x) for c, x in m.items()}}], id_column="dicom_id")
    out = attach_chexmask(load(root, split=None, lazy=True, size=16), csv)
    with pytest.raises(ValueError, match=r"masks of '00000_000' are 40x40 .* image file is 32x20.*matching your files"):
        out[0]


def test_phantom_as_dicom_folder_and_chexmask_csv_round_trip(tmp_path):
    """write_folder (DICOM) + write_chexmask_csv, read back lazily with attach_chexmask: same masks."""
    ds = load("phantom", n=6, size=48, cache=False, progress=False)
    wd = pytest.importorskip("workbench.data")
    root = wd.write_folder(ds, tmp_path / "dcm", format="dcm", masks=["nodule"])
    csv = wd.write_chexmask_csv(ds, tmp_path / "chexmask.csv")
    back = attach_chexmask(load(root, split=None, lazy=True), csv)
    assert back.chexmask.matched == 6 and back[0]["meta"]["view_position"] == "PA"
    assert back.structures == ("nodule", "left_lung", "right_lung", "heart")
    b, ref = back.batch(range(6)), ds.batch(range(6))
    for s in ("left_lung", "right_lung", "heart"):
        assert torch.equal(b["masks"][s], ref["masks"][s])
    assert (b["image"] - ref["image"]).abs().max() < 1 / 255 + 1e-6   # 8-bit phantom through 12-bit DICOM
    assert torch.equal(b["label"], ref["label"]) and b["meta"][0]["class_name"] == ds.classes[int(ref["label"][0])]
    with pytest.raises(FileExistsError, match="overwrite=True"):
        wd.write_folder(ds, root, format="dcm")
