"""The latent atlas (latents against structure masks) and the confounder search.

Heatmap of a latent on an image: its patch activations on the grid, upsampled to the image
("nearest" repeats each patch over its pixels; "bilinear" interpolates). Per latent and structure:

- **mass share**: the share of the latent's activation mass inside the structure's mask
  (summed over images where the structure is annotated; pixels weighted as in nearest upsampling),
  and the share outside every structure ("none");
- **pixel AUROC / AP**: how well the heatmap's pixel values separate the structure's pixels from
  the rest, pooled over images where the structure is annotated.

AUROC and AP are computed from per-latent histograms (``bins`` levels of log2 activation, exact
zeros in a bin of their own; values within one level count as tied, half as in the rank form), so
every latent is scored in one streamed pass without holding the maps. All latents are screened
with nearest upsampling (exact at the patch level); with ``upsample="bilinear"`` the best
candidates per structure are then re-scored on bilinear pixel maps.

**Grid ceiling**: a latent lives on the patch grid, so a structure thinner than a patch (a drain on
8 px patches) could be out of reach of any latent. Per structure, the atlas also scores the oracle
map whose patch values are the structure's own coverage of each patch, upsampled the same way. With
nearest upsampling no patch-level map can beat it (ordering patches by their share of structure
pixels maximises the pooled AUROC); with bilinear maps it is the reference a perfect patch detector
would reach. A best latent near the ceiling is limited by the grid; one far below it, by the SAE
(or the model). On the phantom at 8 x 8 patches every ceiling is above 0.99, the drain's included.

**Unions of latents**: a wide dictionary splits a structure over several latents (feature splitting:
one latent for the lung apex, one for its base), so the best single latent can miss what the
dictionary holds. With ``combine=n``, each structure's candidates (its best latents by AUROC and by
mass share) are merged greedily, up to ``n``: the union's map is the patch-wise maximum of the chosen
latents, each divided by its largest activation on the data; chosen on nearest maps, each union is
then scored on the atlas's upsampling, like the single latents.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from ._apply import Bound, batches, bind, check_call, first_images, target_class
from .analysis import _rank_auc, patch_fractions
from .autoencoders import SAE
from .latents import upsample


def _structures(data: Any, structures: Sequence[str] | None) -> tuple[str, ...]:
    names = tuple(getattr(data, "structures", ()) or ())
    if structures is None:
        if not names:
            raise ValueError("the atlas needs structure masks; pass a dataset with masks (the phantom, or a folder "
                             "dataset with masks/<structure>/<id>.png).")
        return names
    missing = [s for s in structures if s not in names]
    if missing:
        raise ValueError(f"structure(s) {missing} are not in the dataset; its structures are {list(names)}.")
    if not structures:
        raise ValueError("structures is empty; name at least one structure or pass None for all.")
    return tuple(structures)


LOG_RANGE = (-12.0, 6.0)  # activations binned on a log2 scale from 2**-12 to 2**6 (SAE units)


def _bins(a: torch.Tensor, nb: int) -> torch.Tensor:
    """Activations (..., L) -> bin index in [0, nb): 0 for exact zeros, else a level of log2(a) on
    ``LOG_RANGE`` (``nb - 1`` levels: about 7 % apart at 256 bins; values outside are clamped). One
    fixed scale for every latent, so a single pass over the data bins them all."""
    lo, hi = LOG_RANGE
    lvl = ((torch.log2(a.clamp_min(2.0 ** lo)) - lo) / (hi - lo) * (nb - 2)).floor().long().clamp(0, nb - 2) + 1
    return torch.where(a > 0, lvl, torch.zeros_like(lvl))


def _hist_add(hist: torch.Tensor, bins: torch.Tensor, weight: torch.Tensor) -> None:
    """hist (L, nb) += per column l, the weights (N,) of rows falling in each bin of bins (N, L)."""
    n_lat, nb = hist.shape
    idx = bins + torch.arange(n_lat, device=bins.device) * nb
    hist.view(-1).scatter_add_(0, idx.flatten(), weight[:, None].expand_as(bins).flatten().to(hist.dtype))


def auc_ap_from_hist(pos: torch.Tensor, neg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., nb) histograms of positive and negative weights over ascending score bins ->
    (AUROC, AP) over the leading axes; ties within a bin count half (AUROC) / as one threshold (AP).

    Examples:
        >>> pos = torch.tensor([[0., 0., 1.]]); neg = torch.tensor([[1., 0., 0.]])
        >>> [float(v) for v in auc_ap_from_hist(pos, neg)]
        [1.0, 1.0]
    """
    pos, neg = pos.double(), neg.double()
    p, n = pos.sum(-1), neg.sum(-1)
    above = pos.flip(-1).cumsum(-1).flip(-1) - pos  # positives in higher bins
    auc = (neg * (above + 0.5 * pos)).sum(-1) / (p * n)
    cp = pos.flip(-1).cumsum(-1)  # from the top bin down
    cn = neg.flip(-1).cumsum(-1)
    prec = cp / (cp + cn).clamp_min(1e-300)
    ap = (pos.flip(-1) * prec).sum(-1) / p
    bad = (p <= 0) | (n <= 0)
    nan = torch.tensor(float("nan"), dtype=auc.dtype)
    return torch.where(bad, nan, auc).float(), torch.where(p <= 0, nan, ap).float()


