"""Concept bottlenecks: models, training objective, predictions, interventions, curves, quality,
test-time improvement, checkpoints, sources and bad input."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import workbench as wb
from workbench import concepts as wc
from workbench.data._base import ArrayDataset

NAMES = ("a", "b", "c")
VIT = dict(patch_size=8, depth=1, embed_dim=32, num_heads=2)


class Oracle(nn.Module):
    """A timm-like backbone whose pooled features are the concept values written in each image's first
    row (x[:, 0, 0, :K], scaled to logits): a CBM on it predicts exactly what the images say."""

    def __init__(self, k: int = 3) -> None:
        super().__init__()
        self.num_features = k
        self.scale = nn.Parameter(torch.ones(()))
        self.fc = nn.Linear(k, 2)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0, 0, :self.num_features] * self.scale

    def forward_head(self, f: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return f if pre_logits else self.fc(f)

    def reset_classifier(self, num_classes: int) -> None:
        self.fc = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class TinyCNN(nn.Module):
    """A small timm-like CNN (2x2 patch grid at 16 px, flattened as its pooled features): trains in seconds."""

    def __init__(self, num_classes: int = 2) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 8, stride=8)
        self.num_features = 32
        self.fc = nn.Linear(32, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.stem(x))

    def forward_head(self, f: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return f.flatten(1) if pre_logits else self.fc(f.flatten(1))

    def reset_classifier(self, num_classes: int) -> None:
        self.fc = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


W_RULE = torch.tensor([[0.0, 0.0, 0.0], [4.0, -2.0, 0.0], [0.0, 4.0, 0.0], [-1.0, -1.0, 3.0]])
B_RULE = torch.tensor([1.0, -1.0, -1.0, -1.5])  # class = argmax(W c + b) over concepts in {0, 1}


def rule(c: torch.Tensor) -> torch.Tensor:
    return (c @ W_RULE.T + B_RULE).argmax(1)


def oracle_cbm(**kw) -> wc.ConceptBottleneck:
    """A CBM over the Oracle: concept logit = 8 * (value - 0.5); the head implements ``rule``."""
    cbm = wc.create(Oracle(), concepts=NAMES, num_classes=4, classes=("n", "x", "y", "z"), **kw)
    with torch.no_grad():
        cbm.concept_head.weight.copy_(torch.eye(3) * 8)
        cbm.concept_head.bias.fill_(-4.0)
        if cbm.head == "linear":
            cbm.task_head.weight.copy_(W_RULE)
            cbm.task_head.bias.copy_(B_RULE)
    return cbm.eval()


def oracle_data(values: torch.Tensor, labels: torch.Tensor | None = None, concepts: torch.Tensor | None = None):
    """Images carrying ``values`` (N, 3) in their first row; labels by the rule on ``concepts``."""
    n = len(values)
    x = torch.zeros(n, 1, 8, 8)
    x[:, 0, 0, :3] = values
    c = (values > 0.5).float() if concepts is None else concepts
    y = rule(torch.nan_to_num(c)) if labels is None else labels
    return ArrayDataset(x, y, classes=("n", "x", "y", "z"), task="multiclass", concepts=c, concept_names=NAMES)


def all_combos(reps: int = 4) -> torch.Tensor:
    c = torch.tensor([[i >> 2 & 1, i >> 1 & 1, i & 1] for i in range(8)], dtype=torch.float32)
    return c.repeat(reps, 1)


# ----------------------------------------------------------------------------------------- models
def test_create_from_name_and_model_leaves_backbone_alone():
    cbm = wc.create("vit_tiny", concepts=NAMES, num_classes=4, img_size=32, in_chans=1, **VIT)
    x = torch.rand(2, 1, 32, 32)
    assert cbm(x).shape == (2, 4) and cbm.concept_logits(x).shape == (2, 3)
    assert cbm.workbench_config["kind"] == "concept_bottleneck" and cbm.batch_fields == ("concepts",)
    bb = wb.models.create("resnet18", num_classes=5, img_size=32, in_chans=1)
    before = {k: v.clone() for k, v in bb.state_dict().items()}
    cnn = wc.create(bb, concepts=NAMES, num_classes=2, mode="sequential", head="mlp")
    assert cnn(x).shape == (2, 2)
    assert all(torch.equal(before[k], v) for k, v in bb.state_dict().items())
    assert bb.eval()(x).shape == (2, 5), "the user's backbone lost its classifier"


@pytest.mark.parametrize("mode,reaches", [("joint", True), ("sequential", False), ("independent", False)])
def test_task_gradient_reaches_concepts_only_when_joint(mode, reaches):
    cbm = oracle_cbm(mode=mode, concept_weight=1.0).train()
    ds = oracle_data(all_combos(1))
    b = ds.batch()
    b["concepts"][0, 1] = float("nan")
    seen = {}

    def task_loss(logits, y):
        seen["loss"] = torch.nn.functional.cross_entropy(logits, y)
        return seen["loss"]

    cbm.training_loss(b, task_loss)
    (g,) = torch.autograd.grad(seen["loss"], cbm.concept_head.weight, allow_unused=True)
    assert (g is not None and g.abs().sum() > 0) == reaches


def test_concept_loss_masks_missing_labels():
    cbm = oracle_cbm()
    z = torch.tensor([[2.0, -1.0], [0.5, 3.0]])
    t = torch.tensor([[1.0, float("nan")], [0.0, float("nan")]])
    want = torch.nn.functional.binary_cross_entropy_with_logits(z[:, 0], t[:, 0])
    assert torch.allclose(cbm.concept_loss(z, t), want)
    assert cbm.concept_loss(z, torch.full_like(t, float("nan"))) == 0


def test_fit_trains_a_cbm_with_missing_concept_labels():
    """wb.fit trains a joint CBM (NaN labels masked); concept logits learn to follow the labels."""
    g = torch.Generator().manual_seed(0)
    c = (torch.rand(96, 3, generator=g) > 0.5).float()
    x = torch.rand(96, 1, 16, 16, generator=g) * 0.1
    for k in range(3):  # concept k brightens its own quadrant
        x[:, 0, (k // 2) * 8:(k // 2) * 8 + 8, (k % 2) * 8:(k % 2) * 8 + 8] += 0.8 * c[:, k, None, None]
    labels = rule(c)
    c_obs = c.clone()
    c_obs[::4, 0] = float("nan")
    ds = ArrayDataset(x, labels, classes=("n", "x", "y", "z"), task="multiclass", concepts=c_obs, concept_names=NAMES)
    cbm = wc.create(TinyCNN(), concepts=ds, num_classes=4)
    hist = wb.fit(cbm, ds, epochs=8, batch_size=16, lr=1e-2, progress=False, class_weights=None)
    assert np.isfinite(hist.loss).all() and hist.loss[-1] < hist.loss[0]
    rep = wc.quality(cbm, ArrayDataset(x, labels, classes=ds.classes, task="multiclass", concepts=c, concept_names=NAMES))
    assert rep.mean_concept_auc > 0.9, rep.concepts
    assert int(cbm.stats_batches) == 48 and (cbm.logit_hi > cbm.logit_lo).all()
    assert torch.isfinite(cbm.source_class_means()[labels.unique()]).all()


def test_fit_gives_the_task_head_its_own_learning_rate():
    """A CBM's task head (K x C on [0, 1] probabilities) trains at head_lr x fit's lr; the rest at lr."""
    from workbench.train import _param_groups

    cbm = wc.create(TinyCNN(), concepts=NAMES, num_classes=4, head_lr=10.0)
    groups = _param_groups(cbm, 0.05, 1e-3)
    head = {id(p) for p in cbm.task_head.parameters()}
    for g in groups:
        in_head = {id(p) in head for p in g["params"]}
        assert len(in_head) == 1, "a group mixes the head with other parameters"
        assert g["lr"] == pytest.approx(1e-2 if in_head.pop() else 1e-3)
    assert sum(len(g["params"]) for g in groups) == len([p for p in cbm.parameters() if p.requires_grad])
    assert cbm.workbench_config["head_lr"] == 10.0
    with pytest.raises(ValueError, match="head_lr"):
        wc.create(TinyCNN(), concepts=NAMES, num_classes=4, head_lr=0)


# ------------------------------------------------------------------------------- predict, intervene
def test_predict_contributions_add_up_linear_and_mlp():
    for head in ("linear", "mlp"):
        cbm = oracle_cbm(head=head)
        p = wc.predict(cbm, oracle_data(all_combos(1)).batch())
        tol = 1e-5 if head == "linear" else 1e-2  # MLP: integrated gradients, 32-step Riemann sum
        assert torch.allclose(p.base + p.contributions.sum(-1), p.logits, atol=tol), head
        assert p.concepts.shape == (8, 3) and torch.allclose(p.probs.sum(1), torch.ones(8))


def test_intervene_values_groups_true_and_logit_range():
    cbm = oracle_cbm()
    ds = oracle_data(torch.full((8, 3), 0.5), concepts=all_combos(1))
    b = ds.batch()
    p = wc.intervene(cbm, b, {"a": 1.0, ("b", 2): "true"})
    assert torch.equal(p.concepts[:, 0], torch.ones(8)) and torch.equal(p.concepts[:, 1:], b["concepts"][:, 1:])
    assert p.intervened.all() and torch.equal(p.predicted, rule(torch.cat([torch.ones(8, 1), b["concepts"][:, 1:]], 1)))
    per_image = wc.intervene(cbm, b["image"], {"c": torch.linspace(0, 1, 8)})
    assert torch.allclose(per_image.concepts[:, 2], torch.linspace(0, 1, 8))
    lg = oracle_cbm(activation="logit")
    lg.logit_lo.fill_(-3.0)
    lg.logit_hi.fill_(5.0)
    q = wc.intervene(lg, b["image"], {"a": 1.0, "b": 0.0})
    assert torch.allclose(q.head_input[:, 0], torch.full((8,), 5.0)) and torch.allclose(q.head_input[:, 1], torch.full((8,), -3.0))


@pytest.mark.parametrize("values,match", [
    ({"d": 1.0}, r"unknown concept 'd'; valid concepts are \['a', 'b', 'c'\]"),
    ({"a": 1.5}, r"must lie in \[0, 1\]"),
    ({"a": -0.1}, r"must lie in \[0, 1\]"),
    ({"a": "yes"}, "'true'"),
    ({"a": torch.ones(3)}, "one value per image"),
])
def test_intervene_rejects_bad_values(values, match):
    with pytest.raises(ValueError, match=match):
        wc.intervene(oracle_cbm(), oracle_data(all_combos(1)).batch(), values)


def test_intervene_true_needs_labels_for_every_image():
    c = all_combos(1)
    c[2, 0] = float("nan")
    b = oracle_data(c.nan_to_num(), concepts=c).batch()
    with pytest.raises(ValueError, match=r"missing \(NaN\) for images \[2\]"):
        wc.intervene(oracle_cbm(), b, {"a": "true"})
    with pytest.raises(ValueError, match="true concept labels are needed"):
        wc.intervene(oracle_cbm(), b["image"], {"a": "true"})


def test_verbs_need_a_concept_model_and_images():
    with pytest.raises(TypeError, match="concept bottleneck model"):
        wc.predict(nn.Linear(2, 2), torch.rand(1, 1, 8, 8))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        wc.predict(oracle_cbm(), torch.rand(1, 8, 8))


# --------------------------------------------------------------------------------------- curves
def test_intervention_curve_reaches_perfect_accuracy_and_orders():
    g = torch.Generator().manual_seed(1)
    c = all_combos(8)
    noisy = (c + (torch.rand(c.shape, generator=g) - 0.5) * 1.3).clamp(0, 1)  # some concepts mispredicted
    ds = oracle_data(noisy, concepts=c)
    curve = wc.intervention_curve(oracle_cbm(), ds, bootstrap=100, random_draws=3)
    for o in wc.ORDERS:
        assert curve.accuracy[o][-1] == 1.0 and curve.accuracy[o][0] < 1.0
        assert (curve.accuracy_ci[o][:, 0] <= curve.accuracy[o] + 1e-9).all()
        assert curve.corrections_to(1.0, o) <= 3
    assert curve.accuracy["random"][0] == curve.accuracy["uncertainty"][0]
    assert set(curve.table()["order"]) == set(wc.ORDERS) and len(curve.table()) == 12
    with pytest.raises(ValueError, match="valid orders"):
        wc.intervention_curve(oracle_cbm(), ds, order="greedy")


def test_uncertainty_order_corrects_least_certain_first():
    from workbench.concepts.interventions import _orders

    z = torch.tensor([[3.0, 0.1, -2.0], [0.0, -5.0, 1.0]])
    true = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, float("nan")]])
    o = _orders(oracle_cbm(), z, true, "uncertainty", np.random.default_rng(0))
    assert o[0].tolist() == [1, 2, 0] and o[1].tolist() == [0, 1, 2]  # the unlabelled concept last
    e = _orders(oracle_cbm(), z, true, "expected_change", np.random.default_rng(0))
    assert sorted(e[0].tolist()) == [0, 1, 2] and e[1, -1] == 2


# ---------------------------------------------------------------------------------------- quality
def test_quality_report_of_a_faithful_cbm():
    ds = oracle_data(all_combos(6))
    rep = wc.quality(oracle_cbm(), ds)
    assert rep.mean_concept_auc == 1.0 and rep.task_accuracy == 1.0
    assert rep.leakage == {"soft": 1.0, "hard": 1.0, "true": 1.0, "gap": 0.0}
    assert rep.completeness > 0.9
    assert 0 < rep.head_sparsity < 1 and rep.concepts_per_class["n"] == 0
    assert list(rep.concepts.index) == list(NAMES)


# ---------------------------------------------------------------------------------------- TTI
def _site(scale0: float, reps: int, shift1: float = 0.0):
    """Site data: concept 'a' evidence scaled by ``scale0`` (under-activated at the new site), 'b' raised
    by ``shift1`` (mis-activated)."""
    c = all_combos(reps)
    v = c.clone()
    v[:, 0] = 0.5 + (c[:, 0] - 0.5) * scale0 - 0.2 * (scale0 < 1)
    v[:, 1] = v[:, 1] + shift1
    return oracle_data(v.clamp(0, 1), concepts=c)


def test_test_time_improve_amplifies_under_activated_concept():
    cbm = oracle_cbm()
    source, target = oracle_data(all_combos(6)), _site(0.3, 6)
    support = _site(0.3, 1)
    before = wb.evaluate(cbm, target).accuracy
    adapted, rep = wc.test_time_improve(cbm, support, source=source)
    assert "a" in rep.amplified and rep.table.loc["a", "action"] == "amplify"
    assert "under-activated" in rep.table.loc["a", "reason"]
    assert wb.evaluate(adapted, target).accuracy > before + 0.1
    assert rep.source_accuracy["after"] >= rep.source_accuracy["before"] - 0.01
    assert torch.equal(cbm.adapt_gain, torch.ones(3)), "the input model was changed"
    assert set(rep.candidates.columns) >= {"loo_accuracy", "guard_ok", "masked", "amplified"}


def test_test_time_improve_masks_a_confounding_concept():
    """'c' never fires at the source, where the head learned a spurious weight for it (class x); at the
    new site it fires on every image and pushes normal images to x: masking it repairs the site."""
    cbm = wc.create(Oracle(), concepts=NAMES, num_classes=3, classes=("n", "x", "y"))
    with torch.no_grad():
        cbm.concept_head.weight.copy_(torch.eye(3) * 8)
        cbm.concept_head.bias.fill_(-4.0)
        cbm.task_head.weight.copy_(torch.tensor([[0.0, 0.0, 0.0], [3.0, -2.0, 3.0], [0.0, 4.0, 0.0]]))
        cbm.task_head.bias.copy_(torch.tensor([0.5, -1.5, -1.5]))
    cbm.eval()
    ab = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]).repeat(6, 1)
    truth = torch.cat([ab, torch.zeros(24, 1)], 1)
    labels = cbm.forward_concepts(truth).argmax(1).detach()

    def site(c_value: float) -> ArrayDataset:
        x = torch.zeros(24, 1, 8, 8)
        x[:, 0, 0, :2], x[:, 0, 0, 2] = ab, c_value
        return ArrayDataset(x, labels, classes=("n", "x", "y"), task="multiclass", concepts=truth, concept_names=NAMES)

    source, target = site(0.0), site(1.0)
    assert wb.evaluate(cbm, source).accuracy == 1.0 and wb.evaluate(cbm, target).accuracy < 0.8
    adapted, rep = wc.test_time_improve(cbm, target.subset(range(8)), source=source)
    assert rep.masked == ("c",) and adapted.adapt_gain[2] == 0 and "confounding" in rep.table.loc["c", "reason"]
    assert wb.evaluate(adapted, target).accuracy == 1.0
    assert rep.source_accuracy == {"before": 1.0, "after": 1.0}


def test_test_time_improve_guard_and_bad_support():
    cbm = oracle_cbm()
    source = oracle_data(all_combos(6))
    _, rep = wc.test_time_improve(cbm, _site(0.3, 1), source=source, max_source_drop=0.0)
    assert rep.candidates["guard_ok"].any()
    assert (rep.source_accuracy["before"] - rep.source_accuracy["after"]) <= 0.0
    with pytest.raises(ValueError, match=r"no image of class\(es\) \['z'\]"):
        sup = oracle_data(all_combos(1))
        wc.test_time_improve(cbm, sup.subset((sup.labels != 3).nonzero().flatten()), source=source)
    with pytest.raises(ValueError, match="source statistics"):
        wc.test_time_improve(cbm, _site(0.3, 1))


def test_finetune_head_baseline_changes_only_the_head():
    cbm = oracle_cbm()
    ft = wc.finetune_head(cbm, _site(0.3, 1), steps=50)
    assert torch.equal(ft.concept_head.weight, cbm.concept_head.weight)
    assert not torch.equal(ft.task_head.weight, cbm.task_head.weight)
    assert torch.equal(cbm.task_head.weight, W_RULE)


def _zero_head(cbm: wc.ConceptBottleneck) -> wc.ConceptBottleneck:
    """An untrained task head: zeros (linear) or a fresh seeded initialisation (MLP; zeros would be a
    saddle point with no gradient)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for mod in cbm.task_head.modules():
            if isinstance(mod, nn.Linear):
                mod.reset_parameters() if cbm.head == "mlp" else (mod.weight.zero_(), mod.bias.zero_())
    return cbm


