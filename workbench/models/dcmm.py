"""DCMM attention: a degree-corrected mixed-membership bias on a ViT's attention logits.

After the DCMM-Transformer (Cheng et al., AAAI 2026). Per layer, and per head by default, from the
(normalised, unscaled) queries ``Q`` of the ``N`` tokens:

- memberships ``Pi = softmax(Q' W_pi / tau)``, ``(N, K)``, every row on the simplex, where ``Q'``
  is Q scaled to unit RMS per token (memberships do not depend on the scale of the query
  weights, so they are distinct, not uniform, already at initialisation);
- degrees ``theta = softplus(Q' w_theta + b_theta)``, ``(N,)``, positive;
- a symmetric block matrix ``B = sigmoid((L + L^T) / 2)``, ``(K, K)``, entries in (0, 1);
- the expected-adjacency bias ``P = diag(theta) Pi B Pi^T diag(theta)``, ``(N, N)``;
- attention ``softmax(Q K^T / sqrt(d) + lambda * P)`` with a learnable ``lambda`` (one per head).

The bias is passed to ``F.scaled_dot_product_attention`` as a float ``attn_mask``, so fused
attention is kept; the non-fused path (used by ``workbench.attention`` to capture the
probabilities) calls ``self.attn_drop(attn)`` exactly like timm's ``Attention``.

Notes:
    The paper's exact parameterisation (where the memberships are computed from, how ``B`` and
    ``lambda`` are constrained and initialised) could not be confirmed here. Defaults: K=4, per
    head, tau=1, lambda=1 at init (with 0.1 and un-normalised queries the bias was ~constant
    across keys at initialisation, so the softmax ignored it and a trained DCMM-ViT matched the
    plain ViT to 1e-4). The form above is this package's default; it lives in :meth:`DCMMAttention.structure` and :class:`DCMMMembership`, so a
    subclass can swap it. Prefix tokens (CLS, register, distillation) get memberships and
    degrees like patches: the model learns how they mix with the communities;
    ``workbench.attention`` reports ``pi``/``theta`` for all ``N`` tokens (prefix tokens first,
    exactly like the attention matrices) and downstream code slices off ``num_prefix_tokens``.
"""
from __future__ import annotations

import copy
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from workbench.capture import select_layers

__all__ = ["DCMMAttention", "DCMMMembership", "enable_dcmm", "dcmm_parameters", "dcmm_modules"]

DEFAULT_LAM_INIT = 1.0


def _fused_default() -> bool:
    try:
        from timm.layers import use_fused_attn

        return bool(use_fused_attn())
    except Exception:  # pragma: no cover - timm missing or older
        return hasattr(F, "scaled_dot_product_attention")


