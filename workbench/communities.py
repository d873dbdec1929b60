"""Communities of patches: a ViT's own DCMM memberships or post-hoc fits on its attention graph.

``communities(model_or_maps, images, k=K, method=...)`` returns a :class:`Communities` result
(soft memberships, hard map, degrees) for every image. Methods live in the ``METHODS`` registry:

- ``"dcmm"``: the memberships ``Pi`` and degrees ``theta`` that a DCMM-ViT computes itself
  (``workbench.models.create(..., attention="dcmm")``), for the patch tokens of one layer; the
  mean over heads when ``head`` is None. Community ``k`` means the same thing in every image.
- ``"mixed_score"``: Mixed-SCORE (Jin, Ke & Luo), the estimator of the degree-corrected mixed
  membership model, on the patch-to-patch attention graph of each image (see :func:`mixed_score`).
- ``"spectral"``: spectral clustering of the normalised attention graph (hard, one-hot).
- ``"kmeans"``: k-means on the rows of the row-normalised attention graph, i.e. each patch is
  described by where it sends its attention (hard, one-hot). Hook-free and model-agnostic.

Post-hoc communities are fitted per image, so their indices are arbitrary; they are ordered by
the mass-weighted mean position (row-major) of their patches so colours are stable-ish between
layers and heads. Only DCMM indices are comparable across images.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from ._registry import Registry

MethodFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]
METHODS: Registry[MethodFn] = Registry("community method")

__all__ = ["Communities", "communities", "attention_graph", "mixed_score", "spectral_communities",
           "kmeans_communities", "METHODS"]


@dataclass(frozen=True)
class Communities:
    """Patch communities for a batch of images.

    Attributes:
        memberships: (B, h*w, K) soft memberships, rows on the simplex (one-hot for hard methods).
        hard: (B, h, w) long, the argmax community of each patch.
        degrees: (B, h*w) degree (popularity) of each patch, mean 1 per image.
        grid: (h, w) patch grid.
        k: number of communities K.
        method: the method name.
        layer: the layer index used.
        head: the head used, or None for the mean over heads.
        image_size: (H, W) of the images the maps come from, when known.
    """

    memberships: torch.Tensor
    hard: torch.Tensor
    degrees: torch.Tensor
    grid: tuple[int, int]
    k: int
    method: str
    layer: int
    head: int | None
    image_size: tuple[int, int] | None = None

    def __len__(self) -> int:
        return self.memberships.shape[0]

    def plot(self, image: torch.Tensor | None = None, index: int = 0, ax: Any = None, **style: Any) -> Any:
        """Overlay image ``index`` with its communities (see ``workbench.viz.community_overlay``).

        Args:
            image: (B, C, H, W), (C, H, W) or (H, W) image(s); a grey canvas when None.
            index: which image of the batch.
            ax: a matplotlib Axes, or None for a new Figure.
            **style: passed to ``community_overlay`` (masks, structures, alpha, soft, legend).
        """
        from .viz.overlays import community_overlay

        return community_overlay(image, self, index, ax=ax, **style)


# ----------------------------------------------------------------------------------------------
# the attention graph


def _layer_index(n_layers: int, layer: int) -> int:
    if not isinstance(layer, (int, np.integer)) or not -n_layers <= int(layer) < n_layers:
        raise ValueError(f"layer={layer!r} is out of range for maps with {n_layers} layers; "
                         f"pass an integer in [{-n_layers}, {n_layers - 1}] (-1 = last).")
    return int(layer) % n_layers


def attention_graph(maps: Any, layer: int = -1, head: int | None = None) -> torch.Tensor:
    """The symmetrised patch-to-patch attention graph ``A = (W + W^T) / 2`` of one layer.

    Args:
        maps: an ``AttentionMaps`` (``attentions``: per layer (B, heads, N, N), ``grid``,
            ``num_prefix_tokens``).
        layer: layer index into ``maps.attentions`` (negative counts from the end).
        head: a head index, or None for the mean over heads.

    Returns:
        (B, h*w, h*w) float64, symmetric, non-negative; prefix (CLS, register) tokens dropped.
    """
    att = maps.attentions
    li = _layer_index(len(att), layer)
    w = att[li]
    if w.ndim != 4 or w.shape[-1] != w.shape[-2]:
        raise ValueError(f"attention of layer {li} must be (B, heads, N, N); got {tuple(w.shape)}.")
    if head is not None and not -w.shape[1] <= int(head) < w.shape[1]:
        raise ValueError(f"head={head} is out of range: layer {li} has {w.shape[1]} heads "
                         "(pass None for the mean over heads).")
    p = int(maps.num_prefix_tokens)
    h, wd = maps.grid
    # numpy from here: small arrays, where torch's intra-op threads only add overhead
    x = w.detach().cpu().float().numpy()
    x = x.mean(1, dtype=np.float64) if head is None else x[:, int(head)].astype(np.float64)
    x = x[:, p:, p:]
    if x.shape[-1] != h * wd:
        raise ValueError(f"maps have {x.shape[-1]} patch tokens after {p} prefix tokens but the grid "
                         f"{h}x{wd} needs {h * wd}; check num_prefix_tokens and grid.")
    return torch.from_numpy((x + x.transpose(0, 2, 1)) / 2)


# ----------------------------------------------------------------------------------------------
# estimators on one (n, n) graph


def _successive_projection(points: np.ndarray, k: int) -> np.ndarray:
    """Indices of ``k`` vertices of the simplex hull of ``points`` (n, d) (Araujo et al. 2001)."""
    y = np.concatenate([np.ones((points.shape[0], 1)), points], axis=1)
    idx = []
    for _ in range(k):
        norms = np.einsum("ij,ij->i", y, y)
        if idx:
            norms[idx] = -1.0
        i = int(np.argmax(norms))
        idx.append(i)
        u = y[i] / max(np.linalg.norm(y[i]), 1e-12)
        y = y - np.outer(y @ u, u)
    return np.asarray(idx)


def _kmeans(x: np.ndarray, k: int, seed: int = 0, n_init: int = 3, iters: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means with k-means++ seeding, best of ``n_init`` (numpy; fast for a few hundred
    points, where scikit-learn's per-call overhead dominates). Returns labels (n,), centres (k, d)."""
    rng = np.random.default_rng(seed)
    n = x.shape[0]
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    for _ in range(n_init):
        idx = [int(rng.integers(n))]
        d2 = ((x - x[idx[0]]) ** 2).sum(1)
        for _ in range(1, k):
            tot = d2.sum()
            i = int(rng.choice(n, p=d2 / tot)) if tot > 0 else int(rng.integers(n))
            idx.append(i)
            d2 = np.minimum(d2, ((x - x[i]) ** 2).sum(1))
        c = x[idx].copy()
        for _ in range(iters):
            dist = (x * x).sum(1)[:, None] - 2 * x @ c.T + (c * c).sum(1)[None, :]
            lab = dist.argmin(1)
            new = c.copy()
            for j in range(k):
                sel = lab == j
                if sel.any():
                    new[j] = x[sel].mean(0)
            if np.allclose(new, c):
                break
            c = new
        dist = (x * x).sum(1)[:, None] - 2 * x @ c.T + (c * c).sum(1)[None, :]
        lab = dist.argmin(1)
        inertia = float(dist[np.arange(n), lab].sum())
        if best is None or inertia < best[0]:
            best = (inertia, lab, c)
    return best[1], best[2]  # n_init >= 1, so best is set


