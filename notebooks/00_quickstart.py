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
#       N_TRAIN: 96
#       N_TEST: 32
#       EPOCHS: 1
#       CHECKPOINT: ''
# ---

# %% [markdown]
# # 00 · Quickstart: phantom → small ViT → where it looks, by anatomy
#
# The demo (`make demo` / `workbench demo --out DIR`) step by step, with the first picture first.
# If `make demo` has run, this notebook reuses the model it saved (`../outputs/demo/model`: a small
# ViT, test AUC about 0.94) and shows where it looks within seconds (16-18 s to the first overlay on
# a 2-core CPU, kernel start included). Without it, the notebook trains a small ViT first: a weaker
# model (AUC about 0.7), enough to see the method. On the idle CPU the whole notebook took 43 s
# with torch's default two threads; while one other job ran, the first overlay came after 241-252 s
# with them (the two threads wait for each other when another job holds a core) and after 56-67 s
# with one: `THREADS = "auto"` (`wb.set_threads`) takes the cores the load average leaves free, so it
# picks one thread on a busy 2-core CPU and both on an idle one. For the better model run `make demo`
# (about 4 CPU minutes) and re-run this
# notebook. Change the next cell for a GPU or your own data.

# %% tags=["parameters"]
SOURCE = "phantom"                      # or "medmnist:pneumoniamnist", a .npz path, a folder dataset
PHANTOM = {}                            # phantom options, e.g. {"nodule_contrast": [0.1, 0.2]}
SIZE = 64                               # image side in pixels
CHECKPOINT = "../outputs/demo/model"    # a model `workbench demo` saved; "" to always train here
N_TRAIN = 2000                          # training images when no checkpoint fits
N_TEST = 200                            # test images
EPOCHS = 3                              # the demo: 8,000 images x 10 epochs (benchmarks/README.md)
K = 4                                   # communities of patches
DEVICE = "auto"                         # "cuda", "mps" or "cpu"
THREADS = "auto"                        # CPU threads: "auto" (the cores the load leaves free) or a number
OUT = "../outputs/quickstart"           # figures and the model trained here

# %%
import workbench as wb

wb.set_threads(THREADS)                 # on a busy CPU fewer threads are faster (see above)

extra = PHANTOM if SOURCE == "phantom" else {}
test = wb.data.load(SOURCE, split="test", n=N_TEST, size=SIZE, **extra)
test

# %% [markdown]
# ## A model: the demo's, or a quick one
# A small vision transformer: patch 8 (an 8×8 grid of tokens at 64 px), 4 blocks of width 96. It
# takes [0, 1] images and standardises them itself. ViTs want data: many fresh phantom images seen
# a few times beat few images seen many times.

# %%
model = wb.models.load_if_present(CHECKPOINT, img_size=SIZE, in_chans=test.images.shape[1],
                                  num_classes=test.num_classes) if CHECKPOINT else None
if model is None:  # no demo checkpoint: train a quick, weaker model (`make demo` gives the better one)
    train = wb.data.load(SOURCE, split="train", n=N_TRAIN, size=SIZE, **extra)
    model = wb.models.create("vit_tiny", num_classes=test.num_classes, img_size=SIZE, in_chans=test.images.shape[1],
                             patch_size=8, depth=4, embed_dim=96, num_heads=3)
    wb.fit(model, train, epochs=EPOCHS, batch_size=64, lr=1e-3, device=DEVICE)
    wb.models.save(model, f"{OUT}/model")

# %% [markdown]
# ## Where does it look, grouped by anatomy?
# **Communities of patches on the attention graph.** The last layer's attention, averaged over
# heads and made symmetric, is a weighted graph between patches. Mixed-SCORE (Jin, Ke & Luo,
# *J. Econometrics* 2023) fits a degree-corrected mixed-membership model to it: the top-K
# eigenvectors, divided entry-wise by the leading one (which removes each patch's degree), form a
# simplex whose corners are found by vertex hunting; each patch's position in it gives its soft
# membership of the K communities. The overlay colours each patch by its memberships, outlines the
# anatomy, and names each community by the structure holding most of its mass.

# %%
fig = wb.viz.draw("community_overlay", model, test, indices=[0, 1, 2, 3], k=K,
                  structures=["left_lung", "right_lung", "heart", "mediastinum", "diaphragm"])
wb.viz.save_figure(fig, f"{OUT}/attention_communities")   # PNG, PDF, SVG and a sidecar that rebuilds it

# %% [markdown]
# How well the communities follow anatomy, per image: adjusted Rand index and normalised mutual
# information between the hard community map and the anatomy label map (1 = identical partitions,
# 0 = chance), and purity; the table is each community's share of mass per structure.

# %%
batch = test.batch(range(4))
align = wb.evaluation.anatomy_alignment(wb.communities(model, batch["image"], k=K), batch)
print(f"ARI {align.ari:.2f}, NMI {align.nmi:.2f}, purity {align.purity:.2f}")
align.table.round(2)

# %% [markdown]
# ## The data and the model's accuracy
# Every phantom sample carries its anatomy, findings and distractors as exact masks:

# %%
fig = wb.viz.gallery(test, n=8)

# %% [markdown]
# Test AUC with a 95% bootstrap confidence interval (resampling the test images).

# %%
wb.evaluate(model, test, bootstrap=200).to_dict()

# %% [markdown]
# ## Which structures carry the evidence?
# **Gradient-weighted attention relevance** (Chefer, Gur & Wolf, CVPR 2021): in each layer the
# attention map is multiplied by its gradient with respect to the *abnormal* logit, negative
# values are clipped and heads averaged; the layers are then chained as in attention rollout
# (Abnar & Zuidema, ACL 2020: add the identity for the residual path, normalise rows, multiply
# across layers). The bars are the share of positive relevance inside each structure, averaged
# over abnormal test images, with 95% bootstrap CIs.

# %%
abnormal = (test.labels == 1).nonzero().flatten()[:32].tolist()
findings = ["nodule", "effusion", "pneumothorax", "consolidation"]
fig = wb.viz.draw("attribution_grid", model, test, indices=abnormal[:4], methods=["chefer"], target=1,
                  structures=findings)

# %%
fig = wb.viz.draw("budget_bars", model, test, indices=abnormal, methods=["chefer"], target=1, bootstrap=200,
                  structures=["left_lung", "right_lung", "heart", "mediastinum", "diaphragm", *findings],
                  title="Where the ViT looks on abnormal images")
wb.viz.save_figure(fig, f"{OUT}/relevance_by_structure")

# %% [markdown]
# ## For a paper or a class
# The same figure in a paper's style (one column, 88 mm, 7-8 pt text, 600 dpi) or for slides
# (16 pt text); `columns=2` gives a two-column figure. Each saved figure's sidecar (`.json`)
# records the recipe, its parameters, the checkpoint and data (with their SHA-256) and the
# style, so it rebuilds exactly: `workbench figure rebuild ../outputs/quickstart/overlay_paper.json`
# (it refuses if the checkpoint or the data changed).

# %%
with wb.viz.style("paper"):
    fig = wb.viz.draw("community_overlay", model, test, indices=[0, 1, 2, 3], k=K,
                      structures=["left_lung", "right_lung", "heart"])
wb.viz.save_figure(fig, f"{OUT}/overlay_paper")

# %%
wb.viz.rebuild(f"{OUT}/overlay_paper.json")
