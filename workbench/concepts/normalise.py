"""Training-free adaptation of a model's normalisation statistics at a new site, batch by batch.

A new site's acquisition style (contrast, gamma, noise, blur) moves a network's intermediate
feature statistics; the concept layer can then only rescale what reaches it, and in the benchmark
even the best-informed rescaling of concept logits recovered at most a third of a site's accuracy
drop (benchmarks/README.md, "Site repair"). ``test_time_normalise`` acts earlier, where the shift
enters: it re-estimates each normalised layer's statistics from the batch being predicted, mixed
with the source's (Schneider et al., NeurIPS 2020, "Improving robustness against common
corruptions by covariate shift adaptation"; Nado et al. 2020, prediction-time batch norm):

    mean = (N * mean_source + n * mean_batch) / (N + n)   (the same for the variance)

with ``n`` the batch's images and ``N = prior`` the weight of the source statistics (Schneider et
al. found N = 16 good for small batches). No weight changes and no gradient is taken.

- Models with batch norm (ResNets, most CNNs): every ``BatchNorm`` layer normalises with the mixed
  statistics in eval mode; the source statistics are its running ones.
- Models without (timm ViTs: LayerNorm normalises each token alone and cannot see a site's shift):
  the outputs of the patch embedding and of every block are standardised per channel over the
  batch's tokens and mapped back onto the source's per-channel mean and standard deviation
  (measured on ``source`` images, the layers taken in one pass of the unadapted model: the
  adaptation is near the identity on source images, so measuring them sequentially changes little).
  ``layers=`` names other layers ((B, tokens, C) or (B, C, H, W) outputs).

The price (documented, measured in the benchmark): predictions depend on the batch. Predict a new
site's images in batches of that site only, of about 16 images or more; a single image gets
``1 / (1 + prior)`` of its own statistics. Source images in source batches are barely moved (the
batch statistics are the source's), which is what keeps the source accuracy: fixing one site's
statistics in the model instead (the batch-norm statistics of a support set of 24 images, prior
0-8) moved the source by 7-19 points in a trial on the benchmark's joint ResNet-18 CBM.

Matching intensity histograms at the input instead (the classic harmonisation of scanner
intensities) was tried on 2026-12-03 on the benchmark's ViT CBM and left out: each image mapped onto
the source histogram cost the source site 38 accuracy points (it erases what differs between images:
a larger heart, an effusion, are more bright pixels), and one map per site, estimated from the 24
support images, cost the source 4-7 points and gained nothing at the new sites (they differ in
noise, blur and field of view too, which move the histogram as well). ``test_time_align`` undoes the
field of view and intensity map at the input by matching these same feature statistics instead.

Written here rather than taken from a library: the peers (TTA libraries such as tent's reference
code) re-estimate BN statistics only, in train mode, with no prior and no path for LayerNorm
models; this is two small module wrappers.
"""
from __future__ import annotations

import copy
import re
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._validate import check_model, check_number

_BLOCK = re.compile(r"(^|\.)blocks\.\d+$")


class PriorBatchNorm(nn.Module):
    """A batch-norm layer that, in eval mode, normalises with its running statistics mixed with the
    batch's (weight ``prior`` images for the running ones); in train mode it is the layer itself."""

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm, prior: float) -> None:
        super().__init__()
        self.bn, self.prior = bn, float(prior)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn = self.bn
        if self.training or bn.running_mean is None:
            return bn(x)
        dims = [0] + list(range(2, x.ndim))
        a = x.shape[0] / (x.shape[0] + self.prior)
        mean = torch.lerp(bn.running_mean, x.mean(dims).to(bn.running_mean.dtype), a)
        var = torch.lerp(bn.running_var, x.var(dims, unbiased=False).to(bn.running_var.dtype), a)
        return F.batch_norm(x, mean, var, bn.weight, bn.bias, False, 0.0, bn.eps)


class PriorTokenNorm(nn.Module):
    """Wraps a layer: its output is standardised per channel over the batch (statistics mixed with the
    source's, weight ``prior`` images) and mapped onto the source's per-channel mean and std."""

    def __init__(self, layer: nn.Module, mean: torch.Tensor, std: torch.Tensor, prior: float) -> None:
        super().__init__()
        self.layer, self.prior = layer, float(prior)
        self.register_buffer("source_mean", mean.detach().float().clone())
        self.register_buffer("source_std", std.detach().float().clone())

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        out = self.layer(*args, **kwargs)
        if not torch.is_tensor(out) or out.ndim < 2:
            return out
        chan_last = out.ndim == 3
        f = out if chan_last else out.movedim(1, -1)
        flat = f.reshape(-1, f.shape[-1]).float()
        a = out.shape[0] / (out.shape[0] + self.prior)
        mean = torch.lerp(self.source_mean, flat.mean(0), a)
        std = torch.lerp(self.source_std, flat.std(0) if len(flat) > 1 else self.source_std, a)
        g = ((f.float() - mean) / std.clamp(min=1e-6) * self.source_std + self.source_mean).to(out.dtype)
        return g if chan_last else g.movedim(-1, 1)


