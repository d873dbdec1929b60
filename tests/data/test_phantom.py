"""The anatomical phantom: determinism, masks that tell the story, labels, shortcut, cache, errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from workbench.data import phantom as ph
from workbench.data._base import label_map

ALL_ON = {f: 1.0 for f in ph.FINDINGS}


@pytest.fixture(scope="module")
def rich():
    """64 px samples with every finding and both distractors present in many of them."""
    return ph.load_phantom("train", n=48, size=64, seed=3, cache=False, progress=False,
                           prevalence={f: 0.5 for f in ph.FINDINGS}, device_p=0.6, marker_p=0.6)


def test_shapes_and_structures(rich):
    ds = rich
    assert ds.images.shape == (48, 1, 64, 64) and ds.images.dtype == torch.uint8
    assert set(ds.masks) == set(ph.ANATOMY + ph.FINDINGS + ph.DISTRACTORS)
    assert all(bool(p.all()) for p in ds.mask_present.values())
    assert ds.concept_names == ph.FINDINGS and ds.concepts.shape == (48, 5)
    assert ds.classes == ("normal", "abnormal") and ds.task == "binary"
    b = ds.batch([0, 1])
    assert b["image"].shape == (2, 1, 64, 64) and 0 <= float(b["image"].min()) <= float(b["image"].max()) <= 1
    lm = label_map(ds.masks, ds.structures)
    assert lm.shape == (48, 64, 64) and int(lm.max()) <= len(ds.structures)
    for m in ds.meta:
        assert {"site", "device", "marker", "ctr", "findings"} <= set(m)


def test_determinism_and_disjoint_splits():
    a = ph.generate(6, 64, 0, split="train")
    b = ph.generate(6, 64, 0, split="train")
    c = ph.generate(6, 64, 1, split="train")
    t = ph.generate(6, 64, 0, split="test")
    assert a["images"].tobytes() == b["images"].tobytes()
    assert all(np.array_equal(a["masks"][k], b["masks"][k]) for k in a["masks"])
    assert a["meta"] == b["meta"]
    for other in (c, t):
        assert all(not np.array_equal(x, y) for x in a["images"] for y in other["images"])
    ds = ph.load_phantom("val", n=3, size=64, cache=False, progress=False)
    ds2 = ph.load_phantom("test", n=3, size=64, cache=False, progress=False)
    assert not set(ds.ids) & set(ds2.ids)


def test_anatomy_follows_radiological_convention(rich):
    cols = torch.arange(64).float()
    for i in range(len(rich)):
        left, right = rich.masks["left_lung"][i], rich.masks["right_lung"][i]
        assert left.any() and right.any()
        assert (left.float().sum(0) * cols).sum() / left.sum() > 32 > (right.float().sum(0) * cols).sum() / right.sum()
        heart = rich.masks["heart"][i]
        assert (heart.float().sum(0) * cols).sum() / heart.sum() > 30  # heart bulges to the image's right
        assert not (left & right).any() and not ((left | right) & heart).any()
        assert not ((left | right) & rich.masks["diaphragm"][i]).any()


def test_findings_masks_tell_the_story(rich):
    ds = rich
    lungs = ds.masks["left_lung"] | ds.masks["right_lung"]
    rows = torch.arange(64).float()[:, None]
    c = ds.concepts.bool()
    for i in range(len(ds)):
        for j, f in enumerate(ph.FINDINGS):
            assert bool(ds.masks[f][i].any()) == bool(c[i, j]), (i, f)
        if c[i, 0]:  # nodule wholly inside one lung
            nod = ds.masks["nodule"][i]
            assert bool(lungs[i][nod].all())
            assert ds.meta[i]["nodule_radius_px"] > 0
        if c[i, 1]:  # effusion at a lung base: below the middle of its lung(s)
            eff = ds.masks["effusion"][i]
            assert bool(lungs[i][eff].all())
            assert (eff.float() * rows).sum() / eff.sum() > (lungs[i].float() * rows).sum() / lungs[i].sum()
        if c[i, 2]:
            assert torch.equal(ds.masks["cardiomegaly"][i], ds.masks["heart"][i])
        assert (ds.meta[i]["ctr"] > 0.5) == bool(c[i, 2])
        if c[i, 3] or c[i, 4]:
            for f in ("pneumothorax", "consolidation"):
                assert bool(lungs[i][ds.masks[f][i]].all())
        if ds.meta[i]["marker"]:
            mk = ds.masks["marker"][i]
            assert mk.any() and not (mk & lungs[i]).any()
            assert (ds.images[i, 0][mk] == 255).all()
        else:
            assert not ds.masks["marker"][i].any()
        dev = ds.masks["device"][i]
        assert bool(dev.any()) == ds.meta[i]["device"]
        if dev.any():  # tubes and leads come from outside the lungs
            assert (dev & ~lungs[i]).any()


def test_label_rules():
    c = torch.tensor([[0, 0, 0, 0, 0], [1, 0, 0, 0, 0], [0, 1, 1, 0, 0], [1, 1, 1, 1, 1],
                      [0, 0, 0, 0, 1], [0, 1, 0, 0, 0], [0, 0, 1, 0, 0]], dtype=torch.float)
    d = ph.diagnosis_from_concepts(c)
    names = [ph.DIAGNOSES[int(k)] for k in d]
    assert names == ["normal", "nodule", "heart_failure", "pneumothorax", "pneumonia", "other", "other"]
    kw = dict(n=40, size=64, seed=1, cache=False, progress=False)
    a = ph.load_phantom("val", task="abnormal", **kw)
    f = ph.load_phantom("val", task="findings", **kw)
    g = ph.load_phantom("val", task="diagnosis", **kw)
    assert torch.equal(a.labels, (a.concepts.sum(1) > 0).long())
    assert f.task == "multilabel" and torch.equal(f.labels, f.concepts)
    assert g.task == "multiclass" and g.classes == ph.DIAGNOSES
    assert torch.equal(g.labels, ph.diagnosis_from_concepts(g.concepts))
    assert torch.equal(a.images, g.images)


def test_shortcut_rates():
    n = 300
    out = ph.generate(n, 32, 5, split="train", shortcut={"feature": "device", "with": "abnormal",
                                                         "p_pos": 0.9, "p_neg": 0.1})
    pos = out["concepts"].sum(1) > 0
    dev = np.array([m["device"] for m in out["meta"]])
    assert pos.sum() > 60 and (~pos).sum() > 60
    assert abs(dev[pos].mean() - 0.9) < 0.08 and abs(dev[~pos].mean() - 0.1) < 0.08
    # without the knob the device is independent of the label (default rate 0.25)
    free = ph.generate(n, 32, 5, split="train")
    dev0 = np.array([m["device"] for m in free["meta"]])
    assert abs(dev0[pos].mean() - dev0[~pos].mean()) < 0.15
    # the knob changes only the distractor: anatomy and findings are the same samples
    assert np.array_equal(out["concepts"], free["concepts"])
    assert np.array_equal(out["masks"]["heart"], free["masks"]["heart"])


def test_sites_and_options():
    ds = ph.load_phantom("test", n=12, size=64, sites=["D"], cache=False, progress=False)
    assert {m["site"] for m in ds.meta} == {"D"}
    ds = ph.load_phantom("test", n=12, size=64, sites={"A": 1, "B": 0}, cache=False, progress=False,
                         prevalence={f: 0.0 for f in ph.FINDINGS}, device_p=0, marker_p=0)
    assert {m["site"] for m in ds.meta} == {"A"}
    assert int(ds.labels.sum()) == 0 and not ds.masks["device"].any() and not ds.masks["marker"].any()


@pytest.mark.parametrize("size", [64, 256])
def test_sizes(size):
    out = ph.generate(2, size, 0, split="val", prevalence=ALL_ON, device_p=1, marker_p=1)
    assert out["images"].shape == (2, size, size)
    assert all(out["masks"][f].any(axis=(1, 2)).all() for f in ph.FINDINGS + ph.DISTRACTORS)


def test_cache_roundtrip(tmp_path):
    kw = dict(n=5, size=64, seed=2, data_dir=tmp_path, progress=False)
    a = ph.load_phantom("train", **kw)
    files = list((tmp_path / "phantom").glob("*.npz"))
    assert len(files) == 1 and not list((tmp_path / "phantom").glob(".*tmp"))
    b = ph.load_phantom("train", **kw)
    assert torch.equal(a.images, b.images) and torch.equal(a.concepts, b.concepts)
    assert all(torch.equal(a.masks[k], b.masks[k]) for k in a.masks)
    assert a.meta == b.meta and a.ids == b.ids
    c = ph.load_phantom("train", task="diagnosis", **kw)  # task is not part of the cache key
    assert torch.equal(a.images, c.images) and len(list((tmp_path / "phantom").glob("*.npz"))) == 1
    ph.load_phantom("train", shortcut={"feature": "marker", "with": "nodule"}, **kw)
    assert len(list((tmp_path / "phantom").glob("*.npz"))) == 2


@pytest.mark.parametrize("kw, match", [
    ({"size": 16}, "between 32 and 512"),
    ({"size": 1024}, "between 32 and 512"),
    ({"task": "segmentation"}, "unknown phantom task"),
    ({"sites": ["Z"]}, "unknown site"),
    ({"prevalence": {"tumour": 0.2}}, "unknown finding"),
    ({"prevalence": {"nodule": 1.5}}, r"\[0, 1\]"),
    ({"device_p": -0.1}, r"\[0, 1\]"),
    ({"shortcut": {"feature": "device", "with": "pneumothorax", "p_pos": 2}}, r"\[0, 1\]"),
    ({"shortcut": {"feature": "hat", "with": "abnormal"}}, "feature must be one of"),
    ({"shortcut": {"feature": "device", "with": "fracture"}}, "'with' must be"),
    ({"n": 0}, "positive int"),
])
def test_invalid_options(kw, match):
    args = {"n": 2, "size": 64, "cache": False, "progress": False, **kw}
    with pytest.raises(ValueError, match=match):
        ph.load_phantom("train", **args)


def test_unknown_option_is_a_type_error():
    with pytest.raises(TypeError, match="unknown phantom option"):
        ph.load_phantom("train", n=2, size=64, cache=False, progress=False, nodule_size=3)


def test_gallery_draws_and_saves(tmp_path, rich):
    import matplotlib

    matplotlib.use("Agg")
    from workbench.viz import save_figure
    from workbench.viz.gallery import gallery

    fig = gallery(rich, n=4, ncols=2)
    paths = save_figure(fig, tmp_path / "gallery.png", params={"n": 4})
    assert any(p.suffix == ".png" and p.stat().st_size > 0 for p in paths)
    with pytest.raises(ValueError, match="not masks of this dataset"):
        gallery(rich, n=2, structures=["liver"])
    import matplotlib.pyplot as plt

    plt.close("all")


def test_load_through_data_api():
    wbdata = pytest.importorskip("workbench.data")
    if not hasattr(wbdata, "load"):
        pytest.skip("workbench.data.load not available yet")
    ds = wbdata.load("phantom", split="val", n=3, size=64, cache=False, progress=False)
    ref = ph.load_phantom("val", n=3, size=64, cache=False, progress=False)
    assert torch.equal(ds.images, ref.images)
