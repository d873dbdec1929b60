"""SAE analyses on a planted model whose layer holds the structure masks themselves.

``MaskNet`` average-pools its input to a 8x8 grid (layer ``pool``); its images are the structure
masks as channels, so each token is the share of the patch in each structure. An "exact" ReLU SAE
(``W_enc = [I, -I]``, ``W_dec = [I; -I]``) reconstructs it perfectly with latent c = channel c.
The head reads one channel: model "nodule" relies on the nodule, model "device" on the device
(a planted shortcut). Every analysis then has a known answer.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import workbench as wb
from workbench.capture import hook_count
from workbench.data import ArrayDataset
from workbench.sae import create

CHANNELS = ("lung", "device", "nodule", "marker")
SIZE, PATCH = 32, 4


class MaskNet(nn.Module):
    def __init__(self, reads: str) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(PATCH)
        self.head = nn.Linear(len(CHANNELS), 2)
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.bias.zero_()
            self.head.weight[1, CHANNELS.index(reads)] = 20.0

    def forward(self, x):
        return self.head(self.pool(x).mean((2, 3)))


def planted_data(n: int = 24, seed: int = 0, thin_device: bool = False) -> ArrayDataset:
    """Structures aligned to the 4-px patch grid; label = nodule present; device in even images
    (``thin_device``: a 1-px line inside the device's patch column instead)."""
    g = np.random.default_rng(seed)
    masks = {k: np.zeros((n, SIZE, SIZE), bool) for k in ("body",) + CHANNELS}
    labels = np.zeros(n, int)
    for i in range(n):
        masks["body"][i, 4:32, 4:28] = True
        masks["lung"][i, 8:24, 8:24] = True
        if i % 2 == 0:
            masks["device"][i, 4:28, slice(21, 22) if thin_device else slice(20, 24)] = True
        if i % 3 == 0:
            r, c = 4 * g.integers(2, 6), 4 * g.integers(2, 6)
            masks["nodule"][i, r:r + 4, c:c + 4] = True
            labels[i] = 1
        if i % 4 == 1:
            masks["marker"][i, 0:4, 28:32] = True
    images = np.stack([masks[c] for c in CHANNELS], 1).astype(np.float32)
    return ArrayDataset(torch.from_numpy(images), torch.from_numpy(labels), classes=("normal", "nodule"),
                        task="binary", masks={k: torch.from_numpy(v) for k, v in masks.items()}, name="planted")


def exact_sae(layer: str = "pool"):
    c = len(CHANNELS)
    sae = create("relu", d=c, d_sae=2 * c, source={"layer": layer})
    eye = torch.eye(c)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae.eval()


@pytest.fixture(scope="module")
def planted():
    return planted_data(), MaskNet("nodule").eval(), MaskNet("device").eval(), exact_sae()


def test_latents_pooled_and_maps(planted):
    data, model, _, sae = planted
    lat = wb.sae.latents(sae, model, data, maps=True)
    assert lat.pooled.shape == (24, 8) and lat.maps.shape == (24, 8, 8, 8) and lat.grid == (8, 8)
    torch.testing.assert_close(lat.pooled, lat.maps.flatten(2).mean(-1))
    nod = data.masks["nodule"].float()[:, None]
    torch.testing.assert_close(lat.maps[:, 2], torch.nn.functional.avg_pool2d(nod, PATCH)[:, 0])
    assert lat.ids[0] == data.ids[0] and lat.labels.tolist() == data.labels.tolist()
    assert lat.names[2] == "latent_2"
    assert wb.sae.latents(sae, model, data, pool="max").pooled[0, 0] == 1.0
    with pytest.raises(ValueError, match="pool='cls' needs the class token"):
        wb.sae.latents(sae, model, data, pool="cls")
    assert hook_count(model) == 0


def test_fidelity_of_an_exact_sae_and_of_ablations(planted):
    data, model, _, sae = planted
    f = wb.sae.fidelity(sae, model, data, bootstrap=50)
    assert f.fvu < 1e-10 and f.auc == 1.0 and f.auc_spliced == f.auc and f.agreement == 1.0
    assert f.auc_zero == 0.5 and f.auc_mean == 0.5  # both ablations leave a constant logit
    assert f.dead_fraction == 0.5  # the four "negative" latents never fire on masks >= 0
    assert f.l0 == pytest.approx(float((data.batch()["image"].reshape(24, 4, 8, 4, 8, 4).sum((3, 5)) > 0)
                                       .float().sum(1).mean()))
    assert set(f.auc_ci) == {"auc", "auc_spliced", "auc_zero", "auc_mean"} and "FVU" in str(f)
    # a noisy SAE explains less variance and changes predictions
    noisy = copy.deepcopy(sae)
    with torch.no_grad():
        noisy.W_dec.add_(0.5 * torch.randn_like(noisy.W_dec))
    assert wb.sae.fidelity(noisy, model, data).fvu > 0.05


def test_atlas_finds_each_structure_latent_and_matches_a_direct_pixel_auroc(planted):
    data, model, _, sae = planted
    at = wb.sae.atlas(sae, model, data, upsample_mode="nearest")
    best = at.best_per_structure().set_index("structure")
    for c, s in enumerate(CHANNELS):
        assert best.loc[s, "latent"] == c and best.loc[s, "auroc"] == pytest.approx(1.0)
        assert best.loc[s, "ap"] == pytest.approx(1.0)
        assert at.mass[c, at.structures.index(s)] == pytest.approx(1.0)
    assert at.mass[CHANNELS.index("marker"), list(at.structures).index("body")] == pytest.approx(0.0)
    # histogram AUROC/AP agree with a direct pixel computation on nearest-upsampled maps
    rnd = create("relu", d=4, d_sae=6, source={"layer": "pool"}).eval()
    at2 = wb.sae.atlas(rnd, model, data, upsample_mode="nearest", bins=4096)
    maps = wb.sae.latents(rnd, model, data, maps=True).maps
    up = torch.nn.functional.interpolate(maps, scale_factor=PATCH, mode="nearest")
    from sklearn.metrics import average_precision_score, roc_auc_score
    for s in ("lung", "device"):
        y = data.masks[s].flatten().numpy()
        for j in range(6):
            if at2.frequency[j] > 0:
                score = up[:, j].flatten().numpy()
                assert at2.auroc[at2.structures.index(s), j] == pytest.approx(roc_auc_score(y, score), abs=2e-3)
                assert at2.ap[at2.structures.index(s), j] == pytest.approx(average_precision_score(y, score), abs=2e-2)
    # bilinear re-scoring keeps the right latents on top; region= leaves out pixels outside the body
    bil = wb.sae.atlas(sae, model, data, region="body", top=2).best_per_structure().set_index("structure")
    assert [bil.loc[s, "latent"] for s in ("lung", "device", "nodule")] == [0, 1, 2]
    assert len(at.table(min_frequency=0)) == 4 and hook_count(model) == 0
    with pytest.raises(ValueError, match="not in the dataset"):
        wb.sae.atlas(sae, model, data, structures=["liver"])


def test_atlas_grid_ceiling_is_the_coverage_map_and_bounds_nearest_scores(planted):
    """A 1-px device line on 4-px patches: no patch-level map can reach AUROC 1. The exact SAE's
    device latent is the patch coverage itself, so it meets the ceiling; grid-aligned structures
    have a ceiling of 1; the ceiling equals a direct pixel AUROC of the upsampled coverage map."""
    from sklearn.metrics import roc_auc_score

    _, model, _, sae = planted
    thin = planted_data(thin_device=True)
    at = wb.sae.atlas(sae, model, thin, upsample_mode="nearest", bins=4096)
    best = at.best_per_structure().set_index("structure")
    assert at.ceiling["lung"] == pytest.approx(1.0) and at.ceiling["nodule"] == pytest.approx(1.0)
    y = thin.masks["device"]
    cover = torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(y.float()[:, None], PATCH),
                                            scale_factor=PATCH, mode="nearest")
    direct = roc_auc_score(y.flatten().numpy(), cover.flatten().numpy())
    assert direct < 0.99 and at.ceiling["device"] == pytest.approx(direct, abs=2e-3)
    assert best.loc["device", "latent"] == 1 and best.loc["device", "auroc"] == pytest.approx(at.ceiling["device"], abs=2e-3)
    assert (at.auroc[at.structures.index("device")].nan_to_num(0) <= at.ceiling["device"] + 2e-3).all()
    assert (best["ceiling"] == pd_series(at.ceiling, best.index)).all()
    # bilinear: the ceiling is scored on the interpolated coverage map (a reference, not a bound)
    bil = wb.sae.atlas(sae, model, thin, top=2)
    up = torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(y.float()[:, None], PATCH),
                                         scale_factor=PATCH, mode="bilinear", align_corners=False)
    assert bil.ceiling["device"] == pytest.approx(roc_auc_score(y.flatten().numpy(), up.flatten().numpy()), abs=5e-3)


