"""Concept bottleneck benchmarks -> benchmarks/tables/concepts.md.

Parts (``--parts train,quality,tcav,site,throughput,widget,tcav_reliance,tcav_null,site_align,site_ceiling``;
each rewrites only its own section):

- train: trains (or reuses from ``$WORKBENCH_DATA/bench_models/``) the models the other parts use:
  on the phantom's ``diagnosis`` task at 64 px (sites A-C), a ViT (vit_tiny depth 4, width 96, patch 8)
  and a CNN (resnet18), each black-box and as a joint CBM (same data, epochs, seed, early stopping on
  validation AUC); and a black-box ViT trained with the planted device shortcut (drains with 90 % of
  pneumothorax images, 10 % of the others) for TCAV.
- quality: test accuracy / AUC of black box vs CBM, concept AUCs, completeness, leakage; intervention
  curves (random, uncertainty, expected change; bootstrap CIs): accuracy with all concepts corrected,
  and corrections needed to reach 0.95.
- tcav: TCAV at the last block of the black-box ViTs for the pneumothorax class (and the other
  diagnoses) for the five findings, the device and the marker; with and without the shortcut.
  Agreement with captum's TCAV (identical CAVs: identical scores; each with its own probe: score
  differences) and the cost as a ratio to captum's on the same experimental sets.
- site: train on sites A-C, adapt to site D with 4 images per class: no adaptation, training-free
  test-time improvement, fine-tuned task head; target gain and source change over 10 support draws
  (mean and 95 % t-interval).
- throughput: CBM training images/s (``wb.fit``) over a bare forward+backward of the backbone with a
  linear head, interleaved repeats, medians.
- widget: concept explorer redraw after an intervention (median and max over slider moves).
- tcav_reliance: whether the planted drain is learnt (false pneumothorax calls with / without a drain)
  by black boxes trained without it, with it at 90 % / 10 % and fully confounded, whether TCAV's drain
  score follows, and the causal effect of adding a drain or a marker to the same test images.
- tcav_null: how often each concept is significant over 6 draws of the random sets, with the null's CAVs
  sharing one counterpart set or each with its own (``null="pairs"``).
- site_align: ``wc.test_time_align`` on the support images (labels unused), alone and then normalised.
- site_ceiling: the new sites' style undone with the generator's own parameters (an oracle).

Usage: ``WORKBENCH_DATA=/work/cache/data .venv/bin/python benchmarks/bench_concepts.py --parts ...``
(``--quick`` for a smoke run with tiny settings).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "benchmarks" / "tables" / "concepts.md"
sys.path.insert(0, str(ROOT))

import workbench as wb  # noqa: E402
from workbench import concepts as wc  # noqa: E402

TITLES = {"train": "Trained models", "quality": "CBM vs black box, concepts and interventions",
          "tcav": "TCAV: significance, shortcut, agreement with captum", "site": "Site repair without training",
          "throughput": "CBM training throughput", "widget": "Concept explorer redraw",
          "tcav_reliance": "TCAV and the shortcut a model learnt", "tcav_null": "TCAV: which null",
          "site_ceiling": "Site repair: what undoing the style recovers",
          "site_align": "Site repair: aligning the input"}
SIZE = 64
SHORTCUT = {"feature": "device", "with": "pneumothorax", "p_pos": 0.9, "p_neg": 0.1}
# the same, fully confounded (a drain on every pneumothorax training image and on no other): tcav_reliance
SHORTCUT_ALL = {**SHORTCUT, "p_pos": 1.0, "p_neg": 0.0}
SPECS = {"vit": ("vit_tiny", {"patch_size": 8, "depth": 4, "embed_dim": 96, "num_heads": 3}),
         # the same ViT pooling its tokens by mean and maximum (timm's "avgmax") instead of its class token: a
         # small finding (a nodule on one 8 px patch) reaches the pooled features through the maximum
         "vit_avgmax": ("vit_tiny", {"patch_size": 8, "depth": 4, "embed_dim": 96, "num_heads": 3,
                                     "global_pool": "avgmax"}),
         "cnn": ("resnet18", {})}


class Settings:
    def __init__(self, quick: bool) -> None:
        self.quick = quick
        self.n_train = 256 if quick else 5000
        self.n_val = 128 if quick else 600
        self.n_test = 192 if quick else 1500
        # both kept improving at the last epoch of the earlier budgets (ViT 12, CNN 4; independent ViT CBM,
        # 2026-12-02: concept AUC 0.869 at 12 epochs, 0.945 when allowed 30 with patience 5, stopped at 23),
        # so each gets a budget that early stopping ends
        self.epochs = {"vit": 1 if quick else 30, "cnn": 1 if quick else 12}
        self.patience = {"vit": 5, "cnn": 3}
        self.lr = {"vit": 5e-4, "cnn": 1e-3}
        for d in (self.epochs, self.patience, self.lr):   # the avgmax ViT trains as the ViT
            d["vit_avgmax"] = d["vit"]
        self.batch = 64
        self.tag = "quick" if quick else "full"
        self.only: list[str] | None = None
        self.site_kinds: list[str] = ["cbm_w10", "cbm_independent"]
        self.site_archs: list[str] = ["vit", "cnn"]
        self.tcav_arch = "vit"


def data(s: Settings, split: str, n: int, **kw: Any) -> Any:
    return wb.data.load("phantom", split=split, n=n, size=SIZE, task="diagnosis", progress=False, **kw)


def model_dir() -> Path:
    root = Path(os.environ.get("WORKBENCH_DATA", ROOT / "data"))
    d = root / "bench_models" / "concepts"
    d.mkdir(parents=True, exist_ok=True)
    return d


def recipe(s: Settings, arch: str, kind: str) -> str:
    return f"diagnosis{SIZE}_{arch}_{kind}_{s.tag}_n{s.n_train}_e{s.epochs[arch]}"


def get_model(s: Settings, arch: str, kind: str, log: list[str]) -> Any:
    """A trained model (cached): kind "blackbox", "cbm" (joint), "cbm_independent", "shortcut" (black box with the
    device shortcut) or "shortcut_all" (black box, the shortcut fully confounded)."""
    path = model_dir() / recipe(s, arch, kind)
    if path.with_suffix(".safetensors").exists():
        m = wb.models.load(path)
        return fit_independent_head(s, m, path) if kind == "cbm_independent" else m
    if kind == "cbm_refit":
        return refit_joint_head(s, get_model(s, arch, "cbm", log), path)
    name, kw = SPECS[arch]
    train = data(s, "train", s.n_train, shortcut={"shortcut": SHORTCUT, "shortcut_all": SHORTCUT_ALL}.get(kind))
    val = data(s, "val", s.n_val)
    torch.manual_seed(0)
    if kind.startswith("cbm"):
        m = wc.create(name, concepts=train, num_classes=6, mode="independent" if kind == "cbm_independent" else "joint",
                      concept_weight=CONCEPT_WEIGHT.get(kind, 1.0), classes=train.classes, img_size=SIZE, in_chans=1,
                      **kw)
    else:
        m = wb.models.create(name, 6, SIZE, 1, **kw)
    t0 = time.perf_counter()
    h = wb.fit(m, train, val, epochs=s.epochs[arch], batch_size=s.batch, lr=s.lr[arch],
               early_stopping=None if s.quick else s.patience[arch], seed=0, progress=not s.quick)
    secs = time.perf_counter() - t0
    if kind.startswith("cbm"):
        wc.calibrate_(m, train.subset(range(min(len(train), 2000))))
    m.eval()
    wb.models.save(m, path)
    (path.parent / (path.name + "_history.json")).write_text(json.dumps({"history": h.to_dict(), "seconds": secs}))
    log.append(f"| {arch} | {kind} | {len(h.rows)} (best {h.best_epoch}) | {max(h.val_auc):.3f} | {secs:.0f} |")
    return fit_independent_head(s, m, path) if kind == "cbm_independent" else m


def fit_independent_head(s: Settings, m: Any, path: Path) -> Any:
    """Koh et al.'s independent model: the task head fitted to convergence on the true training concepts
    (``wc.fit_head``) after ``wb.fit``; done once, the model re-saved and the head's accuracy on the
    true training concepts before / after recorded in ``<model>_head.json``."""
    flag = path.parent / (path.name + "_head.json")
    if flag.exists():
        return m
    train = data(s, "train", s.n_train)
    true = m.value_to_input(train.concepts.float())

    def acc(model):
        with torch.no_grad():
            return float((model.forward_concepts(true.to(next(model.parameters()).device)).argmax(1).cpu()
                          == train.labels).float().mean())

    before = acc(m)
    t0 = time.perf_counter()
    m = wc.fit_head(m, train).eval()
    info = {"train_acc_true_concepts_before": before, "after": acc(m), "seconds": time.perf_counter() - t0}
    wb.models.save(m, path)
    flag.write_text(json.dumps(info))
    return m


def refit_joint_head(s: Settings, joint: Any, path: Path) -> Any:
    """The joint CBM with its task head fitted to convergence on its own predicted training concepts
    (``wc.fit_head(on="predicted")``): the backbone and concept head stay as joint training left them.
    Saved as its own model; seconds in ``<model>_head.json``."""
    train = data(s, "train", s.n_train)
    t0 = time.perf_counter()
    m = wc.fit_head(joint, train, on="predicted").eval()
    wb.models.save(m, path)
    (path.parent / (path.name + "_head.json")).write_text(json.dumps({"seconds": time.perf_counter() - t0}))
    return m


MODELS = [("vit", "blackbox"), ("vit", "cbm"), ("cnn", "blackbox"), ("cnn", "cbm"), ("vit", "shortcut"),
          ("vit", "cbm_independent"), ("cnn", "cbm_independent"), ("vit", "cbm_w10"), ("cnn", "cbm_w10"), ("vit", "cbm_w30"),
          ("vit_avgmax", "blackbox"), ("vit_avgmax", "cbm_w10"), ("vit_avgmax", "shortcut")]
CBM_MODES = {"cbm": "joint, concept weight 1", "cbm_refit": "joint, concept weight 1, head refit",
             "cbm_w10": "joint, concept weight 10 (default)",
             "cbm_w30": "joint, concept weight 30",
             "cbm_independent": "independent"}
#: the concept-loss weight (Koh et al.'s lambda) of a kind; the others are trained at 1 (passed explicitly:
#: wb.concepts.create's default was 1 until these runs, and is 10 since)
CONCEPT_WEIGHT = {"cbm_w10": 10.0, "cbm_w30": 30.0}


def _head_note(s: Settings) -> str:
    """Head accuracy on the true training concepts before / after ``fit_head``, per backbone."""
    out = []
    for arch in ("vit", "cnn"):
        f = model_dir() / (recipe(s, arch, "cbm_independent") + "_head.json")
        if f.exists():
            h = json.loads(f.read_text())
            out.append(f"{arch}: training accuracy on true concepts {h['train_acc_true_concepts_before']:.3f} after "
                       f"wb.fit -> {h['after']:.3f}, {h['seconds']:.1f} s")
    return "; ".join(out) or "no independent model"


def part_train(s: Settings) -> str:
    log: list[str] = []
    for arch, kind in MODELS:
        if s.only is None or f"{arch}:{kind}" in s.only:
            get_model(s, arch, kind, log)
    rows = []
    for arch, kind in MODELS:
        p = model_dir() / (recipe(s, arch, kind) + "_history.json")
        if not p.exists():
            continue
        h = json.loads(p.read_text())
        rows.append(f"| {arch} | {kind} | {len(h['history']['rows'])} (best {h['history']['best_epoch']}) | "
                    f"{max(r['val_auc'] or 0 for r in h['history']['rows']):.3f} | {h['seconds']:.0f} |")
    return (f"Phantom `diagnosis` (6 classes, derived from the five findings by rule), {SIZE} px, sites A-C; "
            f"{s.n_train} training and {s.n_val} validation images; AdamW, at most {s.epochs['vit']} (ViT) / "
            f"{s.epochs['cnn']} (CNN) epochs with early stopping on validation AUC (patience {s.patience['vit']} / "
            f"{s.patience['cnn']}); models cached under `$WORKBENCH_DATA/bench_models/concepts/`. ViT: "
            f"{SPECS['vit'][1]}; vit_avgmax: the same ViT with timm's global_pool='avgmax' (mean and maximum of the "
            "tokens) instead of the class token; CNN: resnet18. The shortcut model saw drains with 90 % of pneumothorax and "
            "10 % of other training images.\n\n"
            "| backbone | model | epochs run (best) | best val AUC | train s |\n|---|---|---|---|---|\n" + "\n".join(rows))


# ------------------------------------------------------------------------------------------- quality
def part_quality(s: Settings) -> str:
    test = data(s, "test", s.n_test)
    rows, irows = [], []
    for arch, kind in [(a, k) for a in ("vit", "cnn", "vit_avgmax") for k in CBM_MODES]:
        if s.only is not None and f"{arch}:{kind}" not in s.only:
            continue   # --only names the models to report (and to train, in the train part)
        if not (model_dir() / (recipe(s, arch, "cbm" if kind == "cbm_refit" else kind) + ".safetensors")).exists():
            continue  # train it first: --parts train (--only vit:cbm_independent,...)
        mode = CBM_MODES[kind]
        bb = get_model(s, arch, "blackbox", [])
        cbm = get_model(s, arch, kind, [])
        eb, ec = wb.evaluate(bb, test, bootstrap=1000), wb.evaluate(cbm, test, bootstrap=1000)
        rep = wc.quality(cbm, test)
        aucs = ", ".join(f"{n} {a:.3f}" for n, a in rep.concepts["auc"].items())
        rows.append(f"| {arch} | {mode} | {eb.accuracy:.3f} [{eb.accuracy_ci[0]:.3f}, {eb.accuracy_ci[1]:.3f}] | "
                    f"{ec.accuracy:.3f} [{ec.accuracy_ci[0]:.3f}, {ec.accuracy_ci[1]:.3f}] | "
                    f"**{100 * (ec.accuracy - eb.accuracy):+.1f}** | {eb.auc:.3f} / {ec.auc:.3f} | "
                    f"**{rep.mean_concept_auc:.3f}** ({aucs}) | {rep.completeness:.3f} | "
                    f"{rep.leakage['soft']:.3f} / {rep.leakage['hard']:.3f} / {rep.leakage['true']:.3f} |")
        t0 = time.perf_counter()
        curve = wc.intervention_curve(cbm, test, bootstrap=200 if s.quick else 1000, seed=0)
        secs = time.perf_counter() - t0
        for o in curve.orders:
            acc = curve.accuracy[o]
            ci = curve.accuracy_ci[o]
            to95 = curve.corrections_to(0.95, o)
            irows.append(f"| {arch} | {mode} | {o.replace('_', ' ')} | " + " | ".join(f"{a:.3f}" for a in acc) +
                         f" | [{ci[-1, 0]:.3f}, {ci[-1, 1]:.3f}] | {'-' if to95 is None else to95} |")
        irows.append(f"| {arch} | {mode} | (curve time) | {secs:.1f} s for 3 orders, {curve.bootstrap} resamples | | | | | | | |")
    return (f"Test split: {s.n_test} images (sites A-C). Accuracy with 95 % bootstrap CIs; AUC macro one-vs-rest. "
            "Targets: CBM accuracy within 2 points of the black box; mean concept AUC >= 0.95. Joint: task and "
            "concept losses (the latter times the concept weight) train the backbone together; independent (Koh et al.): the concept predictor on the "
            "concept loss alone, the task head on the true concepts, then fitted to convergence on the true "
            "training concepts (`wc.fit_head`, L-BFGS; " + _head_note(s) + "). Joint, head refit: the joint CBM "
            "with its task head then fitted to convergence on its own predicted training concepts (`wc.fit_head(cbm, "
            "train, on=\"predicted\")`; backbone and concept head as joint training left them).\n\n"
            "| backbone | CBM | black-box acc | CBM acc | CBM - black box (points) | AUC black box / CBM | "
            "mean concept AUC (per concept) | completeness | head acc soft / hard / true concepts |\n"
            "|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) +
            "\n\nIntervention curves (task accuracy after correcting k concepts to their true labels). Targets: all "
            "corrected >= 0.99; uncertainty-first reaches 0.95 with fewer corrections than random.\n\n"
            "| backbone | CBM | order | k=0 | 1 | 2 | 3 | 4 | 5 | CI at 5 | corrections to 0.95 |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|\n" + "\n".join(irows))


# ---------------------------------------------------------------------------------------------- TCAV
def _tcav_cell(t: Any, name: str) -> str:
    """A concept's TCAV score and p-value from ``TCAVResult.table``, bold when significant."""
    mark = "**" if t.loc[name, "significant"] else ""
    return f"{mark}{t.loc[name, 'score']:.2f}{mark} (p={t.loc[name, 'p_value']:.2g})"