def _head_acc(cbm: wc.ConceptBottleneck, c: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((cbm.forward_concepts(cbm.value_to_input(c)).argmax(1) == y).float().mean())


@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_fit_head_on_true_concepts_learns_the_rule_and_changes_only_the_head(head):
    cbm = _zero_head(oracle_cbm(mode="independent", head=head))
    c = all_combos(6)
    ds = oracle_data(torch.zeros_like(c), concepts=c)  # the images say nothing: on="true" must not need them
    before = copy.deepcopy(cbm.state_dict())
    fitted = wc.fit_head(cbm, ds)
    assert _head_acc(cbm, c, rule(c)) < 0.9
    assert _head_acc(fitted, c, rule(c)) == 1.0
    assert all(torch.equal(v, cbm.state_dict()[k]) for k, v in before.items())  # the input model is not changed
    assert torch.equal(fitted.concept_head.weight, cbm.concept_head.weight)
    # the same images through the predictor carry no information: the sequential fit cannot learn the rule
    seq = wc.fit_head(cbm, ds, on="predicted")
    majority = float(torch.bincount(rule(c)).max()) / len(c)
    assert _head_acc(seq, c, rule(c)) <= majority + 1e-6


def test_fit_head_fills_missing_true_concepts_with_predictions_and_fits_multilabel():
    c = all_combos(6)
    obs = c.clone()
    obs[::3, 1] = float("nan")
    fitted = wc.fit_head(_zero_head(oracle_cbm(mode="independent")), oracle_data(c, concepts=obs))
    assert all(torch.isfinite(q).all() for q in fitted.task_head.parameters())
    assert _head_acc(fitted, c, rule(c)) == 1.0  # the images carry the true values of the missing labels
    y = torch.stack([c[:, 0], c[:, 1] * c[:, 2]], 1)  # two labels, the second an AND of two concepts
    ds = ArrayDataset(torch.zeros(len(c), 1, 8, 8), y, classes=("p", "q"), task="multilabel", concepts=c,
                      concept_names=NAMES)
    cbm = _zero_head(wc.create(Oracle(), concepts=NAMES, num_classes=2, mode="independent"))
    fitted = wc.fit_head(cbm, ds)
    with torch.no_grad():
        assert torch.equal((fitted.forward_concepts(c) > 0).float(), y)


def test_fit_head_bad_input():
    cbm = oracle_cbm(mode="independent")
    c = all_combos(1)
    with pytest.raises(ValueError, match="on must be one of"):
        wc.fit_head(cbm, oracle_data(c), on="labels")
    with pytest.raises(ValueError, match="no concept labels"):
        wc.fit_head(cbm, ArrayDataset(torch.zeros(8, 1, 8, 8), rule(c), classes=("n", "x", "y", "z"), task="multiclass"))
    with pytest.raises(TypeError, match="concept bottleneck"):
        wc.fit_head(Oracle(), oracle_data(c))
    with pytest.raises(ValueError, match="l2"):
        wc.fit_head(cbm, oracle_data(c), l2=-1)


# ------------------------------------------------------------------------------------ checkpoints
def test_cbm_checkpoint_round_trip_with_adaptation(tmp_path):
    cbm = wc.create("vit_tiny", concepts=NAMES, num_classes=4, img_size=32, in_chans=1, head="mlp",
                    classes=("n", "x", "y", "z"), **VIT).eval()
    with torch.no_grad():
        cbm.adapt_gain[1] = 0.0
        cbm.logit_hi.fill_(3.0)
    wb.models.save(cbm, tmp_path / "cbm")
    back = wb.models.load(tmp_path / "cbm")
    x = torch.rand(2, 1, 32, 32)
    assert isinstance(back, wc.ConceptBottleneck) and back.concepts == NAMES and back.head == "mlp"
    assert torch.allclose(back(x), cbm(x)) and back.adapt_gain[1] == 0 and back.logit_hi[0] == 3.0
    assert back.workbench_config == cbm.workbench_config


# ------------------------------------------------------------------------------------------- bad input
def test_bad_model_arguments():
    with pytest.raises(ValueError, match="has no pooled features"):
        wc.create(nn.Sequential(nn.Flatten(), nn.Linear(64, 2)), concepts=NAMES, num_classes=2)
    with pytest.raises(ValueError, match="mode must be one of"):
        wc.create(Oracle(), concepts=NAMES, num_classes=2, mode="together")
    with pytest.raises(TypeError, match="list of names"):
        wc.create(Oracle(), concepts="a", num_classes=2)
    with pytest.raises(ValueError, match="num_classes"):
        wc.create(Oracle(), concepts=NAMES, num_classes=0)
    cbm = oracle_cbm().train()
    b = oracle_data(all_combos(1)).batch()
    b["concepts"] = b["concepts"][:, :2]
    with pytest.raises(ValueError, match="select_concepts"):
        cbm.training_loss(b, torch.nn.functional.cross_entropy)


# ------------------------------------------------------------------------------------------ sources
def test_label_source_and_select_concepts():
    ds = oracle_data(all_combos(1))
    src = wc.concept_source("labels", ds, names=["c", "a"])
    sel = src.annotate(ds)
    assert sel.concept_names == ("c", "a") and torch.equal(sel.concepts, ds.concepts[:, [2, 0]])
    with pytest.raises(ValueError, match=r"unknown concept\(s\) \['d'\]; the dataset's concepts are"):
        wc.select_concepts(ds, ["d"])
    with pytest.raises(ValueError, match="valid concept sources are"):
        wc.concept_source("pixels")
    cbm = wc.create(Oracle(2), concepts=src, num_classes=4)
    assert cbm.concepts == ("c", "a")


def test_text_source_with_a_tiny_local_clip():
    open_clip = pytest.importorskip("open_clip")
    torch.manual_seed(0)
    model = open_clip.CLIP(embed_dim=16, vision_cfg={"image_size": 32, "layers": 1, "width": 32, "patch_size": 16,
                                                    "head_width": 16},
                           text_cfg={"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1})
    tok = open_clip.get_tokenizer("ViT-B-32")
    src = wc.concept_source("text", model, lambda t: tok(t)[:, :16],
                            {"effusion": "a chest x-ray with pleural effusion", "nodule": ["a lung nodule", "a mass"]})
    ds = oracle_data(all_combos(1))
    s = src.scores(ds.batch()["image"])
    assert s.shape == (8, 2) and (s.abs() <= 1 + 1e-5).all()
    ann = src.annotate(ds)
    assert ann.concept_names == ("effusion", "nodule") and ((ann.concepts >= 0) & (ann.concepts <= 1)).all()
    assert torch.allclose(ann.concepts.mean(0), torch.full((2,), 0.5), atol=0.15)


def test_folder_concept_columns(tmp_path):
    from PIL import Image

    (tmp_path / "images").mkdir()
    for i in range(4):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(tmp_path / "images" / f"c{i}.png")
    (tmp_path / "labels.csv").write_text("id,label,opacity,fluid,site\nc0,1,1,0,A\nc1,0,0,,B\nc2,1,1,1,A\nc3,0,0,0,B\n")
    ds = wb.data.load(tmp_path, concept_columns=["opacity", "fluid"])
    assert ds.concept_names == ("opacity", "fluid") and torch.isnan(ds.concepts[1, 1]) and ds.meta[0] == {"site": "A"}
    with pytest.raises(ValueError, match=r"no concept column\(s\) \['size'\]"):
        wb.data.load(tmp_path, concept_columns=["size"])
    with pytest.raises(ValueError, match="must hold 0/1 values"):
        wb.data.load(tmp_path, concept_columns=["site"])


@pytest.mark.parametrize("mode", ["joint", "independent"])
def test_cli_train_concepts(tmp_path, mode):
    import json

    from PIL import Image

    from workbench.cli import main

    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    rows = ["id,label,split,opacity,fluid"]
    g = np.random.default_rng(0)
    for i in range(24):
        Image.fromarray((g.random((16, 16)) * 255).astype(np.uint8)).save(root / "images" / f"i{i}.png")
        rows.append(f"i{i},{i % 2},{'train' if i < 16 else 'test'},{i % 2},{(i // 2) % 2 if i % 5 else ''}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "run"
    code = main(["train", "--data", str(root), "--model", "vit_tiny", "--size", "16", "--patch-size", "8", "--depth", "1",
                 "--epochs", "1", "--batch-size", "8", "--concepts", "all", "--concept-columns", "opacity,fluid",
                 "--out", str(out), "--no-progress", "--bootstrap", "0", "--concept-mode", mode, "--seed", "0"])
    assert code == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["model"]["kind"] == "concept_bottleneck" and m["model"]["concepts"] == ["opacity", "fluid"]
    assert "mean_concept_auc" in m["concepts"]
    cbm = wb.models.load(out / "model")
    assert isinstance(cbm, wc.ConceptBottleneck) and cbm.mode == mode
    if mode == "joint":   # the head is refitted on the predicted concepts unless --no-head-refit
        out2 = tmp_path / "run_norefit"
        assert main(["train", "--data", str(root), "--model", "vit_tiny", "--size", "16", "--patch-size", "8", "--depth",
                     "1", "--epochs", "1", "--batch-size", "8", "--concepts", "all", "--concept-columns",
                     "opacity,fluid", "--out", str(out2), "--no-progress", "--bootstrap", "0", "--concept-mode", mode,
                     "--no-head-refit", "--seed", "0"]) == 0
        plain = wb.models.load(out2 / "model")
        torch.testing.assert_close(plain.concept_head.weight, cbm.concept_head.weight)
        assert not torch.allclose(plain.task_head.weight, cbm.task_head.weight)
    if mode == "independent":  # the label is the opacity concept: the fitted head reads it off exactly
        c = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
        with torch.no_grad():
            assert cbm.forward_concepts(cbm.value_to_input(c)).argmax(1).tolist() == [0, 0, 1, 1]


def test_training_needs_concept_labels_and_calibrate_sets_statistics():
    cbm = oracle_cbm()
    plain = ArrayDataset(torch.rand(8, 1, 8, 8), torch.zeros(8, dtype=torch.long), classes=("n", "x", "y", "z"),
                         task="multiclass")
    with pytest.raises(ValueError, match="concept labels"):
        wb.fit(cbm, plain, epochs=1, batch_size=4, progress=False)
    ds = oracle_data(all_combos(2))
    wc.calibrate_(cbm, ds)
    assert torch.allclose(cbm.logit_lo, torch.full((3,), -4.0)) and torch.allclose(cbm.logit_hi, torch.full((3,), 4.0))
    assert torch.allclose(cbm.source_class_means()[0], torch.full((3,), -4.0))  # class n: every concept absent


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none here)")
def test_concept_verbs_on_cuda_match_cpu():
    """A CBM on the GPU: bf16 training runs, and predict / intervene / curves / maps / TTI give the CPU's answers."""
    torch.manual_seed(0)
    ds = wb.data.load("phantom", split="val", n=120, size=32, task="diagnosis", progress=False, cache=False)
    cbm = wc.create("vit_tiny", concepts=ds, num_classes=6, img_size=32, in_chans=1, classes=ds.classes, **VIT)
    gpu = copy.deepcopy(cbm)
    hist = wb.fit(gpu, ds, epochs=1, batch_size=16, device="cuda", progress=False)  # bf16 autocast on CUDA
    assert np.isfinite(hist.loss).all() and next(gpu.parameters()).is_cuda
    cpu = copy.deepcopy(gpu).cpu().eval()
    b = ds.batch(range(8))
    for fn in (lambda m: wc.predict(m, b).probs, lambda m: wc.intervene(m, b, {"nodule": 1.0}).probs,
               lambda m: wc.concept_maps(m, b).maps):
        torch.testing.assert_close(fn(gpu), fn(cpu), atol=1e-4, rtol=1e-3)
    c1, c2 = wc.intervention_curve(gpu, ds, bootstrap=0), wc.intervention_curve(cpu, ds, bootstrap=0)
    assert np.allclose(c1.accuracy["uncertainty"], c2.accuracy["uncertainty"])
    a1, _ = wc.test_time_improve(gpu, wc.support_set(ds, per_class=1), source=ds)
    assert a1.adapt_gain.is_cuda
