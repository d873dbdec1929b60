# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: tags,-all
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
#       BUSI_EPOCHS: 1
#       BUSI_N_TRAIN: 48
#       BUSI_SIZE: 32
#       EPOCHS: 1
#       GUIDED: true
#       METHODS:
#       - saliency
#       - gradcam
#       N_REAL: 4
#       N_SHOW: 2
#       N_TEST: 48
#       N_TRAIN: 64
#       SIZE: 32
# ---

# %% [markdown]
# # 02 · Attribution, scored against anatomy and against the model
#
# Heat maps from several attribution methods for a small CNN and a small ViT trained on the
# phantom, then scored: **localisation** (pointing game, relevance mass, rank accuracy, top-k IoU
# against the exact finding masks), the **per-structure budget** (share of relevance on each
# anatomical structure, with bootstrap CIs), **faithfulness** (deletion / insertion curves) and a
# **sanity check** (cascading model-parameter randomisation, Adebayo et al. 2018). The last part
# repeats the budget on real radiographs with radiologist masks when `../shared/data` is present.
# Small settings run on a CPU in a few minutes; raise them on a GPU.

# %% tags=["parameters"]
SIZE = 64               # phantom image side
N_TRAIN = 400           # raise on a GPU (e.g. 2000)
N_TEST = 200            # raise on a GPU (e.g. 500)
EPOCHS = 3
# a controlled nodule task (nodules the only finding): small models learn it in a few CPU epochs;
# use {} for the full phantom (five findings, needs longer training)
PHANTOM = {"prevalence": {"nodule": 0.5, "effusion": 0.0, "cardiomegaly": 0.0, "pneumothorax": 0.0, "consolidation": 0.0}, "nodule_radius": [0.05, 0.08], "nodule_contrast": [0.2, 0.35]}
N_SHOW = 4              # images in the grids and metrics
N_REAL = 16             # real radiographs in the last part
METHODS = ["saliency", "integrated_gradients", "gradcam", "occlusion"]  # any of wb.attribution.METHODS.names()
BUSI_SIZE = 128         # breast ultrasound (../shared/data/busi) image side
BUSI_N_TRAIN = 0        # BUSI training images (0: all 544)
BUSI_EPOCHS = 10        # the benchmark's recipe uses 30 with early stopping
GUIDED = False          # True: also train with the lesion masks (mask-guided, ~3x the BUSI training time)
DEVICE = "auto"
OUT = "../outputs/attribution"

# %%
import pandas as pd
import workbench as wb
from workbench.evaluation import cohort_budget, evaluate_localisation, randomisation_test
wb.set_threads("auto")   # on a CPU other jobs share, fewer threads run faster (README)

train = wb.data.load("phantom", split="train", n=N_TRAIN, size=SIZE, **PHANTOM)
test = wb.data.load("phantom", split="test", n=N_TEST, size=SIZE, **PHANTOM)

# %% [markdown]
# Two small models on the same data: a ResNet-18 and a ViT-tiny with 8 px patches.

# %%
cnn = wb.models.create("resnet18", num_classes=2, img_size=SIZE, in_chans=1)
wb.fit(cnn, train, epochs=EPOCHS, batch_size=16, lr=1e-3, device=DEVICE)
vit = wb.models.create("vit_tiny", num_classes=2, img_size=SIZE, in_chans=1, patch_size=8)
wb.fit(vit, train, epochs=EPOCHS, batch_size=16, lr=5e-4, device=DEVICE)
wb.models.save(cnn, f"{OUT}/cnn"), wb.models.save(vit, f"{OUT}/vit")   # saved figures rebuild from these
{"cnn": wb.evaluate(cnn, test).auc, "vit": wb.evaluate(vit, test).auc}

# %% [markdown]
# Abnormal test images that contain a nodule; every method explains the *abnormal* logit.
# **Saliency** (Simonyan et al. 2014) is the gradient of the logit with respect to the pixels;
# **integrated gradients** (Sundararajan et al., ICML 2017) average that gradient along a straight
# path from a baseline image and multiply by the difference, so the map sums to the change of the
# logit; **Grad-CAM** (Selvaraju et al., ICCV 2017) weights a convolutional layer's channels by
# their mean gradient and keeps the positive part; **occlusion** (Zeiler & Fergus, ECCV 2014)
# slides a blurred patch over the image and records how much the logit drops.

# %%
idx = ((test.labels == 1) & test.masks["nodule"].flatten(1).any(1)).nonzero().flatten()[:N_SHOW].tolist()
fig = wb.viz.draw("attribution_grid", cnn, test, indices=idx, methods=METHODS, target=1,
                  structures=["left_lung", "right_lung", "heart", "nodule"])
wb.viz.save_figure(fig, f"{OUT}/method_grid_cnn")