@dataclass(frozen=True)
class Atlas:
    """Latents against structure masks.

    Attributes:
        structures: structure names (columns).
        mass: (d_sae, S + 1) share of each latent's activation mass in each structure, then "none".
        auroc, ap: (S, d_sae) pixel AUROC / AP of each latent's nearest-upsampled heatmap per structure.
        best: pandas DataFrame, per structure its ``top`` latents: structure, rank, latent, auroc,
            ap (on ``upsample`` heatmaps), mass, frequency.
        frequency: (d_sae,) share of patches on which the latent fires.
        ceiling: per structure, the pixel AUROC of its own patch-coverage map upsampled like
            ``best`` (the grid's limit; see the module docstring); also ``best``'s ``ceiling`` column.
        unions: pandas DataFrame, per structure and size n = 1..``combine``: the greedy union of n
            latents (latents, pixel AUROC on ``upsample`` maps); empty when ``combine=0``.
        upsample: the upsampling of ``best``'s scores.
        n_images: images seen.
    """

    structures: tuple[str, ...]
    mass: torch.Tensor
    auroc: torch.Tensor
    ap: torch.Tensor
    best: Any
    frequency: torch.Tensor
    ceiling: dict[str, float]
    upsample: str
    n_images: int
    unions: Any = None

    def table(self, min_frequency: float = 0.0) -> Any:
        """DataFrame latent x (structure mass shares, "none", frequency), latents firing more
        often than ``min_frequency`` only."""
        import pandas as pd

        cols = list(self.structures) + ["none"]
        df = pd.DataFrame(self.mass.numpy(), columns=cols)
        df["frequency"] = self.frequency.numpy()
        df.index.name = "latent"
        return df[df.frequency > min_frequency]

    def best_per_structure(self) -> Any:
        """The rank-1 row of ``best`` for every structure."""
        return self.best[self.best["rank"] == 1].reset_index(drop=True)

    def plot(self, ax: Any = None, **style: Any) -> Any:
        """Best pixel AUROC per structure (``workbench.viz.atlas_bars``)."""
        from workbench.viz.sae import atlas_bars

        return atlas_bars(self, ax=ax, **style)


