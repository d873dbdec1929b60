"""Community and attention overlays: image, soft community colours, structure contours, legend.

Every function accepts ``ax=None`` (then returns a new Figure) or draws on the given Axes, uses
colour-blind-safe colours (``workbench.viz._style``) and can be exported with
``workbench.viz.save_figure``. :func:`community_rgb` is the fast raster path (numpy only, no
matplotlib) the explorer widget uses.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .._checks import check_index, check_masks
from ._style import colours, figsize, rc, structure_colours, styled

__all__ = ["community_rgb", "community_overlay", "community_grid", "attention_grid", "draw_contours",
           "community_colours", "community_shares", "outline_masks"]


def _hex_rgb(c: str) -> tuple[float, float, float]:
    c = c.lstrip("#")
    return tuple(int(c[i:i + 2], 16) / 255.0 for i in (0, 2, 4))  # type: ignore[return-value]


# Paul Tol's muted palette reordered so the first community colours differ from the fixed
# structure-outline colours (lungs blue/cyan, airways green, heart red).
_COMMUNITY_ORDER = ("#332288", "#DDCC77", "#44AA99", "#882255", "#999933", "#CC6677", "#88CCEE", "#117733",
                    "#AA4499")


def community_colours(k: int) -> list[str]:
    """``k`` colour-blind-safe community colours (hex; Tol's muted palette, then ``colours``)."""
    extra = [c for c in colours(max(k, 1) + len(_COMMUNITY_ORDER)) if c not in _COMMUNITY_ORDER]
    pal = list(_COMMUNITY_ORDER) + extra
    return [pal[i % len(pal)] for i in range(k)]


def _image(image: Any, index: int, size: tuple[int, int] | None) -> np.ndarray:
    """(H, W, 3) float in [0, 1] from (B, C, H, W), (C, H, W), (H, W) or None (grey canvas)."""
    if image is None:
        if size is None:
            raise ValueError("pass the image (or communities with image_size) to draw an overlay.")
        return np.full((*size, 3), 0.5)
    x = torch.as_tensor(image).detach()
    if x.ndim == 4:
        x = x[index]
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise ValueError(f"image must be (B, C, H, W), (C, H, W) or (H, W); got shape {tuple(x.shape)}.")
    x = x.cpu().float().numpy()  # numpy from here: cheaper than torch ops on small arrays
    x = x[:3] if x.shape[0] >= 3 else np.repeat(x[:1], 3, axis=0)
    lo, hi = float(x.min()), float(x.max())
    if lo < 0 or hi > 1:  # normalised input: rescale for display
        x = (x - lo) / max(hi - lo, 1e-12)
    return x.transpose(1, 2, 0)


def _masks_at(masks: Mapping[str, Any] | None, index: int, structures: Sequence[str] | None) -> dict[str, np.ndarray]:
    if not masks:
        return {}
    if "masks" in masks and isinstance(masks["masks"], dict):  # a batch dict
        present = masks.get("mask_present") or {}
        out = {}
        for k, v in masks["masks"].items():
            p = present.get(k)
            if p is None or bool(torch.as_tensor(p)[index]):
                out[k] = v
        masks = out
    names = list(structures) if structures is not None else list(masks)
    out = {}
    for s in names:
        if s not in masks:
            continue
        m = torch.as_tensor(masks[s])
        out[s] = (m[index] if m.ndim == 3 else m).bool().cpu().numpy()
    return out


def community_rgb(image: Any, communities: Any, index: int = 0, *, alpha: float = 0.5, soft: bool = True,
                  masks: Mapping[str, Any] | None = None, structures: Sequence[str] | None = None,
                  contour_colours: Mapping[str, str] | None = None,
                  outlines: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
    """The overlay as an (H, W, 3) uint8 array (fast: numpy and torch only).

    Args:
        image: (B, C, H, W), (C, H, W), (H, W) or None (grey canvas of ``communities.image_size``).
        communities: a ``Communities`` result.
        index: which image of the batch.
        alpha: opacity of the community colours (0 = image only, 1 = colours only).
        soft: mix community colours by membership (bilinear upsampling); False paints the hard map.
        masks: {structure: (B, H, W) or (H, W) bool} (or a batch dict) whose outlines are drawn
            one pixel wide in the structure colours.
        structures: which structures to outline (all when None).
        contour_colours: {structure: colour}; ``structure_colours`` when None.
        outlines: precomputed {structure: (H, W) bool} outline pixels (``outline_masks``), used
            instead of ``masks`` (the explorer caches them per image).

    Returns:
        (H, W, 3) uint8.
    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1]; got {alpha}.")
    _check_communities(communities)
    index = check_index(index, communities.memberships.shape[0], what="images of the communities")
    img = _image(image, index, communities.image_size)
    hh, ww = img.shape[:2]
    size = communities.image_size
    if image is not None and size is not None and (hh, ww) != tuple(size):
        raise ValueError(f"image is {hh}x{ww} but the communities were computed on {size[0]}x{size[1]} images; pass "
                         "the images the communities come from.")
    h, w = communities.grid
    k = communities.memberships.shape[-1]
    pal = torch.tensor([_hex_rgb(c) for c in community_colours(k)], dtype=torch.float32)  # (K, 3)
    if soft:
        m = communities.memberships[index].float()
    else:
        m = torch.nn.functional.one_hot(communities.hard[index].reshape(-1).long(), k).float()
    col = (m @ pal).T.reshape(1, 3, h, w)
    mode = "bilinear" if soft else "nearest"
    kw = {"align_corners": False} if soft else {}
    col = torch.nn.functional.interpolate(col, size=(hh, ww), mode=mode, **kw)[0].permute(1, 2, 0).numpy()
    out = (1 - alpha) * img + alpha * col
    lines = dict(outlines) if outlines is not None else outline_masks(_masks_at(masks, index, structures))
    if lines:
        cc = dict(structure_colours(list(lines)))
        cc.update(contour_colours or {})
        for s, mk in lines.items():
            if mk.shape != (hh, ww):
                raise ValueError(f"mask {s!r} is {mk.shape} but the image is {(hh, ww)}; resize the masks to the image.")
            out[mk] = _hex_rgb(cc[s])
    return (np.clip(out, 0, 1) * 255).astype(np.uint8)


def outline_masks(masks: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """{structure: (H, W) bool} -> {structure: (H, W) bool} one-pixel inner outlines."""
    from skimage.segmentation import find_boundaries

    return {s: find_boundaries(np.asarray(m, dtype=bool), mode="inner") for s, m in masks.items()}


def draw_contours(ax: Any, masks: Mapping[str, Any], structures: Sequence[str] | None = None,
                  colours: Mapping[str, str] | None = None, linewidth: float = 1, *, index: int = 0,
                  label: bool = False) -> list:
    """Outline structures on ``ax`` with ``skimage.measure.find_contours``.

    Args:
        ax: a matplotlib Axes showing an image of the masks' size.
        masks: {structure: (H, W) or (B, H, W) bool} (or a batch dict).
        structures: which to draw (all when None).
        colours: {structure: colour}; fixed structure colours when None.
        linewidth: line width in points.
        index: image index when masks are batched.
        label: label the first line of each structure (for a legend).

    Returns:
        The drawn Line2D objects.
    """
    from skimage.measure import find_contours

    ms = _masks_at(masks, index, structures)
    cc = dict(structure_colours(list(ms)))
    cc.update(colours or {})
    lines = []
    for s, mk in ms.items():
        first = True
        for c in find_contours(np.pad(mk.astype(float), 1), 0.5):
            (ln,) = ax.plot(c[:, 1] - 1, c[:, 0] - 1, color=cc[s], linewidth=linewidth,
                            label=s if (label and first) else None)
            lines.append(ln)
            first = False
    return lines


def structure_fractions(masks: Mapping[str, Any], grid: tuple[int, int], *, exclusive: bool = True,
                        background: str = "background") -> tuple[list[str], np.ndarray]:
    """Fraction of each patch covered by each structure of one image, plus the background.

    Args:
        masks: {structure: (H, W) bool} for one image, in label-map order.
        grid: the patch grid (h, w).
        exclusive: make overlapping structures disjoint (a later structure wins, as in
            ``workbench.data.label_map``).
        background: name of the last row (the area outside every structure).

    Returns:
        names (structures then background) and an (S + 1, h*w) array of fractions.
    """
    h, w = grid
    names, rows = list(masks), []
    taken = None
    arrays = {s: np.asarray(torch.as_tensor(m).cpu().numpy(), dtype=bool) for s, m in masks.items()}
    for s in reversed(names):
        m = arrays[s]
        if exclusive and taken is not None:
            m = m & ~taken
        taken = arrays[s].copy() if taken is None else taken | arrays[s]
        arrays[s] = m
    for s in names:
        rows.append(_pool(arrays[s], h, w))
    union = taken if taken is not None else None
    if union is not None:
        rows.append(1.0 - _pool(union, h, w))
        names.append(background)
    return names, np.stack(rows) if rows else np.zeros((0, h * w))


def _pool(m: np.ndarray, h: int, w: int) -> np.ndarray:
    """(H, W) bool -> (h*w,) fraction of each grid cell that is True (adaptive average pooling)."""
    hh, ww = m.shape
    if hh % h == 0 and ww % w == 0:
        return m.reshape(h, hh // h, w, ww // w).mean(axis=(1, 3)).reshape(-1)
    t = torch.from_numpy(m.astype(np.float32))[None, None]
    return torch.nn.functional.adaptive_avg_pool2d(t, (h, w)).reshape(-1).numpy().astype(np.float64)


def community_shares(communities: Any, index: int, masks: Any, structures: Sequence[str] | None = None,
                     background: str = "background", exclusive: bool = True) -> dict[str, np.ndarray]:
    """Share of each community's soft mass inside each structure, for one image.

    With ``exclusive=False`` the same quantity as ``anatomy_alignment(...).tables[index]`` (mass
    counted at the patch grid with the fraction of each patch covered by the structure). With
    ``exclusive=True`` (used to name communities) overlapping structures are made disjoint in
    label-map order (a later structure wins, as in ``workbench.data.label_map``), so an enclosing
    structure such as the phantom's "body" only counts what no other structure covers; the shares
    then sum to 1.

    Returns:
        {structure or background: (K,) shares}.
    """
    ms = _masks_at(masks, index, structures)
    if not ms:
        return {}
    names, frac = structure_fractions(ms, communities.grid, exclusive=exclusive, background=background)
    return dict(zip(names, _shares(communities.memberships[index], frac)))


def _shares(memberships: torch.Tensor, frac: np.ndarray) -> np.ndarray:
    """(n, K) memberships, (S, n) fractions -> (S, K) share of each community's mass."""
    pis = memberships.detach().cpu().double().numpy()
    return (frac @ pis) / np.maximum(pis.sum(0), 1e-12)[None, :]


def names_from_fractions(memberships: torch.Tensor, names: Sequence[str], frac: np.ndarray) -> list[str]:
    """"C<k>: <dominant structure> (<share>)" from (n, K) memberships and ``structure_fractions``."""
    k = memberships.shape[-1]
    if frac.shape[0] == 0:
        return [f"C{i}" for i in range(k)]
    sh = _shares(memberships, frac)  # (S, K)
    return [f"C{i}: {names[int(sh[:, i].argmax())]} ({sh[:, i].max():.0%})" for i in range(k)]


def _community_names(communities: Any, index: int, masks: Any, structures: Sequence[str] | None) -> list[str]:
    """"C<k>: <dominant structure> (<share>)" for each community of image ``index`` (exclusive
    shares, see :func:`community_shares`)."""
    ms = _masks_at(masks, index, structures) if masks else {}
    if not ms:
        return [f"C{i}" for i in range(communities.memberships.shape[-1])]
    names, frac = structure_fractions(ms, communities.grid)
    return names_from_fractions(communities.memberships[index], names, frac)


def _check_communities(communities: Any) -> None:
    if not all(hasattr(communities, a) for a in ("memberships", "hard", "grid")):
        raise TypeError(f"communities must be a Communities result (workbench.communities(...)); got "
                        f"{type(communities).__name__}.")


@styled
def community_overlay(image: Any, communities: Any, index: int = 0, *, masks: Any = None,
                      structures: Sequence[str] | None = None, alpha: float = 0.5, soft: bool = True,
                      legend: bool = True, ax: Any = None, title: str | None = None, linewidth: float = 1.0) -> Any:
    """Image with soft community colours, structure contours and a legend naming communities.

    Each community is named by its dominant structure (largest share of its soft mass on this
    image, structures made disjoint in label-map order: see ``community_shares``) when masks are
    given.

    Args:
        image: (B, C, H, W), (C, H, W) or (H, W) in [0, 1], or None (grey canvas).
        communities: a ``Communities`` result for the same images.
        index: which image of the batch.
        masks: {structure: (B, H, W) bool} or a batch dict (uses ``mask_present``).
        structures: structures to outline and name communities by (all when None).
        alpha: opacity of the community colours.
        soft: mix colours by membership; False paints the hard argmax map.
        legend: draw the legend (communities, then structures).
        ax: Axes to draw on; a new Figure when None.
        title: axes title; method, K, layer and head when None.
        linewidth: contour width.

    Returns:
        The Figure when ``ax`` is None, else ``ax``.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    rgb = community_rgb(image, communities, index, alpha=alpha, soft=soft)
    if masks:
        check_masks(masks, rgb.shape[:2])  # contours of another size would land in the wrong place
    with rc():
        fig = None
        if ax is None:
            fig, ax = plt.subplots(figsize=figsize(5.2 if legend else 3.2, 3.2))
        ax.imshow(rgb, interpolation="nearest")
        lines = draw_contours(ax, masks, structures, linewidth=linewidth, index=index, label=True) if masks else []
        ax.set_axis_off()
        head = "mean" if communities.head is None else communities.head
        ax.set_title(title if title is not None else
                     f"{communities.method}, K={communities.k}, layer {communities.layer}, head {head}")
        if legend:
            names = _community_names(communities, index, masks, structures)
            handles = [Patch(facecolor=c, label=n) for c, n in zip(community_colours(communities.k), names)]
            handles += [ln for ln in lines if not ln.get_label().startswith("_")]
            ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    return fig if fig is not None else ax


def _heads_list(heads: Sequence[int | None] | None, n_heads: int) -> list[int | None]:
    return [None, *range(n_heads)] if heads is None else list(heads)


@styled
def community_grid(images: Any, model_or_maps: Any, layers: Sequence[int] | None = None,
                   heads: Sequence[int | None] | None = None, *, index: int = 0, k: int | None = 4,
                   method: str = "mixed_score", masks: Any = None, structures: Sequence[str] | None = None,
                   alpha: float = 0.5, soft: bool = True, seed: int = 0, device: Any = None) -> Any:
    """A grid of community overlays of one image: rows = layers, columns = heads (None = mean).

    Args:
        images: (B, C, H, W) images (or a batch dict with "image").
        model_or_maps: a ViT (attention maps are computed once) or an ``AttentionMaps``.
        layers: layer indices (all when None).
        heads: head indices, None meaning the mean over heads (default: mean, then every head).
        index: which image.
        k, method, seed: passed to ``workbench.communities.communities``.
        masks, structures: structure contours.
        alpha, soft: colour mixing.
        device: device for the forward pass when a model is given.

    Returns:
        A Figure.
    """
    import matplotlib.pyplot as plt

    from ..communities import _compute_maps, communities

    if isinstance(images, dict):
        images = images["image"]
    index = check_index(index, len(images), what="images")
    maps = _compute_maps(model_or_maps, images, device) if isinstance(model_or_maps, torch.nn.Module) else model_or_maps
    n_layers = len(maps.attentions)
    layers = list(range(n_layers)) if layers is None else list(layers)
    hl = _heads_list(heads, maps.attentions[0].shape[1])
    sub = dataclasses.replace(maps, attentions=tuple(a[index:index + 1] for a in maps.attentions),
                              dcmm=None if getattr(maps, "dcmm", None) is None else tuple(
                                  None if d is None else {kk: (v[index:index + 1] if kk != "block" else v)
                                                          for kk, v in d.items()} for d in maps.dcmm)) \
        if dataclasses.is_dataclass(maps) else maps
    idx = 0 if sub is not maps else index
    img = torch.as_tensor(images)[index:index + 1]
    mk = None
    if masks:
        mk = {"masks": {s: torch.as_tensor(v)[index:index + 1] for s, v in masks["masks"].items()},
              "mask_present": {s: torch.as_tensor(v)[index:index + 1] for s, v in (masks.get("mask_present") or {}).items()}} \
            if "masks" in masks and isinstance(masks["masks"], dict) else \
            {s: torch.as_tensor(v)[index:index + 1] for s, v in masks.items()}
    with rc():
        fig, axes = plt.subplots(len(layers), len(hl), figsize=figsize(1.9 * len(hl), 1.9 * len(layers)), squeeze=False)
        for r, li in enumerate(layers):
            for c, hd in enumerate(hl):
                comm = communities(sub, k=k, method=method, layer=li, head=hd, seed=seed)
                community_overlay(img, comm, idx, masks=mk, structures=structures, alpha=alpha, soft=soft,
                                  legend=False, ax=axes[r, c], title=f"L{comm.layer} " + ("mean" if hd is None else f"h{hd}"))
    return fig


@styled
def attention_grid(maps: Any, index: int = 0, layers: Sequence[int] | None = None,
                   heads: Sequence[int | None] | None = None, *, image: Any = None, alpha: float = 0.6,
                   cmap: str = "viridis", ax: Any = None) -> Any:
    """CLS-to-patch attention per layer (rows) and head (columns, None = head mean).

    For models without prefix tokens the attention each patch receives (column mean) is shown.

    Args:
        maps: an ``AttentionMaps``.
        index: which image.
        layers: layer indices (all when None).
        heads: head indices, None = mean (default: mean, then every head).
        image: optional (B, C, H, W) images to show underneath (then maps are upsampled).
        alpha: opacity of the attention over the image.
        cmap: a perceptually uniform colour map.
        ax: an Axes to draw a single cell in (then ``layers`` and ``heads`` must select one
            each); None for a new Figure.

    Returns:
        A Figure (or ``ax``).
    """
    import matplotlib.pyplot as plt

    if not all(hasattr(maps, a) for a in ("attentions", "grid", "num_prefix_tokens")):
        raise TypeError(f"maps must be an AttentionMaps result (workbench.attention_maps(model, images)); got "
                        f"{type(maps).__name__}.")
    n_layers = len(maps.attentions)
    layers = list(range(n_layers)) if layers is None else list(layers)
    hl = _heads_list(heads, maps.attentions[0].shape[1])
    index = check_index(index, maps.attentions[0].shape[0], what="images of the maps")
    for li in layers:
        check_index(li, n_layers, name="layer", what="captured layers")
    for hd in hl:
        if hd is not None:
            check_index(hd, maps.attentions[0].shape[1], name="head", what="heads")
    h, w = maps.grid
    p = int(maps.num_prefix_tokens)
    readout = list(getattr(maps, "readout_tokens", (0,) if p else ()))
    if ax is not None and len(layers) * len(hl) != 1:
        raise ValueError(f"attention_grid draws {len(layers)}x{len(hl)} panels; pass ax=None for a new "
                         "Figure, or one layer and one head (e.g. layers=[-1], heads=[None]) to draw in ax.")
    with rc():
        if ax is None:
            fig, axes = plt.subplots(len(layers), len(hl), figsize=figsize(1.7 * len(hl), 1.7 * len(layers)), squeeze=False)
        else:
            fig, axes = None, np.array([[ax]])
        for r, li in enumerate(layers):
            a = maps.attentions[li][index].detach().float().cpu()  # (heads, N, N)
            for c, hd in enumerate(hl):
                x = a.mean(0) if hd is None else a[hd]
                v = x[readout, p:].mean(0) if readout else x[p:, p:].mean(0)
                v = v.reshape(1, 1, h, w)
                cell = axes[r, c]
                if image is not None:
                    im = _image(image, index, None)
                    v = torch.nn.functional.interpolate(v, size=im.shape[:2], mode="bilinear", align_corners=False)
                    cell.imshow(im)
                    cell.imshow(v[0, 0].numpy(), cmap=cmap, alpha=alpha)
                else:
                    cell.imshow(v[0, 0].numpy(), cmap=cmap, interpolation="nearest")
                cell.set_axis_off()
                cell.set_title(f"L{li % n_layers} " + ("mean" if hd is None else f"h{hd}"))
    return fig if fig is not None else ax


# ------------------------------------------------------------------ rebuildable recipes (viz.draw)
from ._recipes import batch_of, recipe  # noqa: E402


@recipe("community_overlay")
def _community_overlay_recipe(model: Any, data: Any, *, indices: Any = (0,), index: int = 0, k: int = 4,
                              method: str = "mixed_score", layer: int = -1, head: Any = None,
                              structures: Any = None, alpha: float = 0.5, soft: bool = True,
                              legend: bool = True, seed: int = 0) -> Any:
    from ..communities import communities

    batch = batch_of(data, indices)
    comms = communities(model, batch["image"], k=k, method=method, layer=layer, head=head, seed=seed)
    return community_overlay(batch["image"], comms, index, masks=batch, structures=structures, alpha=alpha,
                             soft=soft, legend=legend)


@recipe("community_grid")
def _community_grid_recipe(model: Any, data: Any, *, index: int = 0, layers: Any = None, heads: Any = None,
                           k: int = 4, method: str = "mixed_score", structures: Any = None, alpha: float = 0.5,
                           seed: int = 0) -> Any:
    batch = batch_of(data, [index])
    return community_grid(batch["image"], model, layers, heads, index=0, k=k, method=method, masks=batch,
                          structures=structures, alpha=alpha, seed=seed)


@recipe("attention_grid")
def _attention_grid_recipe(model: Any, data: Any, *, index: int = 0, layers: Any = None, heads: Any = None,
                           show_image: bool = True, alpha: float = 0.6) -> Any:
    from ..attention import attention_maps

    batch = batch_of(data, [index])
    maps = attention_maps(model, batch["image"])
    return attention_grid(maps, 0, layers, heads, image=batch["image"] if show_image else None, alpha=alpha)
