"""ipywidgets wiring for interactive exploration (no science here: it calls the package).

``explorer(model, dataset)`` shows one image with its patch communities, structure outlines and a
legend, and redraws on every control change. Attention maps are computed once per image (the
first time it is shown) and communities once per (image, layer, head, method, K), so a redraw
after the first forward is only the community fit and a PNG encode. The overlay is an
``ipywidgets.Image`` holding PNG bytes (fast, and testable: its ``value`` changes when the view
changes). Stable DOM handles for browser tests: the container has the CSS class ``wb-explorer``,
the image ``wb-overlay``, the previous/next buttons ``wb-prev``/``wb-next``.
"""
from __future__ import annotations

import html
import logging
from collections import OrderedDict
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

__all__ = ["Explorer", "explorer"]

_DEFAULT_ON = ("left_lung", "right_lung", "heart", "mediastinum", "cardiomediastinum", "airways",
               "diaphragm")


class Explorer(ExportView, widgets.VBox):
    """The explorer container. Reach the controls through ``controls`` (name -> widget), the
    overlay through ``image`` (an ``ipywidgets.Image``), the legend through ``legend`` and the
    status line through ``status``. ``redraw()`` redraws; ``export()`` saves the current view."""

    def __init__(self, model: torch.nn.Module, dataset: Any, *, indices: Sequence[int] | None = None,
                 k: int = 4, method: str = "mixed_score", layer: int = -1, head: int | None = None,
                 structures: Sequence[str] | None = None, alpha: float = 0.5, soft: bool = True,
                 export_path: str = "figures/explorer", cache_size: int = 256) -> None:
        from workbench.communities import METHODS

        from workbench._checks import check_dataset

        check_dataset(dataset, name="dataset", tensors=False)
        self.model, self.dataset = model, dataset
        self.indices = list(range(len(dataset))) if indices is None else [int(i) for i in indices]
        if not self.indices:
            raise ValueError("explorer needs at least one image; indices is empty.")
        self._maps: OrderedDict = OrderedDict()
        self._comms: OrderedDict = OrderedDict()
        self._samples: OrderedDict = OrderedDict()
        self._outlines: dict = {}
        self._fractions: dict = {}
        self._cache_size = cache_size
        self.last_error: str | None = None
        self.last_export: list[Path] | None = None
        first = self._sample(0)
        maps = self._maps_for(0)
        n_layers, n_heads = len(maps.attentions), maps.attentions[0].shape[1]
        names = list(structures) if structures is not None else list(getattr(dataset, "structures", ()) or first["masks"])
        on = [s for s in names if s in _DEFAULT_ON] or names
        c: dict[str, widgets.Widget] = {}
        c["index"] = widgets.IntSlider(value=0, min=0, max=len(self.indices) - 1, description="image",
                                       continuous_update=False)
        c["prev"] = widgets.Button(description="◀", layout=widgets.Layout(width="40px"), tooltip="previous image")
        c["next"] = widgets.Button(description="▶", layout=widgets.Layout(width="40px"), tooltip="next image")
        c["prev"].add_class("wb-prev")
        c["next"].add_class("wb-next")
        c["layer"] = widgets.Dropdown(options=[(str(i), i) for i in range(n_layers)], value=layer % n_layers,
                                      description="layer")
        c["head"] = widgets.Dropdown(options=[("mean", -1)] + [(str(i), i) for i in range(n_heads)],
                                     value=-1 if head is None else int(head), description="head")
        c["method"] = widgets.Dropdown(options=METHODS.names(), value=method, description="method")
        c["k"] = widgets.IntSlider(value=k, min=2, max=max(8, k), description="K", continuous_update=False)
        c["alpha"] = widgets.FloatSlider(value=alpha, min=0.0, max=1.0, step=0.05, description="opacity",
                                         continuous_update=False)
        c["soft"] = widgets.Checkbox(value=soft, description="soft memberships", indent=False)
        for s in names:
            c[f"show_{s}"] = widgets.Checkbox(value=s in on, description=s, indent=False,
                                              layout=widgets.Layout(width="auto"))
        c["format"] = widgets.Dropdown(options=["png", "pdf", "svg"], value="png", description="format",
                                       layout=widgets.Layout(width="160px"))
        c["path"] = widgets.Text(value=export_path, description="path")
        c["export"] = widgets.Button(description="export", icon="download")
        self.controls = c
        self.structures = names
        self.image = widgets.Image(format="png", layout=widgets.Layout(width="384px"))
        self.image.add_class("wb-overlay")
        self.legend = widgets.HTML()
        self.status = widgets.HTML()
        c["prev"].on_click(lambda _b: self._step(-1))
        c["next"].on_click(lambda _b: self._step(1))
        c["export"].on_click(lambda _b: self.export())
        for name, w in c.items():
            if name not in ("prev", "next", "export", "format", "path"):
                w.observe(lambda _ch: self.redraw(), names="value")
        toggles = widgets.HBox([c[f"show_{s}"] for s in names], layout=widgets.Layout(flex_flow="row wrap"))
        left = widgets.VBox([widgets.HBox([c["prev"], c["index"], c["next"]]), c["layer"], c["head"], c["method"],
                             c["k"], c["alpha"], c["soft"], toggles,
                             widgets.HBox([c["format"], c["path"], c["export"]]), self.status])
        super().__init__([widgets.HBox([self.image, self.legend]), left])
        self.add_class("wb-explorer")
        self.redraw()

    # -- data and caches ------------------------------------------------------------------------
    def _sample(self, pos: int) -> dict:
        key = self.indices[pos]
        if key not in self._samples:
            self._samples[key] = self.dataset[key]
            while len(self._samples) > self._cache_size:
                self._samples.popitem(last=False)
        return self._samples[key]

    def _outlines_for(self, pos: int) -> dict[str, np.ndarray]:
        from workbench.viz.overlays import outline_masks

        key = self.indices[pos]
        if key not in self._outlines:
            masks = self._sample(pos).get("masks") or {}
            self._outlines = {key: outline_masks({s: m.numpy() for s, m in masks.items() if s in self.structures})}
        return self._outlines[key]

    def _maps_for(self, pos: int) -> Any:
        from workbench._device import model_device
        from workbench.attention import attention_maps

        key = self.indices[pos]
        if key not in self._maps:
            x = self._sample(pos)["image"][None].to(model_device(self.model))
            self._maps[key] = attention_maps(self.model, x)
            while len(self._maps) > self._cache_size:
                self._maps.popitem(last=False)
        return self._maps[key]

    def params(self) -> dict[str, Any]:
        """Every parameter of the current view (recorded in the export's sidecar JSON)."""
        c = self.controls
        pos = c["index"].value
        return {"index": self.indices[pos], "id": self._sample(pos).get("id"), "layer": c["layer"].value,
                "head": None if c["head"].value < 0 else c["head"].value, "method": c["method"].value,
                "k": c["k"].value, "alpha": c["alpha"].value, "soft": c["soft"].value,
                "structures": [s for s in self.structures if c[f"show_{s}"].value],
                "model": type(self.model).__name__}

    def communities(self) -> Any:
        """The ``Communities`` of the current view (cached)."""
        from workbench.communities import communities

        p = self.params()
        k = None if p["method"] == "dcmm" else p["k"]
        key = (p["index"], p["layer"], p["head"], p["method"], k)
        if key not in self._comms:
            from workbench.viz.overlays import names_from_fractions, structure_fractions

            pos = self.controls["index"].value
            comm = communities(self._maps_for(pos), k=k, method=p["method"], layer=p["layer"], head=p["head"])
            if (p["index"], comm.grid) not in self._fractions:  # structure coverage of each patch, per image
                masks = {s: m[0] for s, m in self._masks(self._sample(pos), self.structures).items()}
                self._fractions = {(p["index"], comm.grid): structure_fractions(masks, comm.grid)}
            names = names_from_fractions(comm.memberships[0], *self._fractions[(p["index"], comm.grid)])
            self._comms[key] = (comm, names)
            while len(self._comms) > self._cache_size:
                self._comms.popitem(last=False)
        return self._comms[key][0]

    def names(self) -> list[str]:
        """Legend names of the current view's communities ("C<k>: <dominant structure> (share)")."""
        self.communities()
        p = self.params()
        k = None if p["method"] == "dcmm" else p["k"]
        return self._comms[(p["index"], p["layer"], p["head"], p["method"], k)][1]

    def _masks(self, sample: dict, structures: list[str]) -> dict[str, torch.Tensor]:
        masks = sample.get("masks") or {}
        return {s: masks[s][None] for s in structures if s in masks}  # label-map order: later wins

    # -- actions --------------------------------------------------------------------------------
    def _step(self, d: int) -> None:
        s = self.controls["index"]
        s.value = (s.value + d) % (s.max + 1)

    def redraw(self) -> None:
        """Recompute (from the caches) and redraw the overlay and legend."""
        from workbench.viz.overlays import community_colours, community_rgb

        try:
            p = self.params()
            pos = self.controls["index"].value
            sample = self._sample(pos)
            comm = self.communities()
            lines = {s: m for s, m in self._outlines_for(pos).items() if s in p["structures"]}
            rgb = community_rgb(sample["image"], comm, 0, alpha=p["alpha"], soft=p["soft"], outlines=lines)
            self.image.value = _png(rgb)
            names = self.names()
            rows = "".join(f"<div><span style='display:inline-block;width:12px;height:12px;background:{c};"
                           f"margin-right:4px'></span>{html.escape(n)}</div>"
                           for c, n in zip(community_colours(comm.k), names))
            self.legend.value = (f"<style>.wb-overlay {{ image-rendering: pixelated; }}</style>"
                                 f"<div class='wb-legend'>{rows}</div>")
            self.last_error = None
            self.status.value = f"<span>{html.escape(str(p['id']))} · {p['method']} K={comm.k}</span>"
        except Exception as e:  # shown in the widget, not raised into the event loop
            show_error(self, e, "explorer redraw")

    def figure(self) -> Any:
        """The current view as a matplotlib Figure (``community_overlay``)."""
        from workbench.viz.overlays import community_overlay

        p = self.params()
        sample = self._sample(self.controls["index"].value)
        return community_overlay(sample["image"], self.communities(), 0, masks=self._masks(sample, p["structures"]),
                                 alpha=p["alpha"], soft=p["soft"])


