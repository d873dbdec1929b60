"""SAE losses as plain functions with one signature: ``loss(x, x_hat, codes, **kw) -> scalar``.

``x`` and ``x_hat`` are ``(B, d)`` activations in the model's units, ``codes`` ``(B, d_sae)``.
Reconstruction is measured as a fraction of variance unexplained (scale-free, so one learning rate
and one L1 coefficient serve every layer); sparsity penalties act on codes, which live in the
SAE's normalised units (inputs scaled to unit mean norm, unit-norm atoms).
"""
from __future__ import annotations

import torch


def fvu(x: torch.Tensor, x_hat: torch.Tensor, codes: torch.Tensor | None = None, **_: object) -> torch.Tensor:
    """Fraction of variance unexplained: ``sum |x - x_hat|^2 / sum |x - mean(x)|^2`` over the batch.

    Examples:
        >>> x = torch.randn(64, 8)
        >>> float(fvu(x, x)), round(float(fvu(x, x.mean(0).expand_as(x))), 6)
        (0.0, 1.0)
    """
    x = x.float()
    err = (x - x_hat.float()).pow(2).sum()
    var = (x - x.mean(0, keepdim=True)).pow(2).sum()
    return err / var.clamp_min(torch.finfo(var.dtype).tiny)


def l1(x: torch.Tensor, x_hat: torch.Tensor, codes: torch.Tensor, *, coef: float = 1.0, **_: object) -> torch.Tensor:
    """``coef`` times the mean over tokens of the L1 norm of the codes (ReLU SAEs, Mammo-SAE)."""
    return coef * codes.float().abs().sum(-1).mean()


def auxk(x: torch.Tensor, x_hat: torch.Tensor, codes: torch.Tensor, *, pre: torch.Tensor, dead: torch.Tensor,
         dictionary: torch.Tensor, scale: torch.Tensor | float, k_aux: int, **_: object) -> torch.Tensor:
    """AuxK (Gao et al. 2024): reconstruct the residual ``x - x_hat`` from the ``k_aux`` largest
    pre-activations among dead latents only, as an FVU of the residual. Its gradient reaches the
    dead latents, which otherwise get none; zero when no latent is dead.

    Args:
        pre: (B, d_sae) pre-activations.
        dead: (d_sae,) bool mask of dead latents.
        dictionary: (d_sae, d) atoms, in normalised units.
        scale: the SAE's input scale (normalised = model units x scale).
        k_aux: latents used per token (capped by the number of dead latents).
    """
    n_dead = int(dead.sum())
    if n_dead == 0 or k_aux < 1:
        return pre.new_zeros(())
    k = min(int(k_aux), n_dead)
    masked = pre.float().masked_fill(~dead, float("-inf"))
    vals, idx = masked.topk(k, dim=-1, sorted=False)
    aux_codes = torch.zeros_like(masked).scatter_(-1, idx, torch.relu(vals))
    residual = (x.float() - x_hat.float()).detach()
    residual_hat = (aux_codes @ dictionary.float()) / scale
    return fvu(residual, residual_hat)
