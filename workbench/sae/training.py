"""``train``: fit an SAE on a stream of token activations; returns the SAE and its log.

The stream is an activation store (``workbench.sae.cache``) read in shuffled batches without
holding it in memory, or an in-memory ``(N, d)`` tensor. Recipe (Gao et al. 2024; Bricken et al.
2023; Bussmann et al. 2024): inputs scaled to unit mean norm and ``b_dec`` set at the data mean
(or geometric median) from a sample of tokens; Adam; linear warm-up, constant rate, linear decay
over the last 20 % of steps; unit-norm atoms with the parallel gradient removed; the AuxK loss on
latents dead for ``dead_after`` tokens; the L1 coefficient of ReLU SAEs warmed up over the first
5 % of steps. Batches go to the GPU when there is one, under bf16 autocast.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, NamedTuple, Protocol

import torch

from . import losses
from ._sparse import MAX_DENSITY
from .autoencoders import SAE, create


class TokenSource(Protocol):
    """What ``train`` reads: ``d``, ``n_tokens``, ``source`` (provenance dict), ``batches`` (one
    shuffled pass of ``(B, d)`` float32 CPU tensors) and ``sample`` (random tokens)."""

    d: int
    n_tokens: int
    source: dict[str, Any]

    def batches(self, batch_size: int, *, shuffle: bool = True, seed: int = 0) -> Iterator[torch.Tensor]: ...

    def sample(self, n: int, *, seed: int = 0) -> torch.Tensor: ...


class TensorTokens:
    """An in-memory ``(N, d)`` activation matrix as a :class:`TokenSource`."""

    def __init__(self, x: torch.Tensor, source: dict[str, Any] | None = None) -> None:
        x = torch.as_tensor(x)
        if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
            raise ValueError(f"activations must be a non-empty (N tokens, d) matrix; got shape {tuple(x.shape)}. "
                             "Flatten tokens first (x.reshape(-1, d)) or pass an activation store.")
        if not x.is_floating_point():
            raise TypeError(f"activations must be floating point; got {x.dtype}.")
        check_finite(x, "the activations")
        self.x, self.d, self.n_tokens = x, int(x.shape[1]), int(x.shape[0])
        self.source = dict(source or {})

    def batches(self, batch_size: int, *, shuffle: bool = True, seed: int = 0) -> Iterator[torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        order = torch.randperm(self.n_tokens, generator=g) if shuffle else torch.arange(self.n_tokens)
        for i in range(0, self.n_tokens, batch_size):
            yield self.x.index_select(0, order[i:i + batch_size]).float()   # 5x faster than x[idx] here

    def sample(self, n: int, *, seed: int = 0) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return self.x[torch.randperm(self.n_tokens, generator=g)[:n]].float()


def check_finite(x: torch.Tensor, what: str) -> None:
    """Raise a ValueError naming ``what`` when ``x`` holds NaN or infinite values."""
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).any(-1).sum()) if x.ndim > 1 else int((~torch.isfinite(x)).sum())
        raise ValueError(f"{what} contain NaN or infinite values ({bad} token(s) of {x.shape[0]}); the model "
                         "produced non-finite activations at this layer (check the images and the weights) "
                         "or the store is corrupt. Re-cache after fixing the cause.")


def as_tokens(data: Any) -> TokenSource:
    """An activation store, a :class:`TokenSource`, or an ``(N, d)`` tensor -> a TokenSource."""
    if torch.is_tensor(data):
        return TensorTokens(data)
    if all(hasattr(data, a) for a in ("batches", "sample", "d", "n_tokens")):
        return data
    raise TypeError(f"expected an activation store (workbench.sae.cache / workbench.sae.open_store) or an "
                    f"(N, d) tensor of activations; got {type(data).__name__}.")


@dataclass(frozen=True)
class TrainLog:
    """What happened while training.

    Attributes:
        rows: one dict per logged step: step, tokens, lr, loss, fvu, l0, aux, dead_fraction, seconds
            (wall time since the loop started: throughput over any stretch of training).
        tokens: tokens seen; steps: optimiser steps; seconds: wall time of the loop.
        params: the settings ``train`` used (JSON-ready).
    """

    rows: tuple[dict[str, float], ...]
    tokens: int
    steps: int
    seconds: float
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else float("nan")

    @property
    def final(self) -> dict[str, float]:
        return dict(self.rows[-1]) if self.rows else {}

    def column(self, key: str) -> list[float]:
        return [r[key] for r in self.rows]

    def to_dict(self) -> dict[str, Any]:
        return {"rows": list(self.rows), "tokens": self.tokens, "steps": self.steps, "seconds": self.seconds,
                "tokens_per_second": self.tokens_per_second, "params": self.params}

    def plot(self, ax: Any = None, **style: Any) -> Any:
        """FVU, L0 and dead fraction over tokens (``workbench.viz.sae_training``)."""
        from workbench.viz.sae import sae_training

        return sae_training(self, ax=ax, **style)


class Trained(NamedTuple):
    """``train``'s result: unpack as ``sae, log = wb.sae.train(...)``."""

    sae: SAE
    log: TrainLog