def _model_note(s: Settings, arch: str, kind: str, test: Any) -> str:
    """A cached model's test accuracy and training record, e.g. "blackbox: test accuracy 0.80, 19 epochs (best
    14), trained 2026-12-03"."""
    model = get_model(s, arch, kind, [])
    acc = float((wb.train.predict(model, test).argmax(1) == test.labels).float().mean())
    path = model_dir() / (recipe(s, arch, kind) + "_history.json")
    h = json.loads(path.read_text())["history"]
    when = time.strftime("%Y-%m-%d", time.gmtime(path.stat().st_mtime))
    return f"{kind}: test accuracy {acc:.3f}, {len(h['rows'])} epochs (best {h['best_epoch']}), trained {when}"


def part_tcav_reliance(s: Settings) -> str:
    """Does the planted shortcut get learnt, and does TCAV's drain score follow it? Three black boxes of
    ``--tcav-arch``: without the shortcut, with SHORTCUT (90 % / 10 %) and with SHORTCUT_ALL (100 % / 0 %).
    Reliance: on test images of the other classes, how often the model calls pneumothorax with a drain and
    without. TCAV (the default probe, flattened tokens, 20 random sets) for pneumothorax on 100
    pneumothorax images and on 100 images of the other classes."""
    test = data(s, "test", s.n_test)
    examples, rnd = _examples(s)
    arch = s.tcav_arch
    layer = f"blocks.{SPECS[arch][1]['depth'] - 1}"
    c = test.classes.index("pneumothorax")
    drain = torch.tensor([bool(m.get("device")) for m in test.meta])
    ptx = test.labels == c
    n_random = 4 if s.quick else 20
    # the same test images without drain and marker, with a drain added, with a marker added (the phantom draws
    # each from its own random stream, so nothing else changes)
    toggled = {k: data(s, "test", s.n_test, device_p=float(k == "drain"), marker_p=float(k == "marker"))
               for k in ("none", "drain", "marker")}
    rows, causal = [], []
    for kind, what in (("blackbox", "none"), ("shortcut", "90 % / 10 %"), ("shortcut_all", "100 % / 0 %")):
        model = get_model(s, arch, kind, [])
        logit = {k: _logits(model, v)[:, c] for k, v in toggled.items()}
        cells = []
        for sel in (ptx, ~ptx):
            for k in ("drain", "marker"):
                m, lo, hi = _ci_normal((logit[k] - logit["none"])[sel])
                cells.append(f"{m:+.2f} [{lo:+.2f}, {hi:+.2f}]")
        causal.append(f"| {what} | " + " | ".join(cells) + " |")
        pred = wb.train.predict(model, test).argmax(1)
        called = pred == c
        fp_drain, fp_none = called[~ptx & drain].float().mean(), called[~ptx & ~drain].float().mean()
        cells = []
        for sel in (ptx, ~ptx):
            imgs = test.batch(sel.nonzero().flatten()[:100])["image"]
            t = wc.tcav(model, imgs, examples, layer=layer, target=c, random=rnd, n_random=n_random).table
            cells += [_tcav_cell(t, k) for k in ("device", "marker")]
            cells.append(f"{t['random_score'].iloc[0]:.2f}")
        acc = float((pred == test.labels).float().mean())
        rows.append(f"| {what} | {acc:.3f} | {fp_drain:.3f} / {fp_none:.3f} | " + " | ".join(cells) + " |")
    return ("Black-box ViTs (" + arch + ") trained without the planted drain, with it on 90 % of pneumothorax and 10 % of "
            "the other training images (the `tcav` part's shortcut model), and fully confounded (100 % / 0 %); "
            "same data otherwise. Reliance = share of test images of the other classes called pneumothorax, with a "
            "drain / without. TCAV for pneumothorax at `" + layer + "` (flattened tokens, default probe, "
            f"{n_random} random sets; concept examples as in the `tcav` part) on pneumothorax images and on images "
            "of the other classes; **bold** = p < 0.05.\n\n"
            "| shortcut in training | test accuracy | called pneumothorax, other classes: drain / none | device on "
            "pneumothorax images | marker | random | device on other classes | marker | random |\n"
            "|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) +
            "\n\nWhat TCAV should find: the change of the pneumothorax logit (what TCAV differentiates) when a drain "
            "or a marker is added to the same test images (generated without both, then with one; nothing else "
            f"changes), mean [95 % interval] over the {int(ptx.sum())} pneumothorax and {int((~ptx).sum())} other "
            "test images.\n\n"
            "| shortcut in training | pneumothorax images: drain added | marker added | other classes: drain added | "
            "marker added |\n|---|---|---|---|---|\n" + "\n".join(causal))