def _masks_on(batch: dict[str, Any], structures: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, S, H, W) float masks and (B, S) presence of the structures in a batch."""
    masks, present = batch["masks"], batch["mask_present"]
    m = torch.stack([masks[s].float() for s in structures], 1)
    p = torch.stack([present[s].float() for s in structures], 1)
    return m, p


def atlas(sae: SAE, model: nn.Module, data: Any, *, structures: Sequence[str] | None = None, top: int = 5,
          upsample_mode: str = "bilinear", region: str | None = None, bins: int = 256,
          combine: int = 3, layer: str | int | None = None, batch_size: int = 64,
          device: str | torch.device | None = None, check_model: bool = True) -> Atlas:
    """Map every latent onto the dataset's structure masks.

    Args:
        sae, model: the SAE and the model whose layer it reads.
        data: a dataset with masks (``structures``, ``mask_present``).
        structures: the structures to score (default: all of the dataset's).
        top: latents reported per structure in ``best``.
        upsample_mode: "bilinear" (re-score the best candidates on interpolated maps) or "nearest".
        region: a structure (e.g. "body"): only pixels inside it are scored, so activations outside
            the body are left out.
        bins: histogram levels per latent for AUROC / AP.
        combine: the largest union of latents scored per structure (``Atlas.unions``; 0: none).
        layer, batch_size, device, check_model: as in :func:`workbench.sae.latents`.

    Returns:
        :class:`Atlas`.
    """
    import pandas as pd

    if upsample_mode not in ("bilinear", "nearest"):
        raise ValueError(f"upsample_mode must be 'bilinear' or 'nearest'; got {upsample_mode!r}.")
    if torch.is_tensor(data) or isinstance(data, (tuple, list)):
        raise ValueError("the atlas needs structure masks; pass a dataset with masks, not image tensors.")
    check_call(model, data, batch_size)
    from workbench._checks import check_int

    check_int(top, "top")
    check_int(bins, "bins", minimum=8)
    check_int(combine, "combine", minimum=0)
    names = _structures(data, structures)
    if region is not None and region not in getattr(data, "structures", ()):
        raise ValueError(f"region {region!r} is not a structure of the dataset; structures: {list(data.structures)}.")
    need = tuple(dict.fromkeys(names + ((region,) if region else ())))
    b = bind(sae, model, layer=layer, device=device, check_model=check_model, probe=first_images(data))
    if not b.layout.has_grid:
        raise ValueError("the atlas needs the patch grid, but the SAE reads prefix tokens only.")
    grid, n_lat, n_s = b.layout.grid, sae.d_sae, len(names)
    dev = b.device

    def weights(batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per patch: (B, P, S) shares of scored pixels inside each structure (0 where it is not
        annotated) and outside it, (B, P) scored share, (B, P) scored share outside every structure."""
        m, p = _masks_on(batch, need)
        if region is not None:
            reg = m[:, need.index(region)] > 0.5
            inside = patch_fractions(reg, grid)
        else:
            reg = torch.ones_like(m[:, 0], dtype=torch.bool)
            inside = torch.ones(m.shape[0], grid[0] * grid[1], device=m.device)
        sel = [need.index(s) for s in names]
        fr = torch.stack([patch_fractions((m[:, i] > 0.5) & reg, grid) for i in sel], -1)
        pres = p[:, sel][:, None, :]
        none = (inside - patch_fractions((m[:, sel].amax(1) > 0.5) & reg, grid)).clamp_min(0)
        return fr * pres, (inside[..., None] - fr).clamp_min(0) * pres, inside, none

    # one pass: mass shares, firing frequency and, per structure, histograms of every latent's
    # nearest-upsampled pixel values inside / outside the structure
    mass = torch.zeros(n_lat, n_s + 1, dtype=torch.float64, device=dev)
    total = torch.zeros(n_lat, n_s + 1, dtype=torch.float64, device=dev)
    fired = torch.zeros(n_lat, dtype=torch.float64, device=dev)
    hp = torch.zeros(n_s, n_lat, bins, dtype=torch.float64, device=dev)
    hn = torch.zeros_like(hp)
    op = torch.zeros(n_s, 1, bins, dtype=torch.float64, device=dev)  # the grid ceiling's histograms
    on = torch.zeros_like(op)
    n_patch, n_img = 0, 0
    for batch in batches(b, data, batch_size=batch_size, masks=True):
        codes = b.layout.patch_tokens(batch["codes"])  # (B, P, L)
        a = codes.double()
        pos, neg, inside, none = weights(batch)
        present = _masks_on(batch, names)[1].double()
        present = torch.cat([present, torch.ones_like(present[:, :1])], 1)
        mass += torch.einsum("bpl,bps->ls", a, torch.cat([pos, none[..., None]], -1).double())
        total += torch.einsum("bpl,bs->ls", a * inside[..., None].double(), present)
        fired += (a > 0).double().sum((0, 1))
        idx = _bins(codes.reshape(-1, n_lat), bins)
        cover = _bins((pos / inside[..., None].clamp_min(1e-12)).reshape(-1, n_s), bins)
        for s in range(n_s):
            _hist_add(hp[s], idx, pos[..., s].reshape(-1))
            _hist_add(hn[s], idx, neg[..., s].reshape(-1))
            _hist_add(op[s], cover[:, s:s + 1], pos[..., s].reshape(-1))
            _hist_add(on[s], cover[:, s:s + 1], neg[..., s].reshape(-1))
        n_patch += a.shape[0] * a.shape[1]
        n_img += a.shape[0]
    shares = (mass / total.clamp_min(1e-30)).float().cpu()
    auroc, ap = auc_ap_from_hist(hp, hn)
    auroc, ap = auroc.cpu(), ap.cpu()

    # candidates per structure; pass 3 re-scores them on bilinear pixel maps
    k_cand = min(n_lat, 2 * top if upsample_mode == "bilinear" else top)
    cand = {s: [int(j) for j in torch.nan_to_num(auroc[i], nan=-1.0).topk(k_cand).indices] for i, s in enumerate(names)}
    fin_auc, fin_ap = {s: auroc[i, cand[s]] for i, s in enumerate(names)}, {s: ap[i, cand[s]] for i, s in enumerate(names)}
    ceiling = {s: float(v) for s, v in zip(names, auc_ap_from_hist(op, on)[0][:, 0].cpu())}
    unions, scale = (_unions(b, data, names, weights, auroc, shares, combine, top, bins, batch_size) if combine
                     else (pd.DataFrame(columns=["structure", "n", "latents", "auroc"]), {}))
    if upsample_mode == "bilinear":
        # one pass re-scores the single candidates and the unions (appended after them)
        groups = {s: list(unions[unions.structure == s].latents) for s in names}
        auc_all, ap_all, ceiling = _rescore(b, data, names, need, region,
                                            {s: [(j,) for j in cand[s]] + groups[s] for s in names}, bins,
                                            batch_size, scale=scale)
        fin_auc = {s: auc_all[s][:len(cand[s])] for s in names}
        fin_ap = {s: ap_all[s][:len(cand[s])] for s in names}
        unions["auroc"] = [float(auc_all[s][len(cand[s]) + i]) for s in names for i in range(len(groups[s]))]
    rows = []
    for i, s in enumerate(names):
        order = torch.argsort(torch.nan_to_num(fin_auc[s], nan=-1.0), descending=True)[:top]
        for rank, j in enumerate(order.tolist(), start=1):
            lat = cand[s][j]
            rows.append({"structure": s, "rank": rank, "latent": lat, "auroc": float(fin_auc[s][j]),
                         "ap": float(fin_ap[s][j]), "mass": float(shares[lat, i]),
                         "frequency": float(fired[lat] / max(n_patch, 1)), "ceiling": ceiling[s]})
    return Atlas(structures=names, mass=shares, auroc=auroc, ap=ap, best=pd.DataFrame(rows),
                 frequency=(fired / max(n_patch, 1)).float().cpu(), ceiling=ceiling, upsample=upsample_mode,
                 n_images=n_img, unions=unions)


def _unions(b: Bound, data: Any, names: tuple[str, ...], weights: Any, auroc: torch.Tensor, shares: torch.Tensor,
            combine: int, top: int, bins: int, batch_size: int) -> Any:
    """Greedy unions of up to ``combine`` latents per structure (see the module docstring)."""
    import pandas as pd

    n_c = max(2 * top, 2 * combine)
    cand = {}
    for i, s in enumerate(names):
        by_auc = torch.nan_to_num(auroc[i], nan=-1.0).topk(min(n_c, auroc.shape[1])).indices.tolist()
        by_mass = shares[:, i].topk(min(n_c, shares.shape[0])).indices.tolist()
        cand[s] = list(dict.fromkeys(by_auc + by_mass))
    lat = sorted({j for c in cand.values() for j in c})
    col = {j: k for k, j in enumerate(lat)}
    codes, pos, neg = [], [], []
    for batch in batches(b, data, batch_size=batch_size, masks=True):
        c = b.layout.patch_tokens(batch["codes"])[..., lat].float()
        p, n_, _, _ = weights(batch)
        codes.append(c.reshape(-1, len(lat)).cpu())
        pos.append(p.reshape(-1, len(names)).cpu())
        neg.append(n_.reshape(-1, len(names)).cpu())
    codes = torch.cat(codes)
    peak = codes.amax(0).clamp_min(1e-12)
    codes = codes / peak   # each latent on [0, 1]
    pos, neg = torch.cat(pos), torch.cat(neg)

    def score(cols: list[int], i: int) -> float:
        v = codes[:, cols].amax(1)
        hp = torch.zeros(1, bins, dtype=torch.float64)
        hn = torch.zeros_like(hp)
        idx = _bins(v[:, None], bins)
        _hist_add(hp, idx, pos[:, i].double())
        _hist_add(hn, idx, neg[:, i].double())
        return float(auc_ap_from_hist(hp, hn)[0][0])

    rows = []
    for i, s in enumerate(names):
        chosen: list[int] = []
        for n in range(1, combine + 1):
            left = [j for j in cand[s] if j not in chosen]
            if not left:
                break
            best_j, best_a = max(((j, score([col[k] for k in chosen + [j]], i)) for j in left),
                                 key=lambda t: -1.0 if t[1] != t[1] else t[1])
            chosen.append(best_j)
            rows.append({"structure": s, "n": n, "latents": tuple(chosen), "auroc": best_a})
    return pd.DataFrame(rows, columns=["structure", "n", "latents", "auroc"]), {j: float(peak[col[j]]) for j in lat}


def _rescore(b: Bound, data: Any, names: tuple[str, ...], need: tuple[str, ...], region: str | None,
             cand: dict[str, list[tuple[int, ...]]], bins: int, batch_size: int,
             scale: dict[int, float] | None = None):
    """Pixel-level AUROC / AP of each structure's candidates on bilinear heatmaps, and the AUROC of
    the structure's bilinear patch-coverage map (the grid ceiling) in an extra last row. A candidate
    is a tuple of latents: one latent's map is its activation; a union's, the patch-wise maximum of
    its members, each divided by its ``scale`` (its largest activation)."""
    dev = b.device
    hp = {s: torch.zeros(len(c) + 1, bins, dtype=torch.float64, device=dev) for s, c in cand.items()}
    hn = {s: torch.zeros_like(v) for s, v in hp.items()}
    h, w = b.layout.grid
    for batch in batches(b, data, batch_size=batch_size, masks=True):
        codes = b.layout.patch_tokens(batch["codes"])
        size = tuple(batch["image"].shape[-2:])
        m, p = _masks_on(batch, need)
        reg = m[:, need.index(region)] if region is not None else torch.ones_like(m[:, 0])
        for s in names:
            lat = cand[s]
            pres = p[:, need.index(s)] > 0
            if not pres.any():
                continue
            mk = m[pres, need.index(s)] > 0.5
            rg = reg[pres] > 0.5
            cover = patch_fractions(mk & rg, (h, w)) / patch_fractions(rg, (h, w)).clamp_min(1e-12)
            c = codes[pres].float()
            maps = torch.stack([c[..., t[0]] if len(t) == 1 else
                                (c[..., list(t)] / c.new_tensor([scale[j] for j in t])).amax(-1) for t in lat], 1)
            maps = torch.cat([maps, cover[:, None].to(maps.dtype)], 1)
            up = upsample(maps.reshape(maps.shape[0], len(lat) + 1, h, w), size, "bilinear").clamp_min(0)
            vals = up.permute(0, 2, 3, 1).reshape(-1, len(lat) + 1)
            idx = _bins(vals, bins)
            _hist_add(hp[s], idx, (mk & rg).flatten().double())
            _hist_add(hn[s], idx, (~mk & rg).flatten().double())
    out_auc, out_ap, ceiling = {}, {}, {}
    for s in names:
        a, p_ = auc_ap_from_hist(hp[s], hn[s])
        out_auc[s], out_ap[s], ceiling[s] = a[:-1].cpu(), p_[:-1].cpu(), float(a[-1])
    return out_auc, out_ap, ceiling


# -- confounder search ------------------------------------------------------------------------------
def confounders(sae: SAE, model: nn.Module, data: Any, *, suspects: Sequence[str] = ("device", "marker"),
                body: str | None = "body", target: int | None = None, top: int = 10, layer: str | int | None = None,
                batch_size: int = 32, device: str | torch.device | None = None, check_model: bool = True) -> Any:
    """Latents the model leans on for its prediction whose activation sits on devices, markers or
    outside the body: candidate shortcuts.

    Per latent: ``reliance``, its mean first-order contribution to the target's log-probability
    (code x gradient summed over tokens, see :func:`workbench.sae.analysis.reliance`): how much the
    model's output depends on it; ``label_auc``, the AUROC of its per-image mean activation for
    the label; ``off_share``, the share of its activation mass on the suspect structures or
    outside ``body``; per suspect, its own share, and ``detects_<suspect>``: how well the latent's
    per-image maximum tells images with the suspect from images without it (AUROC within each
    class, averaged over the classes, so that a suspect that co-occurs with the label does not
    count). Ranked by ``score = |reliance| x off_evidence``: a latent must be both used by the model
    and off the anatomy. ``off_evidence`` is the larger of ``off_share`` and the best suspect
    detection above chance, ``2 x detects_<suspect> - 1`` clipped to [0, 1]: the mass share is
    diluted by the patch grid when a suspect is small (a drain covering 0.3 % of a 64 px image
    spreads over 8 px patches, so a latent firing on its patches has most of its mass beside it,
    and a share of 0.01 ranked such a latent below any diffuse latent touching the image border),
    while detection of the suspect's presence does not depend on the grid. Predicting the label
    alone is not enough: on data where a device co-occurs with the label, every device latent
    predicts it, whether the model uses it or not; detection is measured within each class.

    Args:
        sae, model: the SAE and the model whose layer it reads.
        data: a labelled dataset with masks of the suspects (and of ``body``, if given).
        suspects: structures that should not carry evidence.
        body: the structure outside of which activation is also suspect (None: ignore).
        target: class whose evidence is attributed (default: class 1 of binary tasks, else 0).
        top: rows returned.

    Returns:
        A pandas DataFrame sorted by ``score`` (latent, score, reliance, label_auc, off_evidence, off_share,
        one ``share_<suspect>`` and ``detects_<suspect>`` column per suspect, outside_body,
        frequency).
    """
    import pandas as pd

    from workbench._train_data import as_source, task_of

    if torch.is_tensor(data) or isinstance(data, (tuple, list)):
        raise ValueError("the confounder search needs labels and structure masks; pass a dataset.")
    check_call(model, data, batch_size)
    avail = tuple(getattr(data, "structures", ()) or ())
    wanted = tuple(suspects) + ((body,) if body else ())
    missing = [s for s in wanted if s not in avail]
    if missing or not suspects:
        raise ValueError(f"the confounder search needs masks of {list(wanted)}; the dataset has {list(avail)} "
                         f"(missing {missing}). Name suspects= and body= among its structures (body=None to skip).")
    b = bind(sae, model, layer=layer, device=device, check_model=check_model, probe=first_images(data))
    if not b.layout.has_grid:
        raise ValueError("the confounder search needs the patch grid, but the SAE reads prefix tokens only.")
    task = task_of(as_source(data))
    t = "default" if target is None else target
    grid, n_lat, dev = b.layout.grid, sae.d_sae, b.device
    mass = torch.zeros(n_lat, len(suspects) + 2, dtype=torch.float64, device=dev)  # suspects, outside, off
    total = torch.zeros(n_lat, dtype=torch.float64, device=dev)
    fired = torch.zeros(n_lat, dtype=torch.float64, device=dev)
    rel, pooled, peaks, present, labels, n_patch = [], [], [], [], [], 0
    for batch in batches(b, data, batch_size=batch_size, masks=True, attribute=t):
        rel.append(batch["reliance"].cpu())
        a = b.layout.patch_tokens(batch["codes"]).double()
        pooled.append(a.mean(1).cpu())
        peaks.append(a.amax(1).float().cpu())
        labels.append(batch["label"].cpu())
        sus = torch.stack([batch["masks"][s] for s in suspects], 1).bool()
        present.append(sus.flatten(2).any(-1).cpu())
        off = sus.any(1)
        fr = [patch_fractions(sus[:, i], grid) for i in range(len(suspects))]
        if body:
            outside = ~batch["masks"][body].bool()
            fr.append(patch_fractions(outside, grid))
            off = off | outside
        else:
            fr.append(torch.zeros_like(fr[0]))
        fr.append(patch_fractions(off, grid))
        mass += torch.einsum("bpl,bps->ls", a, torch.stack(fr, -1).double())
        total += a.sum((0, 1))
        fired += (a > 0).double().sum((0, 1))
        n_patch += a.shape[0] * a.shape[1]
    shares = (mass / total.clamp_min(1e-30)[:, None]).float().cpu()
    reliance_mean = torch.cat(rel).mean(0)
    y = torch.cat(labels)
    cls = target_class(task, 2 if task == "binary" else max(2, y.shape[-1] if y.ndim == 2 else int(y.max()) + 1), t)
    pos = y[:, cls] > 0.5 if y.ndim == 2 else y == cls
    label_auc = _rank_auc(torch.cat(pooled).float(), pos)
    peak, has = torch.cat(peaks), torch.cat(present)
    off_share = shares[:, -1]
    detects = torch.stack([_within_class_auc(peak, has[:, i], pos) for i in range(len(suspects))], 1)
    # detection above chance, 0 (chance or worse, or a suspect on every image or none) to 1 (perfect)
    above = (2 * detects - 1).nan_to_num(0.0).clamp(0, 1).amax(1)
    off = torch.maximum(off_share, above)
    score = reliance_mean.abs() * off
    df = pd.DataFrame({"latent": range(n_lat), "score": score.numpy(), "reliance": reliance_mean.numpy(),
                       "label_auc": label_auc.numpy(), "off_evidence": off.numpy(), "off_share": off_share.numpy()})
    for i, s in enumerate(suspects):
        df[f"share_{s}"] = shares[:, i].numpy()
    for i, s in enumerate(suspects):
        df[f"detects_{s}"] = detects[:, i].numpy()
    if body:
        df["outside_body"] = shares[:, len(suspects)].numpy()
    df["frequency"] = (fired / max(n_patch, 1)).float().cpu().numpy()
    return df[df.frequency > 0].sort_values("score", ascending=False).head(int(top)).reset_index(drop=True)


def _within_class_auc(scores: torch.Tensor, present: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """(N, K) scores, (N,) bool presence, (N,) bool class -> (K,) AUROC of the scores for presence
    within each class, averaged over the classes where presence varies (NaN if in none)."""
    aucs = [_rank_auc(scores[g], present[g]) for g in (pos, ~pos) if 0 < int(present[g].sum()) < int(g.sum())]
    return torch.stack(aucs).mean(0) if aucs else torch.full((scores.shape[1],), float("nan"))
