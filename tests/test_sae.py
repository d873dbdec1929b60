"""SAE kinds, losses, training and checkpoints on in-memory activations (no model needed)."""
from __future__ import annotations

import copy
import json

import pytest
import torch

import workbench as wb
from workbench.sae import KINDS, create, load, save, train
from workbench.sae import losses
from workbench.sae.training import geometric_median, init_from_data


def sparse_data(n: int = 4096, d: int = 16, atoms: int = 48, active: int = 3, seed: int = 0) -> torch.Tensor:
    """Tokens that are sums of ``active`` of ``atoms`` random unit directions, plus an offset."""
    g = torch.Generator().manual_seed(seed)
    dic = torch.randn(atoms, d, generator=g)
    dic = dic / dic.norm(dim=1, keepdim=True)
    idx = torch.randint(0, atoms, (n, active), generator=g)
    coef = torch.rand(n, active, generator=g) + 0.5
    return (coef[..., None] * dic[idx]).sum(1) + 0.3


def test_registry_names_kinds_and_refuses_unknown_and_duplicates():
    assert {"relu", "topk", "batchtopk"} <= set(KINDS.names())
    with pytest.raises(ValueError, match="valid SAE kinds are: batchtopk, relu, topk"):
        create("jumpy", d=8)
    with pytest.raises(ValueError, match="already registered"):
        wb.sae.register_kind("topk")(type("Again", (wb.sae.SAE,), {}))


@pytest.mark.parametrize("kind", ["relu", "topk", "batchtopk"])
def test_shapes_dictionary_and_unit_norm_atoms(kind):
    sae = create(kind, d=12, expansion=4, k=3)
    out = sae(torch.randn(5, 7, 12))
    assert out.x_hat.shape == (5, 7, 12) and out.codes.shape == (5, 7, 48) and out.pre.shape == (5, 7, 48)
    assert (out.codes >= 0).all()
    assert sae.dictionary.shape == (48, 12)
    torch.testing.assert_close(sae.dictionary.norm(dim=1), torch.ones(48))
    assert sae.config()["kind"] == kind and sae.expansion == 4


def test_k_larger_than_the_dictionary_is_refused():
    with pytest.raises(ValueError, match="k=40 is larger than the dictionary \\(32 latents\\)"):
        create("topk", d=8, expansion=4, k=40)
    with pytest.raises(ValueError, match="k=40 is larger"):
        train(torch.randn(64, 8), "batchtopk", expansion=4, k=40, progress=False)
    with pytest.raises(ValueError, match="positive int"):
        create("topk", d=8, k=0)


def test_topk_keeps_at_most_k_latents_per_token():
    sae = create("topk", d=16, expansion=4, k=5)
    codes = sae.encode(torch.randn(100, 16))
    assert int((codes > 0).sum(-1).max()) <= 5


def test_inputs_scaled_to_unit_mean_norm_and_b_dec_at_the_mean_or_median():
    x = torch.randn(500, 8) * 7 + 3
    sae = create("topk", d=8, expansion=2, k=2)
    init_from_data(sae, x, "mean")
    assert float((x * sae.input_scale).norm(dim=1).mean()) == pytest.approx(1.0, rel=1e-5)
    torch.testing.assert_close(sae.b_dec.data, (x * sae.input_scale).mean(0))
    init_from_data(sae, x, "median")
    med = geometric_median(x * sae.input_scale)
    torch.testing.assert_close(sae.b_dec.data, med)
    # the geometric median minimises the summed distances: better than the mean
    xs = x * sae.input_scale
    assert (xs - med).norm(dim=1).sum() <= (xs - xs.mean(0)).norm(dim=1).sum()


