"""workbench.pruning: unit scores, structural pruning, checkpoints and bad input."""
from __future__ import annotations

import copy

import pytest
import torch
import torch_pruning as tp
from torch import nn

import workbench as wb
from workbench.capture import hook_count
from workbench.pruning import CRITERIA, Scores, ScoreImportance, prune, scores


def _vit(depth: int = 2, width: int = 32, heads: int = 2) -> nn.Module:
    return wb.models.create("vit_tiny", num_classes=2, img_size=32, in_chans=1, patch_size=8, depth=depth,
                            embed_dim=width, num_heads=heads).eval()


def _cnn() -> nn.Module:
    m = wb.models.create("resnet18", num_classes=2, img_size=32, in_chans=1).eval()
    with torch.no_grad():  # timm zero-initialises each block's last BN scale; give every channel a say
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.1, 0.1)
                mod.running_mean.uniform_(-0.1, 0.1)
    return m


@pytest.fixture(scope="module")
def phantom():
    return wb.data.load("phantom", split="test", n=24, size=32, seed=5)


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.rand(12, 1, 32, 32, generator=g), torch.randint(0, 2, (12,), generator=g)


def _state(m: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in m.state_dict().items()}


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# ------------------------------------------------------------------------------------------
# pruning removes exactly the chosen units
# ------------------------------------------------------------------------------------------
def _removed(pruned_cfg: dict, key: str) -> int:
    return pruned_cfg["pruning"]["history"][-1]["removed"][key]


