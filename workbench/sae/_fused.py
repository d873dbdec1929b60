"""A fused dense training step for ReLU SAEs (one autograd node from the encoder to the decoder).

A ReLU SAE early in training (and at Mammo-SAE's L1 coefficients) has 10-50 % of its latents active,
too many for the sparse step (``workbench.sae._sparse``), so the five batch-sized matrix products
are dense. What autograd adds around them is elementwise work over ``(B, d_sae)`` tensors:
a new tensor for the ReLU, ``abs`` and its ``sgn`` backward for the L1 term, ``threshold_backward``
into another new tensor, and the step statistics as boolean reductions. Measured on this CPU
(d = 192, x8, batch 4096, one thread, torch 2.14): a boolean ``(codes > 0).sum()`` took 33 ms and
``count_nonzero`` 27 ms against 3.4 ms for ``sign().sum()``, while each product takes 14-22 ms.
Here the ReLU is applied in place, the L1 term is a plain sum (the codes are non-negative), its
gradient is added in place to the codes' gradient, the ReLU's backward is written into that same
tensor, and the statistics are per-latent counts from one ``sign`` and one column sum. The
numbers equal the autograd step's (tested); `train` ran 1.5x faster here (22k -> 33k tokens/s).
Peers (saev, Overcomplete, SAELens) build their step from autograd and pay those passes.
"""
from __future__ import annotations

from typing import NamedTuple

import torch


class FusedOut(NamedTuple):
    x_hat: torch.Tensor     # (B, d) reconstruction in the SAE's normalised units
    l1_sum: torch.Tensor    # sum of the codes (they are >= 0): the L1 norm summed over the batch
    counts: torch.Tensor    # (d_sae,) tokens of the batch on which each latent fired (float)


class _ReluStep(torch.autograd.Function):
    """The encoder bias rides in the encoder product: ``[xn, 1] @ [w_enc; b_eff]`` (no broadcast copy
    of the bias into the (B, d_sae) output, and the bias gradient comes out of the weight gradient's
    product instead of a column sum)."""

    @staticmethod
    def forward(ctx, xn, w_enc, b_eff, w_dec, b_dec):  # noqa: D102 - autograd protocol
        ctx.set_materialize_grads(False)   # an unused output (l1_sum without L1) gets None, not a zero pass
        xn1 = torch.cat([xn, xn.new_ones(xn.shape[0], 1)], 1)
        codes = (xn1 @ torch.cat([w_enc, b_eff[None]], 0)).clamp_min_(0)
        x_hat = torch.addmm(b_dec, codes, w_dec)
        ctx.save_for_backward(xn1, w_dec, codes)
        counts = torch.sign(codes).sum(0)
        ctx.mark_non_differentiable(counts)
        return x_hat, codes.sum(), counts

    @staticmethod
    def backward(ctx, g, g_l1, _counts):  # noqa: D102
        xn1, w_dec, codes = ctx.saved_tensors
        if g is None:
            g = torch.zeros(codes.shape[0], w_dec.shape[1], dtype=codes.dtype, device=codes.device)
        g = g.contiguous()
        gc = g @ w_dec.t()
        if g_l1 is not None:
            gc.add_(g_l1)
        # the ReLU's backward, written into gc itself: zero where the code is 0
        torch.ops.aten.threshold_backward.grad_input(gc, codes, 0.0, grad_input=gc)
        grad_w_enc = grad_b = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            grad_w1 = xn1.t() @ gc   # (d + 1, d_sae): the last row is the bias gradient, gc.sum(0)
            grad_w_enc, grad_b = grad_w1[:-1], grad_w1[-1]
        grad_w_dec = codes.t() @ g if ctx.needs_input_grad[3] else None
        grad_b_dec = g.sum(0) if ctx.needs_input_grad[4] else None
        return None, grad_w_enc, grad_b, grad_w_dec, grad_b_dec


def relu_step(xn: torch.Tensor, w_enc: torch.Tensor, b_eff: torch.Tensor, w_dec: torch.Tensor,
              b_dec: torch.Tensor) -> FusedOut:
    """``codes = relu(xn w_enc + b_eff)``, ``x_hat = codes w_dec + b_dec`` with gradients for every
    weight; ``xn`` is (B, d) in normalised units and is not differentiated."""
    return FusedOut(*_ReluStep.apply(xn, w_enc, b_eff, w_dec, b_dec))
