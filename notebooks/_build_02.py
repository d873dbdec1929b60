"""Build notebooks/02_attribution_and_evaluation.ipynb (committed without outputs).

Run: python notebooks/_build_02.py
"""
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

cells = [
    new_markdown_cell(
        "# 02 · Attribution, scored against anatomy and against the model\n\n"
        "Heat maps from several attribution methods for a small CNN and a small ViT trained on the "
        "phantom, then scored: **localisation** (pointing game, relevance mass, rank accuracy, top-k IoU "
        "against the exact finding masks), the **per-structure budget** (share of relevance on each "
        "anatomical structure, with bootstrap CIs), **faithfulness** (deletion / insertion curves) and a "
        "**sanity check** (cascading model-parameter randomisation, Adebayo et al. 2018). The last part "
        "repeats the budget on real radiographs with radiologist masks when `../shared/data` is present. "
        "Small settings run on a CPU in a few minutes; raise them on a GPU."),
    new_code_cell(
        "# Parameters\n"
        "import os\n"
        "SIZE = 64                       # phantom image side\n"
        "N_TRAIN, N_TEST = 400, 200    # raise on a GPU (e.g. 2000, 500)\n"
        "EPOCHS = 3\n"
        "# a controlled nodule task (nodules the only finding): small models learn it in a few CPU epochs;\n"
        "# use {} for the full phantom (five findings, needs longer training)\n"
        "PHANTOM = dict(prevalence={\"nodule\": 0.5, \"effusion\": 0.0, \"cardiomegaly\": 0.0, \"pneumothorax\": 0.0,\n"
        "                           \"consolidation\": 0.0}, nodule_radius=(0.05, 0.08), nodule_contrast=(0.2, 0.35))\n"
        "N_SHOW = 4                      # images in the grids and metrics\n"
        "METHODS = [\"saliency\", \"integrated_gradients\", \"gradcam\", \"occlusion\"]  # any of wb.attribution.METHODS.names()\n"
        "DEVICE = \"auto\"\n"
        "OUT = os.environ.get(\"WORKBENCH_OUT\", \"../outputs/attribution\")"),
    new_code_cell(
        "import torch\n"
        "import pandas as pd\n"
        "import workbench as wb\n"
        "from workbench.evaluation import (evaluate_localisation, cohort_budget, deletion_insertion,\n"
        "                                  randomisation_test)\n"
        "train = wb.data.load(\"phantom\", split=\"train\", n=N_TRAIN, size=SIZE, **PHANTOM)\n"
        "test = wb.data.load(\"phantom\", split=\"test\", n=N_TEST, size=SIZE, **PHANTOM)"),
    new_markdown_cell("Two small models on the same data: a ResNet-18 and a ViT-tiny with 8 px patches."),
    new_code_cell(
        "cnn = wb.models.create(\"resnet18\", num_classes=2, img_size=SIZE, in_chans=1)\n"
        "wb.fit(cnn, train, epochs=EPOCHS, batch_size=16, lr=1e-3, device=DEVICE)\n"
        "vit = wb.models.create(\"vit_tiny\", num_classes=2, img_size=SIZE, in_chans=1, patch_size=8)\n"
        "wb.fit(vit, train, epochs=EPOCHS, batch_size=16, lr=5e-4, device=DEVICE)\n"
        "{\"cnn\": wb.evaluate(cnn, test).auc, \"vit\": wb.evaluate(vit, test).auc}"),
    new_markdown_cell("Abnormal test images that contain a nodule; every method explains the *abnormal* logit."),
    new_code_cell(
        "idx = ((test.labels == 1) & test.masks[\"nodule\"].flatten(1).any(1)).nonzero().flatten()[:N_SHOW]\n"
        "batch = test.batch(idx)\n"
        "atts = {m: wb.attribute(cnn, batch[\"image\"], target=1, method=m) for m in METHODS}\n"
        "fig = wb.viz.attribution_grid(batch, atts, structures=[\"left_lung\", \"right_lung\", \"heart\", \"nodule\"])\n"
        "wb.viz.save_figure(fig, f\"{OUT}/method_grid_cnn\", params={\"methods\": METHODS, \"size\": SIZE})"),
    new_markdown_cell("## Localisation against the finding masks\nOne row per method and structure "
                      "(empty masks are excluded and counted in `n_excluded`)."),
    new_code_cell(
        "findings = {k: batch[\"masks\"][k] for k in (\"nodule\", \"effusion\", \"pneumothorax\", \"consolidation\")}\n"
        "pd.concat({m: evaluate_localisation(a, findings) for m, a in atts.items()}).round(3)"),
    new_markdown_cell("## Per-structure budget\nShare of positive relevance on each anatomical structure "
                      "(structures overlap, e.g. a nodule inside a lung; `outside` is outside all of them), "
                      "mean over images with 95% bootstrap CIs, CNN vs ViT (integrated gradients)."),
    new_code_cell(
        "anatomy = [\"left_lung\", \"right_lung\", \"heart\", \"mediastinum\", \"diaphragm\", \"nodule\", \"device\"]\n"
        "masks = {\"masks\": {k: batch[\"masks\"][k] for k in anatomy},\n"
        "         \"mask_present\": {k: batch[\"mask_present\"][k] for k in anatomy}}\n"
        "budgets = {name: cohort_budget(wb.attribute(m, batch[\"image\"], target=1, method=\"integrated_gradients\"),\n"
        "                               masks, bootstrap=500)\n"
        "           for name, m in {\"cnn\": cnn, \"vit\": vit}.items()}\n"
        "fig = wb.viz.budget_bars(budgets)\n"
        "wb.viz.save_figure(fig, f\"{OUT}/budget_phantom\", params={\"method\": \"integrated_gradients\"})"),
    new_markdown_cell("## Faithfulness: deletion (solid, lower is better) and insertion (dashed, higher is better)"),
    new_code_cell(
        "faith = {m: deletion_insertion(cnn, batch[\"image\"], a, steps=10) for m, a in atts.items()}\n"
        "fig = wb.viz.deletion_curves(faith)\n"
        "wb.viz.save_figure(fig, f\"{OUT}/deletion_insertion\", params={\"steps\": 10, \"baseline\": \"blur\"})"),
    new_markdown_cell("## Sanity: cascading randomisation\nLayers are re-initialised from the output down (on a "
                      "copy); a method that passes loses its similarity to the original map quickly."),
    new_code_cell(
        "pd.concat({m: randomisation_test(cnn, batch[\"image\"][:3], m, target=1)\n"
        "           for m in (\"saliency\", \"gradcam\")}).round(3)"),
    new_markdown_cell("## Real radiographs\nThe same budget on 100 real chest radiographs with radiologist masks "
                      "(COVID-19 lung segmentation data in `../shared/data/cxr_anatomy`), using the phantom-trained "
                      "CNN: a domain shift, so read it as *where the model looks*. Skipped when the data are absent."),
    new_code_cell(
        "root = wb.data.shared_data_path()\n"
        "real = None if root is None or not (root / \"cxr_anatomy\").is_dir() else \\\n"
        "    wb.data.load(root / \"cxr_anatomy\", split=None, size=SIZE, label_column=None)\n"
        "real"),
    new_code_cell(
        "if real is not None:\n"
        "    rb = real.batch(range(min(len(real), 16)))\n"
        "    names = [\"left_lung\", \"right_lung\", \"cardiomediastinum\", \"airways\", \"ground_glass_opacity\", \"device\"]\n"
        "    rmasks = {\"masks\": {k: rb[\"masks\"][k] for k in names}, \"mask_present\": {k: rb[\"mask_present\"][k] for k in names}}\n"
        "    real_budget = cohort_budget(wb.attribute(cnn, rb[\"image\"], target=1, method=\"integrated_gradients\"), rmasks)\n"
        "    fig = wb.viz.budget_bars(real_budget, title=\"cxr_anatomy, phantom-trained CNN\")\n"
        "    wb.viz.save_figure(fig, f\"{OUT}/budget_real\", params={\"n\": len(rb[\"id\"])})"),
]
nb = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                        "language": "python"}})
nbformat.write(nb, Path(__file__).with_name("02_attribution_and_evaluation.ipynb"))