class DCMMMembership(nn.Module):
    """Memberships and degrees from queries.

    Args:
        head_dim: per-head query dimension d.
        num_heads: heads H of the attention.
        communities: K.
        per_head: one (W_pi, w_theta) per head (memberships from each head's queries), else one
            shared set computed from the concatenated queries of all heads.
        tau: softmax temperature of the memberships.

    Shapes:
        input ``q``: ``(B, H, N, d)``; outputs ``pi``: ``(B, Hd, N, K)``, ``theta``: ``(B, Hd, N)``
        with ``Hd = H`` if per_head else 1.
    """

    def __init__(self, head_dim: int, num_heads: int, communities: int = 4, per_head: bool = True,
                 tau: float = 1.0, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.per_head = bool(per_head)
        self.num_heads = int(num_heads)
        self.communities = int(communities)
        self.tau = float(tau)
        hd = self.num_heads if self.per_head else 1
        in_dim = head_dim if self.per_head else head_dim * num_heads
        self.w_pi = nn.Parameter(torch.randn(hd, in_dim, self.communities, **dd) * in_dim ** -0.5)
        self.w_theta = nn.Parameter(torch.zeros(hd, in_dim, **dd))
        self.b_theta = nn.Parameter(torch.zeros(hd, **dd))

    def forward(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.per_head:
            b, h, n, d = q.shape
            q = q.transpose(1, 2).reshape(b, 1, n, h * d)
        q = q * torch.rsqrt(q.pow(2).mean(dim=-1, keepdim=True) + 1e-6)  # unit RMS per token
        w_pi = self.w_pi.to(q.dtype)
        pi = torch.matmul(q, w_pi.unsqueeze(0)).div(self.tau).softmax(dim=-1)
        theta = F.softplus(torch.matmul(q, self.w_theta.to(q.dtype).unsqueeze(-1)).squeeze(-1)
                           + self.b_theta.to(q.dtype).view(1, -1, 1))
        return pi, theta

    def extra_repr(self) -> str:
        return f"communities={self.communities}, per_head={self.per_head}, tau={self.tau}"


class DCMMAttention(nn.Module):
    """Drop-in replacement for timm's ``Attention`` with the DCMM bias (see the module docstring).

    Same submodules and weight layout as ``timm.layers.Attention`` (``qkv``, ``q_norm``,
    ``k_norm``, ``attn_drop``, ``norm``, ``proj``, ``proj_drop``), plus ``membership``
    (:class:`DCMMMembership`), ``block_logits`` ``(Hd, K, K)`` and ``lam`` ``(Hd,)``.
    Build one from an existing timm attention with :meth:`from_attention`.

    Args:
        dim: token dimension C.
        num_heads: heads H.
        head_dim: per-head dimension (default ``dim // num_heads``).
        qkv_bias, qk_norm, proj_bias, attn_drop, proj_drop, norm_layer: as in timm.
        communities: K, number of communities.
        per_head: a separate DCMM (memberships, B, lambda) per head, else one shared by all heads.
        tau: membership softmax temperature.
        lam_init: initial bias strength lambda (learnable; default 1.0).

    Shapes:
        ``x``: ``(B, N, C)`` -> ``(B, N, C)``.

    Examples:
        >>> a = DCMMAttention(dim=32, num_heads=4, communities=3)
        >>> a(torch.zeros(2, 5, 32)).shape
        torch.Size([2, 5, 32])
    """

    def __init__(self, dim: int, num_heads: int = 8, head_dim: int | None = None, qkv_bias: bool = False,
                 qk_norm: bool = False, proj_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, norm_layer: Any = None, *, communities: int = 4,
                 per_head: bool = True, tau: float = 1.0, lam_init: float = DEFAULT_LAM_INIT,
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        _check_dcmm_args(communities, tau, lam_init)
        dd = {"device": device, "dtype": dtype}
        if head_dim is None:
            if dim % num_heads:
                raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}; pass head_dim.")
            head_dim = dim // num_heads
        if qk_norm and norm_layer is None:
            norm_layer = nn.LayerNorm
        self.num_heads = int(num_heads)
        self.head_dim = int(head_dim)
        self.attn_dim = self.num_heads * self.head_dim
        self.scale = self.head_dim ** -0.5
        self.fused_attn = _fused_default()
        self.qkv = nn.Linear(dim, self.attn_dim * 3, bias=qkv_bias, **dd)
        self.q_norm = norm_layer(self.head_dim, **dd) if qk_norm else nn.Identity()
        self.k_norm = norm_layer(self.head_dim, **dd) if qk_norm else nn.Identity()
        self.attn_drop = nn.Dropout(attn_drop)
        self.norm = nn.Identity()
        self.gate: nn.Module | None = None
        self.proj = nn.Linear(self.attn_dim, dim, bias=proj_bias, **dd)
        self.proj_drop = nn.Dropout(proj_drop)
        self.membership = DCMMMembership(self.head_dim, self.num_heads, communities, per_head, tau, **dd)
        hd = self.num_heads if per_head else 1
        k = int(communities)
        # B starts assortative: sigmoid(2) ~ 0.88 within, sigmoid(-2) ~ 0.12 between communities
        self.block_logits = nn.Parameter((4.0 * torch.eye(k, **dd) - 2.0).expand(hd, k, k).clone())
        self.lam = nn.Parameter(torch.full((hd,), float(lam_init), **dd))

    # -- the swappable parameterisation -------------------------------------------------
    @property
    def communities(self) -> int:
        return self.membership.communities

    @property
    def per_head(self) -> bool:
        return self.membership.per_head

    def block(self) -> torch.Tensor:
        """The symmetric block matrix B, ``(Hd, K, K)``, entries in (0, 1)."""
        sym = 0.5 * (self.block_logits + self.block_logits.transpose(-1, -2))
        return torch.sigmoid(sym)

    def structure(self, pi: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """``P = diag(theta) Pi B Pi^T diag(theta)``: ``(B, Hd, N, K)``, ``(B, Hd, N)`` -> ``(B, Hd, N, N)``."""
        p = torch.matmul(torch.matmul(pi, self.block().to(pi.dtype).unsqueeze(0)), pi.transpose(-1, -2))
        return p * theta.unsqueeze(-1) * theta.unsqueeze(-2)

    def dcmm_bias(self, q: torch.Tensor) -> torch.Tensor:
        """The additive logit bias ``lambda * P`` from queries ``(B, H, N, d)`` -> ``(B, Hd, N, N)``."""
        pi, theta = self.membership(q)
        # = lam * diag(theta) Pi B Pi^T diag(theta), with theta and lam folded into the small factors
        x = pi * theta.unsqueeze(-1)  # (B, Hd, N, K)
        lam_b = self.lam.to(q.dtype).view(-1, 1, 1) * self.block().to(q.dtype)  # (Hd, K, K)
        return torch.matmul(torch.matmul(x, lam_b.unsqueeze(0)), x.transpose(-1, -2))

    # -- forward ---------------------------------------------------------------------
    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        b, n, _ = x.shape
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        bias = self.dcmm_bias(q).to(q.dtype)
        if is_causal:
            bias = bias + q.new_full((n, n), float("-inf")).triu_(1)
        if attn_mask is not None:
            if attn_mask.dtype == torch.bool:
                attn_mask = torch.zeros_like(attn_mask, dtype=q.dtype).masked_fill_(~attn_mask, float("-inf"))
            bias = bias + attn_mask
        if self.fused_attn:
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                               dropout_p=self.attn_drop.p if self.training else 0.0)
        else:
            attn = torch.matmul(q * self.scale, k.transpose(-2, -1)) + bias
            attn = attn.softmax(dim=-1)
            attn = self.attn_drop(attn)
            x = torch.matmul(attn, v)
        x = x.transpose(1, 2).reshape(b, n, self.attn_dim)
        x = self.norm(x)
        if gate is not None:
            x = x * gate
        return self.proj_drop(self.proj(x))

    @classmethod
    def from_attention(cls, attn: nn.Module, *, communities: int = 4, per_head: bool = True, tau: float = 1.0,
                       lam_init: float = DEFAULT_LAM_INIT) -> "DCMMAttention":
        """A DCMMAttention with copies of ``attn``'s submodules and weights (timm ``Attention`` layout)."""
        missing = [a for a in ("qkv", "proj", "num_heads", "head_dim") if not hasattr(attn, a)]
        if missing:
            raise TypeError(f"{type(attn).__name__} lacks {missing}; from_attention needs a timm "
                            "Attention-like module (qkv, proj, num_heads, head_dim).")
        w = attn.qkv.weight
        new = cls(attn.qkv.in_features, attn.num_heads, head_dim=attn.head_dim, communities=communities,
                  per_head=per_head, tau=tau, lam_init=lam_init, device=w.device, dtype=w.dtype)
        for name in ("qkv", "q_norm", "k_norm", "attn_drop", "norm", "proj", "proj_drop"):
            if hasattr(attn, name):
                setattr(new, name, copy.deepcopy(getattr(attn, name)))
        new.gate = copy.deepcopy(getattr(attn, "gate", None))
        new.scale = float(getattr(attn, "scale", new.scale))
        new.fused_attn = bool(getattr(attn, "fused_attn", new.fused_attn))
        new.train(attn.training)
        return new


def _check_dcmm_args(communities: Any, tau: Any, lam_init: Any) -> None:
    if isinstance(communities, bool) or not isinstance(communities, int) or communities < 1:
        raise ValueError(f"communities must be a positive int (K); got {communities!r}.")
    if not isinstance(tau, (int, float)) or not tau > 0:
        raise ValueError(f"tau must be a positive number (membership temperature); got {tau!r}.")
    if not isinstance(lam_init, (int, float)):
        raise TypeError(f"lam_init must be a number; got {type(lam_init).__name__}.")


def _timm_attention_modules(model: nn.Module) -> dict[str, nn.Module]:
    from timm.layers import Attention

    return {n: m for n, m in model.named_modules() if isinstance(m, Attention)}


def dcmm_modules(model: nn.Module) -> dict[str, DCMMAttention]:
    """``{name: DCMMAttention}`` of a model, in forward order (empty when it has none)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, DCMMAttention)}


def enable_dcmm(model: nn.Module, communities: int = 4, per_head: bool = True, tau: float = 1.0,
                lam_init: float = DEFAULT_LAM_INIT, layers: Sequence[int | str] | None = None) -> nn.Module:
    """Replace a timm ViT's ``Attention`` modules by :class:`DCMMAttention`, IN PLACE.

    The existing ``qkv``/``proj`` (and norm) weights are copied, so a trained or pretrained ViT
    keeps its function up to the (small, ``lam_init``) bias. The model is modified in place and
    returned (``workbench.models.create(..., attention="dcmm")`` builds a fresh model and calls
    this); ``copy.deepcopy`` the model first to keep the original.

    Args:
        model: a timm model with ``timm.layers.Attention`` modules (VisionTransformer, DeiT, ...).
        communities: K communities.
        per_head: a DCMM per head (default) or one shared by the heads of a layer.
        tau: membership softmax temperature.
        lam_init: initial bias strength (learnable; default 1.0).
        layers: which attention modules: indices into the list of attention modules (negative
            allowed) or names such as ``"blocks.3.attn"``; None = all.

    Returns:
        The same model object.

    Examples:
        >>> import timm
        >>> m = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, num_classes=2)
        >>> m = enable_dcmm(m, communities=3)
        >>> type(m.blocks[0].attn).__name__
        'DCMMAttention'
    """
    _check_dcmm_args(communities, tau, lam_init)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch nn.Module; got {type(model).__name__}.")
    found = _timm_attention_modules(model)
    if not found:
        raise ValueError(f"{type(model).__name__} has no timm.layers.Attention modules; enable_dcmm supports "
                         "timm VisionTransformer-family models (vit_*, deit_*; e.g. "
                         "workbench.models.create('vit_tiny', ..., attention='dcmm')).")
    for name in select_layers(found, layers):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, DCMMAttention.from_attention(found[name], communities=communities, per_head=per_head,
                                                             tau=tau, lam_init=lam_init))
    return model


def dcmm_parameters(model: nn.Module) -> dict[str, dict[str, Any]]:
    """The learned DCMM quantities of every DCMM layer (detached copies).

    Returns:
        ``{name: {"block": (Hd, K, K), "lam": (Hd,), "tau": float, "communities": K,
        "per_head": bool}}`` in forward order.
    """
    out = {}
    for name, mod in dcmm_modules(model).items():
        with torch.no_grad():
            out[name] = {"block": mod.block().detach().clone(), "lam": mod.lam.detach().clone(),
                         "tau": mod.membership.tau, "communities": mod.communities, "per_head": mod.per_head}
    return out
