"""Build notebooks/00_quickstart.ipynb (committed without outputs). Run: python notebooks/_build_00.py"""
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

cells = [
    new_markdown_cell(
        "# 00 · Quickstart: phantom → small ViT → where it looks, by anatomy\n\n"
        "The demo (`make demo` / `workbench demo --out DIR`) step by step. Everything runs on a CPU "
        "in a few minutes; set `DEVICE` and the sizes in the next cell for a GPU or real data."),
    new_code_cell(
        "# Parameters: change these for your data / machine\n"
        "import os\n"
        "SOURCE = \"phantom\"          # or \"medmnist:pneumoniamnist\", a .npz path, a folder dataset\n"
        "# phantom options: enlarged heart and effusion, which a small ViT learns in CPU minutes\n"
        "PHANTOM = dict(prevalence={\"nodule\": 0.0, \"effusion\": 0.3, \"cardiomegaly\": 0.3,\n"
        "                           \"pneumothorax\": 0.0, \"consolidation\": 0.0})\n"
        "SIZE = 64                    # image side in pixels\n"
        "N_TRAIN, N_TEST = 1500, 300  # samples per split (other sources: the first n; None for all)\n"
        "EPOCHS = 6\n"
        "DEVICE = \"auto\"              # \"cuda\", \"mps\" or \"cpu\"\n"
        "OUT = os.environ.get(\"WORKBENCH_OUT\", \"../outputs/quickstart\")"),
    new_code_cell(
        "import workbench as wb\n"
        "extra = PHANTOM if SOURCE == \"phantom\" else {}\n"
        "train = wb.data.load(SOURCE, split=\"train\", n=N_TRAIN, size=SIZE, **extra)\n"
        "test = wb.data.load(SOURCE, split=\"test\", n=N_TEST, size=SIZE, **extra)\n"
        "train"),
    new_markdown_cell("Every phantom sample carries its anatomy, findings and distractors as exact masks:"),
    new_code_cell("fig = wb.viz.gallery(train, n=8)"),
    new_markdown_cell("A small vision transformer (patch 8 → an 8×8 grid of tokens), trained with AdamW, "
                      "a cosine schedule and class weights:"),
    new_code_cell(
        "model = wb.models.create(\"vit_tiny\", num_classes=len(train.classes), img_size=SIZE,\n"
        "                         in_chans=train.images.shape[1], patch_size=8, depth=4)\n"
        "history = wb.fit(model, train, test, epochs=EPOCHS, batch_size=32, lr=5e-4, device=DEVICE)\n"
        "history.plot()"),
    new_code_cell("wb.evaluate(model, test, bootstrap=200).to_dict()"),
    new_markdown_cell("## Where does it look?\nPost-softmax attention of every layer and head, "
                      "attention rollout, and communities of patches fitted on the attention graph, "
                      "named by the anatomy they fall on."),
    new_code_cell(
        "batch = test.batch(range(4))\n"
        "maps = wb.attention_maps(model, batch[\"image\"])\n"
        "comms = wb.communities(maps, k=4, method=\"mixed_score\")\n"
        "wb.evaluation.anatomy_alignment(comms, batch[\"masks\"]).table.round(2)"),
    new_code_cell(
        "fig = wb.viz.community_overlay(batch[\"image\"], comms, index=0, masks=batch)\n"
        "wb.viz.save_figure(fig, f\"{OUT}/attention_communities\", params={\"k\": 4, \"source\": SOURCE})"),
    new_code_cell("wb.models.save(model, f\"{OUT}/model\")"),
]
nb = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                        "language": "python"}})
nbformat.write(nb, Path(__file__).with_name("00_quickstart.ipynb"))