def part_tcav_null(s: Settings) -> str:
    """How often each concept comes out significant over draws of the random sets (seeds), with the null's CAVs
    sharing one counterpart set (the reference implementation's ``random_counterpart``) and with a positive
    set of their own (``null="pairs"``, the default): the black box trained without the drain, for every class
    of RULE, and the two shortcut models for pneumothorax. The marker is unrelated to every class by
    construction; so is the drain in the model trained without it."""
    test = data(s, "test", s.n_test)
    examples, rnd = _examples(s)
    arch = s.tcav_arch
    layer = f"blocks.{SPECS[arch][1]['depth'] - 1}"
    n_random = 4 if s.quick else 20
    seeds = range(2 if s.quick else 6)
    names = list(examples)
    rows = []
    for kind in ("blackbox", "shortcut", "shortcut_all"):
        model = get_model(s, arch, kind, [])
        for cls in (RULE if kind == "blackbox" else ["pneumothorax"]):
            c = test.classes.index(cls)
            imgs = test.batch((test.labels == c).nonzero().flatten()[:100])["image"]
            for null in ("counterpart", "pairs"):
                hits = {k: 0 for k in names}
                for seed in seeds:
                    t = wc.tcav(model, imgs, examples, layer=layer, target=c, random=rnd, n_random=n_random,
                                null=null, seed=seed).table
                    for k in names:
                        hits[k] += bool(t.loc[k, "significant"])
                cells = [f"**{hits[k]}**" if k in RULE[cls] or (k == "device" and kind != "blackbox") else
                         str(hits[k]) for k in names]
                rows.append(f"| {kind} | {cls} | {null} | " + " | ".join(cells) + " |")
    return (f"Black-box ViTs ({arch}): trained without the drain, with it on 90 % / 10 % and on 100 % / 0 % (as in "
            f"\"TCAV and the shortcut a model learnt\"). TCAV at `{layer}` (flattened tokens, {n_random} random "
            f"sets, concept examples as in the `tcav` part), 100 test images of the class; the number of "
            f"{len(seeds)} seeds (draws of the random sets) in which each concept is significant (p < 0.05), with "
            "the null CAVs sharing one random counterpart set (`null=\"counterpart\"`, the reference "
            "implementation's `random_counterpart`) or each with a positive random set of its own (`null=\"pairs\"`, "
            "the default). **Bold**: concepts the class rests on by rule, and the drain in the shortcut models; "
            "the marker is unrelated to every class, and so is the drain in the model trained without it.\n\n"
            "| model | class | null | " + " | ".join(names) + " |\n|" + "---|" * (len(names) + 3) + "\n" +
            "\n".join(rows))


