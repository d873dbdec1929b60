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
#       N: 48
#       SIZE: 32
#       EPOCHS: 1
#       METHOD_KW:
#         n_steps: 4
#       BATCH: 16
#       WORKERS: 0
#       BOOTSTRAP: 20
# ---

# %% [markdown]
# # 07 · Datasets at scale: DICOMs + CheXmask anatomy → a cohort's relevance budget
#
# Real chest X-ray collections (NIH ChestX-ray14, CheXpert, MIMIC-CXR, PadChest, VinDr-CXR) are too
# large to hold in memory and rarely carry anatomy. This notebook walks the path from a **folder of
# DICOMs** plus a **CheXmask CSV** (lung and heart masks for ~676,000 radiographs of those datasets,
# Gaggion et al., *Scientific Data* 2024) to the share of a model's relevance that falls on each
# lung and the heart, over the whole cohort. Images are read lazily, in DataLoader workers; the
# explanation job writes its maps in shards, resumes after an interruption and runs unchanged under
# `torchrun`. Without real files it writes the phantom as DICOMs and its masks as a CheXmask CSV;
# point `FOLDER` and `CHEXMASK` at yours to run it on real data.

# %% tags=["parameters"]
FOLDER = ""                        # a folder dataset (images/<id>.dcm or png, labels.csv); empty: the phantom as DICOMs
CHEXMASK = ""                      # the CheXmask CSV for those images; empty: written from the phantom masks
N = 400                            # phantom images written when FOLDER is ""
SIZE = 128                         # image side the model sees (images and masks resized together)
CHECKPOINT = ""                    # a saved model (workbench.models.save); "" trains a small CNN here
EPOCHS = 3                         # training epochs when there is no checkpoint
METHOD = "integrated_gradients"    # any of wb.attribution.METHODS.names()
METHOD_KW = {"n_steps": 16}        # the method's settings
BATCH = 32                         # images per attribution call
WORKERS = 2                        # DataLoader worker processes decoding the images
BOOTSTRAP = 1000                   # resamples for the budget's 95% CIs
DEVICE = "auto"                    # cuda, mps or cpu
OUT = "../outputs/datasets_at_scale"

# %%
import torch

import workbench as wb
wb.set_threads("auto")   # on a CPU other jobs share, fewer threads run faster (README)

if not FOLDER:  # stand-in files: the phantom as 12-bit DICOMs, its lung and heart masks as a CheXmask CSV
    phantom = wb.data.load("phantom", split="test", n=N, size=2 * SIZE)
    FOLDER = str(wb.data.write_folder(phantom, f"{OUT}/dicom", format="dcm", masks=["nodule"], overwrite=True))
    CHEXMASK = str(wb.data.write_chexmask_csv(phantom, f"{OUT}/chexmask.csv"))

# %% [markdown]
# ## A lazy folder dataset
# `lazy=True` reads only the file list, `labels.csv` and which masks exist; each image is decoded
# (DICOM: modality LUT, VOI window, MONOCHROME1 inverted) and resized when a sample is read. Above
# 10,000 images `load` chooses the lazy form by itself. The DICOM header's pixel spacing, view
# position and window land in each sample's `meta`.

# %%
data = wb.data.load(FOLDER, split=None, size=SIZE, lazy=True)
data, data[0]["meta"]

# %% [markdown]
# ## CheXmask anatomy, attached by image id
# The CSV's `Left Lung`, `Right Lung` and `Heart` columns are run-length encoded at the mask's
# `Height` x `Width`; rows whose quality estimate `Dice RCA (Mean)` is below 0.7 are left out, as
# the authors advise. Ids that match no image, bad rows and images without masks are counted in
# `data.chexmask`, never fatal. Masks are decoded in the workers, resized with their image.

# %%
data = wb.data.attach_chexmask(data, CHEXMASK, min_dice=0.7)
data.chexmask

# %%
fig = wb.viz.gallery(data, n=4, structures=["left_lung", "right_lung", "heart", "nodule"])

# %% [markdown]
# ## A model
# `torch.utils.data.Subset` works wherever a dataset is taken; `fit` and `evaluate` read the lazy
# folder with `WORKERS` DataLoader workers (pinned memory on a GPU).

# %%
cut = int(0.75 * len(data))
train, test = torch.utils.data.Subset(data, range(cut)), torch.utils.data.Subset(data, range(cut, len(data)))
model = wb.models.load(CHECKPOINT) if CHECKPOINT else None
if model is None:
    model = wb.models.create("resnet18", num_classes=len(data.classes), img_size=SIZE, in_chans=1)
    wb.fit(model, train, epochs=EPOCHS, batch_size=32, lr=1e-3, device=DEVICE, num_workers=WORKERS)
wb.evaluate(model, test, bootstrap=BOOTSTRAP, num_workers=WORKERS).to_dict()

# %% [markdown]
# ## Explain the whole test set, shard by shard
# `explain_dataset` attributes every image (here integrated gradients, Sundararajan et al., ICML
# 2017), writes the maps as float16 shards and a per-image table: prediction, target, the share of
# positive relevance inside each structure (`budget_*`) and the pointing game where a mask exists.
# Interrupt it and run the cell again: finished shards are kept. A folder written for another model
# or method is refused (`overwrite=True` starts over).

# %%
res = wb.explain_dataset(model, test, out=f"{OUT}/explain_{METHOD}", method=METHOD, batch_size=BATCH,
                         num_workers=WORKERS, device=DEVICE, overwrite=True, **METHOD_KW)
res.table.head()

# %% [markdown]
# ## The cohort's relevance budget by anatomy
# The mean share of relevance per structure over the cohort, per predicted class, with 95%
# bootstrap confidence intervals over images (`cohort_budget`).

# %%
budget = res.budget(by="prediction", bootstrap=BOOTSTRAP)
groups = {f"predicted {data.classes[int(k)]}": g for k, g in budget.groupby("prediction")}
fig = wb.viz.budget_bars(groups, title=f"{METHOD}: share of relevance per structure")
wb.viz.save_figure(fig, f"{OUT}/budget_by_structure", params={"method": METHOD, "images": len(res.table)})

# %% [markdown]
# ## The same job on several processes or GPUs
# The command line runs the same job; under PyTorch's launcher every rank takes its share of the
# shards (no image twice, none missed), uses its own GPU, and rank 0 merges the table. Rerunning
# after an interruption (or a rank that died) resumes:
#
# ```bash
# workbench explain --checkpoint runs/model --data /data/nih --split all --lazy \
#     --chexmask /data/chexmask/ChestX-Ray8.csv.gz --method integrated_gradients --out runs/explain
# torchrun --nproc_per_node 4 -m workbench.cli explain --checkpoint runs/model --data /data/nih \
#     --split all --lazy --chexmask /data/chexmask/ChestX-Ray8.csv.gz --out runs/explain
# ```
#
# TorchXRayVision's classifiers work the same way: `wb.models.create("xrv:densenet121-res224-all")`
# takes [0, 1] images like every workbench model (its own scaling runs inside).