# %% [markdown]
# ## Localisation against the finding masks
# **Pointing game** (Zhang et al., ECCV 2016): does the map's maximum fall inside the mask?
# **Relevance mass** and **rank accuracy** (Arras et al., *Information Fusion* 2022): the share of
# positive relevance inside the mask, and the share of the mask's pixels among the top-|mask|
# ranked pixels; **top-k IoU**: overlap of the top k% pixels with the mask. One row per method and
# structure (empty masks are excluded and counted in `n_excluded`).

# %%
batch = test.batch(idx)
atts = {m: wb.attribute(cnn, batch["image"], target=1, method=m) for m in METHODS}
findings = {k: batch["masks"][k] for k in ("nodule", "effusion", "pneumothorax", "consolidation")}
pd.concat({m: evaluate_localisation(a, findings) for m, a in atts.items()}).round(3)

# %% [markdown]
# ## Per-structure budget
# Share of positive relevance on each anatomical structure (structures overlap, e.g. a nodule
# inside a lung; `outside` is outside all of them), mean over images with 95% percentile-bootstrap
# CIs over images, CNN vs ViT (integrated gradients).

# %%
anatomy = ["left_lung", "right_lung", "heart", "mediastinum", "diaphragm", "nodule", "device"]
fig = wb.viz.draw("budget_bars", {"cnn": cnn, "vit": vit}, test, indices=idx, methods=["integrated_gradients"],
                  target=1, structures=anatomy, bootstrap=500)
wb.viz.save_figure(fig, f"{OUT}/budget_phantom")

# %% [markdown]
# ## Faithfulness: deletion (solid, lower is better) and insertion (dashed, higher is better)
# **Deletion / insertion** (Petsiuk et al., RISE, BMVC 2018): remove the most relevant pixels
# first (replaced by a blurred copy) and follow the target probability; a faithful map makes it
# fall fast. Insertion starts from the blurred image and adds the most relevant pixels first.
# The area under each curve summarises it.

# %%
fig = wb.viz.draw("deletion_curves", cnn, test, indices=idx, methods=METHODS, target=1, steps=10)
wb.viz.save_figure(fig, f"{OUT}/deletion_insertion")

# %% [markdown]
# ## Sanity: cascading randomisation
# **Model-parameter randomisation** (Adebayo et al., NeurIPS 2018): layers are re-initialised from
# the output down (on a copy) and each new map is compared with the original (Spearman rank
# correlation, SSIM). A method that explains the model loses its similarity quickly; one that
# stays similar shows the image, not the model.

# %%
pd.concat({m: randomisation_test(cnn, batch["image"][:3], m, target=1)
           for m in ("saliency", "gradcam")}).round(3)

# %% [markdown]
# ## Real radiographs
# The same budget on real chest radiographs with radiologist masks (COVID-19 lung segmentation
# data in `../shared/data/cxr_anatomy`), using the phantom-trained CNN: a domain shift, so read it
# as *where the model looks*. Skipped when the data are absent.

# %%
root = wb.data.shared_data_path()
real = None if root is None or not (root / "cxr_anatomy").is_dir() else \
    wb.data.load(root / "cxr_anatomy", split=None, size=SIZE, label_column=None, n=N_REAL)
real

# %%
if real is not None:
    names = ["left_lung", "right_lung", "cardiomediastinum", "airways", "ground_glass_opacity", "device"]
    fig = wb.viz.draw("budget_bars", cnn, real, methods=["integrated_gradients"], target=1, structures=names,
                      title="cxr_anatomy, phantom-trained CNN")
    wb.viz.save_figure(fig, f"{OUT}/budget_real")

# %% [markdown]
# ## Which method to trust? The method guide
# On the phantom the best methods point at nodules; on real lesions many do not. The real-lesion
# benchmark (`benchmarks/bench_lesions.py`: BUSI breast ultrasound with hand-drawn lesion masks, and
# the phantom's nodules as a control) scores every method; `recommend` returns the best one for a
# model's family (CNN or ViT) and a modality, with that table as its evidence. Where blurring the
# maps before reading their peak helped on validation lesions, it also returns the blur
# (`rec.smooth`, a Gaussian sigma in pixels) and `rec.attribute(model, images, target)` applies it.
# It warns when no method beats a map that always points at the image's centre.

# %%
print(wb.attribution.recommend(cnn, modality="radiograph"))

# %% [markdown]
# ### Real lesions: breast ultrasound (BUSI)
# Ultrasound lesions are *darker* than the tissue around them (hypoechoic). Integrated gradients
# credit each pixel with its difference from the baseline, so with a black baseline a dark lesion
# gets little credit whatever the model does; the workbench's baselines (`baseline="blur"`,
# `"mean"`, `"uniform"`, or training images: `wb.attribution.baseline_set(train)`, expected
# gradients) fix that; the blurred image is integrated gradients' and DeepLIFT's default (measured:
# README, "Which method to trust"). A small ResNet-18, then the recommended method next to
# integrated gradients with a black and with the default (blurred) baseline, the lesion outlined.
# Skipped without `../shared/data`. The model's own pooling matters too: with
# `wb.models.create(..., global_pool="avgmax")` (mean and maximum over positions) the benchmark's
# ResNet-18 reached test AUC 0.82 instead of 0.78 and saliency pointed at 0.38 of the lesions instead
# of 0.16; a small ViT pooling its tokens that way instead of its class token went from AUC 0.63 to
# 0.78 (README, "The head's pooling").