def _examples(s: Settings) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Concept examples (a split where each finding and the drain have prevalence 0.5) and a pool of random
    images from a second split generated the same way: a CAV then separates a concept from images of the
    same distribution. (Random images from an unbiased split made every concept's examples also richer in
    findings than the random sets: in the 2026-12-02 run the drain CAV was significant for pneumothorax in
    the model trained without the shortcut and not in the one trained with it.)"""
    n = 24 if s.quick else 60
    common = {"prevalence": {f: 0.5 for f in ("nodule", "effusion", "cardiomegaly", "pneumothorax", "consolidation")},
              "device_p": 0.5}
    pool = data(s, "concepts", 6 * n, **common)
    names = ["nodule", "effusion", "cardiomegaly", "pneumothorax", "consolidation", "device", "marker"]
    return wc.concept_examples(pool, names, n=n, seed=0), wc.random_images(data(s, "random", 6 * n, **common), 6 * n,
                                                                          seed=0)


RULE = {"pneumothorax": ["pneumothorax"], "heart_failure": ["cardiomegaly", "effusion"], "pneumonia": ["consolidation"],
        "nodule": ["nodule"]}


def part_tcav(s: Settings) -> str:
    from captum.concept import TCAV, Concept
    from captum.concept._utils.classifier import Classifier

    test = data(s, "test", s.n_test)
    examples, rnd = _examples(s)
    n_random = 4 if s.quick else 20
    arch = s.tcav_arch
    layer = f"blocks.{SPECS[arch][1]['depth'] - 1}"
    rows, times = [], {}
    results = {}
    for pool in ("flatten", "mean"):
        for kind in ("blackbox", "shortcut"):
            model = get_model(s, arch, kind, [])
            for cls, findings in RULE.items():
                if kind == "shortcut" and cls != "pneumothorax":
                    continue
                c = test.classes.index(cls)
                imgs = test.batch((test.labels == c).nonzero().flatten()[:100])["image"]
                t0 = time.perf_counter()
                res = wc.tcav(model, imgs, examples, layer=layer, target=c, random=rnd, n_random=n_random, pool=pool)
                times.setdefault(kind, []).append(time.perf_counter() - t0)
                results[(pool, kind, cls)] = (res, imgs, c)
                t = res.table
                cells = [_tcav_cell(t, name) for name in t.index]
                pos_ok = all(t.loc[f, "significant"] and t.loc[f, "score"] > t.loc[f, "random_score"] for f in findings)
                rows.append(f"| {pool} | {kind} | {cls} ({len(imgs)}) | " + " | ".join(cells) +
                            f" | {'yes' if pos_ok else 'no'} | {'no' if not t.loc['marker', 'significant'] else 'yes'} |")
    header = "| pool | model | target class (images) | " + \
             " | ".join(results[("flatten", "blackbox", "pneumothorax")][0].table.index) + \
             " | class findings significant, score above random | marker significant |"
    # --- agreement with captum on identical inputs
    res, imgs, c = results[("flatten", "shortcut", "pneumothorax")]
    n = res.params["n_examples"]
    rng = np.random.default_rng(0)
    sets = [rng.choice(len(rnd), size=n, replace=False) for _ in range(n_random + 1)]
    picks = {k: rng.choice(len(v), size=min(n, len(v)), replace=False) for k, v in examples.items()}

    class Fixed(Classifier):
        def __init__(self) -> None:
            self.cls: list[int] = []

        def train_and_eval(self, dataloader, **kw):
            self.cls = sorted(torch.cat([y for _, y in dataloader]).unique().tolist())
            return {}

        def weights(self):
            v = res.cavs[self.cls[0], self.cls[1] - 100]
            return torch.stack([v, -v])

        def classes(self):
            return self.cls

    def concept(i: int, name: str, x: torch.Tensor) -> Any:
        return Concept(i, name, torch.utils.data.DataLoader(x, batch_size=64))

    import tempfile
    import warnings

    names = list(examples)
    model = get_model(s, arch, "shortcut", [])
    cons = [concept(k, nm, examples[nm][picks[nm]]) for k, nm in enumerate(names)]
    rands = [concept(100 + i, f"random{i}", rnd[sets[i + 1]]) for i in range(n_random)]
    with tempfile.TemporaryDirectory() as tmp:
        ct = TCAV(model, [layer], classifier=Fixed(), save_path=tmp)
        sc = ct.interpret(imgs, [[cc, r] for cc in cons for r in rands], target=c)
    diff_sign = max(abs(float(sc[f"{k}-{100 + i}"][layer]["sign_count"][0]) - float((res.directional[k, i] > 0).float().mean()))
                    for k in range(len(names)) for i in range(n_random))
    diff_mag = max(abs(float(sc[f"{k}-{100 + i}"][layer]["magnitude"][0]) - float(res.directional[k, i].mean()))
                   for k in range(len(names)) for i in range(n_random))
    # captum's own probe (SGDClassifier) on the same sets, its scores fed to the same t-test; and the cost
    from workbench.concepts.cav import _draw_sets, _two_sided_p

    # the null's own positive random sets, drawn as wc.tcav draws them (null="pairs")
    own = [concept(200 + i, f"random_own{i}", rnd[j])
           for i, j in enumerate(_draw_sets(len(rnd), n, n_random, np.random.default_rng([0, 1])))]

    def captum_run() -> dict:
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ct = TCAV(model, [layer], save_path=tmp)
            return ct.interpret(imgs, [[cc, r] for cc in cons for r in rands] + [[o, r] for o, r in zip(own, rands)],
                                target=c)

    def ours_run() -> Any:
        return wc.tcav(model, imgs, examples, layer=layer, target=c, random=rnd, n_random=n_random)

    t_ours, t_captum = [], []
    for _ in range(1 if s.quick else 3):  # interleaved
        t0 = time.perf_counter()
        ours = ours_run()
        t_ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        cap = captum_run()
        t_captum.append(time.perf_counter() - t0)
    cap_null = [float(cap[f"{200 + i}-{100 + i}"][layer]["sign_count"][0]) for i in range(n_random)]
    arow = []
    for k, nm in enumerate(names):
        cs = [float(cap[f"{k}-{100 + i}"][layer]["sign_count"][0]) for i in range(n_random)]
        p = _two_sided_p(cs, cap_null)
        o = ours.table.loc[nm]
        arow.append(f"| {nm} | {o['score']:.3f} (p={o['p_value']:.3g}) | {np.mean(cs):.3f} (p={p:.3g}) | "
                    f"{'same' if (p < 0.05) == bool(o['significant']) else 'differs'} |")
    ratio = statistics.median(t_ours) / statistics.median(t_captum)
    return (f"Black-box ViTs ({arch}) of the `train` part (diagnosis, sites A-C) at `{layer}` (last block, flattened tokens "
            f"as in captum), test images of each class; concept examples: {len(next(iter(examples.values())))} images "
            f"per concept from a split where each finding, the drain and the marker have prevalence 0.5; "
            f"{n_random} random sets from a second split generated the same way (the same prevalences: a CAV "
            "separates the concept from images of the same distribution); two-sided t-test of the concept's CAVs against "
            "random-vs-random CAVs (each null CAV with a positive random set of its own: `null=\"pairs\"`, the "
            "default; see \"TCAV: which null\"), **bold** = p < 0.05. Targets: the class's findings significant, an unrelated "
            "concept (marker) not; with the planted shortcut `device` significant for pneumothorax, without it "
            "not. Pools: `flatten` (every token, as captum) and `mean` (CAVs on the token mean). Models: " +
            "; ".join(_model_note(s, arch, k, test) for k in ("blackbox", "shortcut")) + ".\n\n" + header + "\n|" +
            "---|" * (len(names) + 5) + "\n" + "\n".join(rows) +
            f"\n\nAgreement with captum's TCAV (`captum.concept.TCAV`) on the shortcut model, target pneumothorax:\n"
            f"- fed our CAVs (a classifier returning them) on the same {len(names)} x {n_random} experimental sets: "
            f"largest difference of sign-count scores **{diff_sign:.2g}**, of magnitude scores **{diff_mag:.2g}**;\n"
            f"- captum's own probe (SGDClassifier, alpha 0.01, its 2/3 train split) vs ours (L2 logistic regression on "
            f"all examples), same sets, both through our t-test:\n\n"
            "| concept | ours: score (p) | captum's probe: score (p) | significance |\n|---|---|---|---|\n" +
            "\n".join(arow) +
            f"\n\nCost of one TCAV run ({len(names)} concepts x {n_random} random sets + {n_random} null CAVs, "
            f"{len(imgs)} images): ours {statistics.median(t_ours):.1f} s, captum {statistics.median(t_captum):.1f} s "
            f"(median of {len(t_ours)} interleaved runs): ratio **{ratio:.2f}** (ours computes the gradients once for all "
            "CAVs; captum's activations and CAVs go through files).")


# ----------------------------------------------------------------------------------------------- site
def _stronger_site() -> str:
    """A site styled beyond D (defined here, not in the package): for when D costs less than 10 points."""
    from workbench.data import phantom

    phantom.SITES.setdefault("E", {"contrast": 0.55, "gamma": 1.6, "noise": 0.07, "blur": 1.6, "fov": 1.2,
                                   "brightness": 0.12})
    return "E"


def _acc_from_logits(model: Any, z: torch.Tensor, y: torch.Tensor, gain: Any = None, bias: Any = None) -> float:
    with torch.no_grad():
        zz = z if gain is None else z * gain + bias
        return float((model.forward_concepts(model.head_input(zz)).argmax(1) == y).float().mean())


def _logits(model: torch.nn.Module, ds: Any, batch: int = 256) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(ds.batch(range(i, min(i + batch, len(ds))))["image"]).float()
                          for i in range(0, len(ds), batch)])


def _ci_normal(v: torch.Tensor) -> tuple[float, float, float]:
    """Mean and its 95 % normal interval (many samples)."""
    m, h = float(v.mean()), 1.96 * float(v.std()) / math.sqrt(len(v))
    return m, m - h, m + h


def _ci(v: list[float]) -> tuple[float, float, float]:
    from scipy import stats

    m = float(np.mean(v))
    h = float(stats.t.ppf(0.975, len(v) - 1) * np.std(v, ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")
    return m, m - h, m + h


def _site_row(arch: str, mode: str, site: str, src0: float, tgt0: float, label: str, gains: list[float],
              changes: list[float]) -> str:
    """One row of a site-repair table: gain and source change (mean [95 % t-interval] over draws, when
    there are several), share of the drop recovered, and whether the goal is met."""
    drop = src0 - tgt0
    g_m, g_lo, g_hi = _ci(gains)
    s_m, s_lo, s_hi = _ci(changes)
    goal = g_m >= drop / 2 and s_m >= -0.01 if drop > 0 else False

    def pts(m: float, lo: float, hi: float) -> str:
        return f"{100 * m:+.1f}" + (f" [{100 * lo:+.1f}, {100 * hi:+.1f}]" if np.isfinite(lo) else "")

    return (f"| {arch} | {mode} | {site} | {src0:.3f} | {tgt0:.3f} ({100 * drop:+.1f}) | {label} | "
            f"**{pts(g_m, g_lo, g_hi)}** | {pts(s_m, s_lo, s_hi)} | "
            f"{100 * g_m / drop if drop > 0 else float('nan'):.0f} % | {'yes' if goal else 'no'} |")


def _site_table(rows: list[str], notes: list[str]) -> str:
    return ("| backbone | CBM | site | source acc | site acc (drop) | method | target gain | source change | share of "
            "drop recovered | goal met |\n|---|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n" +
            "\n".join(f"- {n}" for n in notes))


def part_site(s: Settings) -> str:
    from workbench.concepts._predict import concept_logits_of

    draws = 3 if s.quick else 10
    per_class = 2 if s.quick else 4
    val = data(s, "val", s.n_val)
    src_test = data(s, "test", s.n_test)
    rows, notes = [], []
    for arch, kind in [(a, k) for k in s.site_kinds for a in s.site_archs]:
        cbm = get_model(s, arch, kind, []).float()
        mode = CBM_MODES[kind]
        zs, ys, cs = concept_logits_of(cbm, src_test, adapted=False, with_labels=True)
        src0 = _acc_from_logits(cbm, zs, ys)
        # normalisation statistics from each batch of NORM_BATCH images of one site (source batches for the
        # source change); the same model for both sites and every draw: it needs no support image
        norm = wc.test_time_normalise(cbm, val, prior=NORM_PRIOR)
        zs_n = concept_logits_of(norm, src_test, batch_size=NORM_BATCH, adapted=False)
        for site in ("D", "E"):
            if site == "E":
                site = _stronger_site()
            tgt = data(s, "test", s.n_test, sites=site)
            pool = data(s, "support", 600 if s.quick else 1500, sites=site)
            zt, yt, ct = concept_logits_of(cbm, tgt, adapted=False, with_labels=True)
            tgt0 = _acc_from_logits(cbm, zt, yt)
            zt_n = concept_logits_of(norm, tgt, batch_size=NORM_BATCH, adapted=False)
            res = {"tti": ([], []), "head": ([], []), "norm_tti": ([], []),
                   "norm": ([_acc_from_logits(cbm, zt_n, yt) - tgt0], [_acc_from_logits(cbm, zs_n, ys) - src0])}
            masked, amplified = {}, {}
            for d in range(draws):
                sup = wc.support_set(pool, per_class=per_class, seed=d)
                with warnings_off():
                    adapted, rep = wc.test_time_improve(cbm, sup, source=val)
                g, b = adapted.adapt_gain.cpu(), adapted.adapt_bias.cpu()
                res["tti"][0].append(_acc_from_logits(cbm, zt, yt, g, b) - tgt0)
                res["tti"][1].append(_acc_from_logits(cbm, zs, ys, g, b) - src0)
                for nm in rep.masked:
                    masked[nm] = masked.get(nm, 0) + 1
                for nm in rep.amplified:
                    amplified[nm] = amplified.get(nm, 0) + 1
                with warnings_off():
                    adapted_n, _ = wc.test_time_improve(norm, sup, source=val)
                g, b = adapted_n.adapt_gain.cpu(), adapted_n.adapt_bias.cpu()
                res["norm_tti"][0].append(_acc_from_logits(cbm, zt_n, yt, g, b) - tgt0)
                res["norm_tti"][1].append(_acc_from_logits(cbm, zs_n, ys, g, b) - src0)
                ft = wc.finetune_head(cbm, sup).cpu()
                res["head"][0].append(_acc_from_logits(ft, zt, yt) - tgt0)
                res["head"][1].append(_acc_from_logits(ft, zs, ys) - src0)
            drop = src0 - tgt0
            g, b = _oracle_recalibration(zs, cs, zt, ct)
            res["oracle"] = ([_acc_from_logits(cbm, zt, yt, g, b) - tgt0], [_acc_from_logits(cbm, zs, ys, g, b) - src0])
            aucs = ", ".join(f"{n} {_auc(cs[:, k], zs[:, k]):.3f} -> {_auc(ct[:, k], zt[:, k]):.3f}"
                             for k, n in enumerate(cbm.concepts))
            for method, label in (("tti", "test-time improvement (no training)"),
                                  ("norm", f"batch-statistics normalisation (no training, prior {NORM_PRIOR:g})"),
                                  ("norm_tti", "normalisation, then test-time improvement"),
                                  ("head", "fine-tuned task head"),
                                  ("oracle", "oracle recalibration (true concepts of every site image)")):
                rows.append(_site_row(arch, mode, site, src0, tgt0, label, *res[method]))
            notes.append(f"{arch} ({mode}), site {site}: masked {masked or '-'}, amplified {amplified or '-'} "
                         f"(times in {draws} draws); concept AUC source -> site: {aucs}")
    return (f"CBMs of the `train` part ({', '.join(CBM_MODES[k] for k in s.site_kinds)}; sites A-C). Support: {per_class} labelled images per class drawn from "
            f"a pool of the new site ({draws} draws, seeds 0..{draws - 1}); source guard on the validation split "
            f"({s.n_val} images, A-C); accuracy on {s.n_test} test images of the new site and of A-C. Site E is a "
            "stronger style defined in this benchmark (contrast 0.55, gamma 1.6, noise 0.07, blur 1.6, field of "
            "view 1.2, brightness +0.12) in case D costs less than 10 points. Gains and source changes in accuracy "
            "points, mean [95 % t-interval] over the draws. Goal: recover at least half of the drop with a source "
            "change of at most 1 point. Oracle: the per-concept affine map of the concept logits (the family "
            "masking and amplifying belong to) fitted with every test image's true concepts at the new site "
            "(each concept's logistic calibration there mapped onto the source's): what rescaling the concept "
            "layer recovers when every new-site image's concepts are known; it is site-specific, so it moves the "
            "source too. Batch-statistics normalisation (`wc.test_time_normalise`, after Schneider et al. 2020): "
            "every normalised layer (the ResNet's batch norms; the ViT's patch embedding and block outputs, "
            "per channel onto the source's statistics) normalises with the statistics of the batch being "
            f"predicted mixed with the source's (weight {NORM_PRIOR:g} images); predicted in batches of "
            f"{NORM_BATCH} images of one site (source batches for the source change); it uses no support image, "
            "so it has no draws; 'then test-time improvement' plans the concept-level repair on the normalised "
            "model.\n\n" + _site_table(rows, notes))


def part_site_align(s: Settings) -> str:
    """``wc.test_time_align`` on the support images of each draw (their labels unused), alone and followed by
    ``wc.test_time_normalise``; the source change is what the same procedure does at a site that needs no
    repair (aligned on support images drawn from the source sites A-C, predicted on the source test set)."""
    from workbench.concepts._predict import concept_logits_of
    from workbench.data import phantom

    draws = 3 if s.quick else 10
    per_class = 2 if s.quick else 4
    val = data(s, "val", s.n_val)
    src_test = data(s, "test", s.n_test)
    src_pool = data(s, "support", 600 if s.quick else 1500)
    rows, notes = [], []

    def acc(model: Any, ds: Any, cbm: Any, y: torch.Tensor, batch: int = 256) -> float:
        return _acc_from_logits(cbm, concept_logits_of(model, ds, adapted=False, batch_size=batch), y)

    def both(cbm: Any, sup: Any, ds: Any, y: torch.Tensor) -> tuple[float, float, Any]:
        al = wc.test_time_align(cbm, val, sup, progress=False)
        return acc(al, ds, cbm, y), acc(wc.test_time_normalise(al, val, prior=NORM_PRIOR), ds, cbm, y, NORM_BATCH), al

    for arch, kind in [(a, k) for k in s.site_kinds for a in s.site_archs]:
        cbm = get_model(s, arch, kind, []).float()
        ys = src_test.labels
        src0 = acc(cbm, src_test, cbm, ys)
        src_ch = ([], [])
        for d in range(draws):
            a1, a2, _ = both(cbm, wc.support_set(src_pool, per_class=per_class, seed=d), src_test, ys)
            src_ch[0].append(a1 - src0)
            src_ch[1].append(a2 - src0)
        for site in ("D", _stronger_site()):
            tgt = data(s, "test", s.n_test, sites=site)
            pool = data(s, "support", 600 if s.quick else 1500, sites=site)
            yt = tgt.labels
            tgt0 = acc(cbm, tgt, cbm, yt)
            drop = src0 - tgt0
            gains, params, misuse, secs = ([], []), [], [], []
            for d in range(draws):
                t0 = time.perf_counter()
                a1, a2, al = both(cbm, wc.support_set(pool, per_class=per_class, seed=d), tgt, yt)
                secs.append(time.perf_counter() - t0)
                gains[0].append(a1 - tgt0)
                gains[1].append(a2 - tgt0)
                params.append(al.test_time_alignment["params"])
                misuse.append(acc(al, src_test, cbm, ys) - src0)
            for j, label in enumerate(("input alignment (no training)", "input alignment, then normalisation")):
                rows.append(_site_row(arch, CBM_MODES[kind], site, src0, tgt0, label, gains[j], src_ch[j]))
            med = {k: float(np.median([p[k] for p in params])) for k in params[0]}
            notes.append(f"{arch} ({CBM_MODES[kind]}), site {site}: median parameters found "
                         + ", ".join(f"{k} {v:.2f}" for k, v in med.items())
                         + f" (the site's style: {', '.join(f'{k} {phantom.SITES[site][k]:g}' for k in med)}); "
                         f"{statistics.median(secs):.0f} s per draw (search and normalised prediction); the site's "
                         f"alignment applied to source images instead: {100 * np.mean(misuse):+.1f} points")
    return (f"`wc.test_time_align` (Nelder-Mead over field of view, contrast, gamma and brightness, matching the "
            f"model's per-channel feature statistics to those on the {s.n_val} validation images of A-C) on the "
            f"{per_class} x 6 support images of each draw ({draws} draws, seeds as in \"Site repair without "
            "training\"; their labels are not used), then prediction of the site's test images; 'then "
            f"normalisation': the aligned model through `wc.test_time_normalise` (prior {NORM_PRIOR:g}, batches of "
            f"{NORM_BATCH}). Source change: the same procedure at a site that needs no repair (aligned on support "
            "images drawn from A-C, the source test images predicted). Gains in accuracy points, mean [95 % "
            "t-interval] over the draws. Goal: recover at least half of the drop with a source change of at most "
            "1 point.\n\n" + _site_table(rows, notes))


def part_site_ceiling(s: Settings) -> str:
    """How much of a new site's drop is the model's to recover at all without training: the site's style
    undone exactly where it can be (the phantom knows it) by ``workbench.concepts.align.InputAlignment`` with the
    site's own parameters: the field of view by zooming back, and contrast, brightness and gamma by their inverse
    map; blur and noise cannot be undone. Compared with the concept-level
    oracle and batch normalisation of the ``site`` part, on the CBMs of ``--site-kinds`` x ``--site-archs``."""
    from workbench.concepts._predict import concept_logits_of
    from workbench.concepts.align import InputAlignment
    from workbench.data import phantom

    val = data(s, "val", s.n_val)
    src_test = data(s, "test", s.n_test)
    rows = []
    for arch, kind in [(a, k) for k in s.site_kinds for a in s.site_archs]:
        cbm = get_model(s, arch, kind, []).float()
        norm = wc.test_time_normalise(cbm, val, prior=NORM_PRIOR)
        zs, ys, _ = concept_logits_of(cbm, src_test, adapted=False, with_labels=True)
        src0 = _acc_from_logits(cbm, zs, ys)
        for site in ("D", _stronger_site()):
            st = phantom.SITES[site]
            tgt = data(s, "test", s.n_test, sites=site)
            x, y = tgt.batch(range(len(tgt)))["image"], tgt.labels
            tgt0 = _acc_from_logits(cbm, concept_logits_of(cbm, tgt, adapted=False), y)
            drop = src0 - tgt0
            undo = {"fov": st["fov"], "contrast": st["contrast"], "gamma": st["gamma"], "brightness": st["brightness"]}
            fov_only = InputAlignment(fov=st["fov"])
            intensity_only = InputAlignment(**{**undo, "fov": 1.0})
            both = InputAlignment(**undo)
            cells = []
            with torch.no_grad():
                for fn in (fov_only, intensity_only, both):
                    gain = _acc_from_logits(cbm, concept_logits_of(cbm, fn(x), adapted=False), y) - tgt0
                    cells.append(f"{100 * gain:+.1f} ({100 * gain / drop:.0f} %)")
                both_norm = _acc_from_logits(cbm, concept_logits_of(norm, both(x), batch_size=NORM_BATCH,
                                                                    adapted=False), y) - tgt0
            cells.append(f"{100 * both_norm:+.1f} ({100 * both_norm / drop:.0f} %)")
            rows.append(f"| {arch} | {CBM_MODES[kind]} | {site} | {src0:.3f} | {tgt0:.3f} ({100 * drop:+.1f}) | "
                        + " | ".join(cells) + " |")
    return ("The new site's style undone with the generator's own parameters (no support image, no training): the "
            "field of view zoomed back (bilinear, about the centre), contrast, brightness and gamma inverted "
            "(onto site A's style); blur and noise cannot be inverted. Gains in accuracy points on the site's "
            f"{s.n_test} test images (share of the drop). 'Then normalisation': the undone images predicted by "
            f"`wc.test_time_normalise` (prior {NORM_PRIOR:g}, batches of {NORM_BATCH}). The concept-level oracle and "
            "normalisation alone are in the tables above.\n\n"
            "| backbone | CBM | site | source acc | site acc (drop) | field of view undone | intensity undone | "
            "both | both, then normalisation |\n|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows))


def _auc(y: torch.Tensor, score: torch.Tensor) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y.numpy(), score.numpy()))


def _oracle_recalibration(zs: torch.Tensor, cs: torch.Tensor, zt: torch.Tensor,
                          ct: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per concept, the affine map (g, b) taking new-site logits onto the source's calibration: with
    logistic fits ``p(c | z) = s(w z + v)`` on each site's true concepts, ``g = w_t / w_s`` and
    ``b = (v_t - v_s) / w_s``. The best-informed rescaling of concept logits (the family masking and amplifying belong to)."""
    from sklearn.linear_model import LogisticRegression

    g, b = torch.ones(zt.shape[1]), torch.zeros(zt.shape[1])
    for k in range(zt.shape[1]):
        fs = LogisticRegression(C=1e4).fit(zs[:, k:k + 1].numpy(), cs[:, k].numpy())
        ft = LogisticRegression(C=1e4).fit(zt[:, k:k + 1].numpy(), ct[:, k].numpy())
        ws, wt = float(fs.coef_[0, 0]), float(ft.coef_[0, 0])
        g[k], b[k] = wt / ws, (float(ft.intercept_[0]) - float(fs.intercept_[0])) / ws
    return g, b


