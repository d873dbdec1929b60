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
        "PHANTOM = dict()             # phantom options, e.g. prevalence={...}, nodule_contrast=(0.1, 0.2)\n"
        "SIZE = 64                    # image side in pixels\n"
        "N_TRAIN, N_TEST = 6000, 400  # samples per split (other sources: the first n; None for all)\n"
        "EPOCHS = 8                   # 10,000 images x 10 epochs: test AUC ~0.94 (benchmarks/README.md)\n"
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
    new_markdown_cell("A small vision transformer (patch 8 → an 8×8 grid of tokens, 4 blocks of width 96), "
                      "trained with AdamW, a cosine schedule and class weights. It takes [0, 1] images and "
                      "standardises them itself. ViTs want data: many fresh phantom images seen a few times "
                      "beat few images seen many times."),
    new_code_cell(
        "model = wb.models.create(\"vit_tiny\", num_classes=len(train.classes), img_size=SIZE,\n"
        "                         in_chans=train.images.shape[1], patch_size=8, depth=4, embed_dim=96, num_heads=3)\n"
        "history = wb.fit(model, train, test, epochs=EPOCHS, batch_size=64, lr=5e-4, device=DEVICE)\n"
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
