"""Sparse autoencoder kinds in a registry (overcomplete's shape: a small module per kind).

Every kind shares one linear encoder/decoder pair and differs only in its activation:

- ``relu``: ReLU codes, sparsity from an L1 penalty in the loss (the kind Mammo-SAE trains);
- ``topk``: the k largest pre-activations per token, ReLU'd (Gao et al. 2024);
- ``batchtopk``: the ``k x B`` largest pre-activations over a batch of B tokens while training, a
  learned threshold at inference (Bussmann et al. 2024), so tokens may use more or fewer than k.

Shared conventions (Gao et al. 2024; Bricken et al. 2023):

- inputs are scaled by one scalar so that their mean norm is 1 (``input_scale``, set from data at
  the start of training): losses, learning rates and L1 coefficients then do not depend on the
  layer's activation scale. ``encode`` takes and ``decode`` returns activations in the model's own
  units; the scale is applied inside.
- decoder rows (the dictionary atoms, ``W_dec`` is ``(d_sae, d)``) have unit norm; ``train`` keeps
  them so after each step and removes the gradient component parallel to each atom.
- ``b_dec`` is initialised at the data mean (or geometric median) and subtracted before encoding.
- ``tokens_since_fired`` counts, per latent, the training tokens seen since it last fired: a
  latent is *dead* when that count exceeds ``dead_after`` (AuxK revives them, see ``losses``).

Add a kind with ``@register_kind("name")`` on a subclass of :class:`SAE` overriding ``activate``.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn

from workbench._registry import Registry

KINDS: Registry[type["SAE"]] = Registry("SAE kind")


def register_kind(name: str):
    """Class decorator: register an :class:`SAE` subclass under ``name`` (sets ``cls.kind``)."""

    def add(cls: type["SAE"]) -> type["SAE"]:
        cls.kind = name
        KINDS.register(name, cls)
        return cls

    return add


class SAEOutput(NamedTuple):
    """What ``SAE.forward`` returns.

    Attributes:
        x_hat: (..., d) reconstruction, in the input's units.
        codes: (..., d_sae) sparse non-negative latent activations.
        pre: (..., d_sae) pre-activations (AuxK picks dead latents from them).
    """

    x_hat: torch.Tensor
    codes: torch.Tensor
    pre: torch.Tensor


class SAE(nn.Module):
    """A sparse autoencoder ``x -> codes -> x_hat`` over ``d``-dimensional activations.

    Args:
        d: input width (the layer's channels / token width).
        d_sae: number of latents (``expansion * d``).
        k: active latents per token (TopK, BatchTopK); unused by ``relu``.
        source: where the training activations came from (model config and fingerprint, layer,
            token layout: the store's manifest, see ``workbench.sae.store``); used to refuse an SAE
            applied to another model or layer than it was trained on.

    Attributes:
        W_enc: (d, d_sae); b_enc: (d_sae,); W_dec: (d_sae, d) unit-norm rows; b_dec: (d,).
        input_scale: scalar buffer, inputs are multiplied by it before encoding.
        tokens_since_fired: (d_sae,) buffer, training tokens since each latent last fired.

    Examples:
        >>> sae = create("topk", d=16, expansion=4, k=4)
        >>> out = sae(torch.randn(8, 16))
        >>> out.codes.shape, int((out.codes > 0).sum(-1).max()) <= 4
        (torch.Size([8, 64]), True)
    """

    kind = "base"
    uses_k = False  # whether the kind takes k (TopK, BatchTopK)

    def __init__(self, d: int, d_sae: int, *, k: int | None = None, source: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.d, self.d_sae, self.k = int(d), int(d_sae), None if k is None else int(k)
        self.source = dict(source or {})
        w = torch.randn(self.d_sae, self.d)
        w = w / w.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(w)
        self.W_enc = nn.Parameter(w.t().clone())  # tied at init (Gao et al.), trained apart
        self.b_enc = nn.Parameter(torch.zeros(self.d_sae))
        self.b_dec = nn.Parameter(torch.zeros(self.d))
        self.register_buffer("input_scale", torch.ones(()))
        self.register_buffer("tokens_since_fired", torch.zeros(self.d_sae, dtype=torch.float64))

    # -- the four methods -----------------------------------------------------------------------
    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """(..., d) activations -> (..., d_sae) pre-activations ``(s x - b_dec) W_enc + b_enc``.

        Computed as ``(s x) W_enc + (b_enc - b_dec W_enc)``: the same numbers, but the gradient for
        ``b_dec`` then costs a vector-matrix product instead of a batch-sized matrix product."""
        x = x.to(self.W_enc.dtype) * self.input_scale
        return torch.addmm(self.b_enc - self.b_dec @ self.W_enc, x.reshape(-1, self.d), self.W_enc).view(
            *x.shape[:-1], self.d_sae)

    def activate(self, pre: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """(..., d_sae) pre-activations -> sparse non-negative codes (the kind's rule)."""
        raise NotImplementedError

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(..., d) activations -> (..., d_sae) sparse non-negative codes."""
        return self.activate(self.pre_activations(x))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(..., d_sae) codes -> (..., d) reconstruction in the input's units."""
        flat = torch.addmm(self.b_dec, codes.reshape(-1, self.d_sae), self.W_dec)
        return flat.view(*codes.shape[:-1], self.d) / self.input_scale

    def forward(self, x: torch.Tensor) -> SAEOutput:
        pre = self.pre_activations(x)
        codes = self.activate(pre)
        return SAEOutput(self.decode(codes), codes, pre)

    @property
    def dictionary(self) -> torch.Tensor:
        """(d_sae, d) the dictionary atoms (decoder rows, unit norm, in normalised input units)."""
        return self.W_dec

    # -- bookkeeping ----------------------------------------------------------------------------
    @property
    def expansion(self) -> float:
        return self.d_sae / self.d

    def config(self) -> dict[str, Any]:
        """Everything needed to rebuild this SAE (saved as JSON beside the weights)."""
        return {"kind": self.kind, "d": self.d, "d_sae": self.d_sae, "k": self.k, "source": self.source,
                **self._extra_config()}

    def _extra_config(self) -> dict[str, Any]:
        return {}

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Rescale decoder rows to unit norm (in place)."""
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8))

    @torch.no_grad()
    def remove_parallel_grads_(self) -> None:
        """Project out of ``W_dec.grad`` the component along each (unit) atom, so a step does not
        change atom norms to first order (Bricken et al. 2023)."""
        g = self.W_dec.grad
        if g is not None:
            g.sub_((g * self.W_dec).sum(1, keepdim=True) * self.W_dec)

    @torch.no_grad()
    def finish_training_(self, sample: torch.Tensor) -> None:
        """Called by ``train`` at its end with a sample of training tokens (BatchTopK calibrates its
        inference threshold here); nothing by default."""

    @torch.no_grad()
    def training_selection(self, pre: torch.Tensor) -> Any:
        """The active entries of a training batch's ``(B, d_sae)`` pre-activations as a
        ``workbench.sae._sparse.Selection`` (the sparse training step), or None to train this
        batch with the dense step. The values must equal what ``activate`` keeps."""
        return None

    def dead_mask(self, dead_after: float) -> torch.Tensor:
        """(d_sae,) bool: latents that have not fired for more than ``dead_after`` training tokens."""
        return self.tokens_since_fired > dead_after

    def extra_repr(self) -> str:
        k = f", k={self.k}" if self.k is not None else ""
        return f"kind={self.kind!r}, d={self.d}, d_sae={self.d_sae}{k}"


@register_kind("relu")
class ReLUSAE(SAE):
    """ReLU codes; sparsity comes from an L1 penalty in the loss (``losses.l1``). Mammo-SAE's kind."""

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        return torch.relu(pre)

    @torch.no_grad()
    def training_selection(self, pre: torch.Tensor) -> Any:
        from ._sparse import positive_selection

        return positive_selection(pre)


@register_kind("topk")
class TopKSAE(SAE):
    """The ``k`` largest pre-activations of each token, ReLU'd; the rest are zero (Gao et al. 2024)."""

    uses_k = True

    def __init__(self, d: int, d_sae: int, *, k: int | None = 32, source: dict[str, Any] | None = None) -> None:
        _check_k(k, d_sae)
        super().__init__(d, d_sae, k=k, source=source)

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        vals, idx = pre.topk(self.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter_(-1, idx, torch.relu(vals))

    @torch.no_grad()
    def training_selection(self, pre: torch.Tensor) -> Any:
        from ._sparse import topk_selection

        return topk_selection(pre, self.k)


@register_kind("batchtopk")
class BatchTopKSAE(SAE):
    """BatchTopK (Bussmann et al. 2024): in training, the ``k x B`` largest positive pre-activations
    over a batch of ``B`` tokens are kept; at inference, every pre-activation above ``threshold``
    (a running mean of the smallest kept value over training batches) is kept, so each token is
    encoded independently of its batch."""

    uses_k = True

    def __init__(self, d: int, d_sae: int, *, k: int | None = 32, source: dict[str, Any] | None = None,
                 threshold_momentum: float = 0.99) -> None:
        _check_k(k, d_sae)
        super().__init__(d, d_sae, k=k, source=source)
        self.threshold_momentum = float(threshold_momentum)
        self.register_buffer("threshold", torch.full((), float("nan")))

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        if not self.training:
            if torch.isnan(self.threshold):
                raise ValueError("this BatchTopK SAE has no inference threshold yet; train it with "
                                 "workbench.sae.train (or call .train() to encode in batch mode).")
            return torch.where(pre > self.threshold, pre, torch.zeros_like(pre))
        flat = torch.relu(pre).flatten()
        n_keep = min(self.k * max(1, flat.numel() // self.d_sae), flat.numel())
        vals, idx = flat.topk(n_keep, sorted=False)
        codes = torch.zeros_like(flat).scatter_(0, idx, vals).view_as(pre)
        self._track_threshold(vals)
        return codes

    @torch.no_grad()
    def _track_threshold(self, kept: torch.Tensor) -> None:
        pos = kept[kept > 0]
        if pos.numel():
            t = pos.min().float()
            m = self.threshold_momentum
            self.threshold.copy_(t if torch.isnan(self.threshold) else m * self.threshold + (1 - m) * t)

    @torch.no_grad()
    def training_selection(self, pre: torch.Tensor) -> Any:
        from ._sparse import batch_topk_selection

        sel = batch_topk_selection(pre, self.k)
        self._track_threshold(sel.values)
        return sel

    @torch.no_grad()
    def finish_training_(self, sample: torch.Tensor) -> None:
        """Set ``threshold`` so that the sample's mean L0 at inference is ``k``: the ``k x N``-th
        largest pre-activation of ``N`` tokens. The running mean tracked during training lags behind
        the last steps (with momentum 0.99 it gave half the L0 on a short run), so it is replaced."""
        pre = torch.relu(self.pre_activations(sample.to(self.W_enc.device))).flatten()
        n_keep = min(self.k * sample.shape[0], pre.numel())
        t = pre.topk(n_keep, sorted=False).values.min()
        if t > 0:
            self.threshold.copy_(t)

    def _extra_config(self) -> dict[str, Any]:
        return {"threshold_momentum": self.threshold_momentum}


def _check_k(k: Any, d_sae: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k (active latents per token) must be a positive int; got {k!r}.")
    if k > d_sae:
        raise ValueError(f"k={k} is larger than the dictionary ({d_sae} latents); pick k <= d_sae, "
                         f"typically 8-64, or raise expansion.")


def create(kind: str, d: int, *, expansion: float = 8, d_sae: int | None = None, k: int | None = 32,
           source: dict[str, Any] | None = None, **kw: Any) -> SAE:
    """Create an untrained SAE of a registered kind (``KINDS.names()``).

    Args:
        kind: "relu", "topk", "batchtopk" (or a registered name).
        d: input width.
        expansion: ``d_sae = round(expansion * d)`` when ``d_sae`` is not given.
        d_sae: number of latents (overrides ``expansion``).
        k: active latents per token for TopK / BatchTopK (ignored by ``relu``).
        source: provenance of the training activations (see :class:`SAE`).
        **kw: kind-specific options (``threshold_momentum`` for batchtopk).
    """
    cls = KINDS.get(kind)
    if isinstance(d, bool) or not isinstance(d, int) or d < 1:
        raise ValueError(f"d (the activation width) must be a positive int; got {d!r}.")
    if d_sae is None:
        if not isinstance(expansion, (int, float)) or expansion <= 0:
            raise ValueError(f"expansion must be a positive number (8 gives 8 x d latents); got {expansion!r}.")
        d_sae = max(1, int(round(expansion * d)))
    elif isinstance(d_sae, bool) or not isinstance(d_sae, int) or d_sae < 1:
        raise ValueError(f"d_sae must be a positive int; got {d_sae!r}.")
    if cls.uses_k:
        return cls(d, d_sae, k=k, source=source, **kw)
    return cls(d, d_sae, source=source, **kw)
