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
#       BOOTSTRAP: 10
#       EPOCHS: 1
#       FT_EPOCHS: 0
#       N_CALIB: 32
#       N_EXPLAIN: 4
#       N_TEST: 48
#       N_TRAIN: 48
#       RATIOS:
#       - 0.5
#       REPEATS: 1
#       SIZE: 32
#       SWEEP_CRITERIA:
#       - gradient_x_activation
#       - random
# ---

# %% [markdown]
# # 06 · Interpretability-guided pruning
#
# Score every unit of a model (convolution channels here; MLP neurons or attention heads for a
# ViT) by how much it contributes to the model's decisions on calibration images, remove the
# least relevant ones so the model really gets smaller and faster (Torch-Pruning's dependency
# graph cuts every coupled weight), and check what that cost: AUC, per-class damage, flipped
# predictions, and whether the explanations still fall on the same anatomy. After Malik et al.,
# "Interpretability-Aware Pruning for Efficient Medical Image Analysis" (2025), Yeom et al.
# (LRP pruning, Pattern Recognition 2021) and Molchanov et al. (Taylor criteria, CVPR 2019).
#
# Small settings run on a CPU in about a minute; raise them on a GPU.

# %% tags=["parameters"]
SIZE = 64
N_TRAIN = 2000
N_TEST = 400
N_CALIB = 256             # calibration images that score the units
EPOCHS = 3
MODEL = "resnet18"
UNIT = "channels"          # "mlp" or "heads" for a ViT
CRITERION = "gradient_x_activation"
RATIO = 0.5
RATIOS = [0.1, 0.3, 0.5, 0.7, 0.9]
SWEEP_CRITERIA = ["gradient_x_activation", "lrp", "weight_magnitude", "random"]
FT_EPOCHS = 1              # brief fine-tuning of each pruned model in the sweep (0: none)
N_EXPLAIN = 16
BOOTSTRAP = 200
REPEATS = 5                # interleaved latency rounds (medians)
DEVICE = "auto"
OUT = "../outputs/pruning"

# %%
import workbench as wb
wb.set_threads("auto")   # on a CPU other jobs share, fewer threads run faster (README)

train = wb.data.load("phantom", split="train", n=N_TRAIN, size=SIZE)
test = wb.data.load("phantom", split="test", n=N_TEST, size=SIZE)
calib = wb.data.load("phantom", split="val", n=N_CALIB, size=SIZE)
model = wb.models.create(MODEL, num_classes=2, img_size=SIZE, in_chans=1)
wb.fit(model, train, epochs=EPOCHS, batch_size=32, lr=1e-3, device=DEVICE, progress=False)
wb.evaluate(model, test).auc

# %% [markdown]
# ## Unit relevance
# Gradient x activation at every unit (the first-order estimate of what removing it changes in
# the logit), summed over positions, mean |contribution| over every calibration image. The
# stability is the rank correlation of the scores computed on two halves of the calibration set.

# %%
scores = wb.pruning.scores(model, calib, unit=UNIT, criterion=CRITERION, per_class=True, progress=False)
fig = scores.plot()
wb.viz.save_figure(fig, f"{OUT}/score_profile", params=scores.params)
scores.table()

# %% [markdown]
# ## Prune and report
# A new, physically smaller model (the original is untouched): parameters, MACs, latency (the two
# models timed in turn, medians), AUC per class, flipped predictions and the share of relevance
# per structure before and after.

# %%
small = wb.pruning.prune(model, scores, ratio=RATIO)
report = wb.pruning.report(model, small, test, n_explain=N_EXPLAIN, bootstrap=BOOTSTRAP, repeats=REPEATS,
                           attribution_kw={"n_steps": 16})
wb.viz.save_figure(report.plot(), f"{OUT}/report", params=report.summary())
report.summary()

# %%
report.budget

# %% [markdown]
# ## Recover with the dense model as teacher
# Brief fine-tuning brings a pruned model back; with the dense model as teacher (knowledge
# distillation, `wb.fit(..., teacher=model)`) it is pulled towards the function it was cut from,
# not only towards the labels. The report then compares the recovered model with the dense one.

# %%
import copy

recovered = copy.deepcopy(small)   # fit trains in place; keep the pruned model as it was
wb.fit(recovered, train, epochs=max(1, FT_EPOCHS), batch_size=32, lr=1e-3, device=DEVICE, progress=False,
       teacher=model, distill_weight=0.9)   # 0.9: maps closest to the dense model's in the benchmark
recovered_report = wb.pruning.report(model, recovered, test, n_explain=N_EXPLAIN, bootstrap=BOOTSTRAP,
                                     repeats=REPEATS, attribution_kw={"n_steps": 16})
{"AUC dense": report.original.auc, "pruned": report.pruned.auc, "distilled": recovered_report.pruned.auc,
 "largest share shift, pruned": float(report.budget["delta"].abs().max()),
 "largest share shift, distilled": float(recovered_report.budget["delta"].abs().max())}

# %% [markdown]
# ## Which criterion keeps the model best?
# Accuracy against the pruning ratio per criterion, without and with brief fine-tuning; the legend
# gives the area under each curve (its mean height).

# %%
sweep = wb.pruning.sweep(model, calib, test, unit=UNIT, criteria=SWEEP_CRITERIA, ratios=RATIOS,
                         train=train, epochs=FT_EPOCHS, progress=False)
wb.viz.save_figure(sweep.plot(), f"{OUT}/sweep", params=sweep.params)
sweep.area[sweep.area["metric"] == "auc"]

# %% [markdown]
# ## Units that fire on a device
# Relevance counted only inside the `device` masks ranks the units that look at drains, lines and
# ECG leads; removing the few most device-relevant ones (`remove="highest"`) targets a shortcut.
# The audit gap is the accuracy on abnormal images with a device minus without one.

# %%
device_scores = wb.pruning.scores(model, calib, unit=UNIT, criterion=CRITERION, masks="device", progress=False)
no_device = wb.pruning.prune(model, device_scores, ratio=0.05, remove="highest")
{"audit gap before": wb.pruning.audit_gap(model, test), "after": wb.pruning.audit_gap(no_device, test),
 "AUC after": wb.evaluate(no_device, test).auc}

# %% [markdown]
# A pruned model saves and loads like any other: the checkpoint's config records its new shapes.

# %%
wb.models.save(small, f"{OUT}/pruned")
wb.models.load(f"{OUT}/pruned").workbench_config["pruning"]["history"]

# %% [markdown]
# ## Interactive
# Ratio, criterion and unit kind -> AUC, size, latency and the two models' relevance maps.

# %%
from workbench.widgets import pruner

pruner(model, calib, test, criteria=SWEEP_CRITERIA)