def test_fvu_matches_its_definition():
    x, y = torch.randn(40, 6), torch.randn(40, 6)
    want = ((x - y) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    torch.testing.assert_close(losses.fvu(x, y), want)
    assert float(losses.fvu(x, x)) == 0.0


@pytest.mark.parametrize("kind,k", [("topk", 3), ("batchtopk", 3), ("relu", None)])
def test_training_lowers_fvu_keeps_atoms_unit_norm_and_logs(kind, k):
    x = sparse_data(n=2048)
    sae, log = train(x, kind, expansion=4, k=k, epochs=8, batch_size=256, l1_coef=2e-3, lr=1e-2, log_every=4,
                     progress=False, seed=1)
    first, last = log.rows[0], log.final
    assert last["fvu"] < 0.6 * first["fvu"] and last["fvu"] < 0.35, (first, last)
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(sae.d_sae), atol=1e-5, rtol=0)
    assert log.tokens == 8 * len(x) and log.steps == 64
    assert log.params["kind"] == kind and log.tokens_per_second > 0
    times = [r["seconds"] for r in log.rows]   # wall time since the loop started, per logged row
    assert times == sorted(times) and 0 < times[-1] <= log.seconds
    assert not sae.training
    with torch.no_grad():
        codes = sae.encode(x)
    l0 = float((codes > 0).float().sum(-1).mean())
    if kind == "topk":
        assert l0 <= k
    if kind == "batchtopk":  # the inference threshold is calibrated to an average of k per token
        assert abs(l0 - k) < 0.5, l0


