"""Build notebooks/03_shortcut_audit.ipynb (committed without outputs).

Run: python notebooks/_build_03.py
"""
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

cells = [
    new_markdown_cell(
        "# 03 · Shortcut audit: does the model look at the chest drain?\n\n"
        "The phantom can plant a shortcut: in the *training* split a chest drain (`device`) appears in "
        "90% of abnormal and 10% of normal images; in the *test* split it is independent of the label. "
        "A model that learned the drain instead of the disease is exposed three ways:\n"
        "1. **subgroups** (hidden stratification): on abnormal test images, it is more often right when a "
        "drain is present than when it is absent;\n"
        "2. **Mask of truth**: it keeps scoring well when the lungs are removed (`without`) and drops "
        "when only the lungs are kept (`only`);\n"
        "3. **relevance budget**: a larger share of its attribution falls on the drain than for a model "
        "trained without the shortcut.\n\n"
        "Small settings run on a CPU in a few minutes."),
    new_code_cell(
        "# Parameters\n"
        "import os\n"
        "SIZE = 64\n"
        "N_TRAIN, N_TEST = 400, 200    # raise on a GPU (e.g. 2000, 500)\n"
        "EPOCHS = 3\n"
        "N_BUDGET = 16                 # images attributed for the budget\n"
        "SHORTCUT = {\"feature\": \"device\", \"with\": \"abnormal\", \"p_pos\": 0.9, \"p_neg\": 0.1}\n"
        "METHOD = \"integrated_gradients\"   # attribution for the budget\n"
        "DEVICE = \"auto\"\n"
        "OUT = os.environ.get(\"WORKBENCH_OUT\", \"../outputs/shortcut\")"),
    new_code_cell(
        "import workbench as wb\n"
        "from workbench.evaluation import shortcut_audit, mask_of_truth, cohort_budget\n"
        "biased = wb.data.load(\"phantom\", split=\"train\", n=N_TRAIN, size=SIZE, shortcut=SHORTCUT)\n"
        "clean = wb.data.load(\"phantom\", split=\"train\", n=N_TRAIN, size=SIZE)\n"
        "test = wb.data.load(\"phantom\", split=\"test\", n=N_TEST, size=SIZE)   # device independent of label"),
    new_markdown_cell("The same CNN trained twice: with the planted shortcut and without it."),
    new_code_cell(
        "models = {}\n"
        "for name, data in {\"shortcut\": biased, \"clean\": clean}.items():\n"
        "    models[name] = wb.models.create(\"resnet18\", num_classes=2, img_size=SIZE, in_chans=1)\n"
        "    wb.fit(models[name], data, epochs=EPOCHS, batch_size=16, lr=1e-3, device=DEVICE)\n"
        "{name: wb.evaluate(m, test).auc for name, m in models.items()}"),
    new_markdown_cell("What the Mask-of-truth variants look like (lungs only / lungs removed, exact masks and boxes):"),
    new_code_cell(
        "import matplotlib.pyplot as plt\n"
        "b = test.batch([0])\n"
        "variants = [(\"full\", False), (\"only\", False), (\"without\", False), (\"only\", True), (\"without\", True)]\n"
        "fig, axes = plt.subplots(1, 5, figsize=(9, 2))\n"
        "for ax, (v, box) in zip(axes, variants):\n"
        "    ax.imshow(mask_of_truth(b, [\"left_lung\", \"right_lung\"], variant=v, box=box)[\"image\"][0, 0], cmap=\"gray\")\n"
        "    ax.set_title(f\"{v}{' (box)' if box else ''}\"); ax.axis(\"off\")"),
    new_markdown_cell("## The audit of the shortcut model\nSubgroups by `device` and `site` on the unbiased test "
                      "split (95% bootstrap CIs), Mask of truth on both lungs, and the relevance budget on images "
                      "that carry a drain."),
    new_code_cell(
        "budget_on = [\"device\", \"left_lung\", \"right_lung\", \"heart\", \"marker\"]\n"
        "audits = {name: shortcut_audit(m, test, structures=(\"left_lung\", \"right_lung\"), groups=(\"device\", \"site\"),\n"
        "                               method=METHOD, budget_structures=budget_on, n_budget=N_BUDGET,\n"
        "                               target=1, bootstrap=300)\n"
        "          for name, m in models.items()}\n"
        "audits[\"shortcut\"].gaps"),
    new_code_cell("audits[\"shortcut\"].positives.round(3)"),
    new_code_cell("audits[\"shortcut\"].mask_of_truth.round(3)"),
    new_code_cell(
        "fig = audits[\"shortcut\"].plot()\n"
        "wb.viz.save_figure(fig, f\"{OUT}/audit_shortcut\", params={\"shortcut\": SHORTCUT, \"method\": METHOD})"),
    new_markdown_cell("## Compared with the model trained without the shortcut\nAudit gap (accuracy on "
                      "abnormal images with minus without a drain) and the budget share on the drain."),
    new_code_cell(
        "import pandas as pd\n"
        "pd.concat({name: a.gaps.set_index(\"by\")[\"gap\"] for name, a in audits.items()}, axis=1).round(3)"),
    new_code_cell(
        "dev = [i for i, m in enumerate(test.meta) if m[\"device\"]][:N_BUDGET]\n"
        "db = test.batch(dev)\n"
        "budgets = {name: cohort_budget(wb.attribute(m, db[\"image\"], target=1, method=METHOD),\n"
        "                               {k: db[\"masks\"][k] for k in budget_on}, bootstrap=500)\n"
        "           for name, m in models.items()}\n"
        "fig = wb.viz.budget_bars(budgets, title=\"Relevance budget on images with a drain\")\n"
        "wb.viz.save_figure(fig, f\"{OUT}/budget_shortcut_vs_clean\", params={\"method\": METHOD})"),
    new_code_cell("pd.concat(budgets).round(3)"),
]
nb = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                        "language": "python"}})
nbformat.write(nb, Path(__file__).with_name("03_shortcut_audit.ipynb"))