def mixed_score(graph: torch.Tensor | np.ndarray, k: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mixed-SCORE (Jin, Ke & Luo 2017/2023) on one symmetric non-negative graph.

    Steps: (1) the K eigenvectors ``xi_1..xi_K`` of largest |eigenvalue|; (2) entry-wise ratios
    ``R[i, k-1] = xi_k(i) / xi_1(i)`` (k = 2..K), which cancel the degree ``theta_i``, truncated to
    ``[-log n, log n]``; (3) vertex hunting: k-means with ``L = min(n, 3K)`` centres on the rows of
    R (denoising, as in the paper's sketched vertex search) and successive projection on those
    centres to pick the K simplex vertices ``v_1..v_K`` (successive projection instead of the
    exhaustive search over K-subsets: same vertices on clean simplexes, O(LK) instead of
    O(C(L, K))); (4) barycentric coordinates ``w_i`` of each row in the simplex, corrected by
    ``b_1(k) = (lambda_1 + v_k' diag(lambda_2..K) v_k)^(-1/2)``, clipped at 0 and renormalised to
    the simplex. Degrees: ``theta_i = xi_1(i) / <pi_i, b_1>``, scaled to mean 1.

    Args:
        graph: (n, n) symmetric non-negative affinity (e.g. :func:`attention_graph` of one image).
        k: number of communities K (2 <= K <= n).
        seed: k-means seed.

    Returns:
        memberships (n, K) rows on the simplex, degrees (n,).
    """
    a = np.asarray(graph, dtype=np.float64)
    n = a.shape[0]
    vals, vecs = np.linalg.eigh(a)
    order = np.argsort(-np.abs(vals))[:k]
    lam, xi = vals[order], vecs[:, order]
    xi1 = xi[:, 0] * (1.0 if xi[:, 0].sum() >= 0 else -1.0)
    xi1 = np.maximum(xi1, 1e-8 * max(np.abs(xi1).max(), 1e-300))  # Perron vector of A >= 0
    t = np.log(max(n, 3))
    r = np.clip(xi[:, 1:] / xi1[:, None], -t, t)
    n_centres = min(n, 3 * k)
    centres = _kmeans(r, n_centres, seed, n_init=2)[1]
    v = centres[_successive_projection(centres, k)]  # (K, K-1)
    m = np.concatenate([np.ones((1, k)), v.T], axis=0)  # (K, K): columns [1, v_k]
    rhs = np.concatenate([np.ones((1, n)), r.T], axis=0)
    w = np.linalg.lstsq(m, rhs, rcond=None)[0].T  # (n, K) barycentric coordinates
    q = lam[0] + np.einsum("kd,d,kd->k", v, lam[1:], v)
    b1 = 1.0 / np.sqrt(np.maximum(q, 1e-12 * abs(lam[0]) + 1e-300))
    pi = np.clip(w / b1[None, :], 0.0, None)
    s = pi.sum(1, keepdims=True)
    pi = np.where(s > 0, pi / np.where(s > 0, s, 1.0), 1.0 / k)
    theta = xi1 / np.maximum(pi @ b1, 1e-12)
    return pi, theta / max(theta.mean(), 1e-300)


def _one_hot(labels: np.ndarray, k: int) -> np.ndarray:
    out = np.zeros((labels.shape[0], k))
    out[np.arange(labels.shape[0]), labels] = 1.0
    return out


def spectral_communities(graph: torch.Tensor | np.ndarray, k: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Spectral clustering (Ng, Jordan & Weiss): top-K eigenvectors of ``D^-1/2 A D^-1/2``,
    rows normalised to unit length, k-means. Returns one-hot memberships (n, K) and the graph
    degrees (row sums, mean 1) (n,)."""
    a = np.asarray(graph, dtype=np.float64)
    d = a.sum(1)
    dn = 1.0 / np.sqrt(np.maximum(d, 1e-12))
    vals, vecs = np.linalg.eigh(a * dn[:, None] * dn[None, :])
    u = vecs[:, np.argsort(-vals)[:k]]
    u = u / np.maximum(np.linalg.norm(u, axis=1, keepdims=True), 1e-12)
    labels = _kmeans(u, k, seed, n_init=4)[0]
    return _one_hot(labels, k), d / max(d.mean(), 1e-300)


def kmeans_communities(graph: torch.Tensor | np.ndarray, k: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """k-means on the rows of the row-normalised graph (each patch described by the
    distribution of its attention over patches). Returns one-hot memberships (n, K) and the graph
    degrees (row sums, mean 1) (n,)."""
    a = np.asarray(graph, dtype=np.float64)
    d = a.sum(1)
    rows = a / np.maximum(d[:, None], 1e-12)
    labels = _kmeans(rows, k, seed, n_init=4)[0]
    return _one_hot(labels, k), d / max(d.mean(), 1e-300)


# ----------------------------------------------------------------------------------------------
# registry entries: fn(maps, *, k, layer, head, seed) -> memberships (B, n, K), degrees (B, n)


def _one_blas_thread() -> Any:
    """Limit BLAS to one thread inside a block (restored after): the graphs are small (a few
    hundred nodes), where multithreaded eigh is slower and erratic on a busy CPU."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _per_image(fn: Callable[..., tuple[np.ndarray, np.ndarray]]) -> MethodFn:
    def run(maps: Any, *, k: int, layer: int, head: int | None, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        graphs = attention_graph(maps, layer, head).numpy()
        with _one_blas_thread():
            out = [fn(g, k, seed=seed) for g in graphs]
        pis = torch.as_tensor(np.stack([o[0] for o in out]), dtype=torch.float32)
        degs = torch.as_tensor(np.stack([o[1] for o in out]), dtype=torch.float32)
        return _order_communities(pis), degs

    run.__doc__ = fn.__doc__
    return run


def _order_communities(pis: torch.Tensor) -> torch.Tensor:
    """Reorder the K columns of each image by the mass-weighted mean patch index (row-major)."""
    pos = torch.arange(pis.shape[1], dtype=pis.dtype)
    centre = (pis * pos[None, :, None]).sum(1) / pis.sum(1).clamp_min(1e-12)  # (B, K)
    empty = pis.sum(1) <= 1e-12
    centre = torch.where(empty, torch.full_like(centre, float("inf")), centre)
    order = centre.argsort(dim=1)
    return torch.gather(pis, 2, order[:, None, :].expand_as(pis))


METHODS.register("mixed_score", _per_image(mixed_score))
METHODS.register("spectral", _per_image(spectral_communities))
METHODS.register("kmeans", _per_image(kmeans_communities))


@METHODS.register("dcmm")
def _dcmm(maps: Any, *, k: int | None, layer: int, head: int | None, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's own DCMM memberships and degrees for the patch tokens of one layer."""
    dcmm = getattr(maps, "dcmm", None)
    if not dcmm or all(d is None for d in dcmm):
        raise ValueError("method='dcmm' needs a ViT with DCMM attention, but these attention maps carry "
                         "no DCMM memberships; create one with workbench.models.create(..., "
                         "attention='dcmm', communities=K) (or workbench.models.dcmm.enable_dcmm(model)), "
                         "or use a post-hoc method such as method='mixed_score'.")
    li = _layer_index(len(dcmm), layer)
    d = dcmm[li]
    if d is None:
        valid = [i for i, x in enumerate(dcmm) if x is not None]
        raise ValueError(f"layer {li} has no DCMM attention; layers with DCMM are {valid}.")
    pi, theta = d["pi"].detach().float().cpu(), d["theta"].detach().float().cpu()  # (B,Hd,N,K), (B,Hd,N)
    h, w = maps.grid
    n_patch = h * w
    if pi.shape[2] != n_patch:  # all tokens: drop the prefix
        pi = pi[:, :, pi.shape[2] - n_patch:]
    if theta.shape[2] != n_patch:
        theta = theta[:, :, theta.shape[2] - n_patch:]
    if head is not None and pi.shape[1] > 1:
        if not -pi.shape[1] <= int(head) < pi.shape[1]:
            raise ValueError(f"head={head} is out of range: DCMM layer {li} has {pi.shape[1]} heads.")
        pi, theta = pi[:, int(head)], theta[:, int(head)]
    else:  # mean over heads (or the single shared head); the mean of simplex rows stays on it
        pi, theta = pi.mean(1), theta.mean(1)
    if k is not None and k != pi.shape[-1]:
        raise ValueError(f"k={k} but this DCMM model has {pi.shape[-1]} communities; pass "
                         f"k={pi.shape[-1]} or k=None for method='dcmm'.")
    pi = pi / pi.sum(-1, keepdim=True).clamp_min(1e-12)
    return pi, theta / theta.mean(-1, keepdim=True).clamp_min(1e-12)


# ----------------------------------------------------------------------------------------------
# the verb


def _compute_maps(model: torch.nn.Module, images: Any, device: Any) -> Any:
    from .attention import attention_maps

    if isinstance(images, dict):
        images = images["image"]
    if images is None:
        raise TypeError("communities(model, images) needs images (B, C, H, W) when given a model; "
                        "or pass precomputed maps: communities(workbench.attention_maps(model, images)).")
    kw = {}
    if device is not None and "device" in inspect.signature(attention_maps).parameters:
        kw["device"] = device
    return attention_maps(model, images, **kw)


def communities(model_or_maps: Any, images: torch.Tensor | dict | None = None, *, k: int | None = 4,
                method: str = "mixed_score", layer: int = -1, head: int | None = None,
                device: Any = None, seed: int = 0) -> Communities:
    """Communities of the patches of each image, from a ViT or its attention maps.

    Args:
        model_or_maps: a timm ViT (then ``images`` are run through ``workbench.attention_maps``)
            or an ``AttentionMaps`` result.
        images: (B, C, H, W) in [0, 1] (or a batch dict with "image") when a model is given.
        k: number of communities K (2 <= K <= number of patches). For ``method="dcmm"`` it must
            equal the model's K, or be None to take it from the model.
        method: one of ``METHODS.names()``: "dcmm", "kmeans", "mixed_score", "spectral".
        layer: layer index (negative counts from the end).
        head: head index, or None for the mean over heads (post-hoc methods use the head-mean
            attention graph; "dcmm" the head-mean memberships).
        device: device for the forward pass when a model is given.
        seed: seed of the k-means steps.

    Returns:
        A :class:`Communities` result: memberships (B, h*w, K), hard (B, h, w), degrees (B, h*w).

    Examples:
        >>> comm = communities(maps, k=4, method="mixed_score")   # doctest: +SKIP
        >>> comm.hard.shape                                        # doctest: +SKIP
        torch.Size([8, 8, 8])
    """
    fn = METHODS.get(method)
    maps = model_or_maps
    if isinstance(model_or_maps, torch.nn.Module):
        maps = _compute_maps(model_or_maps, images, device)
    elif not hasattr(model_or_maps, "attentions"):
        raise TypeError(f"communities expects a model or AttentionMaps; got {type(model_or_maps).__name__}.")
    h, w = (int(x) for x in maps.grid)
    n_patch = h * w
    if method != "dcmm" or k is not None:
        if k is None or not isinstance(k, (int, np.integer)) or k < 2:
            raise ValueError(f"k must be an integer >= 2 (the number of communities); got k={k!r}.")
        if k > n_patch:
            raise ValueError(f"k={k} communities is more than the {n_patch} patches of the {h}x{w} grid; "
                             f"pass k <= {n_patch} (or use a smaller patch size).")
    pis, degs = fn(maps, k=None if k is None else int(k), layer=layer, head=head, seed=seed)
    kk = pis.shape[-1]
    li = _layer_index(len(maps.attentions), layer)
    size = getattr(maps, "image_size", None)
    return Communities(memberships=pis, hard=pis.argmax(-1).reshape(-1, h, w), degrees=degs,
                       grid=(h, w), k=int(kk), method=method, layer=li, head=head,
                       image_size=None if size is None else tuple(int(s) for s in size))
