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
#       BOOTSTRAP: 20
#       DEPTH: 2
#       EPOCHS: 1
#       EXPANSION: 4
#       K: 8
#       KS:
#       - 1
#       - 5
#       N_BROWSE: 16
#       N_TEST: 48
#       N_TRAIN: 96
#       RANDOM: 2
#       SAE_EPOCHS: 2
#       SIZE: 32
#       WIDTH: 48
# ---

# %% [markdown]
# # 05 · Sparse autoencoders: latents against anatomy, classes and confounders
#
# A sparse autoencoder (SAE) rewrites a layer's token activations as sparse combinations of many
# learned directions ("latents"), each of which tends to mean one thing. Mammo-SAE (Nakka et al.,
# 2025) trained one on a mammography model's patch tokens and asked which latents carry each class,
# where they fall, and what happens to the model's AUROC when they are kept or switched off. Here
# the same questions are asked of a small ViT on the phantom, with two additions: every latent is
# scored against the anatomy masks (a *latent atlas*), and the confounder search looks for latents
# the model leans on that sit on devices, markers or outside the body.
#
# The ViT is trained with a **planted shortcut**: in the training split chest drains (`device`)
# come with 90 % of abnormal and 10 % of normal images; in the test split they are independent of
# the label. The default settings run on a 2-core CPU in about five minutes; change the
# parameters for your data or a GPU.

# %% tags=["parameters"]
SIZE = 64
N_TRAIN = 8000          # phantom training images (with the shortcut)
N_TEST = 400            # unbiased test images
EPOCHS = 10             # ViT epochs: fewer (6 with 4,000 images) and the ViT has not yet learnt the shortcut
DEPTH = 4               # ViT blocks
WIDTH = 96              # ViT width
LAYER = "blocks.1"      # the layer the SAE reads: the middle of the ViT
KIND = "topk"           # topk (Gao et al. 2024), batchtopk (Bussmann et al. 2024) or relu (Mammo-SAE)
EXPANSION = 8           # latents per unit of layer width (Mammo-SAE: 8)
K = 32                  # active latents per token (topk, batchtopk)
SAE_EPOCHS = 4          # passes over the cached tokens
KS = [1, 5, 10, 50]     # numbers of class latents kept / switched off
RANDOM = 10             # random latent sets per k (baseline)
BOOTSTRAP = 500         # bootstrap resamples for the CIs
N_BROWSE = 64           # images in the latent browser
SHORTCUT = {"feature": "device", "with": "abnormal", "p_pos": 0.9, "p_neg": 0.1}
DEVICE = "auto"
OUT = "../outputs/sae"

# %%
import workbench as wb
wb.set_threads("auto")   # on a CPU other jobs share, fewer threads run faster (README)

train = wb.data.load("phantom", split="train", n=N_TRAIN, size=SIZE, shortcut=SHORTCUT)
test = wb.data.load("phantom", split="test", n=N_TEST, size=SIZE)       # drains independent of the label
model = wb.models.create("vit_tiny", num_classes=2, img_size=SIZE, in_chans=1, patch_size=8, depth=DEPTH,
                         embed_dim=WIDTH, num_heads=3)
history = wb.fit(model, train, epochs=EPOCHS, batch_size=64, lr=5e-4, device=DEVICE, seed=0)
wb.evaluate(model, test)

# %% [markdown]
# ## The activation store
# `wb.sae.cache` runs each training image up to `LAYER` only (the forward stops right after it) and
# writes its patch tokens as float16 shards with a manifest naming the model, layer, token layout
# and data; it resumes when rerun and splits the work across ranks under `torchrun`.

# %%
store = wb.sae.cache(model, train, layer=LAYER, out=f"{OUT}/store", device=DEVICE)
store

# %% [markdown]
# ## Training the SAE
# TopK keeps the `K` largest latents per token; inputs are scaled to unit mean norm, the decoder
# bias starts at the data mean, atoms keep unit norm, and dead latents are revived by the AuxK loss
# (Gao et al. 2024). Training streams shuffled token batches from the store.

# %%
sae, log = wb.sae.train(store, kind=KIND, expansion=EXPANSION, k=K, epochs=SAE_EPOCHS, device=DEVICE)
fig = log.plot()

# %% [markdown]
# **Fidelity**: fraction of variance unexplained (FVU), active latents per token (L0), dead and
# dense latents, and the model's test AUC with the SAE's reconstruction spliced into the layer, next
# to replacing the layer's tokens by zeros or by their mean (what an SAE must beat).

# %%
print(wb.sae.fidelity(sae, model, test))

