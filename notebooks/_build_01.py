"""Build notebooks/01_attention_communities.ipynb (committed without outputs).

Run: python notebooks/_build_01.py
"""
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

cells = [
    new_markdown_cell(
        "# 01 · Attention communities, grouped by anatomy\n\n"
        "Which patches does a vision transformer group together, and do the groups follow anatomy? "
        "A DCMM-ViT (attention with a degree-corrected mixed-membership bias) carries its own "
        "communities; for any other ViT they are fitted post hoc on the attention graph "
        "(Mixed-SCORE, spectral clustering, k-means). Runs on a CPU in about a minute with the "
        "phantom; change the next cell for a GPU or real data (e.g. a folder dataset with masks)."),
    new_code_cell(
        "# Parameters\n"
        "SOURCE = \"phantom\"      # or a folder dataset with masks, e.g. \"../../shared/data/cxr_anatomy\"\n"
        "SIZE = 64                # image side (patch 8 -> an 8x8 token grid)\n"
        "N_TRAIN, N_TEST = 1500, 64\n"
        "EPOCHS = 8\n"
        "# phantom options: enlarged heart and effusion, which a small ViT learns in CPU minutes\n"
        "PHANTOM = dict(prevalence={\"nodule\": 0.0, \"effusion\": 0.3, \"cardiomegaly\": 0.3,\n"
        "                           \"pneumothorax\": 0.0, \"consolidation\": 0.0})\n"
        "K = 4                    # communities\n"
        "DEVICE = \"auto\"\n"
        "ANATOMY = [\"body\", \"diaphragm\", \"mediastinum\", \"heart\", \"right_lung\", \"left_lung\"]"),
    new_code_cell(
        "import workbench as wb\n"
        "from workbench.evaluation import anatomy_alignment\n"
        "from workbench.widgets import explorer"),
    new_code_cell(
        "extra = PHANTOM if SOURCE == \"phantom\" else {}\n"
        "train = wb.data.load(SOURCE, split=\"train\", n=N_TRAIN, size=SIZE, **extra)\n"
        "test = wb.data.load(SOURCE, split=\"test\", n=N_TEST, size=SIZE, **extra)"),
    new_markdown_cell("A small DCMM-ViT: every attention layer gets the bias "
                      "`lambda * diag(theta) Pi B Pi^T diag(theta)` from learned memberships `Pi`."),
    new_code_cell(
        "model = wb.models.create(\"vit_tiny\", num_classes=len(train.classes), img_size=SIZE, in_chans=1,\n"
        "                         patch_size=8, depth=4, attention=\"dcmm\", communities=K)\n"
        "history = wb.fit(model, train, epochs=EPOCHS, batch_size=32, lr=5e-4, device=DEVICE, progress=False)\n"
        "wb.evaluate(model, test).auc"),
    new_markdown_cell("## Attention: every layer and head, and rollout"),
    new_code_cell(
        "batch = test.batch(range(8))\n"
        "maps = wb.attention_maps(model, batch[\"image\"])\n"
        "fig = wb.viz.attention_grid(maps, index=0, image=batch[\"image\"])"),
    new_code_cell(
        "import matplotlib.pyplot as plt\n"
        "roll = wb.rollout(maps)\n"
        "fig, axes = plt.subplots(1, 4, figsize=(8, 2)); [ax.imshow(r, cmap=\"viridis\") or ax.set_axis_off() for ax, r in zip(axes, roll)];"),
    new_markdown_cell("## Communities: the model's own (DCMM) and post hoc\n"
                      "Anatomy alignment per method: adjusted Rand index and NMI between the hard "
                      "community map and the anatomy label map, purity, per image then averaged."),
    new_code_cell(
        "comms = {m: wb.communities(maps, k=None if m == \"dcmm\" else K, method=m)\n"
        "         for m in [\"dcmm\", \"mixed_score\", \"spectral\", \"kmeans\"]}\n"
        "scores = {m: anatomy_alignment(c, batch, structures=ANATOMY) for m, c in comms.items()}\n"
        "{m: dict(ari=round(s.ari, 3), nmi=round(s.nmi, 3), purity=round(s.purity, 3)) for m, s in scores.items()}"),
    new_markdown_cell("Share of each DCMM community's mass inside each structure "
                      "(DCMM communities mean the same thing in every image, so this pools the batch):"),
    new_code_cell("scores[\"dcmm\"].table.round(2)"),
    new_code_cell(
        "fig = wb.viz.community_overlay(batch[\"image\"], comms[\"mixed_score\"], index=0, masks=batch,\n"
        "                               structures=[\"left_lung\", \"right_lung\", \"heart\"])"),
    new_code_cell(
        "fig = wb.viz.community_grid(batch[\"image\"], maps, layers=[0, -1], heads=[None, 0, 1], k=K,\n"
        "                            masks=batch, structures=[\"left_lung\", \"right_lung\", \"heart\"])"),
    new_markdown_cell("## Explorer\nPick the image, layer, head, method, K, opacity and the "
                      "structures to outline; export the view as PNG/PDF/SVG with a JSON sidecar."),
    new_code_cell(
        "ui = explorer(model, test, indices=range(16), k=K, structures=ANATOMY,\n"
        "              export_path=\"../outputs/explorer/view\")\n"
        "ui"),
]
nb = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                        "language": "python"}})
nbformat.write(nb, Path(__file__).with_name("01_attention_communities.ipynb"))