NORM_PRIOR, NORM_BATCH = 16.0, 64


class warnings_off:
    def __enter__(self) -> None:
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *a: Any) -> bool:
        self._w.__exit__(*a)
        return False


# ----------------------------------------------------------------------------------------- throughput
def _bare(model: torch.nn.Module, xs: list[torch.Tensor], ys: list[torch.Tensor]) -> float:
    """Images/s of forward + loss + backward of the backbone with a linear head (no optimizer)."""
    model.train()
    t0 = time.perf_counter()
    n = 0
    for x, y in zip(xs, ys):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        model.zero_grad(set_to_none=True)
        n += len(y)
    return n / (time.perf_counter() - t0)


def part_throughput(s: Settings) -> str:
    from workbench.data._base import ArrayDataset

    n, batch, repeats = (128, 32, 2) if s.quick else (512, 64, 3)
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(n, 1, SIZE, SIZE, generator=g) * 255).to(torch.uint8)
    concepts = (torch.rand(n, 5, generator=g) > 0.7).float()
    labels = torch.randint(0, 6, (n,), generator=g)
    names = ("nodule", "effusion", "cardiomegaly", "pneumothorax", "consolidation")
    ds = ArrayDataset(images, labels, classes=tuple("abcdef"), task="multiclass", concepts=concepts, concept_names=names)
    xs = [images[i:i + batch].float() / 255 for i in range(0, n - batch + 1, batch)]
    ys = [labels[i:i + batch] for i in range(0, n - batch + 1, batch)]
    rows = []
    for arch in ("vit", "cnn"):
        name, kw = SPECS[arch]
        torch.manual_seed(0)
        cbm = wc.create(name, concepts=names, num_classes=6, img_size=SIZE, in_chans=1, **kw)
        bare = wb.models.create(name, 6, SIZE, 1, **kw)
        _bare(bare, xs[:1], ys[:1])
        fit_r, bare_r = [], []
        for _ in range(repeats):  # interleaved
            h = wb.fit(cbm, ds, epochs=1, batch_size=batch, progress=False, num_workers=0)
            fit_r.append(h.rows[0]["images_per_s"])
            bare_r.append(_bare(bare, xs, ys))
        ratios = [f / b for f, b in zip(fit_r, bare_r)]
        rows.append(f"| {arch} ({name}) | 1x{SIZE}x{SIZE} | {batch} | {statistics.median(fit_r):.0f} | "
                    f"{statistics.median(bare_r):.0f} | **{statistics.median(ratios):.2f}** |")
    return ("`wb.fit` of a joint CBM (AdamW, schedule, class weights, concept loss, running statistics, the data path "
            "with concept labels) against a bare forward + cross-entropy + backward of the backbone with a linear "
            f"head (no optimizer), same batches, {repeats} interleaved repeats of {n} images, medians. Target >= 0.8.\n\n"
            "| backbone | input | batch | CBM fit img/s | bare fwd+bwd img/s | ratio |\n|---|---|---|---|---|---|\n" +
            "\n".join(rows))