# %% [markdown]
# ## The latent atlas
# Each latent's heatmap (its patch activations on the image) is scored against every structure
# mask: the share of its activation mass inside the structure, and the pixel AUROC / average
# precision of the heatmap for the structure's pixels. Below, the best latent per structure; the
# black tick (column `ceiling`) is what a perfect detector on this layer's patch grid would score, so
# a latent far below its tick is the dictionary's limit, not the grid's.

# %%
atlas = wb.sae.atlas(sae, model, test)
fig = atlas.plot()
wb.viz.save_figure(fig, f"{OUT}/atlas", params={"layer": LAYER, "kind": KIND, "k": K})
atlas.best_per_structure().round(3)

# %% [markdown]
# A wide dictionary splits a structure over several latents (one for the lung apex, one for its
# base), so the best single latent can miss what the dictionary holds: `atlas.unions` scores the
# greedy union of up to three latents per structure.

# %%
atlas.unions.round(3)

# %% [markdown]
# Where the best device latent fires: its top test images (heatmap, strongest patch boxed) and
# crops of those patches.

# %%
device_latent = int(atlas.best_per_structure().set_index("structure").loc["device", "latent"])
top = wb.sae.top_activations(sae, model, test, n=6)
fig = top.plot(device_latent, test, sae=sae, model=model, structures=["device"])

# %% [markdown]
# ## Class latents: mean activation vs contrast
# Mammo-SAE ranks a class's latents by their mean activation over the class's images. That puts
# diffuse latents first, which fire on every image (density near 1); ranking by the contrast with
# the other classes (Cohen's d) puts the latents that separate the classes first.

# %%
classes = wb.sae.class_latents(sae, model, test)
fig = wb.viz.class_latent_bars(classes, "abnormal", k=10)
classes.summary(10).round(3)

# %% [markdown]
# ## Confounder search
# Latents the model leans on (first-order contribution of each latent to the log-probability of
# "abnormal", summed over tokens) times the evidence that it sits off the anatomy: its activation
# share on devices, markers or outside the body, or how well it detects a device's or marker's
# presence within each class (`detects_device`; 0.5 is chance), whichever is larger. A drain
# covers 0.3 % of the image, so even a drain latent has most of its mass on the 8 px patches
# beside it (`share_device` near 0.01): detection is the evidence that counts for a structure this
# thin. With the planted shortcut learnt (these settings, as the benchmark's ViT), a drain detector
# tops the table with a score several times the next; with 4,000 images x 6 epochs a 2026-12-03 run
# found no latent the model leaned on (reliance below 0.1, detection near 0.6): the ViT had not yet
# learnt the shortcut.

# %%
suspects = wb.sae.confounders(sae, model, test, suspects=("device", "marker"), top=5)
suspects.round(3)

# %% [markdown]
# ## Interventions (Mammo-SAE)
# Keep only the top-k class latents (all other codes zeroed), or switch them off, splice the
# result into the layer, and measure the AUROC; bootstrap CIs over test images and a baseline of
# random latent sets of the same size say whether the effect is specific to the class latents.

# %%
iv = wb.sae.intervene(sae, model, test, ks=KS, ranking="contrastive", random=RANDOM, bootstrap=BOOTSTRAP)
fig = iv.plot()
wb.viz.save_figure(fig, f"{OUT}/interventions", params={"ks": KS, "ranking": "contrastive"})
iv.table.round(3)

# %% [markdown]
# ## Two models, one dictionary
# Fine-tune the model one epoch on images without the shortcut and apply the same SAE to both: which
# latents does the fine-tuned model rely on more, and which less (Mammo-SAE's fine-tuning analysis)?
# Below, the confounder search's first latent and the atlas's best device latent.

# %%
import copy

clean = wb.data.load("phantom", split="train", n=N_TRAIN, size=SIZE, seed=1)
tuned = copy.deepcopy(model)
wb.fit(tuned, clean, epochs=1, batch_size=64, lr=2e-4, device=DEVICE, seed=0)
cmp = wb.sae.compare_models(sae, model, tuned, test, names=("shortcut", "fine-tuned"))
cmp.table.set_index("latent").loc[list(dict.fromkeys([int(suspects.latent[0]), device_latent]))].round(4)

# %% [markdown]
# ## Latents as concepts, and the browser
# `wb.sae.latents` encodes any images into per-image latent activations (and maps), the label-free
# concepts a concept bottleneck can take. The browser shows a latent's top images, its heatmap with
# anatomy contours and its structure profile; pick an image to see its strongest latents. A
# foundation model works the same way: `wb.models.create(name, ..., pretrained="backbone.safetensors")`.

# %%
wb.sae.latents(sae, model, test, pool="mean").pooled.shape

# %%
from workbench.widgets import latent_browser

latent_browser(sae, model, test, indices=range(min(N_BROWSE, len(test))), latent=device_latent)