def test_time_normalise(model: nn.Module, source: Any = None, *, prior: float = 16.0,
                        layers: Sequence[str] | str = "auto", batch_size: int = 64,
                        device: Any = None) -> nn.Module:
    """A copy of ``model`` whose normalisation statistics come from each predicted batch, mixed with the
    source's (see the module docstring); the model itself is not changed.

    Args:
        model: any model (a CBM included: its backbone is adapted, the concept and task heads kept).
        source: source-site images (a dataset or (N, C, H, W) in [0, 1]); needed when the model has no
            batch norm (it gives the per-channel source statistics), unused otherwise.
        prior: weight of the source statistics in images (0: the batch's alone).
        layers: "auto" (every BatchNorm; else the patch embedding and every ``blocks.N``), or the
            names of the layers whose outputs are standardised.
        batch_size, device: for measuring the source statistics.

    Returns:
        The adapted copy, in eval mode, with ``test_time_normalisation`` = {"prior", "kind", "layers"}.
        It is for prediction in this session: save the original and adapt again after loading.

    Raises:
        ValueError: a negative prior; "auto" on a model with neither batch norm nor ViT blocks, unknown
            layer names (the candidates are listed), or no ``source`` where it is needed.
    """
    check_model(model)
    prior = check_number(prior, "prior", low=0.0)
    adapted = copy.deepcopy(model)
    names = dict(adapted.named_modules())
    bns = _bn_layers(adapted)
    if layers == "auto" and bns:
        for n in bns:
            _replace(adapted, n, PriorBatchNorm(names[n], prior))
        adapted.test_time_normalisation = {"prior": prior, "kind": "batch norm", "layers": bns}
        return adapted.eval()
    if layers == "auto":
        layers = _token_layers(adapted)
    layers = [layers] if isinstance(layers, str) else list(layers)
    unknown = [n for n in layers if n not in names]
    if unknown:
        raise ValueError(f"unknown layer(s) {unknown}; the model's layers include {[n for n in names if n][:12]}.")
    if source is None:
        raise ValueError("this model has no batch norm, so test_time_normalise needs source=: images of the "
                         "training site(s) (a dataset, e.g. the validation split) to measure each layer's "
                         "per-channel statistics.")
    stats = _source_stats(model, source, layers, batch_size, device)
    for n in layers:
        dev = next(names[n].parameters(), torch.empty(0)).device
        _replace(adapted, n, PriorTokenNorm(names[n], *stats[n], prior).to(dev))
    adapted.test_time_normalisation = {"prior": prior, "kind": "token statistics", "layers": layers}
    return adapted.eval()


def _bn_layers(model: nn.Module) -> list[str]:
    """Names of the batch-norm layers that keep running statistics."""
    return [n for n, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def _token_layers(model: nn.Module) -> list[str]:
    """A ViT's patch embedding and every ``blocks.N`` (the layers whose token statistics are adapted)."""
    names = [n for n, _ in model.named_modules()]
    layers = [n for n in names if n.endswith("patch_embed") and n.count(".") <= 1] + [n for n in names if _BLOCK.search(n)]
    if not layers:
        raise ValueError("the model has no BatchNorm layer and no ViT patch_embed/blocks.N; pass layers=[...] naming "
                         f"layers with (B, tokens, C) or (B, C, H, W) outputs, e.g. {[n for n in names if n][:8]}.")
    return layers


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, new)


@torch.no_grad()
def _source_stats(model: nn.Module, source: Any, layers: list[str], batch_size: int, device: Any, *,
                  unaligned: bool = True) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per-channel mean and std of each layer's output over every source token (one pass, float64 sums).
    ``unaligned``: a model from ``test_time_align`` sees the images without its input map (source images
    are never aligned); False keeps the map (``test_time_align`` measuring the new site through it)."""
    from workbench._train_data import BatchSource, as_source

    from ._predict import _Eval

    sums: dict[str, list[torch.Tensor]] = {}

    def hook(name: str) -> Any:
        def h(_mod: nn.Module, _inp: Any, out: Any) -> None:
            if not torch.is_tensor(out) or out.ndim < 3:
                raise ValueError(f"layer {name!r} returns {type(out).__name__}"
                                 f"{'' if not torch.is_tensor(out) else ' of shape ' + str(tuple(out.shape))}; "
                                 "test_time_normalise needs (B, tokens, C) or (B, C, H, W) outputs.")
            f = (out if out.ndim == 3 else out.movedim(1, -1)).reshape(-1, out.shape[-1 if out.ndim == 3 else 1])
            f = f.double()
            s = sums.setdefault(name, [torch.zeros(f.shape[1], dtype=torch.float64, device=f.device),
                                       torch.zeros(f.shape[1], dtype=torch.float64, device=f.device),
                                       torch.zeros((), dtype=torch.float64, device=f.device)])
            s[0] += f.sum(0)
            s[1] += (f * f).sum(0)
            s[2] += len(f)
        return h

    if torch.is_tensor(source):
        from ._validate import check_images

        source = check_images(source, "source images", model=model)
    with _Eval(model, device) as (m, dev):
        mods = dict(m.named_modules())
        handles = [mods[n].register_forward_hook(hook(n)) for n in layers]
        # source images are never aligned: a model from test_time_align measures them as its original would
        from .align import AlignedStem

        aligned = [mod for mod in mods.values() if unaligned and isinstance(mod, AlignedStem) and mod.enabled]
        for mod in aligned:
            mod.enabled = False
        try:
            for batch in BatchSource(as_source(source), batch_size, dev, 0, keep_on_device=False)(shuffle=False):
                m(batch["image"])
        finally:
            for h in handles:
                h.remove()
            for mod in aligned:
                mod.enabled = True
    out = {}
    for n, (s1, s2, cnt) in sums.items():
        mean = s1 / cnt
        var = (s2 / cnt - mean * mean).clamp(min=0) * cnt / (cnt - 1).clamp(min=1)
        out[n] = (mean.float().cpu(), var.sqrt().float().cpu())
    return out
