# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     notebook_metadata_filter: workbench
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
#   workbench:
#     test_parameters:
#       SIZE: 32
#       N_TRAIN: 64
#       N_TEST: 64
#       EPOCHS: 1
#       N_BUDGET: 4
#       BOOTSTRAP: 20
# ---

# %% [markdown]
# # 03 · Shortcut audit: does the model look at the chest drain?
#
# The phantom can plant a shortcut: in the *training* split a chest drain (`device`) appears in
# 90% of abnormal and 10% of normal images; in the *test* split it is independent of the label. A
# model that learned the drain instead of the disease is exposed three ways:
# 1. **subgroups** (hidden stratification, Oakden-Rayner et al., CHIL 2020): on abnormal test
#    images, it is more often right when a drain is present than when it is absent;
# 2. **Mask of truth**: it keeps scoring well when the lungs are removed (`without`) and drops when
#    only the lungs are kept (`only`);
# 3. **relevance budget**: a larger share of its attribution falls on the drain than for a model
#    trained without the shortcut.
#
# Small settings run on a CPU in a few minutes.

# %% tags=["parameters"]
SIZE = 64
N_TRAIN = 400           # raise on a GPU (e.g. 2000)
N_TEST = 200            # raise on a GPU (e.g. 500)
EPOCHS = 3
N_BUDGET = 16           # images attributed for the budget
BOOTSTRAP = 300         # bootstrap resamples for the confidence intervals
SHORTCUT = {"feature": "device", "with": "abnormal", "p_pos": 0.9, "p_neg": 0.1}
METHOD = "integrated_gradients"   # attribution for the budget
DEVICE = "auto"
OUT = "../outputs/shortcut"

# %%
import pandas as pd
import workbench as wb
from workbench.evaluation import shortcut_audit, mask_of_truth, cohort_budget
wb.set_threads("auto")   # on a CPU other jobs share, fewer threads run faster (README)

biased = wb.data.load("phantom", split="train", n=N_TRAIN, size=SIZE, shortcut=SHORTCUT)
clean = wb.data.load("phantom", split="train", n=N_TRAIN, size=SIZE)
test = wb.data.load("phantom", split="test", n=N_TEST, size=SIZE)   # device independent of label

# %% [markdown]
# The same CNN trained twice: with the planted shortcut and without it.

# %%
models = {}
for name, data in {"shortcut": biased, "clean": clean}.items():
    models[name] = wb.models.create("resnet18", num_classes=2, img_size=SIZE, in_chans=1)
    wb.fit(models[name], data, epochs=EPOCHS, batch_size=16, lr=1e-3, device=DEVICE)
    wb.models.save(models[name], f"{OUT}/{name}")   # saved figures rebuild from these
{name: wb.evaluate(m, test).auc for name, m in models.items()}

# %% [markdown]
# **Mask of truth** (Sourget et al., "Mask of truth: model sensitivity to unexpected regions of
# medical images", *J. Imaging Inform. Med.* 2025, arXiv:2412.04030): the model sees only the lungs
# (`only`) or everything but the lungs (`without`), with exact masks or their bounding boxes, the
# rest filled with the image mean. A model that still scores well `without` the lungs uses evidence
# outside them. What the variants look like:

# %%
import matplotlib.pyplot as plt
b = test.batch([0])
variants = [("full", False), ("only", False), ("without", False), ("only", True), ("without", True)]
fig, axes = plt.subplots(1, 5, figsize=(9, 2))
for ax, (v, box) in zip(axes, variants):
    ax.imshow(mask_of_truth(b, ["left_lung", "right_lung"], variant=v, box=box)["image"][0, 0], cmap="gray")
    ax.set_title(f"{v}{' (box)' if box else ''}"); ax.axis("off")

# %% [markdown]
# ## The audit of the shortcut model
# Subgroups by `device` and `site` on the unbiased test split (95% bootstrap CIs), Mask of truth on
# both lungs, and the relevance budget on images that carry a drain.

# %%
budget_on = ["device", "left_lung", "right_lung", "heart", "marker"]
audits = {name: shortcut_audit(m, test, structures=("left_lung", "right_lung"), groups=("device", "site"),
                               method=METHOD, budget_structures=budget_on, n_budget=N_BUDGET,
                               target=1, bootstrap=BOOTSTRAP)
          for name, m in models.items()}
audits["shortcut"].gaps

# %%
audits["shortcut"].positives.round(3)

# %%
audits["shortcut"].mask_of_truth.round(3)

# %%
fig = wb.viz.draw("audit_figure", models["shortcut"], test, structures=["left_lung", "right_lung"],
                  groups=["device", "site"], method=METHOD, budget_structures=budget_on, n_budget=N_BUDGET,
                  target=1, bootstrap=BOOTSTRAP)
wb.viz.save_figure(fig, f"{OUT}/audit_shortcut", params={"shortcut": SHORTCUT})

# %% [markdown]
# ## Compared with the model trained without the shortcut
# Audit gap (accuracy on abnormal images with minus without a drain) and the budget share on the
# drain.

# %%
pd.concat({name: a.gaps.set_index("by")["gap"] for name, a in audits.items()}, axis=1).round(3)

# %%
dev = [i for i, m in enumerate(test.meta) if m["device"]][:N_BUDGET]
fig = wb.viz.draw("budget_bars", models, test, indices=dev, methods=[METHOD], target=1, structures=budget_on,
                  bootstrap=BOOTSTRAP, title="Relevance budget on images with a drain")
wb.viz.save_figure(fig, f"{OUT}/budget_shortcut_vs_clean")

# %%
db = test.batch(dev)
pd.concat({name: cohort_budget(wb.attribute(m, db["image"], target=1, method=METHOD),
                               {k: db["masks"][k] for k in budget_on}, bootstrap=BOOTSTRAP)
           for name, m in models.items()}).round(3)
