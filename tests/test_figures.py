"""Figure styles (paper / slides / notebook) and figures that rebuild from their sidecar."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import workbench as wb
from workbench import cli
from workbench.viz import _style

PIL = pytest.importorskip("PIL.Image")


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Tiny phantom data, a tiny ViT and a tiny CNN saved as checkpoints (seconds on a CPU)."""
    root = tmp_path_factory.mktemp("figs")
    data = wb.data.load("phantom", split="test", n=16, size=32, progress=False)
    torch.manual_seed(0)
    vit = wb.models.create("vit_tiny", num_classes=2, img_size=32, in_chans=1, patch_size=8, depth=2,
                           embed_dim=32, num_heads=2)
    cnn = wb.models.create("resnet18", num_classes=2, img_size=32, in_chans=1)
    wb.models.save(vit, root / "vit")
    wb.models.save(cnn, root / "cnn")
    return {"root": root, "data": data, "vit": vit, "cnn": cnn}


# recipe -> (model key(s), parameters): every figure kind that takes a model and data
CASES = {
    "community_overlay": ("vit", {"indices": [0, 1], "k": 3}),
    "community_grid": ("vit", {"index": 1, "k": 3, "layers": [0, -1], "heads": [None, 0]}),
    "attention_grid": ("vit", {"index": 0}),
    "attribution_grid": ("cnn", {"indices": [0, 1], "methods": ["saliency", "gradcam"], "target": 1}),
    "budget_bars": (("cnn", "vit"), {"indices": range(8), "methods": ["saliency"], "target": 1, "bootstrap": 30,
                                     "structures": ["left_lung", "right_lung", "heart"]}),
    "deletion_curves": ("cnn", {"indices": [0, 1], "methods": ["saliency"], "target": 1, "steps": 4}),
    "audit_figure": ("cnn", {"method": "saliency", "n_budget": 4, "bootstrap": 20,
                             "budget_structures": ["device", "left_lung"]}),
    "alignment_heatmap": ("vit", {"indices": [0, 1], "k": 3}),
}
STYLES = ["paper", "slides", "notebook"]


def _model(setup, key):
    return {k: setup[k] for k in key} if isinstance(key, tuple) else setup[key]


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(PIL.open(path))


def _texts(fig):
    return [t for t in fig.findobj(lambda a: hasattr(a, "get_fontsize") and hasattr(a, "get_text"))
            if t.get_text().strip()]


@pytest.mark.parametrize("name", sorted(CASES))
def test_rebuild_gives_the_same_pixels(name, setup, tmp_path):
    key, params = CASES[name]
    style = STYLES[sorted(CASES).index(name) % len(STYLES)]
    with wb.viz.style(style):
        fig = wb.viz.draw(name, _model(setup, key), setup["data"], **params)
    first = wb.viz.save_figure(fig, tmp_path / name, formats=["png"], dpi=60)
    side = json.loads(first[-1].read_text())
    rec = side["recipe"]
    assert side["format"] == "workbench-figure/1" and side["style"]["name"] == style and side["dpi"] == 60
    assert rec["name"] == name and rec["data"]["load"]["source"] == "phantom" and rec["data"]["load"]["n"] == 16
    entries = rec["model"].values() if isinstance(key, tuple) else [rec["model"]]
    assert all(len(e["sha256"]) == 64 and Path(e["path"]).is_file() for e in entries)
    assert {"torch", "matplotlib", "workbench"} <= set(side["versions"])
    again = wb.viz.rebuild(first[-1], tmp_path / "again")
    assert again[0] == tmp_path / "again.png"
    a, b = _pixels(first[0]), _pixels(again[0])
    assert a.shape == b.shape and np.array_equal(a, b)
    assert json.loads(again[-1].read_text())["recipe"]["params"] == rec["params"]


@pytest.mark.parametrize("style", STYLES)
def test_every_figure_function_follows_the_style(style, setup):
    """Paper figures are one column wide with <= 8 pt text; slides have >= 11 pt text."""
    data = setup["data"]
    for name in ("community_overlay", "budget_bars", "gallery"):
        model = None if name == "gallery" else _model(setup, CASES[name][0])
        params = {"n": 4} if name == "gallery" else CASES[name][1]
        with wb.viz.style(style):
            fig = wb.viz.draw(name, model, data, **params) if model is not None else wb.viz.draw(name, data=data, **params)
        sizes = [t.get_fontsize() for t in _texts(fig)]
        assert sizes, name
        if style == "paper":
            assert fig.get_figwidth() == pytest.approx(3.46) and max(sizes) <= 8, (name, sizes)
        elif style == "slides":
            assert min(sizes) >= 11 and max(sizes) >= 14, (name, sizes)
        else:
            assert 6 <= min(sizes) and max(sizes) <= 9, (name, sizes)
        assert fig.workbench_style["name"] == style
    # every public figure function of workbench.viz runs in the active style (decorated)
    from workbench import viz

    for name, module in viz._EXPORTS.items():
        fn = getattr(viz, name)
        if name not in ("draw_contours",):
            assert hasattr(fn, "__wrapped__"), f"{module}.{name} does not follow wb.viz.style (use @styled)"


