"""Benchmark of sparse autoencoders (issue 13): store, training speed and quality, atlas, shortcut.

Run from the repository root (heavy: under the shared lock)::

    export WORKBENCH_DATA=/work/cache/data
    flock /work/heavy.lock .venv/bin/python benchmarks/bench_sae.py --parts models
    flock /work/heavy.lock .venv/bin/python benchmarks/bench_sae.py --parts caching memory speed quality atlas shortcut

Each part prints a markdown table and writes it to ``benchmarks/tables/sae_<part>.md``.

- ``models``: the phantom ViTs the other parts read (trained once, cached under
  ``$WORKBENCH_DATA/bench_models/sae_*``): the demo's recipe (vit_tiny depth 4, width 96, patch 8,
  64 px, 8,000 images x 10 epochs) on the default phantom ("clean") and with the device shortcut
  planted in training (drains with 90 % of abnormal, 10 % of normal images; "shortcut").
- ``caching``: ``wb.sae.cache`` images/s against the truncated-forward floor, i.e. a full forward's
  speed divided by (layer + 1) / depth, interleaved repeats, medians.
- ``memory``: resident memory growth while training from a store of >= 2 GB (a cheap conv layer's
  tokens, so the store is quick to write), sampled every 50 ms.
- ``speed``: SAE training tokens/s (d = 192, x8, batch 4096) against the GEMM floor (10 d d_sae
  FLOP per token at the matmul rate measured in the same run) and against saev, Overcomplete and
  SAELens on the same activations, with FVU at equal L0 on held-out tokens.
- ``quality``: FVU, L0, dead fraction and spliced AUC (vs zero / mean ablation) on the clean ViT's
  middle block.
- ``atlas``: best latent's pixel AUROC per structure on the phantom and on ../shared/data/cxr_anatomy.
- ``shortcut``: confounder search with and without the planted device shortcut; Mammo-SAE
  interventions for k = 1, 5, 10, 50 with bootstrap CIs and random-latent baselines.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import workbench as wb  # noqa: E402
from workbench._io import atomic_write_text  # noqa: E402
from workbench.models.checkpoint import checkpoint_paths  # noqa: E402  (PATH.safetensors, also for "blocks.1_..." names)
from workbench.sae.training import default_dead_after  # noqa: E402

TABLES = ROOT / "benchmarks" / "tables"
RECIPE = {"size": 64, "epochs": 10, "n_train": 8000, "n_val": 400, "n_test": 800, "depth": 4, "embed_dim": 96,
          "num_heads": 3, "patch_size": 8, "batch_size": 64, "lr": 5e-4}
SHORTCUT = {"feature": "device", "with": "abnormal", "p_pos": 0.9, "p_neg": 0.1}
MIDDLE = "blocks.1"   # the middle of a 4-block ViT: the output of its second block


def data_dir() -> Path:
    return Path(os.environ.get("WORKBENCH_DATA", ROOT / "data"))


def machine() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"_Machine: {os.cpu_count()} CPU cores (load {load:.1f} at the start), torch {torch.__version__}, "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}._")


def write_table(name: str, text: str) -> None:
    print(text, flush=True)
    TABLES.mkdir(parents=True, exist_ok=True)
    atomic_write_text(TABLES / f"sae_{name}.md", text.rstrip() + "\n")


def phantom(split: str, n: int, shortcut: dict | None = None):
    kw = {"shortcut": shortcut} if shortcut else {}
    return wb.data.load("phantom", split=split, n=n, size=RECIPE["size"], progress=False, **kw)


def bench_model(name: str, *, shortcut: dict | None = None, log: list | None = None):
    """The cached phantom ViT ``sae_vit64_<name>``, trained by the demo's recipe when absent."""
    path = data_dir() / "bench_models" / f"sae_vit64_{name}" / "model"
    if checkpoint_paths(path)[0].exists():
        return wb.models.load(path)
    torch.manual_seed(0)
    r = RECIPE
    train = phantom("train", r["n_train"], shortcut)
    val = phantom("val", r["n_val"], shortcut)
    model = wb.models.create("vit_tiny", num_classes=2, img_size=r["size"], in_chans=1, patch_size=r["patch_size"],
                             depth=r["depth"], embed_dim=r["embed_dim"], num_heads=r["num_heads"])
    t = time.perf_counter()
    wb.fit(model, train, val, epochs=r["epochs"], batch_size=r["batch_size"], lr=r["lr"], seed=0, progress=False,
           early_stopping=max(3, r["epochs"] // 3))
    wb.models.save(model, path)
    if log is not None:
        log.append((name, time.perf_counter() - t))
    return model.eval()


def part_models(args) -> None:
    log: list = []
    test = phantom("test", RECIPE["n_test"])
    rows = ["| model | training | test AUC (unbiased test split) [95% CI] | train s |", "|---|---|---|---|"]
    for name, sc in (("clean", None), ("shortcut", SHORTCUT)):
        model = bench_model(name, shortcut=sc, log=log)
        ev = wb.evaluate(model, test, bootstrap=1000)
        secs = dict(log).get(name)
        rows.append(f"| sae_vit64_{name} | {'device shortcut ' + str(SHORTCUT) if sc else 'default phantom'} | "
                    f"{ev.auc:.3f} [{ev.auc_ci[0]:.3f}, {ev.auc_ci[1]:.3f}] | {secs and round(secs) or 'cached'} |")
    write_table("models", "### Phantom ViTs the SAE benchmarks read\n\n" + machine() + "\n\n" + "\n".join(rows))


# -- caching throughput ------------------------------------------------------------------------------
def _forward_rate(model, images, batch, repeats=1) -> float:
    """Images/s of plain no-grad forwards over ``images`` in batches."""
    model.eval()
    t = time.perf_counter()
    with torch.no_grad():
        for _ in range(repeats):
            for i in range(0, len(images), batch):
                model(images[i:i + batch])
    return repeats * len(images) / (time.perf_counter() - t)


def _truncated_rate(model, images, batch, layer: str) -> float:
    """Images/s of no-grad forwards that stop after ``layer`` (``capture.stop_after``), nothing stored:
    the truncated forward itself, stem or patch embedding included."""
    from workbench.capture import StopForward, stop_after

    model.eval()
    t = time.perf_counter()
    with torch.no_grad(), stop_after(model, layer):
        for i in range(0, len(images), batch):
            try:
                model(images[i:i + batch])
            except StopForward:
                pass
    return len(images) / (time.perf_counter() - t)


def part_caching(args) -> None:
    """cache() images/s vs the truncated-forward floor: a full forward's images/s divided by
    (layer + 1) / depth, measured on the same images in the same run, interleaved, medians."""
    import shutil
    import tempfile

    rows = ["| model | input | layer | depth | full forward img/s | floor img/s | truncated forward img/s | "
            "cache img/s | cache / floor | cache / truncated forward |", "|---|---|---|---|---|---|---|---|---|---|"]
    # 4096 phantom images (about 2 s of caching): with 1024 the fixed cost of a call (fingerprints, folder,
    # manifest, parquet table: about 35 ms then, 10 ms beyond the forward on 2026-12-03) was 8 % of the time
    cases = [("phantom ViT (sae_vit64_clean)", bench_model("clean"), MIDDLE, 1, 4, 64, 4096),
             ("vit_small, random weights", wb.models.create("vit_small", num_classes=2, img_size=224, in_chans=1,
                                                          patch_size=16), "blocks.5", 5, 12, 224, 96),
             ("resnet18, random weights", wb.models.create("resnet18", num_classes=2, img_size=224, in_chans=1),
              "layer3", 2, 4, 224, 96)]
    for label, model, layer, index, depth, size, n in cases:
        data = wb.data.load("phantom", split="test", n=n, size=size, progress=False)
        images = data._image(torch.arange(n))
        batch = 64 if size <= 64 else 16
        _forward_rate(model, images[:batch], batch)   # warm-up
        full, cached, trunc = [], [], []
        for r in range(args.repeats):
            full.append(_forward_rate(model, images, batch))
            trunc.append(_truncated_rate(model, images, batch, layer))
            out = Path(tempfile.mkdtemp(prefix="sae_cache_"))
            t = time.perf_counter()
            wb.sae.cache(model, data, layer=layer, out=out / "s", batch_size=batch, progress=False, device="cpu")
            cached.append(n / (time.perf_counter() - t))
            shutil.rmtree(out)
        f, c, tr = float(np.median(full)), float(np.median(cached)), float(np.median(trunc))
        floor = f / ((index + 1) / depth)
        rows.append(f"| {label} | 1x{size}x{size}, batch {batch} | {layer} | {depth} | {f:.0f} | {floor:.0f} | "
                    f"{tr:.0f} | {c:.0f} | **{c / floor:.2f}** | **{c / tr:.2f}** |")
    note = ("cache = `wb.sae.cache` end to end (truncated forward, float16 conversion, shard files, manifest, "
            "parquet table; about 10 ms per call beyond the forward, whatever the size) on an in-memory phantom split (4096 images at "
            "64 px, 96 at 224 px); floor = full-forward img/s x depth / (layer + 1); truncated forward = the same "
            "model's no-grad forward stopped after the layer (`capture.stop_after`), nothing stored: unlike the "
            "floor it includes the patch embedding / stem, which the depth ratio leaves out; "
            f"medians of {args.repeats} interleaved repeats. Target >= 0.9 of the floor.")
    write_table("caching", "### Activation caching vs the truncated-forward floor\n\n" + machine() + "\n\n"
                + "\n".join(rows) + "\n\n" + note)


# -- memory while training from a >= 2 GB store --------------------------------------------------------
def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def part_memory(args) -> None:
    """Resident memory while training one epoch from a store of >= 2 GB (sampled every 50 ms)."""
    import gc
    import threading

    from torch import nn

    out = data_dir() / "sae_bench" / "store_2gb"
    n, size = 22000, 64   # 256 tokens x 192 x 2 bytes = 96 KiB per image: 2.06 GiB
    conv = nn.Sequential(nn.Conv2d(1, 192, 4, stride=4), nn.GELU())
    torch.manual_seed(0)
    if not (out / "manifest.json").exists():
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (n, 1, size, size), generator=g, dtype=torch.uint8)
        data = wb.data.ArrayDataset(images, torch.zeros(n, dtype=torch.long), classes=("a", "b"), task="binary",
                                    name="noise")
        wb.sae.cache(conv, data, layer="1", out=out, batch_size=256, progress=False, device="cpu")
        del data, images
    store = wb.sae.open_store(out)
    gc.collect()
    base = _rss_mb()
    peak = [base]
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            peak.append(_rss_mb())
            time.sleep(0.05)

    th = threading.Thread(target=watch, daemon=True)
    th.start()
    t = time.perf_counter()
    try:
        sae, log = wb.sae.train(store, "topk", expansion=8, k=32, epochs=1, batch_size=4096, progress=False,
                                device="cpu", log_every=100)
    finally:
        stop.set()
        th.join()
    secs = time.perf_counter() - t
    growth = max(peak) - base
    rows = ["| store | tokens | RSS before training (MB) | peak RSS while training (MB) | growth (MB) | target | tokens/s |",
            "|---|---|---|---|---|---|---|",
            f"| {store.nbytes / 2**30:.2f} GiB float16 ({store.n_images} images x {store.per_image} x {store.d}) | "
            f"{log.tokens:,} (one epoch) | {base:.0f} | {max(peak):.0f} | **{growth:.0f}** | < 500 | "
            f"{log.tokens / secs:.0f} |"]
    note = ("TopK SAE (d = 192, x8, k = 32, batch 4096) trained for one epoch with the default shuffle buffer "
            "(64 MB of float16 blocks of 8 images, read ahead by a background thread; memory maps opened per block "
            "and closed). The store holds the tokens of a conv layer on noise images: its content does not "
            "matter for memory.")
    write_table("memory", "### Memory while training from a >= 2 GB store\n\n" + machine() + "\n\n"
                + "\n".join(rows) + "\n\n" + note)


# -- training throughput and FVU against peers ------------------------------------------------------
def _tokens(n_images: int, split: str) -> torch.Tensor:
    """Middle-block patch tokens (d = 192) of a random-init vit_tiny (depth 4, patch 8) on phantom images,
    scaled to unit mean norm (every implementation gets the same inputs)."""
    torch.manual_seed(0)
    vit = wb.models.create("vit_tiny", num_classes=2, img_size=64, in_chans=1, patch_size=8, depth=4)
    x = wb.sae.activations(vit, phantom(split, n_images), layer=MIDDLE).x
    return x / x.norm(dim=1).mean()


def _fvu_l0(x: torch.Tensor, x_hat: torch.Tensor, codes: torch.Tensor) -> tuple[float, float]:
    from workbench.sae.losses import fvu

    return float(fvu(x, x_hat)), float((codes > 0).float().sum(-1).mean())


def _speed_data(args, batch: int) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """The speed and frontier parts' training tokens, held-out tokens, and the random batches the peers
    train on for ``args.quality_tokens`` tokens."""
    x = _tokens(args.speed_images, "train")
    held = _tokens(512, "test")
    train_batches = [x[torch.randint(0, len(x), (batch,), generator=torch.Generator().manual_seed(i))]
                     for i in range(args.quality_tokens // batch)]
    return x, held, train_batches


def _quality_run(name: str, kind: str, x: torch.Tensor, held: torch.Tensor, train_batches: list[torch.Tensor], *,
                 d_sae: int, k: int, lr: float, l1: float | None = None) -> tuple[float, float, float]:
    """One implementation trained for ``len(train_batches)`` batches (workbench: as many tokens through
    ``wb.sae.train``): (held-out FVU, held-out L0, tokens/s over the second half of the run)."""
    batch = len(train_batches[0])
    l1 = PEER_L1[name] if l1 is None else l1
    if name == "workbench":
        sae, tl = wb.sae.train(x, kind, d_sae=d_sae, k=k, batch_size=batch, tokens=len(train_batches) * batch, lr=lr,
                               progress=False, device="cpu", l1_coef=l1, log_every=1)
        with torch.no_grad():
            out = sae(held)
        half = tl.rows[len(tl.rows) // 2 - 1]
        return (*_fvu_l0(held, out.x_hat, out.codes), (tl.tokens - half["tokens"]) / (tl.seconds - half["seconds"]))
    peer = _Peer(name, kind, x.shape[1], d_sae, k, batch, lr, x[:65536], l1=l1)
    half = len(train_batches) // 2
    for i, xb in enumerate(train_batches):
        if i == half:
            t_half = time.perf_counter()
        peer.step(xb)
    steady = (len(train_batches) - half) * batch / (time.perf_counter() - t_half)
    return (*peer.evaluate(held), steady)


class _Peer:
    """One implementation's training step and encode/decode, built the way its own trainer does."""

    def __init__(self, name: str, kind: str, d: int, d_sae: int, k: int, batch: int, lr: float, sample: torch.Tensor,
                 l1: float | None = None):
        """``l1``: the ReLU SAE's sparsity coefficient on the implementation's own scale (None: the default
        used in the speed table, ``PEER_L1``)."""
        self.name, self.kind, self.step_no = name, kind, 0
        l1 = PEER_L1[name] if l1 is None else l1
        torch.manual_seed(0)
        if name == "saev":
            from saev import config as scfg
            from saev import nn as snn

            self.sae = snn.SparseAutoencoder(scfg.SparseAutoencoder(d_vit=d, exp_factor=d_sae // d, sparsity_coeff=l1,
                                                                   n_reinit_samples=len(sample)))
            self.sae.init_b_dec(sample)
            self.opt = torch.optim.Adam(self.sae.parameters(), lr=lr)
        elif name == "overcomplete":
            import matplotlib
            import matplotlib.cm

            if not hasattr(matplotlib.cm, "get_cmap"):   # removed in this matplotlib; overcomplete imports it
                matplotlib.cm.get_cmap = matplotlib.colormaps.get_cmap
            from overcomplete.sae import SAE, BatchTopKSAE, TopKSAE
            from overcomplete.sae.losses import mse_l1, top_k_auxiliary_loss

            if kind == "topk":
                self.sae, self.loss = TopKSAE(d, d_sae, top_k=k), top_k_auxiliary_loss
            elif kind == "batchtopk":
                self.sae, self.loss = BatchTopKSAE(d, d_sae, top_k=k * batch), top_k_auxiliary_loss
            else:
                self.sae, self.loss = SAE(d, d_sae), functools.partial(mse_l1, penalty=l1)
            self.opt = torch.optim.Adam(self.sae.parameters(), lr=lr)
        elif name == "sae-lens":
            from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
            from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
            from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

            if kind == "topk":
                self.sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d, d_sae=d_sae, k=k, device="cpu"))
                self.coef = {}
            elif kind == "batchtopk":
                self.sae = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(d_in=d, d_sae=d_sae, k=k, device="cpu"))
                self.coef = {}
            else:
                self.sae = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=d, d_sae=d_sae, l1_coefficient=l1,
                                                                         device="cpu"))
                self.coef = {"l1": l1}
            with torch.no_grad():
                self.sae.b_dec.copy_(sample.mean(0))
            self.since_fired = torch.zeros(d_sae)
            self.opt = torch.optim.Adam(self.sae.parameters(), lr=lr)
        else:
            raise ValueError(name)
        self.sae.train()

    def step(self, xb: torch.Tensor) -> None:
        self.step_no += 1
        if self.name == "saev":
            self.sae.normalize_w_dec()
            _, _, loss = self.sae(xb)
            loss.loss.backward()
            self.sae.remove_parallel_grads()
        elif self.name == "overcomplete":
            z_pre, z, x_hat = self.sae(xb)
            self.loss(xb, x_hat, z_pre, z, self.sae.get_dictionary()).backward()
            torch.nn.utils.clip_grad_norm_(self.sae.parameters(), 1.0)
        else:
            from sae_lens.saes.sae import TrainStepInput

            out = self.sae.training_forward_pass(TrainStepInput(
                sae_in=xb, coefficients=self.coef, dead_neuron_mask=self.since_fired > 1000,
                n_training_steps=self.step_no, is_logging_step=False))
            with torch.no_grad():
                self.since_fired += 1
                self.since_fired[out.feature_acts.bool().float().sum(-2).bool()] = 0
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(self.sae.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad()

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor) -> tuple[float, float]:
        self.sae.eval()
        if self.name == "saev":
            x_hat, codes, _ = self.sae(x)
        elif self.name == "overcomplete":
            _, codes, x_hat = self.sae(x)
        else:
            codes = self.sae.encode(x)
            x_hat = self.sae.decode(codes)
        self.sae.train()
        return _fvu_l0(x, x_hat, codes)


