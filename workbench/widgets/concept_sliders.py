"""ipywidgets wiring for a concept model (no science here: it calls ``workbench.concepts``).

``concept_explorer(cbm, dataset)`` shows one image with a map of where the evidence for a class lies,
one slider per concept (its predicted probability; moving it intervenes), buttons that set a concept
absent / present, the class probabilities and each concept's contribution to the shown class. Per
image, the concept logits and concept maps are computed once (cached); a redraw after an intervention
re-runs only the task head, mixes the cached maps and encodes a PNG.

The map (``map`` control): "class evidence" (default) sums the concept maps (positive parts, each
scaled to its maximum) weighted by each concept's positive contribution to the shown class, so it
follows interventions; or one concept's own map, shifted to its minimum.
Structure outlines come from the dataset's masks (toggles). Export writes the current view (concept
map, contributions, class probabilities) as PNG/PDF/SVG plus a sidecar JSON.

Stable DOM handles for browser tests: the container has the CSS class ``wb-concepts``, the map image
``wb-concept-map``, the class bars ``wb-class-bars``, the contribution bars ``wb-contrib-bars``, the
buttons ``wb-present-<k>`` / ``wb-absent-<k>`` (k the concept index), ``wb-reset`` and ``wb-next``.
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

__all__ = ["ConceptExplorer", "concept_explorer"]

_EVIDENCE = "class evidence"
_DEFAULT_ON = ("left_lung", "right_lung", "heart")


def _bars(values: Sequence[float], labels: Sequence[str], *, signed: bool, highlight: int | None = None,
          marks: Sequence[bool] | None = None) -> str:
    """Horizontal HTML bars (fast to redraw; no matplotlib). Signed bars grow left/right of the middle."""
    top = max([abs(float(v)) for v in values] + [1e-9]) if signed else 1.0
    rows = []
    for i, (v, lab) in enumerate(zip(values, labels)):
        v = float(v)
        width = 100 * abs(v) / top * (0.5 if signed else 1.0)
        left = (50 if v >= 0 else 50 - width) if signed else 0
        colour = "#4477AA" if v >= 0 else "#EE6677"
        weight = "bold" if i == highlight else "normal"
        mark = " ✎" if marks is not None and marks[i] else ""
        number = f"{v:+.2f}" if signed else f"{v:.2f}"
        rows.append(
            f"<div style='display:flex;align-items:center;font-size:12px;font-weight:{weight}'>"
            f"<span style='width:150px'>{html.escape(lab)}{mark}</span>"
            f"<span style='position:relative;display:inline-block;width:160px;height:12px;background:#F2F2F2'>"
            f"<span style='position:absolute;left:{left:.1f}%;width:{width:.1f}%;height:12px;background:{colour}'>"
            f"</span></span><span style='margin-left:6px'>{number}</span></div>")
    return "".join(rows)


class ConceptExplorer(ExportView, widgets.VBox):
    """The concept explorer container. Controls: ``controls`` (name -> widget; sliders are
    ``concept_<name>``); the map: ``image``; class and contribution bars: ``classes_html``,
    ``contrib_html``; status line: ``status``. ``redraw()`` redraws, ``export()`` saves the view."""

    def __init__(self, cbm: Any, dataset: Any, *, indices: Sequence[int] | None = None,
                 structures: Sequence[str] | None = None, method: str = "auto", alpha: float = 0.55,
                 export_path: str = "figures/concepts", cache_size: int = 128) -> None:
        from workbench.concepts._model import check_cbm

        self.cbm = check_cbm(cbm, "concept_explorer")
        self.dataset = dataset
        self.indices = list(range(len(dataset))) if indices is None else [int(i) for i in indices]
        if not self.indices:
            raise ValueError("concept_explorer needs at least one image; indices is empty.")
        self.method = method
        self._cache: OrderedDict = OrderedDict()
        self._cache_size = cache_size
        self._mute = False
        self.intervened: dict[int, float] = {}
        self.last_error: str | None = None
        self.last_export: list[Path] | None = None
        names = self.cbm.concepts
        first = dataset[self.indices[0]]
        avail = list(structures) if structures is not None else list((first.get("masks") or {}))
        avail = [s for s in avail if s not in names]
        classes = self.cbm.classes or tuple(str(i) for i in range(self.cbm.num_classes))
        c: dict[str, widgets.Widget] = {}
        c["index"] = widgets.IntSlider(value=0, min=0, max=len(self.indices) - 1, description="image",
                                       continuous_update=False)
        c["prev"] = widgets.Button(description="◀", layout=widgets.Layout(width="40px"), tooltip="previous image")
        c["next"] = widgets.Button(description="▶", layout=widgets.Layout(width="40px"), tooltip="next image")
        c["prev"].add_class("wb-prev")
        c["next"].add_class("wb-next")
        c["target"] = widgets.Dropdown(options=[("predicted", -1)] + [(n, i) for i, n in enumerate(classes)],
                                       value=-1, description="class")
        c["map"] = widgets.Dropdown(options=[_EVIDENCE, *names], value=_EVIDENCE, description="map")
        c["alpha"] = widgets.FloatSlider(value=alpha, min=0.0, max=1.0, step=0.05, description="opacity",
                                         continuous_update=False)
        rows = []
        for k, n in enumerate(names):
            c[f"concept_{n}"] = widgets.FloatSlider(value=0.5, min=0.0, max=1.0, step=0.01, description=n,
                                                    continuous_update=False, readout_format=".2f",
                                                    style={"description_width": "110px"},
                                                    layout=widgets.Layout(width="330px"))
            c[f"absent_{n}"] = widgets.Button(description="absent", layout=widgets.Layout(width="80px"))
            c[f"present_{n}"] = widgets.Button(description="present", layout=widgets.Layout(width="86px"))
            c[f"absent_{n}"].add_class(f"wb-absent-{k}")
            c[f"present_{n}"].add_class(f"wb-present-{k}")
            c[f"absent_{n}"].on_click(lambda _b, k=k: self.set_concept(k, 0.0))
            c[f"present_{n}"].on_click(lambda _b, k=k: self.set_concept(k, 1.0))
            c[f"concept_{n}"].observe(lambda ch, k=k: self._slid(k, ch["new"]), names="value")
            rows.append(widgets.HBox([c[f"concept_{n}"], c[f"absent_{n}"], c[f"present_{n}"]]))
        c["reset"] = widgets.Button(description="reset to predictions", layout=widgets.Layout(width="170px"))
        c["reset"].add_class("wb-reset")
        c["true"] = widgets.Button(description="set true concepts", layout=widgets.Layout(width="150px"))
        for s in avail:
            c[f"show_{s}"] = widgets.Checkbox(value=s in _DEFAULT_ON, description=s, indent=False,
                                              layout=widgets.Layout(width="auto"))
        c["format"] = widgets.Dropdown(options=["png", "pdf", "svg"], value="png", description="format",
                                       layout=widgets.Layout(width="160px"))
        c["path"] = widgets.Text(value=export_path, description="path")
        c["export"] = widgets.Button(description="export", icon="download")
        self.controls, self.structures, self.names, self.class_names = c, avail, names, classes
        self.image = widgets.Image(format="png", layout=widgets.Layout(width="320px"))
        self.image.add_class("wb-concept-map")
        self.classes_html, self.contrib_html, self.status = widgets.HTML(), widgets.HTML(), widgets.HTML()
        self.classes_html.add_class("wb-class-bars")
        self.contrib_html.add_class("wb-contrib-bars")
        c["prev"].on_click(lambda _b: self._step(-1))
        c["next"].on_click(lambda _b: self._step(1))
        c["reset"].on_click(lambda _b: self.reset())
        c["true"].on_click(lambda _b: self.set_true())
        c["export"].on_click(lambda _b: self.export())
        c["index"].observe(lambda _ch: self._new_image(), names="value")
        for name in ("target", "map", "alpha", *[f"show_{s}" for s in avail]):
            c[name].observe(lambda _ch: self.redraw(), names="value")
        toggles = widgets.HBox([c[f"show_{s}"] for s in avail], layout=widgets.Layout(flex_flow="row wrap"))
        right = widgets.VBox([widgets.HTML("<b>class probabilities</b>"), self.classes_html,
                              widgets.HTML("<b>contributions to the shown class</b>"), self.contrib_html])
        left = widgets.VBox([widgets.HBox([c["prev"], c["index"], c["next"]]), c["target"], c["map"], c["alpha"],
                             toggles])
        super().__init__([widgets.HBox([self.image, right]), widgets.HBox([left, widgets.VBox(
            [*rows, widgets.HBox([c["reset"], c["true"]])])]),
            widgets.HBox([c["format"], c["path"], c["export"]]), self.status])
        self.add_class("wb-concepts")
        self._new_image()

    # -- per-image cache ---------------------------------------------------------------------------
    def _entry(self) -> dict[str, Any]:
        from workbench.concepts import concept_maps
        from workbench.concepts._predict import _Eval
        from workbench.viz.overlays import outline_masks

        key = self.indices[self.controls["index"].value]
        if key not in self._cache:
            s = self.dataset[key]
            x = s["image"][None]
            with _Eval(self.cbm, None) as (m, dev), torch.no_grad():
                z = m.concept_logits(x.to(dev)).float().cpu()[0]
            cm = concept_maps(self.cbm, x, method=self.method)
            masks = s.get("masks") or {}
            self._cache[key] = {"sample": s, "z": z, "maps": cm.maps[0].numpy(), "method": cm.method,
                                "outlines": outline_masks({n: m.numpy() for n, m in masks.items() if n in self.structures})}
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return self._cache[key]

    def _new_image(self) -> None:
        self.intervened = {}
        self._sync_sliders()
        self.redraw()

    def _sync_sliders(self) -> None:
        try:
            p = torch.sigmoid(self._entry()["z"]).tolist()
        except Exception as e:  # shown in the status line
            self._fail(e)
            return
        self._mute = True
        try:
            for k, n in enumerate(self.names):
                self.controls[f"concept_{n}"].value = round(float(self.intervened.get(k, p[k])), 2)
        finally:
            self._mute = False

    # -- interventions -----------------------------------------------------------------------------
    def _slid(self, k: int, value: float) -> None:
        if self._mute:
            return
        self.intervened[k] = float(value)
        self.redraw()

    def set_concept(self, k: int, value: float) -> None:
        """Intervene: set concept ``k`` to ``value`` in [0, 1] and redraw."""
        self.intervened[int(k)] = float(value)
        self._sync_sliders()
        self.redraw()

    def reset(self) -> None:
        """Drop every intervention (sliders back to the predictions)."""
        self.intervened = {}
        self._sync_sliders()
        self.redraw()

    def set_true(self) -> None:
        """Set every concept with a known label to its true value."""
        t = self._entry()["sample"].get("concepts")
        if t is None:
            self._fail(ValueError("this dataset has no concept labels to set"))
            return
        names = tuple(getattr(self.dataset, "concept_names", ()) or self.names)
        for k, n in enumerate(self.names):
            if n in names and bool(torch.isfinite(t[names.index(n)])):
                self.intervened[k] = float(t[names.index(n)])
        self._sync_sliders()
        self.redraw()

    def _step(self, d: int) -> None:
        s = self.controls["index"]
        s.value = (s.value + d) % (s.max + 1)

    # -- view --------------------------------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        """Every parameter of the current view (recorded in the export's sidecar JSON)."""
        c = self.controls
        key = self.indices[c["index"].value]
        return {"index": key, "id": self._entry()["sample"].get("id"), "target": c["target"].value,
                "map": c["map"].value, "alpha": c["alpha"].value, "method": self.method,
                "intervened": {self.names[k]: v for k, v in sorted(self.intervened.items())},
                "structures": [s for s in self.structures if c[f"show_{s}"].value],
                "model": self.cbm.workbench_config.get("name")}

    def prediction(self) -> Any:
        """The current ``ConceptPrediction`` (after the interventions), from cached concept logits."""
        from workbench.concepts._predict import _result

        e = self._entry()
        z = e["z"][None]
        cbm = self.cbm
        dev = cbm.adapt_gain.device
        with torch.no_grad():
            a = cbm.head_input(z.to(dev))
            k = cbm.num_concepts
            mask = torch.zeros(1, k, dtype=torch.bool, device=dev)
            vals = torch.zeros(1, k, device=dev)
            for j, v in self.intervened.items():
                mask[0, j], vals[0, j] = True, v
            a = torch.where(mask, cbm.value_to_input(vals).to(a.dtype), a)
            was = cbm.training
            cbm.eval()
            try:
                return _result(cbm, z.to(dev), a, vals, mask)
            finally:
                cbm.train(was)

    def _shown_class(self, pred: Any) -> int:
        t = self.controls["target"].value
        return int(pred.probs[0].argmax()) if t < 0 else int(t)

    def map_values(self, pred: Any = None) -> np.ndarray:
        """(H, W) the map shown: class evidence (concept maps weighted by positive contributions) or one
        concept's map (shifted to its minimum)."""
        pred = pred if pred is not None else self.prediction()
        maps = self._entry()["maps"]
        sel = self.controls["map"].value
        if sel != _EVIDENCE:
            m = maps[self.names.index(sel)]
            return m - m.min()  # where the concept is evidenced most, also when its logit is negative everywhere
        cls = self._shown_class(pred)
        w = pred.contributions[0, cls].clamp(min=0).numpy()
        pos = np.clip(maps, 0, None)
        norm = pos / np.maximum(pos.reshape(len(pos), -1).max(1), 1e-12)[:, None, None]
        return np.tensordot(w, norm, axes=1)

    def redraw(self) -> None:
        """Recompute the prediction (task head only) and redraw the map and the bars."""
        from workbench.viz.concepts import concept_map_rgb

        try:
            pred = self.prediction()
            e = self._entry()
            cls = self._shown_class(pred)
            shown = [s for s in self.structures if self.controls[f"show_{s}"].value]
            rgb = concept_map_rgb(e["sample"]["image"].numpy(), self.map_values(pred),
                                  alpha=self.controls["alpha"].value,
                                  outlines={s: e["outlines"][s] for s in shown if s in e["outlines"]})
            self.image.value = _png(rgb, min_size=256)
            self.classes_html.value = _bars(pred.probs[0].tolist(), self.class_names, signed=False, highlight=cls)
            self.contrib_html.value = _bars(pred.contributions[0, cls].tolist(),
                                            [f"{n} ({p:.2f})" for n, p in zip(self.names, pred.concepts[0].tolist())],
                                            signed=True, marks=pred.intervened[0].tolist())
            self.last_error = None
            set_ = ", ".join(f"{self.names[k]}={v:.2f}" for k, v in sorted(self.intervened.items())) or "none"
            self.status.value = (f"<span>{html.escape(str(e['sample'].get('id')))} · shown class "
                                 f"{html.escape(self.class_names[cls])} · interventions: {html.escape(set_)}</span>")
        except Exception as err:  # shown in the widget, not raised into the event loop
            self._fail(err)

    def _fail(self, err: Exception) -> None:
        show_error(self, err, "concept explorer")

    def figure(self) -> Any:
        """The current view as a matplotlib Figure (``workbench.viz.concepts.concept_panel``)."""
        from workbench.concepts.maps import ConceptMaps
        from workbench.viz.concepts import concept_panel

        pred = self.prediction()
        e = self._entry()
        sel = self.controls["map"].value
        label = f"{_EVIDENCE}: {self.class_names[self._shown_class(pred)]}" if sel == _EVIDENCE else sel
        maps = ConceptMaps(maps=torch.as_tensor(self.map_values(pred))[None, None].float(), names=(label,),
                           method=e["method"], images=e["sample"]["image"][None])
        shown = [s for s in self.structures if self.controls[f"show_{s}"].value]
        masks = {s: e["sample"]["masks"][s][None] for s in shown if s in (e["sample"].get("masks") or {})}
        return concept_panel(pred, 0, maps=maps, concept=0, masks=masks or None)


def concept_explorer(cbm: Any, dataset: Any, *, indices: Sequence[int] | None = None,
                     structures: Sequence[str] | None = None, method: str = "auto", alpha: float = 0.55,
                     export_path: str = "figures/concepts") -> ConceptExplorer:
    """An interactive concept explorer: move concept sliders and watch the prediction change.

    Controls: image (slider, previous/next), the class shown (predicted or any), the map (class
    evidence or one concept's map), opacity, a slider per concept (moving it intervenes) with
    absent/present buttons, "reset to predictions", "set true concepts", structure outline toggles,
    and an export button (PNG/PDF/SVG plus a sidecar JSON through ``workbench.viz.save_figure``).

    Args:
        cbm: a concept model (``workbench.concepts.create`` / ``posthoc``).
        dataset: a workbench dataset (samples with "image", optional "masks" and "concepts").
        indices: dataset indices to browse (all when None).
        structures: structures offered as outline toggles (the dataset's masks other than the
            concepts when None).
        method: concept map method ("auto", "tokens", "gradcam"; see ``workbench.concepts.concept_maps``).
        alpha: map opacity.
        export_path: initial export path (without suffix).

    Returns:
        A :class:`ConceptExplorer` (an ``ipywidgets.VBox``): display it in a notebook.
    """
    return ConceptExplorer(cbm, dataset, indices=indices, structures=structures, method=method, alpha=alpha,
                           export_path=export_path)
