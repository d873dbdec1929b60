"""CAVs, TCAV (significance, agreement with captum), post-hoc CBMs, CAV sources and concept maps."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import workbench as wb
from workbench import concepts as wc
from workbench.capture import hook_count

from test_concepts import VIT, TinyCNN


class Pick(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0, 0, :8] * 4 - 2


class Planted(nn.Module):
    """Features h = the first 8 pixels; the class-1 logit is 3 h0 + sum_j w_j h_j^2 / 2, so its gradient
    along feature 0 is positive for almost every image and along the others it is symmetric noise."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = Pick()
        self.register_buffer("w", torch.linspace(-1, 1, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.enc(x)
        z1 = 3 * h[:, 0] + (self.w * h ** 2).sum(1) / 2
        return torch.stack([torch.zeros_like(z1), z1], 1)


def _images(n: int, seed: int, hot: int | None = None) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 1, 4, 8)
    x[:, 0, 0] = torch.rand(n, 8, generator=g)
    if hot is not None:
        x[:, 0, 0, hot] = 0.7 + 0.3 * torch.rand(n, generator=g)
    return x


def test_tcav_significance_on_a_planted_model():
    model = Planted().train()
    res = wc.tcav(model, _images(40, 0), {"zero": _images(30, 1, hot=0), "five": _images(30, 2, hot=5)},
                  layer="enc", target=1, random=_images(120, 3), n_random=8)
    t = res.table
    # every image's gradient leans along feature 0: the concept scores 1 in every run; random CAVs score 0-1
    assert t.loc["zero", "score"] > 0.9 and t.loc["zero", "significant"] and t.loc["zero", "p_value"] < 0.01
    assert not t.loc["five", "significant"]
    assert res.significant() == ["zero"]
    assert res.scores.shape == (2, 8) and res.random_scores.shape == (8,) and res.cavs.shape == (2, 8, 8)
    assert model.training and hook_count(model) == 0
    pooled = wc.tcav(model, _images(40, 0), {"zero": _images(30, 1, hot=0)}, layer="enc", target=1, n_random=4)
    assert pooled.scores.shape == (1, 4) and pooled.table.loc["zero", "score"] > 0.9  # random pool: every image given


@pytest.mark.parametrize("n, d", [(40, 300), (60, 2000)])
def test_linear_probe_is_sklearns_logistic_regression(n, d):
    """fit_probe solves the L2 logistic regression in the span of the examples when they are fewer
    than the features (TCAV's case); its weights and bias are sklearn's LogisticRegression(C)."""
    from sklearn.linear_model import LogisticRegression

    from workbench.concepts.cav import fit_probe

    rng = np.random.default_rng(1)
    pos, neg = rng.normal(0.3, 1.0, (n // 2, d)) * 2 + 1, rng.normal(0.0, 1.5, (n // 2, d))
    for c in (1.0, 0.05):
        w, b = fit_probe(pos, neg, c=c)
        x = np.concatenate([pos, neg])
        mu, sd = x.mean(0), x.std(0)
        ref = LogisticRegression(C=c, max_iter=10_000, tol=1e-12).fit((x - mu) / sd, np.r_[np.ones(n // 2), np.zeros(n // 2)])
        np.testing.assert_allclose(w, ref.coef_[0] / sd, rtol=1e-4, atol=1e-7)
        assert b == pytest.approx(ref.intercept_[0] - (ref.coef_[0] * mu / sd).sum(), rel=1e-4, abs=1e-7)


def test_tcav_scores_equal_captums_with_identical_cavs(tmp_path):
    """captum's TCAV fed our CAVs (a classifier that returns them) gives the same sign-count and magnitude
    scores for every experimental set, on a tiny ViT at a block's flattened tokens."""
    from captum.concept import TCAV, Concept
    from captum.concept._utils.classifier import Classifier

    torch.manual_seed(0)
    model = wb.models.create("vit_tiny", 2, 16, 1, **VIT).eval()
    g = torch.Generator().manual_seed(0)
    imgs, pos, rnd = (torch.rand(n, 1, 16, 16, generator=g) for n in (12, 20, 60))
    pos[:, :, :8, :8] += 0.5
    res = wc.tcav(model, imgs, {"bright": pos.clamp(0, 1)}, layer="blocks.0", target=1, random=rnd, n_random=3)

    class Fixed(Classifier):
        """Returns our CAV of the (concept, random set) pair named by the labels it is given."""

        def __init__(self) -> None:
            self.cls: list[int] = []

        def train_and_eval(self, dataloader, **kw):
            self.cls = sorted(torch.cat([y for _, y in dataloader]).unique().tolist())
            return {}

        def weights(self):
            v = res.cavs[0, self.cls[1] - 100]
            return torch.stack([v, -v])  # rows follow classes(): [concept 0, random set 100 + i]

        def classes(self):
            return self.cls

    def concept(i, name, x):
        return Concept(i, name, torch.utils.data.DataLoader(x, batch_size=64))

    # the concept examples tcav drew, in its order, and its random sets: rebuild them with the same RNG
    rng = np.random.default_rng(0)
    n = res.params["n_examples"]
    sets = [rng.choice(len(rnd), size=n, replace=False) for _ in range(4)]
    pick = rng.choice(len(pos), size=n, replace=False)
    c0 = concept(0, "bright", pos.clamp(0, 1)[pick])
    randoms = [concept(100 + i, f"random{i}", rnd[sets[i + 1]]) for i in range(3)]
    ct = TCAV(model, ["blocks.0"], classifier=Fixed(), save_path=str(tmp_path))
    scores = ct.interpret(imgs, [[c0, r] for r in randoms], target=1)
    for i, r in enumerate(randoms):
        got = scores[f"0-{r.id}"]["blocks.0"]
        d = res.directional[0, i]
        assert float(got["sign_count"][0]) == pytest.approx(float((d > 0).float().mean()), abs=1e-6)
        assert float(got["magnitude"][0]) == pytest.approx(float(d.mean()), rel=1e-4, abs=1e-6)


def test_tcav_and_cavs_bad_input():
    model = Planted()
    with pytest.raises(ValueError, match=r"'tiny' has 3 example\(s\); a CAV needs at least 10"):
        wc.tcav(model, _images(4, 0), {"tiny": _images(3, 1)}, layer="enc", target=1, random=_images(60, 2))
    with pytest.raises(ValueError, match=r"n_random \(the t-test needs several random CAVs\) must be an int >= 2"):
        wc.tcav(model, _images(4, 0), {"zero": _images(20, 1, 0)}, layer="enc", target=1, random=_images(60, 2),
                n_random=1)
    with pytest.raises(ValueError, match="model has no layer 'blocks.9'"):
        wc.learn_cavs(model, {"zero": _images(20, 1, 0)}, negatives=_images(20, 2), layer="blocks.9")
    with pytest.raises(ValueError, match="need negatives="):
        wc.learn_cavs(model, {"zero": _images(20, 1, 0)}, layer="enc")
    with pytest.raises(ValueError, match="empty masks for images"):
        wc.learn_cavs(TinyCNN(), {"sq": (torch.rand(12, 1, 16, 16), torch.zeros(12, 16, 16, dtype=torch.bool))},
                      layer="stem")


def test_cavs_from_structure_masks_separate_inside_from_outside():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(24, 1, 16, 16, generator=g) * 0.3
    masks = torch.zeros(24, 16, 16, dtype=torch.bool)
    for i in range(24):
        r, c = (i % 2) * 8, (i // 2 % 2) * 8
        masks[i, r:r + 8, c:c + 8] = True
        x[i, 0, r:r + 8, c:c + 8] += 0.6
    torch.manual_seed(0)
    cnn = TinyCNN()
    cavs = wc.learn_cavs(cnn, {"square": (x, masks)}, layer="stem")
    assert cavs.pool == "mask" and cavs.weights.shape == (1, 8) and cavs.accuracy[0] > 0.9
    with pytest.raises(ValueError, match="score masked regions"):
        wc.concept_source("cav", cnn, cavs)


def test_posthoc_cbm_trains_only_its_head_and_scores_like_the_probes():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(64, 1, 16, 16, generator=g) * 0.4
    x[:32, 0, :8, :8] += 0.5
    labels = (torch.arange(64) < 32).long()
    model = TinyCNN(num_classes=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cavs = wc.learn_cavs(model, {"corner": x[:24]}, negatives=x[40:], layer="pooled")
    src = wc.concept_source("cav", model, cavs)
    pc = wc.posthoc(model, cavs, num_classes=2, sparsity=1e-3)
    ds = wb.data._base.ArrayDataset(x, labels, classes=("n", "p"), task="binary")
    trainable = [n for n, p in pc.named_parameters() if p.requires_grad]
    assert trainable == ["task_head.weight", "task_head.bias"] and pc.batch_fields == ()
    bb0 = {k: v.clone() for k, v in pc.backbone.state_dict().items()}
    wb.fit(pc, ds, epochs=5, batch_size=16, lr=5e-2, progress=False)
    assert all(torch.equal(bb0[k], v) for k, v in pc.backbone.state_dict().items())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.allclose(wc.predict(pc, x).concepts, src.scores(x), atol=1e-5)
    assert wb.evaluate(pc, ds).accuracy > 0.9
    ann = src.annotate(ds)
    assert ann.concept_names == ("corner",) and ann.concepts.shape == (64, 1)


def test_concept_maps_vit_tokens_and_cnn_gradcam_scored_against_masks():
    torch.manual_seed(0)
    ds = wb.data.load("phantom", split="val", n=6, size=32, task="diagnosis", progress=False, cache=False)
    b = ds.batch()
    vit = wc.create("vit_tiny", concepts=ds, num_classes=6, img_size=32, in_chans=1, **VIT)
    cnn = wc.create("resnet18", concepts=ds, num_classes=6, img_size=32, in_chans=1)
    tm = wc.concept_maps(vit, b)
    gm = wc.concept_maps(cnn, b, concepts=["effusion", "cardiomegaly"])
    assert tm.method == "tokens" and tm.maps.shape == (6, 5, 32, 32)
    assert gm.method == "gradcam" and gm.maps.shape == (6, 2, 32, 32) and (gm.maps >= 0).all()
    # the token map of a concept is its head's projection of each patch token
    with torch.no_grad():
        tok = vit.backbone.forward_features(b["image"])[:, 1:]
        want = (tok @ vit.concept_head.weight[0]).reshape(6, 4, 4)
    up = torch.nn.functional.interpolate(want[:, None], size=(32, 32), mode="bilinear", align_corners=False)[:, 0]
    assert torch.allclose(tm.of("nodule"), up, atol=1e-4)
    scores = wc.score_concept_maps(gm, b)
    assert list(scores.index) == ["effusion", "cardiomegaly"]
    has = b["masks"]["effusion"].flatten(1).any(1)
    assert scores.loc["effusion", "n"] == int(has.sum()) and scores.loc["effusion", "n_excluded"] == int((~has).sum())
    with pytest.raises(ValueError, match="needs a ViT backbone"):
        wc.concept_maps(cnn, b, method="tokens")
    with pytest.raises(ValueError, match="no mask is named like the concepts"):
        wc.score_concept_maps(gm, {"heart": b["masks"]["heart"]})


def test_sae_source_latents_as_concepts():
    from test_sae_analysis import MaskNet, exact_sae, planted_data

    data, model, sae = planted_data(), MaskNet("nodule").eval(), exact_sae()
    src = wc.concept_source("sae", sae, model, latents=[2, 1], names=["nodule", "device"])
    s = src.scores(data.batch()["image"])
    assert torch.allclose(s, wb.sae.latents(sae, model, data).pooled[:, [2, 1]])
    ann = src.annotate(data)
    present = data.masks["nodule"].flatten(1).any(1)
    assert ann.concept_names == ("nodule", "device") and ((ann.concepts >= 0) & (ann.concepts <= 1)).all()
    assert (ann.concepts[present, 0] > 0).all() and (ann.concepts[~present, 0] == 0).all()
    with pytest.raises(ValueError, match="out of range for an SAE with 8 latents"):
        wc.concept_source("sae", sae, model, latents=[9])



class Leaning(Planted):
    """The planted logit with feature 0 weighted ``a``: its gradient leans along feature 0 for most images."""

    def __init__(self, a: float) -> None:
        super().__init__()
        self.a = a

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.enc(x)
        z1 = self.a * h[:, 0] + (self.w * h ** 2).sum(1) / 2
        return torch.stack([torch.zeros_like(z1), z1], 1)


def test_tcav_null_pairs_centres_the_null_and_leaves_the_concepts_alone():
    """With one counterpart every null CAV shares that random set, so the null's mean is the counterpart's
    score (it swings with the draw of that set); with a positive set per null CAV ("pairs", the default) the
    null's mean stays near 0.5. The concepts' CAVs and scores do not depend on the null."""
    model = Leaning(1.0).eval()
    means = {"pairs": [], "counterpart": []}
    for seed in range(16):
        res = {null: wc.tcav(model, _images(30, 1000 + seed), {"zero": _images(20, 2000 + seed, hot=0)}, layer="enc",
                             target=1, random=_images(120, 3000 + seed), n_random=8, null=null, seed=seed)
               for null in means}
        for null, r in res.items():
            means[null].append(float(r.random_scores.mean()))
            assert r.params["null"] == null and r.random_scores.shape == (8,)
        torch.testing.assert_close(res["pairs"].scores, res["counterpart"].scores)
        torch.testing.assert_close(res["pairs"].cavs, res["counterpart"].cavs)
    assert abs(np.mean(means["pairs"]) - 0.5) < 0.05
    assert np.std(means["counterpart"]) > 2 * np.std(means["pairs"])
    with pytest.raises(ValueError, match="null"):
        wc.tcav(model, _images(30, 0), {"zero": _images(20, 1, hot=0)}, layer="enc", target=1, random=_images(60, 2),
                null="shared")
