"""Lazy folder datasets: the same samples as in memory, read in DataLoader workers by fit/evaluate/predict;
Subset and ConcatDataset of our datasets wherever a dataset is taken."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import workbench.train as wt
from workbench.data import folder as folder_mod
from workbench.data import load
from workbench.data._base import ArrayDataset
from workbench.data.folder import FolderDataset


def make_folder(root, n=24, hw=(16, 16), sizes=None):
    """images/<id>.png (a bright square on positives), masks/lung for even ids, labels.csv."""
    (root / "images").mkdir(parents=True)
    (root / "masks" / "lung").mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = ["id,label,site"]
    for k in range(n):
        shape = sizes[k] if sizes else hw
        img = (rng.random(shape) * 120).astype(np.uint8)
        if k % 2:
            img[3:9, 3:9] += 120
        Image.fromarray(img).save(root / "images" / f"im{k:03d}.png")
        if k % 2 == 0:
            m = np.zeros(shape, np.uint8)
            m[2:10, 1:7] = 255
            Image.fromarray(m).save(root / "masks" / "lung" / f"im{k:03d}.png")
        lines.append(f"im{k:03d},{'pos' if k % 2 else 'neg'},S{k % 3}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


def tiny_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2),
                               torch.nn.Flatten(), torch.nn.Linear(16, 2))


def test_lazy_samples_equal_the_in_memory_ones(tmp_path):
    root = make_folder(tmp_path / "ds", n=6)
    eager, lazy = load(root, split=None, size=12, lazy=False), load(root, split=None, size=12, lazy=True)
    assert isinstance(eager, ArrayDataset) and isinstance(lazy, FolderDataset)
    assert lazy.image_shape == (1, 12, 12) and lazy.classes == eager.classes and lazy.labels.tolist() == [0, 1] * 3
    assert lazy.mask_present["lung"].tolist() == [True, False] * 3 and lazy.structures == ("lung",)
    for i in (0, 3):
        a, b = eager[i], lazy[i]
        assert torch.equal(a["image"], b["image"]) and a["meta"] == b["meta"] and a["id"] == b["id"]
        assert a["masks"].keys() == b["masks"].keys()
        assert all(torch.equal(a["masks"][k], b["masks"][k]) for k in a["masks"])
    ba, bb = eager.batch([4, 1]), lazy.batch([4, 1])
    assert torch.equal(ba["image"], bb["image"]) and torch.equal(ba["masks"]["lung"], bb["masks"]["lung"])
    assert bb["mask_present"]["lung"].tolist() == [True, False] and "lazy" in repr(lazy)


def test_lazy_is_chosen_above_the_threshold_and_refuses_a_stray_size(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "ds", n=4, sizes=[(16, 16), (16, 16), (20, 16), (16, 16)])
    monkeypatch.setattr(folder_mod, "LAZY_IMAGES", 3)
    ds = load(root, split=None)
    assert isinstance(ds, FolderDataset) and ds.image_shape == (1, 16, 16)
    with pytest.raises(ValueError, match=r"im002\.png is 16x20 but .* 16x16 .*size="):
        ds[2]
    assert load(root, split=None, size=8)[2]["image"].shape == (1, 8, 8)
    monkeypatch.setattr(folder_mod, "LAZY_IMAGES", 100)
    monkeypatch.setattr(folder_mod, "LAZY_BYTES", 16 * 16 * 3)  # 4 images of 256 bytes: over
    assert isinstance(load(root, split=None, size=16), FolderDataset)
    with pytest.raises(ValueError, match="lazy=True applies to folder datasets only"):
        load("phantom", n=4, lazy=True)


def test_fit_evaluate_predict_read_a_lazy_folder_in_workers_like_memory(tmp_path):
    root = make_folder(tmp_path / "ds", n=24)
    eager, lazy = load(root, split=None, lazy=False), load(root, split=None, lazy=True)
    m1, m2 = tiny_net(), tiny_net()
    h1 = wt.fit(m1, eager, epochs=2, batch_size=8, lr=1e-2, progress=False, seed=3)
    h2 = wt.fit(m2, lazy, epochs=2, batch_size=8, lr=1e-2, progress=False, seed=3, num_workers=1)
    # same order, same images: the same weights (decoding and resizing happened in a worker)
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(p1, p2)
    assert h1.loss == pytest.approx(h2.loss)
    e1, e2 = wt.evaluate(m1, eager, device="cpu"), wt.evaluate(m1, lazy, device="cpu", num_workers=1)
    assert e1.auc == pytest.approx(e2.auc) and e2.n == 24
    torch.testing.assert_close(wt.predict(m1, eager), wt.predict(m1, lazy, num_workers=1))


def test_subset_and_concat_work_where_a_dataset_is_taken(tmp_path):
    root = make_folder(tmp_path / "ds", n=24)
    eager = load(root, split=None, lazy=False)
    lazy = load(root, split=None, lazy=True)
    sub = torch.utils.data.Subset(eager, list(range(0, 24, 2)) + [1, 3, 5, 7])
    model = tiny_net()
    hist = wt.fit(model, sub, epochs=1, batch_size=8, progress=False)   # was "the dataset has task None"
    assert len(hist.rows) == 1
    ev = wt.evaluate(model, sub, device="cpu")
    assert ev.n == 16 and ev.classes == ("neg", "pos")
    whole = wt.predict(model, eager)
    torch.testing.assert_close(wt.predict(model, sub), whole[torch.tensor(sub.indices)])
    cat = torch.utils.data.ConcatDataset([torch.utils.data.Subset(lazy, range(12)),
                                          load(root, split=None, lazy=False, n=24).subset(range(12, 24))])
    torch.testing.assert_close(wt.predict(model, cat, num_workers=0), whole)
    assert wt.evaluate(model, cat, device="cpu", num_workers=0).auc == pytest.approx(wt.evaluate(model, eager).auc)
    wt.fit(model, cat, epochs=1, batch_size=8, progress=False, num_workers=0)
    other = ArrayDataset(torch.zeros(2, 1, 16, 16), torch.tensor([0, 2]), classes=("a", "b", "c"), task="multiclass")
    with pytest.raises(ValueError, match="differ in task"):
        wt.fit(model, torch.utils.data.ConcatDataset([eager, other]), epochs=1, progress=False)


def test_as_dataset_gives_subsets_and_concats_the_dataset_api(tmp_path):
    import workbench as wb
    root = make_folder(tmp_path / "ds", n=8)
    eager, lazy = load(root, split=None, lazy=False), load(root, split=None, lazy=True)
    assert wb.data.as_dataset(eager) is eager
    view = wb.data.as_dataset(torch.utils.data.ConcatDataset([torch.utils.data.Subset(lazy, [5, 6]), eager]))
    assert len(view) == 10 and view.classes == ("neg", "pos") and view.structures == ("lung",)
    assert view.ids[:3] == ["im005", "im006", "im000"] and view.labels.tolist()[:3] == [1, 0, 0]
    b = view.batch([0, 2])
    assert torch.equal(b["image"], torch.stack([lazy[5]["image"], eager[0]["image"]]))
    assert b["index"].tolist() == [0, 2] and b["mask_present"]["lung"].tolist() == [False, True]
    fig = wb.viz.gallery(view, n=2)
    assert fig is not None


def test_passes_without_masks_skip_reading_them(tmp_path, monkeypatch):
    import workbench as wb
    from workbench.data import folder as fm
    root = make_folder(tmp_path / "ds", n=8)
    lazy = load(root, split=None, lazy=True)
    cat = torch.utils.data.ConcatDataset([torch.utils.data.Subset(lazy, [0, 1]), lazy])
    bare = wb.data.without_masks(cat)
    assert lazy.load_masks and "lung" in cat[0]["masks"]              # the original is untouched
    assert bare[0]["masks"] == {} and torch.equal(bare[3]["image"], cat[3]["image"])
    reads = []
    real = fm.read_mask
    monkeypatch.setattr(fm, "read_mask", lambda p: reads.append(p) or real(p))
    wt.predict(tiny_net(), lazy, num_workers=0)
    assert reads == []                                                 # prediction never needs masks
    lazy.batch([0])
    assert len(reads) == 1