#: each implementation's ReLU sparsity coefficient in the speed table (its own scale; overcomplete's mse_l1
#: penalty defaults to 1)
PEER_L1 = {"saev": 4e-4, "overcomplete": 1.0, "sae-lens": 5.0, "workbench": 0.2}   # workbench: train()'s default
PEERS = {"relu": ("saev", "overcomplete", "sae-lens"), "topk": ("overcomplete", "sae-lens"),
         "batchtopk": ("overcomplete", "sae-lens")}


def part_speed(args) -> None:
    """Tokens/s of one training step loop (d = 192, x8, k = 32, batch 4096) for ours and the peers on the
    same tokens, interleaved rounds, medians; the GEMM floor from the matmul rate measured in the same
    run; then FVU and L0 on held-out tokens after the same number of training tokens."""
    d, exp, k, batch = 192, 8, 32, 4096
    d_sae = d * exp
    x, held, train_batches = _speed_data(args, batch)
    lr = 6.5e-4   # workbench's default for 1536 latents, given to every implementation
    a, w = torch.randn(batch, d), torch.randn(d, d_sae)
    steps = args.speed_steps

    def gemm_rate() -> float:
        for _ in range(2):
            a @ w
        t = time.perf_counter()
        for _ in range(10):
            a @ w
        return 2 * batch * d * d_sae * 10 / (time.perf_counter() - t)

    batches = [x[i * batch:(i + 1) * batch] for i in range(min(steps, len(x) // batch))]
    names = [("workbench", kind) for kind in ("relu", "topk", "batchtopk")]
    names += [(p, kind) for kind, peers in PEERS.items() for p in peers]
    rates: dict = {n: [] for n in names}
    peaks = []
    skipped = {}
    for rnd in range(args.repeats):
        peaks.append(gemm_rate())
        for name, kind in names:
            if (name, kind) in skipped:
                continue
            if name == "workbench":
                _, log = wb.sae.train(torch.cat(batches), kind, expansion=exp, k=k, batch_size=batch, epochs=1,
                                      lr=lr, progress=False, device="cpu", log_every=10**6, l1_coef=PEER_L1["workbench"])
                rates[(name, kind)].append(log.tokens_per_second)
                continue
            try:
                peer = _Peer(name, kind, d, d_sae, k, batch, lr, x[:65536])
            except ImportError as e:
                skipped[(name, kind)] = f"not installed ({e})"
                continue
            peer.step(batches[0])   # warm-up step, not timed
            t = time.perf_counter()
            for xb in batches:
                peer.step(xb)
            rates[(name, kind)].append(len(batches) * batch / (time.perf_counter() - t))
        print(f"  speed round {rnd + 1}: " + ", ".join(f"{n}/{kd} {v[-1]:.0f}" for (n, kd), v in rates.items() if v),
              flush=True)
    peak = float(np.median(peaks))
    floor = peak / (10 * d * d_sae)
    # quality: FVU / L0 on held-out tokens after the same training tokens
    quality, steady = {}, {}
    tokens = args.quality_tokens
    for name, kind in names:
        if (name, kind) in skipped:
            continue
        f, l0, steady[(name, kind)] = _quality_run(name, kind, x, held, train_batches, d_sae=d_sae, k=k, lr=lr)
        quality[(name, kind)] = (f, l0)
        print(f"  quality {name}/{kind}: FVU {f:.3f}, L0 {l0:.1f}", flush=True)
    rows = ["| SAE | implementation | tokens/s (median) | x GEMM floor | x best peer | tokens/s, 2nd half of the quality "
            "run | x best peer | held-out FVU | held-out L0 |", "|---|---|---|---|---|---|---|---|---|"]
    for kind in ("relu", "topk", "batchtopk"):
        peer_best = max([float(np.median(rates[(p, kind)])) for p in PEERS[kind] if rates[(p, kind)]] or [float("nan")])
        steady_best = max([steady[(p, kind)] for p in PEERS[kind] if (p, kind) in steady] or [float("nan")])
        for name in ("workbench",) + PEERS[kind]:
            if (name, kind) in skipped:
                rows.append(f"| {kind} | {name} | {skipped[(name, kind)]} | | | | | | |")
                continue
            r = float(np.median(rates[(name, kind)]))
            f, l0 = quality.get((name, kind), (float("nan"), float("nan")))
            bold = "**" if name == "workbench" else ""
            sr = steady.get((name, kind), float("nan"))
            rows.append(f"| {kind} | {name} | {r:.0f} | {bold}{r / floor:.2f}{bold} | {bold}{r / peer_best:.2f}{bold} | "
                        f"{sr:.0f} | {bold}{sr / steady_best:.2f}{bold} | {f:.3f} | {l0:.1f} |")
    note = (f"d = {d}, d_sae = {d_sae} (x{exp}), k = {k}, batch {batch} tokens, float32 on the CPU, Adam at lr {lr} "
            f"for everyone. Tokens: middle-block patch tokens of a random-init vit_tiny (depth 4, patch 8) on "
            f"{args.speed_images} phantom images at 64 px, scaled to unit mean norm. Throughput: {len(batches)} steps "
            f"per round after one untimed warm-up step, {args.repeats} interleaved rounds, medians; workbench is timed "
            f"by `wb.sae.train` (its whole loop: AuxK, dead-latent tracking, logging). GEMM floor = "
            f"{peak / 1e9:.1f} GFLOP/s (a {batch}x{d} @ {d}x{d_sae} matmul, median) / (10 d d_sae FLOP per token) = "
            f"{floor:.0f} tokens/s. Peers run their own training step (saev: its loss, parallel-gradient removal and "
            f"decoder renormalisation; Overcomplete: its model, loss (top_k_auxiliary_loss for TopK/BatchTopK, mse_l1 "
            f"for the ReLU SAE, with its default linear+batch-norm encoder) and gradient clipping; SAELens: "
            f"training_forward_pass with dead-latent masks and gradient clipping, as its trainer). Quality: each "
            f"trained for {tokens:,} tokens, FVU and L0 on the tokens of 512 test images; its second half timed as "
            f"well (one run each: the steady state, once a ReLU SAE's codes are sparse enough for workbench's sparse "
            f"step; the first columns time the first steps from initialisation); the ReLU SAEs' L1 "
            f"coefficients are each implementation's own scale (saev {PEER_L1['saev']:g}, SAELens {PEER_L1['sae-lens']:g}, "
            f"workbench {PEER_L1['workbench']:g}), so their L0 "
            f"differ; TopK and BatchTopK compare at equal k.")
    write_table("speed", "### SAE training throughput and FVU vs peers\n\n" + machine() + "\n\n" + "\n".join(rows)
                + "\n\n" + note)


# -- ReLU SAEs at equal L0 ------------------------------------------------------------------------------
def _bracket(fit, c0: float, target: float, max_runs: int = 7, refine: int = 2) -> dict[float, tuple[float, float]]:
    """Sparsity coefficients from ``c0`` by factors of 3 until one run lands above ``target`` L0 and one
    at or below it (L0 > 0), then ``refine`` bisections (geometric mean of the two nearest coefficients
    on either side); ``fit(c)`` -> (FVU, L0). Returns {coefficient: (FVU, L0)}."""
    pts: dict[float, tuple[float, float]] = {}

    def sides() -> tuple[list[float], list[float]]:
        return ([c for c, (_, l0) in pts.items() if l0 > target], [c for c, (_, l0) in pts.items() if 0 < l0 <= target])

    c = c0
    for _ in range(max_runs):
        pts[c] = fit(c)
        above, below = sides()
        if above and below:
            break
        c = c * 3 if pts[c][1] > target else c / 3
    for _ in range(refine):
        above, below = sides()
        if not (above and below):
            break
        c = float(np.sqrt(max(above) * min(below)))
        pts[c] = fit(c)
    return pts


def _fvu_at(pts: dict[float, tuple[float, float]], target: float) -> float:
    """FVU at ``target`` L0, linear in log L0 between the nearest runs on either side (NaN if not bracketed)."""
    above = [(l0, f) for f, l0 in pts.values() if l0 > target]
    below = [(l0, f) for f, l0 in pts.values() if 0 < l0 <= target]
    if not above or not below:
        return float("nan")
    (la, fa), (lb, fb) = min(above), max(below)
    t = (np.log(target) - np.log(lb)) / (np.log(la) - np.log(lb))
    return float(fb + t * (fa - fb))


def part_frontier(args) -> None:
    """ReLU SAEs of workbench and the peers compared at equal L0: each implementation's sparsity coefficient
    is moved by factors of 3 from its default until its held-out L0 brackets the target, and its FVU at the
    target is interpolated (log L0). Same tokens, training tokens, batch and lr as the speed part's quality."""
    d, exp, batch, target = 192, 8, 4096, 32
    d_sae = d * exp
    x, held, train_batches = _speed_data(args, batch)
    lr, tokens = 6.5e-4, args.quality_tokens

    def fit_for(name: str):
        def fit(c: float) -> tuple[float, float]:
            r = _quality_run(name, "relu", x, held, train_batches, d_sae=d_sae, k=32, lr=lr, l1=c)[:2]
            print(f"  frontier {name} l1 {c:.3g}: FVU {r[0]:.3f}, L0 {r[1]:.1f}", flush=True)
            return r
        return fit

    results = {}
    for name in ("workbench",) + PEERS["relu"]:
        try:
            results[name] = _bracket(fit_for(name), PEER_L1[name], target)
        except ImportError as e:
            results[name] = f"not installed ({e})"
    at = {n: _fvu_at(p, target) for n, p in results.items() if isinstance(p, dict)}
    best_peer = min([v for n, v in at.items() if n != "workbench" and v == v] or [float("nan")])
    rows = [f"| implementation | runs: coefficient -> held-out L0 / FVU | FVU at L0 = {target} | FVU / best peer's |",
            "|---|---|---|---|"]
    for name, pts in results.items():
        if not isinstance(pts, dict):
            rows.append(f"| {name} | {pts} | | |")
            continue
        runs = "; ".join(f"{c:.3g} -> {l0:.1f} / {f:.3f}" for c, (f, l0) in sorted(pts.items()))
        v = at[name]
        bold = "**" if name == "workbench" else ""
        rows.append(f"| {name} | {runs} | {bold}{v:.3f}{bold} | {bold}{v / best_peer:.2f}{bold} |")
    note = (f"ReLU SAEs (d = {d}, x{exp}, batch {batch}, Adam at lr {lr}, {tokens:,} training tokens; the speed part's "
            f"tokens and held-out tokens). Each implementation's sparsity coefficient (its own scale: saev's "
            f"sparsity_coeff, Overcomplete's mse_l1 penalty, SAELens' l1_coefficient, workbench's l1_coef) starts at "
            f"the speed table's value and moves by factors of 3 until the held-out L0 lies on both sides of {target}, "
            "then two bisections (geometric means) narrow the bracket; "
            f"FVU at L0 = {target} interpolated linearly in log L0 between the two nearest runs (a run with L0 = 0, "
            "every latent dead, brackets nothing). Below 1 in the last column: workbench reconstructs better at "
            "the same sparsity.")
    write_table("frontier", "### ReLU SAEs at equal L0\n\n" + machine() + "\n\n" + "\n".join(rows) + "\n\n" + note)


# -- quality on the phantom ViT's middle block --------------------------------------------------------
SAE_SETTINGS = {"topk": {"k": 32}, "batchtopk": {"k": 32}, "relu": {"l1_coef": 0.2}}


def bench_store(name: str, model, shortcut: dict | None = None):
    """The middle-block store of ``sae_vit64_<name>`` over its training split (cached)."""
    return cached_store(model, MIDDLE, data_dir() / "sae_bench" / f"store_{name}_{MIDDLE}", shortcut)


def cached_store(model, layer: str, out: Path, shortcut: dict | None = None):
    """The store of ``layer`` over the phantom training split in ``out``, cached when absent or stale."""
    try:
        return wb.sae.open_store(out, model=model, layer=layer)
    except (FileNotFoundError, ValueError):
        pass
    return wb.sae.cache(model, phantom("train", RECIPE["n_train"], shortcut), layer=layer, out=out,
                        progress=False, device="cpu")


def bench_sae(name: str, model, kind: str, store, epochs: float, log: dict | None = None):
    """A trained SAE of ``kind`` on ``store`` (cached next to the store)."""
    # "_encfit": trained with the fitted encoder scale (sae.train's default for TopK/BatchTopK since
    # 2026-12-02); SAEs cached before it (tied encoder) are not reused
    # (ReLU SAEs too since 2026-12-03)
    path = data_dir() / "sae_bench" / (f"sae_{name}_{MIDDLE}_{kind}_e{epochs:g}_encfit" +
                                       (f"_l1{SAE_SETTINGS[kind]['l1_coef']:g}" if kind == "relu" else ""))
    if checkpoint_paths(path)[0].exists():
        return wb.sae.load(path)
    sae, tl = wb.sae.train(store, kind, expansion=8, epochs=epochs, progress=False, device="cpu",
                           **SAE_SETTINGS[kind])
    wb.sae.save(sae, path)
    if log is not None:
        log[(name, kind)] = tl
    return sae


def part_quality(args) -> None:
    model = bench_model("clean")
    store = bench_store("clean", model)
    test = phantom("test", RECIPE["n_test"])
    rows = ["| SAE | d_sae | FVU | L0 | dead | dead in training | dense (>10 %) | AUC model | AUC spliced | "
            "AUC zero-ablation | AUC mean-ablation | top-1 agreement | train tokens/s |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    dead_after = default_dead_after(store.n_tokens)
    logs: dict = {}
    for kind in ("topk", "batchtopk", "relu"):
        sae = bench_sae("clean", model, kind, store, args.sae_epochs, logs)
        f = wb.sae.fidelity(sae, model, test, bootstrap=1000)
        tl = logs.get(("clean", kind))
        lo, hi = f.auc_ci["auc_spliced"]
        trained_dead = float(sae.dead_mask(dead_after).float().mean())
        speed = f"{tl.tokens_per_second:.0f}" if tl else "cached"
        rows.append(f"| {kind} {SAE_SETTINGS[kind]} | {sae.d_sae} | **{f.fvu:.3f}** | **{f.l0:.1f}** | "
                    f"**{f.dead_fraction:.1%}** | {trained_dead:.1%} | {f.dense_fraction:.1%} | {f.auc:.3f} | "
                    f"**{f.auc_spliced:.3f}** [{lo:.3f}, {hi:.3f}] | {f.auc_zero:.3f} | {f.auc_mean:.3f} | "
                    f"{f.agreement:.1%} | {speed} |")
    note = (f"Model: sae_vit64_clean (test AUC above); layer {MIDDLE} (output of block 2 of 4), patch tokens, "
            f"d = 96. Store: its {RECIPE['n_train']} training images ({store.n_tokens:,} tokens, "
            f"{store.nbytes / 2**20:.0f} MB). SAEs: x8, {args.sae_epochs} epochs, batch 4096, defaults otherwise. "
            f"Fidelity on {RECIPE['n_test']} unbiased test images (CI: 1000 bootstrap resamples). Targets: FVU <= 0.1 "
            "at L0 <= 32, dead <= 5 %, spliced AUC within 0.01 of the model's. Dead: never firing on the test "
            f"images' tokens; dead in training: not fired in the last {dead_after:,} training tokens (train()'s "
            "dead_after, the count AuxK acts on; BatchTopK's inference threshold leaves some latents that fire in "
            "training silent on held-out images).")
    write_table("quality", "### SAE fidelity on the phantom ViT's middle block\n\n" + machine() + "\n\n"
                + "\n".join(rows) + "\n\n" + note)


# -- atlas on the phantom and on real radiographs ------------------------------------------------------
ATLAS_PHANTOM = ("left_lung", "right_lung", "heart", "nodule", "effusion", "device", "marker")
ATLAS_CXR = ("left_lung", "right_lung", "cardiomediastinum")


CNN_LAYERS = ("layer1", "layer2")


def bench_cnn():
    """A phantom ResNet-18 (the ViT's data and task, 4 epochs), cached as ``sae_resnet18_64_clean``."""
    path = data_dir() / "bench_models" / "sae_resnet18_64_clean" / "model"
    if checkpoint_paths(path)[0].exists():
        return wb.models.load(path).eval()
    torch.manual_seed(0)
    model = wb.models.create("resnet18", num_classes=2, img_size=RECIPE["size"], in_chans=1)
    wb.fit(model, phantom("train", RECIPE["n_train"]), phantom("val", RECIPE["n_val"]), epochs=4,
           batch_size=RECIPE["batch_size"], lr=1e-3, seed=0, progress=False, early_stopping=3)
    wb.models.save(model, path)
    return model.eval()


def _atlas_rows(at: Any, label: str, structures: Sequence[str], second: bool = True) -> list[str]:
    rows = []
    for s in structures:
        b = at.best[at.best.structure == s].sort_values("rank")
        r1 = b.iloc[0]
        r2 = f"{b.iloc[1].auroc:.3f}" if second and len(b) > 1 else ""
        u = at.unions[at.unions.structure == s].set_index("n")
        union = f"{u.auroc.max():.3f} ({', '.join(map(str, u.loc[u.auroc.idxmax(), 'latents']))})" if len(u) else ""
        rows.append(f"| {label} | {s} | {int(r1.latent)} | **{r1.auroc:.3f}** | {union} | {r1.ceiling:.3f} | "
                    f"{r1.ap:.3f} | {r1.mass:.2f} | {r1.frequency:.1%} | {r2} |")
    return rows


def part_atlas(args) -> None:
    model = bench_model("clean")
    store = bench_store("clean", model)
    sae = bench_sae("clean", model, "topk", store, args.sae_epochs)
    test = phantom("test", RECIPE["n_test"])
    rows = ["| data | structure | best latent | pixel AUROC | best union of <= 3 (latents) | grid ceiling | AP | "
            "mass share | latent fires on (patches) | 2nd best AUROC |", "|---|---|---|---|---|---|---|---|---|---|"]
    at = wb.sae.atlas(sae, model, test, structures=ATLAS_PHANTOM, top=2)
    rows += _atlas_rows(at, f"phantom test ({len(test)} images, 64 px)", ATLAS_PHANTOM)
    # the model trained with the device shortcut (part shortcut's), with its own SAE: a model that
    # uses the drain has a reason to represent it
    short = bench_model("shortcut", shortcut=SHORTCUT)
    short_sae = bench_sae("shortcut", short, "topk", bench_store("shortcut", short, SHORTCUT), args.sae_epochs)
    at = wb.sae.atlas(short_sae, short, test, structures=("device", "marker"), top=2)
    rows += _atlas_rows(at, "phantom test, the shortcut model and its SAE", ("device", "marker"))
    # a finer grid: ResNet-18's layer1 (16 x 16 positions at 64 px) next to its layer2 (8 x 8)
    cnn = bench_cnn()
    for layer in CNN_LAYERS:
        store = cached_store(cnn, layer, data_dir() / "sae_bench" / f"store_cnn_{layer}")
        path = data_dir() / "sae_bench" / f"sae_cnn_{layer}_topk_e{args.sae_epochs:g}"
        if checkpoint_paths(path)[0].exists():
            csae = wb.sae.load(path)
        else:
            csae, _ = wb.sae.train(store, "topk", expansion=8, epochs=args.sae_epochs, progress=False, device="cpu",
                                   **SAE_SETTINGS["topk"])
            wb.sae.save(csae, path)
        at = wb.sae.atlas(csae, cnn, test, structures=ATLAS_PHANTOM, top=2)
        grid = "x".join(map(str, store.layout.grid))
        rows += _atlas_rows(at, f"phantom test, ResNet-18 {layer} ({grid} grid, d = {store.d})", ATLAS_PHANTOM)
    cxr_dir = wb.data.shared_data_path()
    if cxr_dir is not None and (Path(cxr_dir) / "cxr_anatomy").is_dir():
        cxr = wb.data.load(str(Path(cxr_dir) / "cxr_anatomy"), label_column="finding", size=RECIPE["size"],
                           channels=1)
        cxr.task = "multiclass"
        at = wb.sae.atlas(sae, model, cxr, structures=ATLAS_CXR, top=2)
        rows += _atlas_rows(at, f"cxr_anatomy ({len(cxr)} real radiographs, 64 px)", ATLAS_CXR, second=False)
        # an SAE fitted to the real radiographs' own tokens (same model, same layer)
        own, _ = wb.sae.train(wb.sae.activations(model, cxr, layer=MIDDLE), "topk", expansion=8, k=32, epochs=50,
                              batch_size=1024, progress=False, device="cpu")
        at = wb.sae.atlas(own, model, cxr, structures=ATLAS_CXR, top=2)
        rows += _atlas_rows(at, "cxr_anatomy, SAE trained on its own tokens", ATLAS_CXR, second=False)
    else:   # say so in the table rather than leave the real-radiograph rows out silently
        print("  atlas: ../shared/data/cxr_anatomy not found (set WORKBENCH_SHARED_DATA): real-radiograph rows skipped",
              flush=True)
        rows.append("| cxr_anatomy: not found on this machine (WORKBENCH_SHARED_DATA) | | | | | | | | | |")
    note = (f"sae_vit64_clean, layer {MIDDLE}, TopK SAE (x8, k = 32) trained on the phantom training split; "
            "heatmaps = patch activations upsampled bilinearly; all 768 latents screened on nearest-upsampled maps "
            "and the 4 best per structure re-scored on bilinear maps (histograms of 256 levels). Grid ceiling: the "
            "pixel AUROC of the structure's own patch-coverage map upsampled the same way, what a perfect detector "
            "on the layer's patch grid would score (`Atlas.ceiling`). Union: the greedy union of up to 3 latents "
            "(`Atlas.unions`: patch-wise maximum of the latents, each over its largest activation; chosen on nearest "
            "maps, scored on bilinear ones like the single latents). Goal on the phantom: best AUROC >= 0.9 for each structure. Shortcut rows: "
            "sae_vit64_shortcut (drains planted with the abnormal class) and a TopK SAE trained on its own store. "
            "ResNet-18 rows: a ResNet-18 trained on the same data (4 epochs) and a TopK SAE (x8, k = 32) per layer, "
            "layer1's 16 x 16 positions against layer2's 8 x 8. "
            "Real radiographs: the phantom model and SAE applied "
            "to ../shared/data/cxr_anatomy resized to 64 px (every image, masks where annotated), and an SAE "
            "trained on those 100 images' own tokens (50 epochs; the atlas is then measured on the images it was "
            "trained on).")
    write_table("atlas", "### Latent atlas: best latent per structure\n\n" + machine() + "\n\n" + "\n".join(rows)
                + "\n\n" + note)


ATLAS_SWEEP = [("blocks.0", 8, 32), ("blocks.1", 8, 32), ("blocks.2", 8, 32), ("blocks.3", 8, 32), ("blocks.1", 4, 8),
               ("blocks.1", 16, 32)]   # (layer, expansion, k)


def part_atlas_sweep(args) -> None:
    """Does another layer or dictionary size hold the anatomy better? The atlas's best single latent and
    best union per structure for TopK SAEs at every block of the clean phantom ViT and at two other
    dictionary sizes of its middle block."""
    model = bench_model("clean")
    test = phantom("test", RECIPE["n_test"])
    rows = ["| layer | SAE | " + " | ".join(ATLAS_PHANTOM) + " |", "|---|---|" + "---|" * len(ATLAS_PHANTOM)]
    for layer, exp, k in ATLAS_SWEEP:
        store = cached_store(model, layer, data_dir() / "sae_bench" / f"store_clean_{layer}")
        torch.manual_seed(0)
        sae, _ = wb.sae.train(store, "topk", expansion=exp, k=k, epochs=args.sae_epochs, progress=False, device="cpu")
        at = wb.sae.atlas(sae, model, test, structures=ATLAS_PHANTOM, top=2)
        best = at.best_per_structure().set_index("structure")
        union = at.unions.groupby("structure").auroc.max()
        rows.append(f"| {layer} | TopK x{exp}, k = {k} | " + " | ".join(
            f"{best.loc[s, 'auroc']:.3f} / {union.get(s, float('nan')):.3f}" for s in ATLAS_PHANTOM) + " |")
        print(rows[-1], flush=True)
    note = (f"sae_vit64_clean; each cell: the best single latent's pixel AUROC / the best union of <= 3 latents "
            f"(as in the atlas table), {len(test)} test images; TopK SAEs trained {args.sae_epochs:g} epochs on the "
            "layer's store of the training split. Goal: >= 0.9 per structure.")
    write_table("atlas_sweep", "### Atlas across layers and dictionary sizes\n\n" + machine() + "\n\n"
                + "\n".join(rows) + "\n\n" + note)


# -- shortcut: confounder search and interventions -------------------------------------------------------
DEVICE_LATENT = 0.75   # a latent whose per-image maximum tells drain images from the others this well


def part_shortcut(args) -> None:
    test = phantom("test", RECIPE["n_test"])
    area = float(test.masks["device"].float().mean())
    rows = ["| model | rank | latent | score | reliance | label AUROC | off evidence | device share | device enrichment | "
            "detects device (AUROC) | marker share | outside body |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    summary = []
    saes = {}
    for name, sc in (("shortcut", SHORTCUT), ("clean", None)):
        model = bench_model(name, shortcut=sc)
        store = bench_store(name, model, sc)
        sae = saes[name] = bench_sae(name, model, "topk", store, args.sae_epochs)
        found = wb.sae.confounders(sae, model, test, top=10**9)   # every latent that fires, ranked
        for i, r in found.head(5).iterrows():
            rows.append(f"| {name} | {i + 1} | {int(r.latent)} | {r.score:.4f} | {r.reliance:.4f} | {r.label_auc:.3f} | "
                        f"{r.off_evidence:.2f} | {r.share_device:.2f} | {r.share_device / area:.1f}x | {r.detects_device:.2f} | "
                        f"{r.share_marker:.2f} | {r.outside_body:.2f} |")
        device_ranks = [i + 1 for i, r in found.head(10).iterrows() if r.detects_device >= DEVICE_LATENT]
        best = int(found.detects_device.fillna(0).values.argmax())
        summary.append(f"{name}: first device latent (detects device >= {DEVICE_LATENT}) at rank "
                       f"{device_ranks[0] if device_ranks else '> 10'}; the dictionary's best device detector "
                       f"(latent {int(found.latent.iloc[best])}, AUROC {found.detects_device.iloc[best]:.2f}) at rank "
                       f"{best + 1} of {len(found)}")
    note = (f"Confounder search (`wb.sae.confounders`, suspects device and marker, plus outside the body) on "
            f"{len(test)} unbiased test images; score = |reliance| x off evidence (the larger of the latent's "
            f"activation share off the anatomy and its best suspect detection above chance, 2 x AUROC - 1); reliance = mean first-order "
            f"contribution to log p(abnormal). Device enrichment = the latent's device mass share / the device's share "
            f"of image area ({area:.2%}); detects device = AUROC of the latent's per-image maximum for the device's "
            f"presence, within each class, averaged (`detects_device`; independent of the 8 px patch grid, which "
            f"dilutes mass shares of a structure this small). " + "; ".join(summary) + ". Target: a device latent "
            "in the top 3 with the shortcut, not without.")
    write_table("shortcut", "### Confounder search with and without the planted device shortcut\n\n" + machine()
                + "\n\n" + "\n".join(rows) + "\n\n" + note)
    # Mammo-SAE interventions on the clean model
    model = bench_model("clean")
    rank_on = phantom("train", 2000)
    rows = ["| ranking | mode | k | latents | AUROC [95% CI] | random latents: mean [2.5-97.5 %] |",
            "|---|---|---|---|---|---|"]
    base = None
    for ranking in ("mean", "contrastive"):
        iv = wb.sae.intervene(saes["clean"], model, test, ks=(1, 5, 10, 50), ranking=ranking, rank_data=rank_on,
                              random=args.random, bootstrap=1000)
        base = iv
        for _, r in iv.table.iterrows():
            rows.append(f"| {ranking} | {r['mode']} | {r.k} | {r.n_latents} | **{r.auc:.3f}** [{r.auc_low:.3f}, "
                        f"{r.auc_high:.3f}] | {r.random_auc:.3f} [{r.random_low:.3f}, {r.random_high:.3f}] |")
    note = (f"sae_vit64_clean with its TopK SAE (x8, k = 32) spliced at {MIDDLE}; model AUROC {base.auc:.3f}, with the "
            f"whole SAE reconstruction spliced {base.auc_spliced:.3f}. Class latents ranked on 2,000 training "
            f"images (Mammo-SAE: mean activation per class; contrastive: Cohen's d), union over both classes' top k; "
            f"'keep': every other code zeroed; 'off': these zeroed. {len(test)} test images, 1000 bootstrap "
            f"resamples; {args.random} random latent sets of the same size per row.")
    write_table("interventions", "### Mammo-SAE interventions: top-k class latents kept or switched off\n\n" +
                machine() + "\n\n" + "\n".join(rows) + "\n\n" + note)


PARTS = {"models": part_models, "caching": part_caching, "memory": part_memory, "speed": part_speed,
         "frontier": part_frontier, "atlas_sweep": part_atlas_sweep,
         "quality": part_quality, "atlas": part_atlas, "shortcut": part_shortcut}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--speed-images", type=int, default=4000, help="images whose tokens the speed part uses")
    p.add_argument("--speed-steps", type=int, default=12, help="timed steps per implementation and round")
    p.add_argument("--sae-epochs", type=float, default=10, help="epochs of the phantom SAEs")
    p.add_argument("--random", type=int, default=10, help="random latent sets per intervention row")
    p.add_argument("--quality-tokens", type=int, default=600_000, help="training tokens before the FVU comparison")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    for part in args.parts:
        t = time.perf_counter()
        PARTS[part](args)
        print(f"[{part}: {time.perf_counter() - t:.0f} s]", flush=True)


if __name__ == "__main__":
    main()