def test_style_palettes_sizes_and_errors():
    with wb.viz.style("paper", columns=2, palette="okabe_ito") as s:
        assert _style.figsize(5.0, 2.5) == pytest.approx((7.09, 3.545))
        assert wb.viz.colours(2) == ["#E69F00", "#56B4E9"]
        import matplotlib as mpl

        assert mpl.rcParams["savefig.dpi"] == 600 and mpl.rcParams["font.size"] == 7
        assert s.record() == {"name": "paper", "palette": "okabe_ito", "columns": 2, "width": 7.09}
    with wb.viz.style("slides"):
        assert _style.figsize(4.0, 3.0) == pytest.approx((7.0, 5.25))
        assert _style.figsize(10.0, 3.0)[0] == pytest.approx(13.3)
    assert _style.active() is None and wb.viz.colours(1) == [wb.viz.PALETTE[0]]
    with pytest.raises(ValueError, match="unknown figure style 'poster'; valid styles: notebook, paper, slides"):
        with wb.viz.style("poster"):
            pass
    with pytest.raises(ValueError, match="columns must be 1 or 2"):
        with wb.viz.style("paper", columns=3):
            pass
    with pytest.raises(ValueError, match="valid palettes"):
        with wb.viz.style("notebook", palette="rainbow"):
            pass
    with pytest.raises(ValueError, match="does not take them"):
        with wb.viz.style("slides", columns=2):
            pass


def test_use_style_lasts_until_replaced():
    import matplotlib as mpl

    before = dict(mpl.rcParams)
    try:
        wb.viz.use_style("slides")
        assert _style.active().name == "slides" and mpl.rcParams["font.size"] == 16
        wb.viz.use_style("paper", width=4.8)
        assert _style.figsize(4.8, 2.0) == pytest.approx((4.8, 2.0))
    finally:
        _style._ACTIVE.clear()
        mpl.rcParams.update({k: v for k, v in before.items() if k in mpl.rcParams and "backend" not in k})


def test_gallery_and_training_curves_rebuild_without_a_model(setup, tmp_path):
    fig = wb.viz.draw("gallery", data=setup["data"], n=4)
    files = wb.viz.save_figure(fig, tmp_path / "g.png", dpi=50)
    again = wb.viz.rebuild(files[-1], tmp_path / "g2")
    assert np.array_equal(_pixels(files[0]), _pixels(again[0]))
    hist = {"rows": [{"epoch": 1, "loss": 0.7, "val_auc": 0.6, "val_acc": 0.5},
                     {"epoch": 2, "loss": 0.5, "val_auc": None, "val_acc": None}], "best_epoch": 1}
    fig = wb.viz.draw("training_curves", history=hist)
    files = wb.viz.save_figure(fig, tmp_path / "t.png", dpi=50)
    assert wb.viz.rebuild(files[-1])[0] == files[0]


def test_rebuild_refuses_a_changed_or_missing_checkpoint(setup, tmp_path):
    vit = wb.models.create("vit_tiny", num_classes=2, img_size=32, in_chans=1, patch_size=8, depth=1,
                           embed_dim=32, num_heads=2)
    wb.models.save(vit, tmp_path / "model")
    fig = wb.viz.draw("community_overlay", vit, setup["data"], k=3)
    side = wb.viz.save_figure(fig, tmp_path / "fig.png", dpi=40)[-1]
    # moved together with its folder: found through the relative path
    moved = tmp_path / "moved"
    moved.mkdir()
    for f in ("fig.png", "fig.json", "model.safetensors", "model.json"):
        (tmp_path / f).rename(moved / f)
    assert wb.viz.rebuild(moved / "fig.json", tmp_path / "r1")[0].exists()
    # retrained and saved over: refused, naming both hashes
    with torch.no_grad():
        vit.head.bias.add_(1.0)
    assert wb.models.saved_checkpoint(vit) is None  # its weights no longer equal the file
    wb.models.save(vit, moved / "model")
    with pytest.raises(ValueError, match="differs from the one this figure was drawn from"):
        wb.viz.rebuild(moved / "fig.json", tmp_path / "r2")
    # missing: refused, saying where it looked; --checkpoint points at its new place
    (moved / "model.safetensors").rename(tmp_path / "elsewhere.safetensors")
    with pytest.raises(FileNotFoundError, match="is missing: looked for .*model.safetensors"):
        wb.viz.rebuild(moved / "fig.json", tmp_path / "r3")
    with pytest.raises(ValueError, match="differs"):  # the retrained weights, at the new place
        wb.viz.rebuild(moved / "fig.json", tmp_path / "r3", checkpoint=tmp_path / "elsewhere")


