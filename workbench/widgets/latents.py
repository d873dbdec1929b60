"""ipywidgets wiring for browsing SAE latents (no science here: it calls ``workbench.sae``).

``latent_browser(sae, model, dataset)``: pick a latent and see its top-activating images (heatmap
and strongest patch), its heatmap on a chosen image with anatomy contours, and its structure
profile (share of its activation mass and pixel AUROC per structure, from ``workbench.sae.atlas``);
pick an image and see its strongest latents (choose one to browse it). The latent maps of the
browsed images are computed once (``workbench.sae.latents``), so a redraw is indexing and a PNG
encode. Stable DOM handles for browser tests: the container has the CSS class ``wb-latents``, the
heatmap ``wb-latent-heatmap``, the top-image strip ``wb-latent-top``, the previous/next image
buttons ``wb-latent-prev`` / ``wb-latent-next`` and the strongest-latents list ``wb-latent-strongest``.
"""
from __future__ import annotations

import html
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

try:
    import ipywidgets as widgets
except ImportError as e:  # pragma: no cover - ipywidgets is a core dependency
    raise ImportError("workbench.widgets needs ipywidgets>=8: pip install ipywidgets") from e

from workbench.widgets._common import ExportView, show_error
from workbench.widgets._common import png_bytes as _png

log = logging.getLogger(__name__)

__all__ = ["LatentBrowser", "latent_browser"]

_DEFAULT_ON = ("left_lung", "right_lung", "heart", "cardiomediastinum", "device", "marker", "nodule")


def _subset(dataset: Any, indices: list[int]) -> Any:
    if hasattr(dataset, "subset"):
        return dataset.subset(indices)
    return torch.utils.data.Subset(dataset, indices)