def default_lr(d_sae: int) -> float:
    """Adam learning rate by dictionary size: ``2e-4 x sqrt(16384 / d_sae)``, at most 2e-3 (Gao et al.
    2024 scale the rate as 1 / sqrt(d_sae) from 2e-4 at 16k latents)."""
    return min(2e-3, 2e-4 * math.sqrt(16384 / d_sae))


def default_dead_after(n_tokens: int, batch_size: int = 4096) -> int:
    """Training tokens without firing after which a latent counts as dead: the smaller of 10M tokens
    and half an epoch (at least one batch)."""
    return int(min(10_000_000, max(batch_size, n_tokens // 2)))


@torch.no_grad()
def geometric_median(x: torch.Tensor, iters: int = 50, tol: float = 1e-6) -> torch.Tensor:
    """Weiszfeld's algorithm: the point minimising the summed distances to the rows of ``x`` (N, d)."""
    y = x.mean(0)
    for _ in range(iters):
        w = 1.0 / (x - y).norm(dim=1).clamp_min(1e-8)
        y_new = (w[:, None] * x).sum(0) / w.sum()
        if (y_new - y).norm() <= tol * y.norm().clamp_min(1e-8):
            return y_new
        y = y_new
    return y


@torch.no_grad()
def init_from_data(sae: SAE, sample: torch.Tensor, init: str = "mean") -> None:
    """Set ``input_scale`` (unit mean norm) and ``b_dec`` (mean or geometric median) from tokens."""
    if init not in ("mean", "median"):
        raise ValueError(f"init must be 'mean' or 'median' (geometric median); got {init!r}.")
    sample = sample.float().to(sae.W_dec.device)
    check_finite(sample, "the activations")
    norm = sample.norm(dim=1).mean()
    if not norm > 0:
        raise ValueError("the activations are all zero; an SAE cannot be fitted to a constant layer output.")
    sae.input_scale.fill_(1.0 / float(norm))
    xs = sample * sae.input_scale
    sae.b_dec.copy_(xs.mean(0) if init == "mean" else geometric_median(xs))


@torch.no_grad()
def fit_encoder_scale_(sae: SAE, sample: torch.Tensor, max_tokens: int = 16384) -> float:
    """Scale the encoder (in place) so that the initial reconstruction is least-squares optimal; returns
    the factor.

    At initialisation ``W_enc = W_dec^T`` and ``b_enc = 0``, so multiplying ``W_enc`` by ``s > 0``
    multiplies every pre-activation by ``s``: TopK, BatchTopK and ReLU keep the same latents and the
    codes, hence the reconstruction ``codes W_dec``, scale by ``s``. The ``s`` minimising
    ``||x - b_dec - s codes W_dec||^2`` over the sample is ``<x - b_dec, r> / <r, r>`` with
    ``r = codes W_dec``. With unit-norm decoder rows a tied encoder over-shoots (the fitted factor is
    below 1: 0.28 for BatchTopK and 0.54 for TopK on the SAE benchmark's tokens); probably Adam, whose
    steps are about ``lr`` per weight whatever its size, then spends the first steps shrinking it.
    Measured on those tokens (d = 192, x8, k = 32, 600,000 tokens): held-out FVU of BatchTopK 0.090 ->
    0.049 and TopK 0.057 -> 0.045 (SAELens, which starts its decoder at norm 0.1: 0.060 and 0.047); after 2.4
    million tokens 0.032 -> 0.018 and 0.024 -> 0.022, with more dead latents (1.4-1.8 % instead of
    0.6-0.7 %). Buffers the kind updates while encoding (BatchTopK's threshold) are left as they were."""
    saved = {n: b.clone() for n, b in sae.named_buffers()}
    was = sae.training
    sae.train()
    try:
        x = sample[:max_tokens].to(sae.W_enc.device, sae.W_enc.dtype)
        rec = sae.activate(sae.pre_activations(x)) @ sae.W_dec
        target = x * sae.input_scale - sae.b_dec
        den = float((rec * rec).sum())
        s = float((target * rec).sum()) / den if den > 0 else 1.0
    finally:
        for n, b in sae.named_buffers():
            b.copy_(saved[n])
        sae.train(was)
    if not (math.isfinite(s) and s > 0):
        return 1.0
    sae.W_enc.mul_(s)
    return s


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    decay_start = int(0.8 * total)
    if step >= decay_start:
        return max(0.0, (total - step) / max(1, total - decay_start))
    return 1.0


class _Step(NamedTuple):
    rec: torch.Tensor      # FVU of the batch
    l1: torch.Tensor       # mean L1 norm of the codes
    aux: torch.Tensor      # AuxK loss (0 without dead latents)
    fired: torch.Tensor    # (d_sae,) bool, latents active on the batch
    active: torch.Tensor   # number of active (token, latent) pairs


def _dense_step(sae: SAE, xb: torch.Tensor, dead: torch.Tensor, aux_k: int, l1_coef: float,
                dev: torch.device, use_amp: bool) -> _Step:
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_amp):
        out = sae(xb)
        rec = losses.fvu(xb, out.x_hat, out.codes)
        l1 = losses.l1(xb, out.x_hat, out.codes) if l1_coef else rec.new_zeros(())
        aux = losses.auxk(xb, out.x_hat, out.codes, pre=out.pre, dead=dead, dictionary=sae.W_dec,
                          scale=sae.input_scale, k_aux=aux_k) if aux_k else rec.new_zeros(())
    with torch.no_grad():
        counts = torch.sign(out.codes.detach()).sum(0)   # a boolean (codes > 0).sum() is 10x slower on a CPU
        return _Step(rec, l1, aux, counts > 0, counts.sum())


def _fused_relu_step(sae: SAE, xb: torch.Tensor, dead: torch.Tensor, aux_k: int, l1_coef: float) -> _Step | None:
    """``_dense_step`` of a ReLU SAE as one autograd node (``workbench.sae._fused``: the same numbers,
    fewer passes over the codes); None when AuxK has dead latents to use (then the dense step runs)."""
    from ._fused import relu_step

    if aux_k and bool(dead.any()):
        return None
    xn = xb.to(sae.W_enc.dtype) * sae.input_scale
    out = relu_step(xn, sae.W_enc, sae.b_enc - sae.b_dec @ sae.W_enc, sae.W_dec, sae.b_dec)
    rec = losses.fvu(xb, out.x_hat / sae.input_scale)
    l1 = out.l1_sum / xb.shape[0] if l1_coef else rec.new_zeros(())
    return _Step(rec, l1, rec.new_zeros(()), out.counts > 0, out.counts.sum())


def _fusable(sae: SAE) -> bool:
    """A plain ReLU SAE (its ``activate`` not overridden): ``_fused_relu_step`` computes its step."""
    from .autoencoders import ReLUSAE

    return isinstance(sae, ReLUSAE) and type(sae).activate is ReLUSAE.activate


def _sparse_step(sae: SAE, xb: torch.Tensor, dead: torch.Tensor, aux_k: int, l1_coef: float) -> _Step | None:
    """The same losses as ``_dense_step`` from the active entries only (``workbench.sae._sparse``);
    None when the kind selects no sparse set for this batch (then the dense step runs)."""
    from . import _sparse

    xn = xb.to(sae.W_enc.dtype) * sae.input_scale
    b_eff = sae.b_enc - sae.b_dec @ sae.W_enc
    with torch.no_grad():
        pre = torch.addmm(b_eff.detach(), xn, sae.W_enc.detach())
        sel = sae.training_selection(pre)
    if sel is None:
        return None
    vals = torch.relu(_sparse.gather(xn, sae.W_enc, b_eff, sel))
    x_hat = (_sparse.decode(sel, vals, sae.W_dec) + sae.b_dec) / sae.input_scale
    rec = losses.fvu(xb, x_hat)
    l1 = vals.sum() / xb.shape[0] if l1_coef else rec.new_zeros(())
    aux = rec.new_zeros(())
    dsel = _sparse.dead_selection(pre, dead, aux_k) if aux_k else None
    if dsel is not None:
        avals = torch.relu(_sparse.gather(xn, sae.W_enc, b_eff, dsel))
        aux = losses.fvu((xb - x_hat).detach(), _sparse.decode(dsel, avals, sae.W_dec) / sae.input_scale)
    with torch.no_grad():
        on = vals > 0
        fired = torch.bincount(sel.cols[on], minlength=sae.d_sae) > 0
        return _Step(rec, l1, aux, fired, on.sum())


def train(store: Any, kind: str = "topk", expansion: float = 8, k: int | None = 32, *, d_sae: int | None = None,
          l1_coef: float = 0.2, lr: float | None = None, batch_size: int = 4096, epochs: float = 1.0,
          tokens: int | None = None, aux_k: int | None = None, aux_coef: float = 1 / 32,
          dead_after: int | None = None, init: str = "mean", init_tokens: int = 65536, enc_scale: float | str | None = None,
          device: str | torch.device | None = "auto", amp: str | bool = "auto", seed: int = 0,
          log_every: int = 20, progress: bool = True, sparse_step: bool = True, **kind_kw: Any) -> Trained:
    """Train a sparse autoencoder on token activations.

    Args:
        store: an activation store (``workbench.sae.cache`` / ``open_store``) or an ``(N, d)`` tensor.
        kind: "topk", "batchtopk" or "relu" (``workbench.sae.KINDS.names()``).
        expansion: ``d_sae = expansion x d`` (Mammo-SAE: 8).
        k: active latents per token (TopK, BatchTopK); ignored by "relu".
        d_sae: number of latents (overrides ``expansion``).
        l1_coef: L1 coefficient of "relu" SAEs (on codes in normalised units); larger is sparser.
        lr: Adam learning rate (default :func:`default_lr`).
        batch_size: tokens per step.
        epochs: passes over the store (fractions allowed); ``tokens`` overrides it.
        tokens: total training tokens.
        aux_k: latents the AuxK loss uses per token (default ``d // 2``; 0 turns AuxK off).
        aux_coef: AuxK weight (Gao et al.: 1/32).
        dead_after: a latent not firing for this many tokens is dead (default: the smaller of 10M
            tokens and half an epoch).
        init: ``b_dec`` at the "mean" or geometric "median" of ``init_tokens`` sampled tokens.
        enc_scale: the encoder starts as ``W_dec^T`` times this: "fit" (least squares on the sampled
            tokens, :func:`fit_encoder_scale_`) or a number (1: the tied encoder of Gao et al.).
            Default "fit" for every kind. For ReLU SAEs it also changes what an ``l1_coef`` means (a
            smaller encoder shrinks the codes and with them the L1 penalty: at 5e-3 "fit" gave L0 694
            where the tied encoder gave 200), but at equal L0 it reconstructs far better (benchmark
            tokens, L0 32: FVU 0.125 against the tied encoder's 0.354 and saev's 0.128;
            benchmarks/README.md, "ReLU SAEs at equal L0"), hence the default ``l1_coef`` of 0.2.
        device: "auto" (CUDA/MPS/CPU), a device, or None (CPU).
        amp: "auto" (bf16 autocast on CUDA), True or False.
        seed: seeds initialisation and shuffling.
        log_every: log a row every this many steps (and at the last one).
        progress: show a tqdm progress bar.
        sparse_step: on a CPU, compute the decoder and every gradient from the active latents only
            (``workbench.sae._sparse``: the same numbers, about twice as fast at k = 32 of 1536); on
            an accelerator the dense step runs (its matrix products are cheap there).
        **kind_kw: kind-specific options (``threshold_momentum`` for batchtopk).

    Returns:
        ``Trained(sae, log)``: the SAE in eval mode on the CPU (``source`` set from the store)
        and a :class:`TrainLog`.

    Examples:
        >>> x = torch.randn(2048, 16)
        >>> sae, log = train(x, "topk", expansion=4, k=4, epochs=2, batch_size=256, progress=False)
        >>> sae.d_sae, log.final["fvu"] < 1.0
        (64, True)
    """
    from tqdm.auto import tqdm

    from workbench._checks import check_device, check_int, check_number

    src = as_tokens(store)
    dev = check_device(device) if device is not None else torch.device("cpu")
    use_amp = (dev.type == "cuda") if amp == "auto" else bool(amp)
    check_int(batch_size, "batch_size")
    check_number(epochs, "epochs", low=0, low_open=True)
    check_int(tokens, "tokens", none_ok=True)
    check_number(lr, "lr", low=0, low_open=True, none_ok=True)
    check_number(l1_coef, "l1_coef", low=0)
    check_int(aux_k, "aux_k", minimum=0, none_ok=True)
    check_number(aux_coef, "aux_coef", low=0)
    check_int(init_tokens, "init_tokens")
    if enc_scale is not None and enc_scale != "fit":
        check_number(enc_scale, "enc_scale", low=0, low_open=True)
    check_int(log_every, "log_every")
    total_tokens = int(tokens) if tokens is not None else int(round(float(epochs) * src.n_tokens))
    if total_tokens < 1:
        raise ValueError(f"nothing to train on: epochs={epochs}, tokens={tokens}, the store holds {src.n_tokens} "
                         "tokens; give epochs > 0 or tokens > 0.")
    torch.manual_seed(seed)
    sae = create(kind, src.d, expansion=expansion, d_sae=d_sae, k=k, source=src.source, **kind_kw).to(dev)
    sample = src.sample(min(init_tokens, src.n_tokens), seed=seed)
    init_from_data(sae, sample, init)
    if enc_scale is None:
        enc_scale = "fit"
    if enc_scale == "fit":
        enc_scale = fit_encoder_scale_(sae, sample)
    else:
        with torch.no_grad():
            sae.W_enc.mul_(float(enc_scale))
    del sample
    steps = max(1, math.ceil(total_tokens / batch_size))
    lr = default_lr(sae.d_sae) if lr is None else float(lr)
    aux_k = src.d // 2 if aux_k is None else int(aux_k)
    dead_after = default_dead_after(src.n_tokens, batch_size) if dead_after is None else int(dead_after)
    params = {"kind": kind, "d": src.d, "d_sae": sae.d_sae, "k": sae.k, "l1_coef": l1_coef if kind == "relu" else None,
              "lr": lr, "batch_size": batch_size, "tokens": total_tokens, "steps": steps, "aux_k": aux_k,
              "aux_coef": aux_coef, "dead_after": dead_after, "init": init, "enc_scale": float(enc_scale), "seed": seed, "device": str(dev),
              "amp": use_amp}
    opt = torch.optim.Adam(sae.parameters(), lr=lr, betas=(0.9, 0.999), eps=6.25e-10)
    sparse = dev.type == "cpu" and sparse_step
    fused = not use_amp and _fusable(sae)
    try_sparse = True
    warmup = max(1, min(1000, steps // 20))
    rows: list[dict[str, float]] = []
    seen, step, epoch = 0, 0, 0
    sae.train()
    bar = tqdm(total=steps, desc=f"sae {kind}", unit="step", disable=not progress)
    t0 = time.perf_counter()
    try:
        while step < steps:
            for xb in src.batches(batch_size, shuffle=True, seed=seed * 100_003 + epoch):
                if step >= steps:
                    break
                xb = xb.to(dev, non_blocking=True)
                check_finite(xb, "the activations")
                for g in opt.param_groups:
                    g["lr"] = lr * _lr_factor(step, steps, warmup)
                dead = sae.dead_mask(dead_after)
                coef = l1_coef * min(1.0, (step + 1) / max(1, steps // 20)) if kind == "relu" else 0.0
                # a dense step's density says whether the next batch is worth a sparse attempt: a failed
                # attempt (ReLU early in training, half the latents active) costs one encoder product
                res = _sparse_step(sae, xb, dead, aux_k if aux_coef else 0, coef) if sparse and try_sparse else None
                if res is None:
                    res = _fused_relu_step(sae, xb, dead, aux_k if aux_coef else 0, coef) if fused else None
                    if res is None:
                        res = _dense_step(sae, xb, dead, aux_k if aux_coef else 0, coef, dev, use_amp)
                    try_sparse = float(res.active) <= MAX_DENSITY * xb.shape[0] * sae.d_sae
                loss = res.rec + coef * res.l1 + aux_coef * res.aux
                opt.zero_grad(set_to_none=True)
                loss.backward()
                sae.remove_parallel_grads_()
                opt.step()
                sae.normalize_decoder_()
                with torch.no_grad():
                    sae.tokens_since_fired.add_(xb.shape[0]).masked_fill_(res.fired, 0)
                seen += xb.shape[0]
                step += 1
                bar.update(1)
                if step % log_every == 0 or step == steps:
                    row = {"step": step, "tokens": seen, "lr": opt.param_groups[0]["lr"], "loss": float(loss.detach()),
                           "fvu": float(res.rec.detach()), "l0": float(res.active) / xb.shape[0],
                           "aux": float(res.aux.detach()), "dead_fraction": float(dead.float().mean()),
                           "seconds": time.perf_counter() - t0}
                    rows.append(row)
                    bar.set_postfix(fvu=f"{row['fvu']:.3f}", l0=f"{row['l0']:.1f}", dead=f"{row['dead_fraction']:.2f}")
            epoch += 1
            if seen == 0:
                raise ValueError("the activation source yielded no tokens; cache a non-empty dataset first.")
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    sae.eval()
    sae.finish_training_(src.sample(min(init_tokens, src.n_tokens), seed=seed + 1))
    return Trained(sae.cpu(), TrainLog(rows=tuple(rows), tokens=seen, steps=step, seconds=seconds, params=params))
