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
#       N_TRAIN: 64
#       N_TEST: 16
#       EPOCHS: 1
# ---

# %% [markdown]
# # 01 · Attention communities, grouped by anatomy
#
# Which patches does a vision transformer group together, and do the groups follow anatomy? A
# DCMM-ViT (attention with a degree-corrected mixed-membership bias) carries its own communities;
# for any other ViT they are fitted post hoc on the attention graph (Mixed-SCORE, spectral
# clustering, k-means). Runs on a CPU in a few minutes with the phantom; change the next cell for
# a GPU or real data (e.g. a folder dataset with masks).

# %% tags=["parameters"]
SOURCE = "phantom"      # or a folder dataset with masks, e.g. "../../shared/data/cxr_anatomy"
SIZE = 64               # image side (patch 8 -> an 8x8 token grid)
N_TRAIN = 1500          # training images
N_TEST = 64             # test images (the explorer shows the first 16)
EPOCHS = 8
# phantom options: enlarged heart and effusion, which a small ViT learns in CPU minutes
PHANTOM = {"prevalence": {"nodule": 0.0, "effusion": 0.3, "cardiomegaly": 0.3, "pneumothorax": 0.0, "consolidation": 0.0}}
K = 4                   # communities
DEVICE = "auto"
ANATOMY = ["body", "diaphragm", "mediastinum", "heart", "right_lung", "left_lung"]
OUT = "../outputs/communities"   # the explorer's exports

# %%
import workbench as wb
from workbench.evaluation import anatomy_alignment
from workbench.widgets import explorer
wb.set_threads("auto")   # on a CPU other jobs share, fewer threads run faster (README)

extra = PHANTOM if SOURCE == "phantom" else {}
train = wb.data.load(SOURCE, split="train", n=N_TRAIN, size=SIZE, **extra)
test = wb.data.load(SOURCE, split="test", n=N_TEST, size=SIZE, **extra)

# %% [markdown]
# **DCMM attention** (after the DCMM-Transformer, Cheng et al., AAAI 2026): every attention layer
# adds `lambda * diag(theta) Pi B Pi^T diag(theta)` to its logits, where `Pi` are soft community
# memberships of the tokens (a softmax of the queries), `theta` their degrees and `B` a symmetric
# K×K affinity between communities, as in a degree-corrected mixed-membership block model. The
# paper's exact parameterisation could not be confirmed; this is the workbench's documented default.

# %%
model = wb.models.create("vit_tiny", num_classes=train.num_classes, img_size=SIZE, in_chans=train.images.shape[1],
                         patch_size=8, depth=4, attention="dcmm", communities=K)
history = wb.fit(model, train, epochs=EPOCHS, batch_size=32, lr=5e-4, device=DEVICE, progress=False)
wb.evaluate(model, test).auc

# %% [markdown]
# ## Attention: every layer and head, and rollout
# Each panel is the attention the class token pays to each patch (post-softmax, one layer and
# head; "mean" averages the heads). **Attention rollout** (Abnar & Zuidema, ACL 2020) follows
# attention through all layers: average the heads, add the identity for the residual connection,
# normalise the rows and multiply the layers' matrices.

# %%
batch = test.batch(range(8))
maps = wb.attention_maps(model, batch["image"])
fig = wb.viz.attention_grid(maps, index=0, image=batch["image"])

# %%
rollout = wb.attribute(model, batch["image"][:4], method="attention_rollout")
fig = wb.viz.attribution_grid(batch["image"][:4], {"rollout": rollout})

# %% [markdown]
# ## Communities: the model's own (DCMM) and post hoc
# `dcmm` reads the model's own memberships `Pi`. The post-hoc methods work on the symmetrised
# patch-to-patch attention graph of one layer: **Mixed-SCORE** (Jin, Ke & Luo 2023; top-K
# eigenvectors divided by the leading one, vertex hunting, barycentric memberships),
# **spectral** clustering (Ng, Jordan & Weiss 2001) and **k-means** on the patches' attention rows.
# Anatomy alignment per method: adjusted Rand index (Hubert & Arabie 1985) and normalised mutual
# information between the hard community map and the anatomy label map, and purity, per image
# then averaged.

# %%
comms = {m: wb.communities(maps, k=None if m == "dcmm" else K, method=m)
         for m in ["dcmm", "mixed_score", "spectral", "kmeans"]}
scores = {m: anatomy_alignment(c, batch, structures=ANATOMY) for m, c in comms.items()}
{m: dict(ari=round(s.ari, 3), nmi=round(s.nmi, 3), purity=round(s.purity, 3)) for m, s in scores.items()}

# %% [markdown]
# Share of each DCMM community's mass inside each structure (DCMM communities mean the same thing
# in every image, so this pools the batch):

# %%
scores["dcmm"].table.round(2)

# %%
fig = wb.viz.community_overlay(batch["image"], comms["mixed_score"], index=0, masks=batch,
                               structures=["left_lung", "right_lung", "heart"])

# %%
fig = wb.viz.community_grid(batch["image"], maps, layers=[0, -1], heads=[None, 0, 1], k=K,
                            masks=batch, structures=["left_lung", "right_lung", "heart"])

# %% [markdown]
# ## Explorer
# Pick the image, layer, head, method, K, opacity and the structures to outline; export the view
# as PNG/PDF/SVG with a JSON sidecar.

# %%
ui = explorer(model, test, indices=range(min(16, len(test))), k=K, structures=ANATOMY,
              export_path=f"{OUT}/explorer/view")
ui