class LatentBrowser(ExportView, widgets.VBox):
    """The latent browser. Controls in ``controls`` (name -> widget); images in ``heatmap`` and
    ``top`` (``ipywidgets.Image``), the profile in ``profile``, the image's strongest latents in
    ``strongest`` (a Select), messages in ``status``. ``redraw()`` redraws; ``export()`` saves."""

    def __init__(self, sae: Any, model: torch.nn.Module, dataset: Any, *, indices: Sequence[int] | None = None,
                 latent: int | None = None, n_top: int = 6, structures: Sequence[str] | None = None,
                 atlas: Any = None, alpha: float = 0.6, export_path: str = "figures/latent",
                 check_model: bool = True) -> None:
        from workbench.sae import atlas as make_atlas
        from workbench.sae import latents

        from workbench._checks import check_dataset

        check_dataset(dataset, name="dataset", tensors=False)
        self.sae, self.model = sae, model
        self.indices = list(range(len(dataset))) if indices is None else [int(i) for i in indices]
        if not self.indices:
            raise ValueError("latent_browser needs at least one image; indices is empty.")
        self.data = _subset(dataset, self.indices)
        self.lat = latents(sae, model, self.data, maps=True, check_model=check_model)
        self.maps = self.lat.maps.half()  # (N, d_sae, h, w)
        peak = self.maps.flatten(2).amax(-1).float()  # (N, d_sae)
        self.peak = peak
        self.frequency = (peak > 0).float().mean(0)
        alive = torch.nonzero(self.frequency > 0).flatten().tolist()
        if not alive:
            raise ValueError("no latent fires on these images; browse other images or check the SAE.")
        self.alive = sorted(alive, key=lambda j: -float(self.frequency[j]))
        names = list(structures) if structures is not None else list(getattr(dataset, "structures", ()) or ())
        self.structures = names
        self.atlas = atlas
        if self.atlas is None and names:
            self.atlas = make_atlas(sae, model, self.data, structures=names, upsample_mode="nearest",
                                    check_model=check_model)
        self.n_top = int(n_top)
        self.last_error: str | None = None
        self.last_export: list[Path] | None = None
        self._outlines: dict = {}
        on = [s for s in names if s in _DEFAULT_ON] or names[:4]
        c: dict[str, widgets.Widget] = {}
        start = int(latent) if latent is not None else self.alive[0]
        c["latent"] = widgets.Dropdown(options=[(f"{j} (fires on {float(self.frequency[j]):.0%})", j)
                                                for j in sorted(set(self.alive) | {start})],
                                       value=start, description="latent")
        c["index"] = widgets.IntSlider(value=0, min=0, max=len(self.indices) - 1, description="image",
                                       continuous_update=False)
        c["prev"] = widgets.Button(description="◀", layout=widgets.Layout(width="40px"), tooltip="previous image")
        c["next"] = widgets.Button(description="▶", layout=widgets.Layout(width="40px"), tooltip="next image")
        c["prev"].add_class("wb-latent-prev")
        c["next"].add_class("wb-latent-next")
        c["alpha"] = widgets.FloatSlider(value=alpha, min=0.0, max=1.0, step=0.05, description="opacity",
                                         continuous_update=False)
        for s in names:
            c[f"show_{s}"] = widgets.Checkbox(value=s in on, description=s, indent=False,
                                              layout=widgets.Layout(width="auto"))
        c["format"] = widgets.Dropdown(options=["png", "pdf", "svg"], value="png", description="format",
                                       layout=widgets.Layout(width="160px"))
        c["path"] = widgets.Text(value=export_path, description="path")
        c["export"] = widgets.Button(description="export", icon="download")
        self.controls = c
        self.heatmap = widgets.Image(format="png", layout=widgets.Layout(width="320px"))
        self.heatmap.add_class("wb-latent-heatmap")
        self.top = widgets.Image(format="png", layout=widgets.Layout(width="640px"))
        self.top.add_class("wb-latent-top")
        self.profile = widgets.HTML()
        self.strongest = widgets.Select(options=[], rows=8, description="strongest", layout=widgets.Layout(width="260px"))
        self.strongest.add_class("wb-latent-strongest")
        self.status = widgets.HTML()
        c["prev"].on_click(lambda _b: self._step(-1))
        c["next"].on_click(lambda _b: self._step(1))
        c["export"].on_click(lambda _b: self.export())
        for name, w in c.items():
            if name not in ("prev", "next", "export", "format", "path"):
                w.observe(lambda _ch: self.redraw(), names="value")
        self.strongest.observe(self._pick, names="value")
        toggles = widgets.HBox([c[f"show_{s}"] for s in names], layout=widgets.Layout(flex_flow="row wrap"))
        left = widgets.VBox([c["latent"], widgets.HBox([c["prev"], c["index"], c["next"]]), c["alpha"], toggles,
                             widgets.HBox([c["format"], c["path"], c["export"]]), self.status])
        super().__init__([widgets.HBox([self.heatmap, self.profile, self.strongest]), self.top, left])
        self.add_class("wb-latents")
        self.redraw()

    # -- pieces ---------------------------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        """Every parameter of the current view (recorded in the export's sidecar JSON)."""
        c = self.controls
        pos = c["index"].value
        return {"latent": int(c["latent"].value), "index": self.indices[pos], "id": self.lat.ids[pos],
                "alpha": c["alpha"].value, "structures": [s for s in self.structures if c[f"show_{s}"].value],
                "layer": self.lat.layer, "sae": self.sae.config()["kind"], "d_sae": self.sae.d_sae}

    def _image(self, pos: int) -> torch.Tensor:
        x = self.data[pos]["image"]
        return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()

    def _heat(self, pos: int, latent: int) -> torch.Tensor:
        from workbench.sae.latents import upsample

        size = tuple(self._image(pos).shape[-2:])
        return upsample(self.maps[pos:pos + 1, latent].float(), size, "bilinear")[0].clamp_min(0)

    def _lines(self, pos: int, shown: list[str]) -> dict[str, np.ndarray]:
        from workbench.viz.overlays import outline_masks

        if pos not in self._outlines:
            masks = self.data[pos].get("masks") or {}
            self._outlines = {pos: outline_masks({s: m.numpy() for s, m in masks.items() if s in self.structures})}
        return {s: m for s, m in self._outlines[pos].items() if s in shown}

    def top_images(self, latent: int) -> list[int]:
        """Positions (in the browsed images) of the latent's top-activating images."""
        v = self.peak[:, latent]
        order = torch.argsort(v, descending=True)[: self.n_top]
        return [int(i) for i in order if v[i] > 0]

    def strongest_latents(self, pos: int, k: int = 8) -> list[tuple[int, float]]:
        """The image's ``k`` latents with the largest peak activation."""
        v = self.peak[pos]
        order = torch.argsort(v, descending=True)[:k]
        return [(int(j), float(v[j])) for j in order if v[j] > 0]

    def _strip(self, latent: int) -> np.ndarray:
        from workbench.viz.sae import latent_rgb

        tiles = []
        vmax = float(self.peak[:, latent].max()) or None
        for pos in self.top_images(latent):
            tile = latent_rgb(self._image(pos), self._heat(pos, latent), vmax=vmax)
            h, w = self.lat.grid
            H, W = tile.shape[:2]
            r, cc = divmod(int(self.maps[pos, latent].flatten().float().argmax()), w)
            r0, r1, c0, c1 = r * H // h, (r + 1) * H // h - 1, cc * W // w, (cc + 1) * W // w - 1
            tile[[r0, r1], c0:c1 + 1] = (102, 204, 238)
            tile[r0:r1 + 1, [c0, c1]] = (102, 204, 238)
            tiles.append(np.pad(tile, ((0, 0), (0, 2), (0, 0)), constant_values=255))
        return np.concatenate(tiles, 1) if tiles else np.full((8, 8, 3), 255, np.uint8)

    def _profile_html(self, latent: int) -> str:
        from workbench.viz._style import structure_colours

        rows = [f"<b>latent {latent}</b>: fires on {float(self.frequency[latent]):.0%} of images"]
        if self.atlas is not None:
            cols = structure_colours(list(self.atlas.structures))
            for i, s in enumerate(self.atlas.structures):
                share = float(self.atlas.mass[latent, i])
                auc = float(self.atlas.auroc[i, latent])
                rows.append(f"<div style='font-size:11px'><span style='display:inline-block;width:110px'>"
                            f"{html.escape(s)}</span><span style='display:inline-block;height:9px;width:"
                            f"{int(100 * share)}px;background:{cols[s]}'></span> {share:.0%}"
                            f" · AUROC {auc:.2f}</div>")
        return "<div class='wb-latent-profile'>" + "".join(rows) + "</div>"

    # -- actions --------------------------------------------------------------------------------
    def _step(self, d: int) -> None:
        s = self.controls["index"]
        s.value = (s.value + d) % (s.max + 1)

    def _pick(self, change: dict) -> None:
        j = change.get("new")
        if j is not None and j != self.controls["latent"].value:
            if j not in [v for _, v in self.controls["latent"].options]:
                self.controls["latent"].options = list(self.controls["latent"].options) + [(str(j), j)]
            self.controls["latent"].value = j

    def redraw(self) -> None:
        """Redraw the heatmap, the top-image strip, the profile and the strongest latents."""
        from workbench.viz.sae import latent_rgb

        try:
            p = self.params()
            pos, lat = self.controls["index"].value, p["latent"]
            vmax = float(self.peak[:, lat].max()) or None
            rgb = latent_rgb(self._image(pos), self._heat(pos, lat), alpha=p["alpha"], vmax=vmax,
                             outlines=self._lines(pos, p["structures"]))
            self.heatmap.value = _png(rgb, 256)
            self.top.value = _png(self._strip(lat), 128)
            self.profile.value = self._profile_html(lat)
            opts = [(f"latent {j}: {v:.2f}", j) for j, v in self.strongest_latents(pos)]
            if [o[1] for o in self.strongest.options] != [o[1] for o in opts]:
                self.strongest.unobserve(self._pick, names="value")
                self.strongest.options = opts
                self.strongest.value = None
                self.strongest.observe(self._pick, names="value")
            self.last_error = None
            self.status.value = f"<span>{html.escape(str(p['id']))} · latent {lat} · layer {html.escape(p['layer'])}</span>"
        except Exception as e:  # shown in the widget, not raised into the event loop
            show_error(self, e, "latent browser redraw")

    def figure(self) -> Any:
        """The current view as a matplotlib Figure (``workbench.viz.latent_heatmap``)."""
        from workbench.viz.sae import latent_heatmap

        p = self.params()
        pos = self.controls["index"].value
        masks = {s: m for s, m in (self.data[pos].get("masks") or {}).items() if s in p["structures"]}
        return latent_heatmap(self._image(pos), self._heat(pos, p["latent"]), masks=masks, alpha=p["alpha"],
                              vmax=float(self.peak[:, p["latent"]].max()) or None,
                              title=f"latent {p['latent']} on {p['id']}")