def test_pruned_vit_mlp_equals_dense_with_those_units_silenced(batch):
    m = _vit()
    s = scores(m, batch, unit="mlp", progress=False)
    before = _state(m)
    p = prune(m, s, ratio=0.5)
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())  # input untouched
    assert hook_count(m) == 0 and hook_count(p) == 0
    ref = copy.deepcopy(m)
    for k, v in s.values.items():  # silence the lowest half of each MLP: zero its fc2 columns
        drop = torch.argsort(v, stable=True)[: len(v) // 2]
        ref.get_submodule(k).fc2.weight.data[:, drop] = 0
        assert p.get_submodule(k).fc1.out_features == len(v) - len(drop)
    x = batch[0]
    with torch.no_grad():
        torch.testing.assert_close(p(x), ref(x), atol=1e-5, rtol=1e-4)
    assert _params(p) < _params(m)


def test_pruned_heads_equal_dense_with_those_heads_silenced(batch):
    m = _vit(heads=4)
    s = scores(m, batch, unit="heads", criterion="integrated_gradients", n_steps=4, progress=False)
    p = prune(m, s, ratio=0.5)
    ref = copy.deepcopy(m)
    for k, v in s.values.items():
        attn, pa = ref.get_submodule(k), p.get_submodule(k)
        assert pa.num_heads == 2 and pa.attn_dim == 2 * attn.head_dim and pa.qkv.out_features == 3 * pa.attn_dim
        for h in torch.argsort(v, stable=True)[:2].tolist():
            attn.proj.weight.data[:, h * attn.head_dim:(h + 1) * attn.head_dim] = 0
    with torch.no_grad():
        torch.testing.assert_close(p(batch[0]), ref(batch[0]), atol=1e-5, rtol=1e-4)
    maps = wb.attention_maps(p, batch[0][:2])  # other capabilities work on the pruned model
    assert maps.attentions[0].shape[1] == 2
    att = wb.attribute(p, batch[0][:2], method="integrated_gradients", n_steps=4)
    assert att.maps.shape == (2, 32, 32) and torch.isfinite(att.maps).all()
    comms = wb.communities(maps, k=2, method="kmeans")
    assert comms.hard.shape[0] == 2


def test_pruned_cnn_channels_equal_dense_with_their_norms_zeroed(batch):
    m = _cnn()
    s = scores(m, batch, unit="channels", progress=False)
    assert len(s.values) == 12  # 8 inner convolutions + the stem and 3 residual streams
    assert "layer1.0.conv2" in s.members["conv1"]  # a residual stream is one group
    p = prune(m, s, ratio=0.25)
    ref = copy.deepcopy(m)
    for k, v in s.values.items():
        drop = torch.argsort(v, stable=True)[: int(len(v) * 0.25 + 0.5)]
        for conv in s.members[k]:  # every member's norm outputs 0 on the removed channels
            bn = ref.get_submodule(conv.replace("conv", "bn") if "downsample" not in conv else conv[:-1] + "1")
            bn.weight.data[drop] = 0
            bn.bias.data[drop] = 0
    with torch.no_grad():
        torch.testing.assert_close(p(batch[0]), ref(batch[0]), atol=1e-4, rtol=1e-4)
    assert p.layer1[0].conv1.out_channels == 48 and p.fc.in_features == 384 and p.num_features == 384
    x = torch.rand(1, 1, 32, 32)
    macs0, n0 = tp.utils.count_ops_and_params(m, x)
    macs1, n1 = tp.utils.count_ops_and_params(p, x)
    assert n1 < 0.7 * n0 and macs1 < 0.7 * macs0


def test_score_importance_makes_torch_pruning_metapruner_cut_the_same_units(batch):
    m = _vit()
    s = scores(m, batch, unit="mlp", criterion="mean_activation", progress=False)
    ours = prune(m, s, ratio=0.5)
    theirs = copy.deepcopy(m)
    pruner = tp.pruner.MetaPruner(theirs, batch[0][:1], importance=ScoreImportance(s, theirs), pruning_ratio=0.5)
    pruner.step()
    for k in s.values:  # groups our scores do not cover (the token width) were left alone
        torch.testing.assert_close(ours.get_submodule(k).fc1.weight, theirs.get_submodule(k).fc1.weight)
    assert theirs.patch_embed.proj.out_channels == m.patch_embed.proj.out_channels


def test_global_scope_and_remove_highest(batch):
    m = _vit(depth=3)
    s = scores(m, None, unit="mlp", criterion="random")
    g = prune(m, s, ratio=0.5, scope="global")
    sizes = [g.get_submodule(k).fc1.out_features for k in s.values]
    assert sum(sizes) == 3 * 128 // 2 and len(set(sizes)) > 1  # one ranking over all layers
    heads = scores(_vit(depth=2, heads=2), None, unit="heads", criterion="random")
    heads.values["blocks.0.attn"][:] = -1.0  # the lowest two of four: global pruning would empty blocks.0
    with pytest.raises(ValueError, match="min_keep=1"):
        prune(_vit(depth=2, heads=2), heads, ratio=0.5, scope="global")
    kept = prune(_vit(depth=2, heads=2), heads, ratio=0.5, scope="global", min_keep=1)
    assert [a.num_heads for a in (kept.blocks[0].attn, kept.blocks[1].attn)] == [1, 1]
    hi = prune(m, s, ratio=0.25, remove="highest")
    k = s.layers[0]
    kept = hi.get_submodule(k).fc1.weight
    top = torch.argsort(s.values[k], descending=True)[:32]
    assert not any(torch.equal(kept[i], m.get_submodule(k).fc1.weight[j]) for j in top.tolist() for i in range(3))


# ------------------------------------------------------------------------------------------
# checkpoints
# ------------------------------------------------------------------------------------------
def test_pruned_checkpoint_round_trip_and_dense_load_error(tmp_path, batch):
    m = _cnn()
    s = scores(m, None, unit="channels", criterion="weight_magnitude")
    p = prune(m, s, ratio=0.5)
    p2 = prune(p, scores(p, None, unit="channels", criterion="random"), ratio=0.25)  # pruned twice
    wb.models.save(p2, tmp_path / "small")
    q = wb.models.load(tmp_path / "small")
    assert q.workbench_config["pruning"]["history"][-1]["ratio"] == 0.25
    with torch.no_grad():
        torch.testing.assert_close(q(batch[0]), p2.eval()(batch[0]))
    with pytest.raises(ValueError, match="pruned model.*workbench.models.load"):
        wb.models.load_weights(_cnn(), tmp_path / "small")


# ------------------------------------------------------------------------------------------
# scores
# ------------------------------------------------------------------------------------------
def test_scores_every_batch_counts_per_class_and_halves(phantom):
    m = _cnn()
    whole = scores(m, phantom, unit="channels", batch_size=24, per_class=True, progress=False)
    split = scores(m, phantom, unit="channels", batch_size=5, progress=False)
    for k in whole.values:  # batching does not change the result: every image counts once
        torch.testing.assert_close(whole.values[k], split.values[k], rtol=1e-4, atol=1e-6)
    n = torch.bincount(phantom.labels, minlength=2).float()
    k = whole.layers[0]
    mix = sum(n[c] * whole.per_class[name][k] for c, name in enumerate(phantom.classes)) / n.sum()
    torch.testing.assert_close(mix, whole.values[k], rtol=1e-4, atol=1e-6)
    assert set(whole.stability) == set(whole.values) | {"overall"}
    assert -1 <= whole.stability["overall"] <= 1
    assert whole.params["n_half"] == [12, 12]
    assert isinstance(whole.for_class("abnormal"), Scores)
    assert list(whole.table()["layer"]) == whole.layers
    whole.plot()


@pytest.mark.slow
def test_anatomy_restricted_scores(phantom):
    m = _cnn()
    full = torch.ones(len(phantom), 32, 32, dtype=torch.bool)
    base = scores(m, phantom, unit="channels", progress=False)
    inside = scores(m, phantom, unit="channels", masks=full, progress=False)
    outside = scores(m, phantom, unit="channels", masks=full, where="outside", progress=False)
    k = base.layers[-1]
    torch.testing.assert_close(inside.values[k], base.values[k], rtol=1e-4, atol=1e-7)
    assert float(outside.values[k].abs().max()) == 0.0
    lungs = scores(m, phantom, unit="channels", masks=("left_lung", "right_lung"), progress=False)
    out = scores(m, phantom, unit="channels", masks=("left_lung", "right_lung"), where="outside", progress=False)
    assert not torch.allclose(lungs.values[k], out.values[k])
    vit = _vit()
    tok = scores(vit, phantom, unit="mlp", masks="heart", progress=False)  # tokens placed on the patch grid
    assert all(torch.isfinite(v).all() for v in tok.values.values())
    device_first = base - 2 * lungs  # units that matter inside a structure ranked first for removal
    assert device_first.layers == base.layers


def test_peer_and_data_free_criteria_shapes(batch):
    m = _vit()
    for name in ("weight_magnitude", "random", "tp_magnitude", "tp_taylor"):
        s = scores(m, batch, unit="heads", criterion=name, progress=False)
        assert {k: v.shape for k, v in s.values.items()} == {"blocks.0.attn": (2,), "blocks.1.attn": (2,)}
    assert {"gradient_x_activation", "integrated_gradients", "mean_activation", "weight_magnitude", "random",
            "tp_magnitude", "tp_taylor", "dl_backtrace"} <= set(CRITERIA.names())


# ------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ratio", [0, 1, -0.1, 1.5, True, float("nan"), "0.5"])
def test_ratio_outside_open_interval(batch, ratio):
    m = _vit(depth=1)
    s = scores(m, None, unit="mlp", criterion="random")
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        prune(m, s, ratio=ratio)


def test_ratio_that_empties_a_layer(batch):
    m = _vit(depth=1, heads=2)
    s = scores(m, None, unit="heads", criterion="random")
    with pytest.raises(ValueError, match="would remove all 2 heads of blocks.0.attn"):
        prune(m, s, ratio=0.8)


def test_unknown_criterion_unit_and_missing_units(batch):
    m = _vit(depth=1)
    with pytest.raises(ValueError, match="valid pruning criterions are: .*gradient_x_activation"):
        scores(m, batch, criterion="taylor_magic")
    with pytest.raises(ValueError, match="valid kinds are: mlp, heads, channels"):
        scores(m, batch, unit="neurons")
    with pytest.raises(ValueError, match="no prunable units of kind 'channels'; it has: mlp, heads"):
        scores(m, batch, unit="channels")
    with pytest.raises(ValueError, match="no prunable units of kind 'heads'"):
        scores(_cnn(), batch, unit="heads")


def test_dl_backtrace_says_what_to_install(batch):
    try:
        import dl_backtrace  # noqa: F401
        pytest.skip("dl-backtrace is installed here")
    except ImportError:
        pass
    with pytest.raises(ImportError, match="separate environment.*pip install dl-backtrace"):
        scores(_cnn(), batch, unit="channels", criterion="dl_backtrace", progress=False)


def test_empty_calibration_set_and_mismatched_scores(batch):
    m = _vit(depth=1)
    with pytest.raises(ValueError, match="calibration set is empty"):
        scores(m, (torch.zeros(0, 1, 32, 32), torch.zeros(0, dtype=torch.long)))
    s = scores(_vit(depth=2), None, unit="mlp", criterion="random")
    with pytest.raises(ValueError, match="other layers than this model has"):
        prune(m, s, ratio=0.5)
    with pytest.raises(ValueError, match="does not look at images"):
        scores(m, batch, criterion="random", per_class=True)


# ------------------------------------------------------------------------------------------
# report, sweep, CLI
# ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_report_numbers_and_figure(phantom, tmp_path):
    m = _cnn()
    p = prune(m, scores(m, phantom, unit="channels", progress=False), ratio=0.5)
    r = wb.pruning.report(m, p, phantom, n_explain=6, repeats=2, bootstrap=10, batches=(1, 4),
                          method="input_x_gradient")
    s = r.summary()
    assert 0.2 < s["params_ratio"] < 0.3 and 0.2 < s["macs_ratio"] < 0.35  # 50% of channels: ~1/4 of the weights
    assert set(r.latency) == {1, 4} and r.latency[4]["pruned"] > 0
    assert list(r.per_class["class"]) and r.per_class["delta"].is_monotonic_increasing
    assert set(r.budget["structure"]) >= {"left_lung", "heart", "outside"}
    assert -1 <= r.rank_correlation <= 1
    self_r = wb.pruning.report(m, m, phantom, n_explain=4, repeats=1, bootstrap=0, batches=(1,),
                               method="input_x_gradient")
    assert len(self_r.flips) == 0 and self_r.rank_correlation == pytest.approx(1.0)
    assert float(self_r.budget["delta"].abs().max()) < 1e-6
    import json

    json.dumps(r.to_dict())
    wb.viz.save_figure(r.plot(), tmp_path / "report.png")
    assert (tmp_path / "report.png").exists()


@pytest.mark.slow
def test_sweep_table_areas_and_fine_tuning(phantom):
    m = _vit(depth=1)
    res = wb.pruning.sweep(m, phantom, phantom, unit="mlp", criteria=("weight_magnitude", "random"),
                           ratios=(0.25, 0.75), train=phantom, epochs=1, fit_kw={"batch_size": 12}, progress=False)
    t = res.table
    assert len(t) == 1 + 2 * 2 * 2 and set(t["fine_tuned"]) == {False, True}
    assert t[t["ratio"] == 0.75]["params"].max() < t[t["ratio"] == 0.25]["params"].min()
    assert set(res.area["criterion"]) == {"weight_magnitude", "random"}
    assert wb.pruning.curve_area([0.1, 0.9], [1.0, 0.0]) == pytest.approx(0.5)
    res.plot()
    assert len(m.blocks[0].mlp.fc1.weight) == 128  # the input model keeps its size


@pytest.mark.slow
def test_cli_prune_writes_checkpoint_report_and_scores(tmp_path, capsys):
    import json

    import numpy as np

    from workbench import cli

    rng = np.random.default_rng(0)
    arrays = {}
    for s, n in (("train", 32), ("val", 8), ("test", 16)):
        y = np.arange(n) % 2
        x = (rng.random((n, 32, 32)) * 120).astype(np.uint8)
        x[y == 1, 8:20, 8:20] += 120
        arrays[f"{s}_images"], arrays[f"{s}_labels"] = x, y[:, None]
    np.savez(tmp_path / "tiny.npz", **arrays)
    m = _vit(depth=1)
    wb.models.save(m, tmp_path / "dense")
    out = tmp_path / "pruned"
    rc = cli.main(["prune", "--checkpoint", str(tmp_path / "dense"), "--data", str(tmp_path / "tiny.npz"),
                   "--ratio", "0.5", "--criterion", "gradient_x_activation", "--out", str(out), "--n-explain", "4",
                   "--repeats", "1", "--bootstrap", "10", "--no-progress", "--device", "cpu"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["unit"] == "mlp" and 0 < printed["report"]["params_ratio"] < 1
    for f in ("model.safetensors", "model.json", "report.json", "report.png", "scores.json"):
        assert (out / f).exists(), f
    small = wb.models.load(out / "model")
    assert small.blocks[0].mlp.fc1.out_features == 64
    rc = cli.main(["prune", "--checkpoint", str(tmp_path / "dense"), "--data", str(tmp_path / "tiny.npz"),
                   "--ratio", "1.5", "--out", str(out), "--no-report", "--no-progress", "--device", "cpu"])
    assert rc == 2 and "strictly between 0 and 1" in capsys.readouterr().err


@pytest.mark.slow
def test_pruner_widget_follows_its_controls(phantom):
    pytest.importorskip("ipywidgets")
    from workbench.widgets import pruner

    w = pruner(_vit(depth=1), phantom, phantom, ratio=0.5, criteria=("weight_magnitude", "random"),
               criterion="weight_magnitude")
    assert w.last_error is None and w.image.value and "AUC pruned" in w.metrics.value
    first, png = dict(w.state), bytes(w.image.value)
    assert first["params_ratio"] < 1 and first["unit"] == "mlp"
    w.controls["ratio"].value = 0.8
    assert w.state["params_ratio"] < first["params_ratio"] and bytes(w.image.value) != png
    w.controls["unit"].value = "heads"  # 80% of 2 heads would empty the layer: said in the widget
    assert "would remove all 2 heads" in w.last_error and w.state["unit"] == "mlp"
    w.controls["ratio"].value = 0.5
    assert w.state["unit"] == "heads" and w.last_error is None
    w.controls["index"].value = 3
    assert w.state["index"] == 3 and w.last_error is None
    w.controls["unit"].value = "mlp"  # back to a cached setting
    assert w.state["params_ratio"] == pytest.approx(first["params_ratio"])


def test_latency_times_enough_calls_per_round():
    """Each round times ``number`` back-to-back forwards, ``number`` chosen so a round lasts
    ``min_round_s``: a tiny model runs many times per round, and once with ``min_round_s=0``."""
    from workbench.pruning.report import latency

    class Counting(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc, self.calls = nn.Linear(16, 2), 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            return self.fc(x.flatten(1))

    x = torch.rand(1, 1, 4, 4)
    a, b = Counting(), Counting()
    ms = latency({"a": a, "b": b}, x, repeats=3, warmup=2, min_round_s=0)
    assert a.calls == b.calls == 2 + 1 + 3 and ms["a"] > 0 and ms["b"] > 0
    a.calls = 0
    latency({"a": a}, x, repeats=3, warmup=1, min_round_s=0.5)
    assert a.calls > 3 * 10  # a forward of a 16 -> 2 linear layer takes far less than 50 ms
    with pytest.raises(ValueError, match="min_round_s"):
        latency({"a": a}, x, min_round_s=-1)