def explorer(model: torch.nn.Module, dataset: Any, *, indices: Sequence[int] | None = None, k: int = 4,
             method: str = "mixed_score", layer: int = -1, head: int | None = None,
             structures: Sequence[str] | None = None, alpha: float = 0.5, soft: bool = True,
             export_path: str = "figures/explorer") -> Explorer:
    """An interactive community explorer for a ViT and a dataset with masks.

    Controls: image (slider and previous/next buttons), layer, head (or mean), method, K,
    opacity, soft/hard, one toggle per structure outline, and an export button (PNG/PDF/SVG plus
    a sidecar JSON through ``workbench.viz.save_figure``).

    Args:
        model: a timm ViT (any of ``workbench.models.create``'s, DCMM or not).
        dataset: a workbench dataset (samples with "image" and optional "masks").
        indices: dataset indices to browse (all when None).
        k, method, layer, head: initial community settings (see ``workbench.communities``).
        structures: structures offered as toggles (the dataset's when None).
        alpha, soft: initial opacity and colour mixing.
        export_path: initial export path (without suffix).

    Returns:
        An :class:`Explorer` (an ``ipywidgets.VBox``): display it in a notebook.
    """
    return Explorer(model, dataset, indices=indices, k=k, method=method, layer=layer, head=head,
                    structures=structures, alpha=alpha, soft=soft, export_path=export_path)