def test_rebuild_refuses_changed_data(tmp_path):
    from PIL import Image

    root = tmp_path / "folder"
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray((rng.random((16, 16)) * 255).astype(np.uint8)).save(root / "images" / f"{i}.png")
    (root / "labels.csv").write_text("id,label\n" + "".join(f"{i},{i % 2}\n" for i in range(4)))
    data = wb.data.load(root, split=None)
    side = wb.viz.save_figure(wb.viz.draw("gallery", data=data, n=4), tmp_path / "g.png", dpi=40)[-1]
    assert json.loads(side.read_text())["recipe"]["data"]["load"]["source"] == str(root.resolve())
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / "images" / "2.png")
    with pytest.raises(ValueError, match="differ from those the figure was drawn from"):
        wb.viz.rebuild(side, tmp_path / "again")


def test_old_or_recipe_less_sidecars_are_refused(setup, tmp_path, capsys):
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"params": {"k": 4}, "versions": {}, "files": ["old.png"]}))
    with pytest.raises(ValueError, match="older workbench that did not record how to draw the figure"):
        wb.viz.rebuild(old)
    assert cli.main(["figure", "rebuild", str(old)]) == 2
    assert "older workbench" in capsys.readouterr().err
    newer = tmp_path / "newer.json"
    newer.write_text(json.dumps({"format": "workbench-figure/9", "versions": {"workbench": "9.0"}}))
    with pytest.raises(ValueError, match="format 'workbench-figure/9'; this workbench reads"):
        wb.viz.rebuild(newer)
    plain = wb.viz.budget_bars(wb.evaluation.cohort_budget(
        wb.attribute(setup["cnn"], setup["data"].batch([0, 1])["image"], target=1, method="saliency"),
        setup["data"].batch([0, 1]), bootstrap=10))
    side = wb.viz.save_figure(plain, tmp_path / "plain.png", dpi=40)[-1]
    with pytest.raises(ValueError, match="saved from a Figure object, not drawn from a recipe.*community_overlay"):
        wb.viz.rebuild(side)
    with pytest.raises(FileNotFoundError, match="no sidecar at"):
        wb.viz.rebuild(tmp_path / "absent.json")


def test_draw_checks_its_inputs(setup, tmp_path):
    data = setup["data"]
    with pytest.raises(ValueError, match="unknown figure recipe 'overlay'; valid figure recipes are: .*community_overlay"):
        wb.viz.draw("overlay", setup["vit"], data)
    with pytest.raises(TypeError, match=r"has no parameter\(s\) \['K'\]; its parameters are: indices=\(0,\), index=0, k=4"):
        wb.viz.draw("community_overlay", setup["vit"], data, K=3)
    with pytest.raises(TypeError, match="'indices' .* must be JSON values"):
        wb.viz.draw("community_overlay", setup["vit"], data, indices=torch.zeros(2, 2))
    with pytest.raises(TypeError, match="needs a model"):
        wb.viz.draw("community_overlay", data=data)
    unsaved = wb.models.create("vit_tiny", num_classes=2, img_size=32, in_chans=1, patch_size=8, depth=1,
                               embed_dim=32, num_heads=2)
    with pytest.warns(UserWarning, match="was not saved"):
        fig = wb.viz.draw("community_overlay", unsaved, data, k=3)
    side = wb.viz.save_figure(fig, tmp_path / "u.png", dpi=40)[-1]
    with pytest.raises(ValueError, match="without a saved checkpoint"):
        wb.viz.rebuild(side)
    # a checkpoint path works as the model, and draw leaves the global generators as they were
    state = torch.random.get_rng_state()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        wb.viz.draw("community_overlay", str(setup["root"] / "vit"), data, k=3)
    assert torch.equal(state, torch.random.get_rng_state())


def test_cli_rebuild_and_recipes(setup, tmp_path, capsys):
    fig = wb.viz.draw("attention_grid", setup["vit"], setup["data"], index=2, layers=[-1], heads=[None])
    side = wb.viz.save_figure(fig, tmp_path / "att", formats=["png", "svg"], dpi=40)[-1]
    assert cli.main(["figure", "rebuild", str(side), "--out", str(tmp_path / "re")]) == 0
    written = json.loads(capsys.readouterr().out)["rebuilt"]
    assert [Path(p).name for p in written] == ["re.png", "re.svg", "re.json"]
    assert (tmp_path / "re.svg").read_bytes() == (tmp_path / "att.svg").read_bytes()
    assert cli.main(["figure", "recipes"]) == 0
    assert "community_overlay (model data): indices=(0,)" in capsys.readouterr().out