def test_atlas_union_of_latents_recovers_a_structure_split_over_two():
    """The lung's upper and lower halves are two channels, so the exact SAE holds the lung as two
    latents: neither alone matches the lung mask, their union does."""
    n = 12
    masks = {"lung": torch.zeros(n, SIZE, SIZE, dtype=torch.bool), "body": torch.ones(n, SIZE, SIZE, dtype=torch.bool)}
    upper, lower = torch.zeros(n, SIZE, SIZE), torch.zeros(n, SIZE, SIZE)
    for i in range(n):
        top = 4 + 4 * (i % 3)
        upper[i, top:top + 8, 8:24] = 1
        lower[i, top + 8:top + 16, 8:24] = 1
        masks["lung"][i] = (upper[i] + lower[i]) > 0
    data = ArrayDataset(torch.stack([upper, lower], 1), torch.arange(n) % 2, classes=("a", "b"), task="binary",
                        masks=masks, name="split")

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.pool = nn.AvgPool2d(PATCH)
            self.head = nn.Linear(2, 2)

        def forward(self, x):
            return self.head(self.pool(x).mean((2, 3)))

    sae = create("relu", d=2, d_sae=4, source={"layer": "pool"})
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([torch.eye(2), -torch.eye(2)], 1))
        sae.W_dec.copy_(torch.cat([torch.eye(2), -torch.eye(2)], 0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    at = wb.sae.atlas(sae.eval(), Net().eval(), data, structures=["lung"], upsample_mode="nearest", combine=2)
    u = at.unions.set_index("n")
    assert u.loc[1, "auroc"] == pytest.approx(at.best_per_structure().auroc[0], abs=2e-3) and u.loc[1, "auroc"] < 0.9
    assert set(u.loc[2, "latents"]) == {0, 1} and u.loc[2, "auroc"] == pytest.approx(1.0)
    # on bilinear maps (the default) each union is re-scored the way the single latents are
    bil = wb.sae.atlas(sae.eval(), Net().eval(), data, structures=["lung"], combine=2)
    ub = bil.unions.set_index("n")
    assert ub.loc[1, "auroc"] == pytest.approx(bil.best_per_structure().auroc[0], abs=1e-2)
    assert ub.loc[2, "auroc"] > ub.loc[1, "auroc"] + 0.1
    assert wb.sae.atlas(sae.eval(), Net().eval(), data, structures=["lung"], combine=0).unions.empty
    with pytest.raises(ValueError, match="combine"):
        wb.sae.atlas(sae.eval(), Net().eval(), data, combine=-1)


def pd_series(d, index):
    import pandas as pd

    return pd.Series([d[s] for s in index], index=index)


def test_confounder_search_finds_the_planted_shortcut_only_where_the_model_uses_it(planted):
    data, honest, shortcut, sae = planted
    dev = CHANNELS.index("device")
    found = wb.sae.confounders(sae, shortcut, data, top=3)
    assert found.latent.iloc[0] == dev and found.share_device.iloc[0] == pytest.approx(1.0)
    assert found.reliance.iloc[0] > 0 and found.score.iloc[0] > 0
    clean = wb.sae.confounders(sae, honest, data, top=8).set_index("latent")
    assert clean.loc[dev, "score"] == 0.0 and clean.loc[dev, "reliance"] == 0.0
    # detection of the device's presence within each class: whatever the model uses
    assert found.detects_device.iloc[0] == 1.0 and clean.loc[dev, "detects_device"] == 1.0
    assert clean.loc[CHANNELS.index("lung"), "detects_device"] == 0.5   # on every image: no information
    assert clean.loc[CHANNELS.index("marker"), "detects_marker"] == 1.0
    # the marker sits outside the body: counted off-anatomy, but the model does not use it
    assert clean.loc[CHANNELS.index("marker"), "outside_body"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="needs masks of"):
        wb.sae.confounders(sae, shortcut, data, suspects=("drain",))


def test_confounder_search_ranks_a_thin_device_by_detection_not_by_its_diluted_mass_share():
    """A 1-px drain fills a quarter of its patches, so its latent's mass share on the device is 0.25;
    a marker latent (all its mass outside the body) would outrank it on mass alone although the
    model leans on the drain more. Detection of the drain's presence (perfect) does not dilute."""
    data = planted_data(thin_device=True)
    model = MaskNet("device").eval()
    with torch.no_grad():
        model.head.weight[1, CHANNELS.index("marker")] = 20.0
    found = wb.sae.confounders(exact_sae(), model, data, top=4).set_index("latent")
    dev, mark = CHANNELS.index("device"), CHANNELS.index("marker")
    assert found.loc[dev, "share_device"] == pytest.approx(0.25, abs=0.01) and found.loc[dev, "detects_device"] == 1.0
    assert found.loc[dev, "off_evidence"] == 1.0 and found.loc[mark, "off_evidence"] == 1.0
    assert found.loc[dev, "reliance"] > found.loc[mark, "reliance"] > 0
    assert list(found.index[:2]) == [dev, mark]
    # what ranking by the mass share alone would have done
    by_mass = found.reliance.abs() * found.off_share
    assert by_mass[mark] > by_mass[dev]


def test_class_latents_mean_ranking_favours_diffuse_latents_and_contrastive_does_not():
    n = 200
    y = torch.arange(n) % 2
    g = torch.Generator().manual_seed(0)
    pooled = torch.stack([5 + torch.rand(n, generator=g),                           # diffuse: fires everywhere
                          (y == 1).float() * (0.5 + torch.rand(n, generator=g)),     # class-1 specific
                          torch.rand(n, generator=g) * (torch.rand(n, generator=g) > 0.5)], 1)
    lat = wb.sae.Latents(pooled=pooled, maps=None, labels=y, ids=tuple(map(str, range(n))), pool="mean",
                         layer="x", grid=(1, 1))
    cl = wb.sae.class_latents(precomputed=lat, classes=("a", "b"))
    assert cl.top("b", 1, "mean") == [0] and cl.top("b", 1, "contrastive") == [1]
    assert cl.density[0] == 1.0 and cl.auc[1, 1] == 1.0
    s = cl.summary(1).set_index(["class", "method"])
    assert s.loc[("b", "mean"), "mean_density"] > s.loc[("b", "contrastive"), "mean_density"]
    assert s.loc[("b", "mean"), "overlap"] == 0.0
    t = cl.table(2)
    assert set(t.method) == {"mean", "contrastive"} and len(t) == 2 * 2 * 2
    with pytest.raises(ValueError, match="unknown class"):
        cl.top("c")


def test_interventions_keep_and_switch_off_the_class_latent(planted):
    data, model, _, sae = planted
    iv = wb.sae.intervene(sae, model, data, ks=(1, 2), classes=["nodule"], ranking="contrastive", random=4,
                          bootstrap=50)
    t = iv.table.set_index(["mode", "k"])
    assert iv.latents[1] == [CHANNELS.index("nodule")]
    assert iv.auc == 1.0 and iv.auc_spliced == 1.0
    assert t.loc[("keep", 1), "auc"] == 1.0 and t.loc[("off", 1), "auc"] == 0.5
    assert t.loc[("off", 1), "random_auc"] > t.loc[("off", 1), "auc"]
    assert t.loc[("keep", 1), "auc_low"] <= t.loc[("keep", 1), "auc"] <= t.loc[("keep", 1), "auc_high"]
    assert list(iv.table.columns[:4]) == ["mode", "k", "n_latents", "auc"]
    with pytest.raises(ValueError, match="k=9 is larger than the dictionary"):
        wb.sae.intervene(sae, model, data, ks=(9,))
    with pytest.raises(ValueError, match="modes"):
        wb.sae.intervene(sae, model, data, ks=(1,), modes=("flip",))


def test_two_models_one_dictionary(planted):
    data, honest, shortcut, sae = planted
    cmp = wb.sae.compare_models(sae, honest, shortcut, data, names=("honest", "shortcut"))
    assert cmp.table.latent.iloc[0] == CHANNELS.index("device")     # relied on more after
    assert cmp.table.latent.iloc[-1] == CHANNELS.index("nodule")    # relied on less after
    assert cmp.fvu_a < 1e-10 and cmp.fvu_b < 1e-10


def test_top_activations_and_heatmaps(planted):
    data, model, _, sae = planted
    nod = CHANNELS.index("nodule")
    top = wb.sae.top_activations(sae, model, data, n=3)
    items = top.of(nod)
    assert len(items) == 3 and all(data.labels[i] == 1 for i, _, _ in items)
    for i, p, v in items:
        r, c = divmod(p, 8)
        assert data.masks["nodule"][i, r * 4:(r + 1) * 4, c * 4:(c + 1) * 4].all() and v == 1.0
    assert top.frequency[nod] == pytest.approx(8 / 24)
    inside = wb.sae.top_activations(sae, model, data, n=2, region="body")
    assert inside.of(CHANNELS.index("marker")) == []   # the marker is outside the body
    hm = wb.sae.heatmaps(sae, model, data.batch(range(3))["image"], nod, mode="nearest")
    assert hm.shape == (3, 32, 32) and torch.equal(hm[0] > 0, data.masks["nodule"][0])
    assert wb.sae.heatmaps(sae, model, data.batch([0])["image"], [0, 2]).shape == (1, 2, 32, 32)
    with pytest.raises(ValueError, match="out of range"):
        wb.sae.heatmaps(sae, model, data.batch([0])["image"], 99)


def test_sae_figures(planted, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data, model, _, sae = planted
    top = wb.sae.top_activations(sae, model, data, n=3)
    figs = [top.plot(2, data, sae=sae, model=model),
            wb.sae.atlas(sae, model, data, upsample_mode="nearest").plot(),
            wb.viz.atlas_matrix(wb.sae.atlas(sae, model, data, upsample_mode="nearest")),
            wb.sae.intervene(sae, model, data, ks=(1, 2), random=2, bootstrap=20).plot(),
            wb.viz.latent_heatmap(data[0]["image"], wb.sae.heatmaps(sae, model, data.batch([0])["image"], 0)[0],
                                  masks=data[0]["masks"])]
    fig, ax = plt.subplots()
    assert wb.viz.class_latent_bars(wb.sae.class_latents(sae, model, data), "nodule", k=3, ax=ax) is fig
    out = wb.viz.save_figure(figs[0], tmp_path / "grid", formats=["png"])
    assert out[0].stat().st_size > 1000
    for f in figs + [fig]:
        assert f.axes
        plt.close(f)


def test_latent_browser_redraws_on_controls(planted, tmp_path):
    pytest.importorskip("ipywidgets")
    import hashlib
    import json

    from workbench.widgets import latent_browser

    data, model, _, sae = planted

    def digest(img):
        return hashlib.sha1(bytes(img.value)).hexdigest()

    w = latent_browser(sae, model, data, indices=range(12), latent=CHANNELS.index("nodule"), n_top=3)
    assert w.last_error is None, w.last_error
    assert "wb-latents" in w._dom_classes and "wb-latent-heatmap" in w.heatmap._dom_classes
    assert w.top_images(2) == [0, 3, 6] or all(data.labels[i] == 1 for i in w.top_images(2))
    assert "nodule" in w.profile.value and "100%" in w.profile.value    # its whole mass is on the nodule
    seen = {digest(w.heatmap)}
    w.controls["next"].click()
    assert w.controls["index"].value == 1 and w.last_error is None
    for name, value in [("index", 3), ("alpha", 0.2), ("show_lung", not w.controls["show_lung"].value)]:
        before = digest(w.heatmap)
        w.controls[name].value = value
        assert w.last_error is None and digest(w.heatmap) != before, name
    top_before = digest(w.top)
    # pick an image's strongest latent: the browser switches to it
    strongest = [j for j, _ in w.strongest_latents(w.controls["index"].value)]
    assert CHANNELS.index("lung") in strongest
    w.strongest.value = CHANNELS.index("lung")
    assert w.controls["latent"].value == CHANNELS.index("lung") and digest(w.top) != top_before
    w.controls["format"].value = "svg"
    w.controls["path"].value = str(tmp_path / "view")
    w.controls["export"].click()
    assert [p.suffix for p in w.last_export] == [".svg", ".json"]
    assert json.loads(w.last_export[1].read_text())["params"]["latent"] == w.controls["latent"].value
    with pytest.raises(ValueError, match="indices is empty"):
        latent_browser(sae, model, data, indices=[])