def test_dead_latents_are_tracked_and_auxk_revives_them():
    x = sparse_data(n=2048)

    def run(aux_k):
        torch.manual_seed(0)
        # the tied encoder (enc_scale=1): with the fitted scale AuxK revives fewer of the crippled latents
        # in these 48 steps (0.30 dead at the end instead of 0.16; 0.33 without AuxK either way)
        sae, log = train(x, "topk", expansion=4, k=3, epochs=6, batch_size=256, aux_k=aux_k, dead_after=512,
                         log_every=1, progress=False, seed=3, lr=3e-3, enc_scale=1)
        return sae, log

    # kill a third of the latents at the start (encoder columns shrunk: their pre-activations never reach
    # the top k), through a wrapper around the initialisation
    import workbench.sae.training as tr

    orig = tr.init_from_data

    def crippled(sae, sample, init="mean"):
        orig(sae, sample, init)
        sae.W_enc.data[:, : sae.d_sae // 3] *= 0.02

    tr.init_from_data = crippled
    try:
        _, log_aux = run(None)
        _, log_off = run(0)
    finally:
        tr.init_from_data = orig
    # both start with the crippled third dead; without AuxK it stays dead, with it it comes back
    assert max(r["dead_fraction"] for r in log_off.rows) >= 0.3
    assert log_off.final["dead_fraction"] >= 0.3
    assert log_aux.final["dead_fraction"] < 0.75 * log_off.final["dead_fraction"], (log_aux.final, log_off.final)
    assert min(r["dead_fraction"] for r in log_aux.rows[8:]) < 0.5 * log_off.final["dead_fraction"]
    assert any(r["aux"] > 0 for r in log_aux.rows) and all(r["aux"] == 0 for r in log_off.rows)


def test_nan_activations_and_empty_inputs_are_refused():
    x = torch.randn(64, 8)
    x[3, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite values \\(1 token"):
        train(x, "topk", k=2, progress=False)
    with pytest.raises(ValueError, match="non-empty"):
        train(torch.zeros(0, 8), "topk", k=2, progress=False)
    with pytest.raises(TypeError, match="activation store"):
        train([1, 2, 3], "topk", progress=False)


@pytest.mark.parametrize("kind", ["topk", "batchtopk", "relu"])
def test_save_load_round_trip(kind, tmp_path):
    x = sparse_data(n=512)
    sae, _ = train(x, kind, expansion=2, k=2, epochs=1, batch_size=128, progress=False)
    sae.source = {"layer": "blocks.1", "note": "x"}
    p = save(sae, tmp_path / "s")
    assert p.name == "s.safetensors" and (tmp_path / "s.json").exists()
    again = load(tmp_path / "s.json")
    assert again.config() == sae.config()
    with torch.no_grad():
        torch.testing.assert_close(again(x).x_hat, sae(x).x_hat)
    torch.testing.assert_close(again.tokens_since_fired, sae.tokens_since_fired)


def test_load_refuses_corrupt_or_foreign_files(tmp_path):
    sae = create("topk", d=4, expansion=2, k=2)
    save(sae, tmp_path / "s")
    (tmp_path / "s.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load(tmp_path / "s")
    (tmp_path / "s.json").write_text(json.dumps({"format": "workbench-checkpoint/1"}))
    with pytest.raises(ValueError, match="not a workbench SAE config"):
        load(tmp_path / "s")
    with pytest.raises(FileNotFoundError, match="not found"):
        load(tmp_path / "nothing")


@pytest.mark.parametrize("kind", ["topk", "batchtopk", "relu"])
def test_sparse_training_step_equals_the_dense_step(kind):
    """The CPU's sparse step (decoder and gradients from active latents only) gives the dense step's
    losses and gradients, AuxK included."""
    from workbench.sae.training import _dense_step, _sparse_step

    torch.manual_seed(0)
    x = sparse_data(n=64, d=16)
    sae = create(kind, d=16, expansion=4, k=3)
    init_from_data(sae, x)
    with torch.no_grad():
        sae.W_enc.add_(0.3 * torch.randn_like(sae.W_enc))
        sae.b_enc.normal_(0, 0.2)
        sae.b_dec.normal_(0, 0.1)
        if kind == "relu":
            sae.b_enc.sub_(1.5)   # sparse enough for the sparse step (<= 5 % active)
    dead = torch.zeros(sae.d_sae, dtype=torch.bool)
    dead[::5] = True
    sae.train()
    grads = []
    for step in ("sparse", "dense"):
        sae.zero_grad()
        res = _sparse_step(sae, x, dead, 8, 0.1) if step == "sparse" else \
            _dense_step(sae, x, dead, 8, 0.1, torch.device("cpu"), False)
        assert res is not None
        (res.rec + 0.1 * res.l1 + res.aux).backward()
        grads.append({n: p.grad.clone() for n, p in sae.named_parameters()} | {
            "rec": res.rec.detach(), "l1": res.l1.detach(), "aux": res.aux.detach(), "fired": res.fired,
            "active": res.active})
    sparse, dense = grads
    assert float(dense["aux"]) > 0 and int(dense["active"]) > 0
    for key in dense:
        torch.testing.assert_close(sparse[key].float(), dense[key].float(), atol=1e-5, rtol=1e-4, msg=key)


@pytest.mark.parametrize("l1_coef", [0.0, 0.1])
def test_fused_relu_step_equals_the_dense_step(l1_coef):
    """The fused ReLU step (one autograd node, in-place ReLU and backward) gives the autograd step's
    losses, statistics and gradients; with dead latents and AuxK on it hands over to the dense step."""
    from workbench.sae.training import _dense_step, _fusable, _fused_relu_step

    torch.manual_seed(0)
    x = sparse_data(n=64, d=16)
    sae = create("relu", d=16, expansion=4)
    init_from_data(sae, x)
    with torch.no_grad():
        sae.W_enc.add_(0.3 * torch.randn_like(sae.W_enc))
        sae.b_enc.normal_(0, 0.2)
        sae.b_dec.normal_(0, 0.1)
    assert _fusable(sae) and not _fusable(create("topk", d=16, expansion=4, k=3))
    live = torch.zeros(sae.d_sae, dtype=torch.bool)
    sae.train()
    grads = []
    for step in ("fused", "dense"):
        sae.zero_grad()
        res = _fused_relu_step(sae, x, live, 8, l1_coef) if step == "fused" else \
            _dense_step(sae, x, live, 8, l1_coef, torch.device("cpu"), False)
        (res.rec + l1_coef * res.l1).backward()
        grads.append({n: p.grad.clone() for n, p in sae.named_parameters()} | {
            "rec": res.rec.detach(), "l1": res.l1.detach(), "fired": res.fired, "active": res.active})
    fused, dense = grads
    assert 0 < int(dense["active"]) < x.shape[0] * sae.d_sae and not bool(dense["fired"].all())
    for key in dense:
        torch.testing.assert_close(fused[key].float(), dense[key].float(), atol=1e-6, rtol=1e-5, msg=key)
    dead = live.clone()
    dead[::5] = True
    assert _fused_relu_step(sae, x, dead, 8, l1_coef) is None   # AuxK needs the pre-activations
    assert _fused_relu_step(sae, x, dead, 0, l1_coef) is not None


def test_relu_training_takes_the_fused_step_and_learns():
    """``train`` on a ReLU SAE runs the fused step (patched here to count calls) and reduces the FVU."""
    from workbench.sae import training

    calls = []
    real = training._fused_relu_step

    def counting(*a, **kw):
        out = real(*a, **kw)
        calls.append(out is not None)
        return out

    x = sparse_data(n=2048)
    mp = pytest.MonkeyPatch()
    mp.setattr(training, "_fused_relu_step", counting)
    try:
        _, log = training.train(x, "relu", expansion=4, epochs=3, batch_size=256, progress=False, l1_coef=1e-3,
                                log_every=1)
    finally:
        mp.undo()
    assert any(calls)
    assert log.rows[-1]["fvu"] < 0.5 * log.rows[0]["fvu"]


def test_batch_topk_selection_is_exact_also_when_one_row_takes_many():
    from workbench.sae._sparse import batch_topk_selection

    g = torch.Generator().manual_seed(0)
    pre = torch.randn(16, 64, generator=g)
    pre[3] += 5.0                      # one token holds most of the batch's top k x B values
    sel = batch_topk_selection(pre, 4)
    flat = torch.relu(pre).flatten()
    want = set(flat.topk(4 * 16).indices.tolist())
    got = set((sel.rows * 64 + sel.cols).tolist())
    assert got == want and (sel.rows == 3).sum() > 16 and bool((sel.rows.diff() >= 0).all())
    torch.testing.assert_close(sel.values, pre[sel.rows, sel.cols])


@pytest.mark.parametrize("kind", ["topk", "batchtopk", "relu"])
def test_encoder_scale_fit_is_the_least_squares_optimum_and_keeps_the_selection(kind):
    from workbench.sae.training import fit_encoder_scale_

    torch.manual_seed(0)
    x = sparse_data(n=512, d=16)
    sae = create(kind, d=16, expansion=4, k=3)
    init_from_data(sae, x)
    sae.train()
    before = {n: b.clone() for n, b in sae.named_buffers()}

    def err(model):
        with torch.no_grad():
            rec = model.activate(model.pre_activations(x)) @ model.W_dec
            return float(((x * model.input_scale - model.b_dec - rec) ** 2).sum())

    with torch.no_grad():
        active0 = sae.activate(sae.pre_activations(x)) > 0
    for n, b in sae.named_buffers():
        b.copy_(before[n])
    e_tied = err(copy.deepcopy(sae))
    s = fit_encoder_scale_(sae, x)
    assert s > 0 and s != 1.0
    torch.testing.assert_close(dict(sae.named_buffers()), before, equal_nan=True)  # BatchTopK's threshold untouched
    with torch.no_grad():
        assert torch.equal(sae.activate(sae.pre_activations(x)) > 0, active0)  # same latents, rescaled codes
    e_fit = err(copy.deepcopy(sae))
    assert e_fit <= e_tied
    for f in (0.9, 1.1):  # the optimum of a parabola in the scale
        other = copy.deepcopy(sae)
        with torch.no_grad():
            other.W_enc.mul_(f)
        assert err(other) > e_fit


def test_train_enc_scale_option():
    x = sparse_data(n=1024, d=16)
    _, fit = train(x, "topk", expansion=4, k=3, tokens=256, batch_size=256, progress=False)
    _, tied = train(x, "topk", expansion=4, k=3, tokens=256, batch_size=256, progress=False, enc_scale=1)
    assert fit.params["enc_scale"] != 1.0 and tied.params["enc_scale"] == 1.0
    _, relu = train(x, "relu", expansion=4, tokens=256, batch_size=256, progress=False)
    _, relu_tied = train(x, "relu", expansion=4, tokens=256, batch_size=256, progress=False, enc_scale=1)
    assert relu.params["enc_scale"] != 1.0 and relu_tied.params["enc_scale"] == 1.0  # "fit" for every kind
    with pytest.raises(ValueError, match="enc_scale"):
        train(x, "topk", expansion=4, k=3, tokens=256, progress=False, enc_scale=0)