def latent_browser(sae: Any, model: torch.nn.Module, dataset: Any, *, indices: Sequence[int] | None = None,
                   latent: int | None = None, n_top: int = 6, structures: Sequence[str] | None = None,
                   atlas: Any = None, alpha: float = 0.6, export_path: str = "figures/latent",
                   check_model: bool = True) -> LatentBrowser:
    """An interactive browser of an SAE's latents on a dataset with anatomy masks.

    Pick a latent: its top images (heatmap, strongest patch boxed), its heatmap on the chosen image
    with structure contours, its structure profile (mass share and pixel AUROC per structure). Pick
    an image: its strongest latents, one click to browse any of them. Export the view as PNG/PDF/SVG
    with a sidecar JSON of every parameter.

    Args:
        sae: a trained SAE (``workbench.sae.train`` / ``load``).
        model: the model whose layer it reads.
        dataset: a workbench dataset (masks give contours and the profile).
        indices: dataset indices to browse (all when None; keep it to a few hundred).
        latent: the latent shown first (default: the most frequent).
        n_top: top images shown per latent.
        structures: structures for contours and the profile (the dataset's when None).
        atlas: a precomputed ``workbench.sae.atlas`` of these images (computed when None).
        alpha: initial heatmap opacity.
        export_path: initial export path (without suffix).
        check_model: refuse a model other than the one the SAE was trained on.

    Returns:
        A :class:`LatentBrowser` (an ``ipywidgets.VBox``): display it in a notebook.
    """
    return LatentBrowser(sae, model, dataset, indices=indices, latent=latent, n_top=n_top, structures=structures,
                         atlas=atlas, alpha=alpha, export_path=export_path, check_model=check_model)