# %%
busi = None if root is None or not (root / "busi").is_dir() else root / "busi"
if busi is not None:
    btrain = wb.data.load(busi, split="train", size=BUSI_SIZE, n=BUSI_N_TRAIN or None)
    btest = wb.data.load(busi, split="test", size=BUSI_SIZE)
    us = wb.models.create("resnet18", num_classes=3, img_size=BUSI_SIZE, in_chans=1)
    wb.fit(us, btrain, epochs=BUSI_EPOCHS, lr=1e-3, device=DEVICE,
           augment=wb.data.transforms.RandomAffine(10, translate=0.05, scale=(0.9, 1.1), seed=0))

# %%
if busi is not None:
    rec = wb.attribution.recommend(us, modality="ultrasound")
    print(rec)

# %%
if busi is not None:
    lesions = btest.batch(btest.mask_present["lesion"].nonzero().flatten()[:N_SHOW])
    explain = {"IG, black baseline": dict(method="integrated_gradients", baseline=0.0),
               "IG, blurred baseline (default)": dict(method="integrated_gradients")}
    us_atts = {k: wb.attribute(us, lesions["image"], target=lesions["label"], **kw) for k, kw in explain.items()}
    # the recommended method with its settings and its smoothing (rec.smooth, chosen on validation lesions)
    us_atts[f"{rec.method} (recommended)"] = rec.attribute(us, lesions["image"], target=lesions["label"])
    fig = wb.viz.attribution_grid(lesions, us_atts, structures=["lesion"])
    wb.viz.save_figure(fig, f"{OUT}/busi_methods", params={"size": BUSI_SIZE, "methods": list(us_atts), "smooth": rec.smooth})

# %%
if busi is not None:
    lesion = {"lesion": lesions["masks"]["lesion"]}
    display(pd.concat({k: evaluate_localisation(a, lesion) for k, a in us_atts.items()}).round(3))

# %% [markdown]
# ### Shortcuts on real data: calipers and burnt-in text
# Sonographers draw calipers and crosses on the lesion and type text on the image; a classifier can
# learn the marks instead of the lesion. `burnt_in_marks` finds them by their shape (thin strokes
# in both directions, small); the budget shows how much relevance falls on marks outside the lesion
# compared with the lesion (the benchmark runs the full audit: marks erased by inpainting, accuracy
# with and without marks).

# %%
if busi is not None:
    marks = wb.evaluation.burnt_in_marks(lesions["image"])
    on = {"lesion": lesions["masks"]["lesion"], "marks": marks & ~lesions["masks"]["lesion"]}
    display(cohort_budget(us_atts[f"{rec.method} (recommended)"], on, bootstrap=200).round(3))

# %% [markdown]
# ### Teaching the model where to look: mask-guided training
# "Right for the right reasons" (Ross et al., IJCAI 2017; GradMask, Simpson et al., MIDL 2019):
# `wb.fit(..., guide_masks="lesion", guide_weight=1.0)` adds to the loss the share of the input
# gradient (of the true class's log-odds) that falls outside the lesion mask, for the images that
# have one; normal images train as before. In the benchmark (README, "Mask-guided training"; 30
# epochs, 3 seeds) integrated gradients' pointing game on BUSI's 98 test lesions rose from 0.23 to
# 0.43 (in every seed) and its relevance mass from 0.17 to 0.23, at a test AUC of 0.80 instead of
# 0.81; at `guide_weight=5` it reached 0.58 (saliency 0.60), at a test AUC of 0.76, while Grad-CAM
# and occlusion pointed less; at 20 the penalty overwhelmed the task (AUC 0.59). A step
# costs 2-3x a plain one, so this part runs with `GUIDED = True` (off by default on a CPU).

# %%
if busi is not None and GUIDED:
    guided = wb.models.create("resnet18", num_classes=3, img_size=BUSI_SIZE, in_chans=1)
    wb.fit(guided, btrain, epochs=BUSI_EPOCHS, lr=1e-3, device=DEVICE, guide_masks="lesion", guide_weight=1.0,
           augment=wb.data.transforms.RandomAffine(10, translate=0.05, scale=(0.9, 1.1), seed=0))
    every = btest.batch(btest.mask_present["lesion"].nonzero().flatten()[:4 * N_SHOW])   # all 98 in the benchmark
    both = {"plain": us, "mask-guided": guided}
    ig = {k: wb.attribute(m, every["image"], target=every["label"], method="integrated_gradients")
          for k, m in both.items()}
    display(pd.DataFrame({k: {"test AUC": wb.evaluate(m, btest).auc} for k, m in both.items()}).round(3))
    display(pd.concat({k: evaluate_localisation(a, {"lesion": every["masks"]["lesion"]}) for k, a in ig.items()}).round(3))