# --------------------------------------------------------------------------------------------- widget
def part_widget(s: Settings) -> str:
    from workbench.widgets import concept_explorer

    test = data(s, "test", 64)
    rows = []
    for arch in ("vit", "cnn"):
        cbm = get_model(s, arch, "cbm_w10", [])
        t0 = time.perf_counter()
        w = concept_explorer(cbm, test, indices=range(16))
        first = time.perf_counter() - t0
        times = []
        for i in range(40):
            t0 = time.perf_counter()
            w.controls["concept_pneumothorax"].value = 0.9 if i % 2 else 0.1
            times.append(time.perf_counter() - t0)
            assert w.last_error is None, w.last_error
        t_img = []
        for _ in range(5):
            t0 = time.perf_counter()
            w.controls["next"].click()
            t_img.append(time.perf_counter() - t0)
        rows.append(f"| {arch} | **{1000 * statistics.median(times):.0f}** | {1000 * max(times):.0f} | "
                    f"{1000 * statistics.median(t_img):.0f} | {first:.2f} |")
    return ("`workbench.widgets.concept_explorer` on the `train` part's joint CBMs at the default concept weight (64 px): the time from setting a concept "
            "slider (an intervention) to the new map PNG and bars (the task head re-run on cached concept logits, "
            "the cached concept maps mixed, a PNG encoded), 40 moves; a new image (concept logits and maps "
            "computed once, then cached); the first draw including widget construction. Target <= 100 ms.\n\n"
            "| backbone | redraw after an intervention, median ms | max ms | new image, median ms | first draw s |\n"
            "|---|---|---|---|---|\n" + "\n".join(rows))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", default="train,quality,tcav,site,throughput,widget")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default=None, help="train: comma-separated arch:kind (e.g. vit:cbm) to train now "
                    "(one heavy-lock turn per model); quality: the models to report")
    ap.add_argument("--site-kinds", default="cbm_w10,cbm_independent", help="site: the CBMs to repair (kinds of MODELS)")
    ap.add_argument("--site-archs", default="vit,cnn", help="site: the backbones (keys of SPECS)")
    ap.add_argument("--tcav-arch", default="vit", help="tcav: the ViT whose black boxes are explained (vit, vit_avgmax)")
    ap.add_argument("--out", default=str(TABLE))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    s = Settings(args.quick)
    s.only = args.only.split(",") if args.only else None
    s.site_kinds = args.site_kinds.split(",")
    s.site_archs = args.site_archs.split(",")
    s.tcav_arch = args.tcav_arch
    sections = {}
    for part in args.parts.split(","):
        fn = globals().get(f"part_{part}")
        if fn is None:
            raise SystemExit(f"unknown part {part!r}; use {', '.join(TITLES)}")
        t0 = time.perf_counter()
        sections[part] = fn(s)
        title = _title(part, s)
        print(f"## {title} ({time.perf_counter() - t0:.0f} s)\n{sections[part]}\n", flush=True)
        _update({title: sections[part]}, Path(args.out))


def _title(part: str, s: Settings) -> str:
    """The table section a part writes; the TCAV part of the avgmax ViTs has its own."""
    return "TCAV on the avgmax ViTs" if part == "tcav" and s.tcav_arch == "vit_avgmax" else TITLES[part]


def _update(sections: dict[str, str], table: Path = TABLE) -> None:
    text = table.read_text() if table.exists() else "# Concept bottleneck benchmarks\n"
    header = (f"\n_Machine: {os.cpu_count()} CPU cores (1-min load {os.getloadavg()[0]:.1f} at the end), torch "
              f"{torch.__version__}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}._\n")
    for title, body in sections.items():
        block = f"## {title}\n{header}\n{body}\n"
        pat = re.compile(rf"## {re.escape(title)}\n.*?(?=\n## |\Z)", re.S)
        text = pat.sub(lambda _: block.rstrip("\n"), text) if pat.search(text) else text.rstrip("\n") + "\n\n" + block
    table.parent.mkdir(parents=True, exist_ok=True)
    table.write_text(text.rstrip("\n") + "\n")


if __name__ == "__main__":
    main()
