"""ipywidgets wiring for interactive pruning (no science here: it calls ``workbench.pruning``).

``pruner(model, calibration, test)``: pick a pruning ratio, a criterion and a unit kind; the widget
shows the pruned model's AUC next to the original's, its parameter and latency ratios, and the
relevance maps of both models side by side on one test image with the anatomy outlined. Scores are
computed once per (criterion, unit) and pruned models, metrics and maps once per (criterion, unit,
ratio[, image]), so moving back to a setting is instant. Stable DOM handles for browser tests: the
container has the CSS class ``wb-pruner``, the maps image ``wb-prune-maps``, the metrics
``wb-prune-metrics`` and each control ``wb-prune-<name>`` (ratio, criterion, unit, index).
"""
from __future__ import annotations

import html
import io
import logging
from typing import Any, Sequence

import torch

from workbench.widgets._common import show_error

try:
    import ipywidgets as widgets
except ImportError as e:  # pragma: no cover - ipywidgets is a core dependency
    raise ImportError("workbench.widgets needs ipywidgets>=8: pip install ipywidgets") from e

log = logging.getLogger(__name__)

__all__ = ["Pruner", "pruner"]

_OUTLINE = ("left_lung", "right_lung", "heart", "nodule", "device")


class Pruner(widgets.VBox):
    """The pruning widget. Controls in ``controls`` (name -> widget: ratio, criterion, unit, index),
    the maps in ``image`` (an ``ipywidgets.Image`` of PNG bytes), the numbers in ``metrics`` (HTML),
    the current values in ``state`` (dict), errors in ``last_error``."""

    def __init__(self, model: torch.nn.Module, calibration: Any, test: Any, *, ratio: float = 0.5,
                 criterion: str = "gradient_x_activation", unit: str | None = None,
                 criteria: Sequence[str] = ("gradient_x_activation", "integrated_gradients", "weight_magnitude",
                                            "random"),
                 method: str = "input_x_gradient", structures: Sequence[str] | None = None,
                 latency_batch: int = 8, repeats: int = 3) -> None:
        from workbench.pruning import kinds_of

        kinds = kinds_of(model)
        if not kinds:
            raise ValueError(f"{type(model).__name__} has no prunable units (mlp, heads or channels).")
        from workbench._checks import check_data, check_dataset

        check_dataset(test, name="test", tensors=False)  # its samples give the maps and the AUC
        check_data(calibration, model, name="calibration")
        self.model, self.calibration, self.test = model, calibration, test
        self.method, self.latency_batch, self.repeats = method, latency_batch, repeats
        have = tuple(getattr(test, "structures", ()) or ())
        self.structures = [s for s in (structures if structures is not None else _OUTLINE) if s in have]
        self._scores: dict = {}
        self._models: dict = {}
        self._metrics: dict = {}
        self._maps: dict = {}
        self.state: dict[str, Any] = {}
        self.last_error: str | None = None
        crit = list(dict.fromkeys([criterion, *criteria]))
        c: dict[str, widgets.Widget] = {}
        c["ratio"] = widgets.FloatSlider(value=ratio, min=0.05, max=0.9, step=0.05, description="ratio",
                                         continuous_update=False)
        c["criterion"] = widgets.Dropdown(options=crit, value=criterion, description="criterion")
        c["unit"] = widgets.Dropdown(options=kinds, value=unit or kinds[0], description="unit")
        c["index"] = widgets.IntSlider(value=0, min=0, max=max(0, len(test) - 1), description="image",
                                       continuous_update=False)
        for name, w in c.items():
            w.add_class(f"wb-prune-{name}")
        self.controls = c
        self.image = widgets.Image(format="png", layout=widgets.Layout(width="520px"))
        self.image.add_class("wb-prune-maps")
        self.metrics = widgets.HTML()
        self.metrics.add_class("wb-prune-metrics")
        for w in c.values():
            w.observe(lambda _ch: self.redraw(), names="value")
        super().__init__([widgets.HBox([c["ratio"], c["criterion"], c["unit"]]), c["index"],
                          widgets.HBox([self.image, self.metrics])])
        self.add_class("wb-pruner")
        self.redraw()

    # -- cached computations --------------------------------------------------------------------
    def scores(self) -> Any:
        """The unit scores of the current criterion and unit (cached)."""
        from workbench.pruning import scores

        key = (self.controls["criterion"].value, self.controls["unit"].value)
        if key not in self._scores:
            self._scores[key] = scores(self.model, self.calibration, key[1], key[0], progress=False,
                                       **({"n_steps": 8} if key[0] == "integrated_gradients" else {}))
        return self._scores[key]

    def pruned(self) -> torch.nn.Module:
        """The model pruned with the current settings (cached)."""
        from workbench.pruning import prune

        c = self.controls
        key = (c["criterion"].value, c["unit"].value, round(c["ratio"].value, 4))
        if key not in self._models:
            self._models[key] = prune(self.model, self.scores(), ratio=key[2])
        return self._models[key]

    def _numbers(self) -> dict[str, float]:
        from workbench.pruning.report import latency, size
        from workbench.train import evaluate

        c = self.controls
        key = (c["criterion"].value, c["unit"].value, round(c["ratio"].value, 4))
        if key not in self._metrics:
            small = self.pruned()
            if "original" not in self._metrics:
                self._metrics["original"] = evaluate(self.model, self.test, device=None).auc
            x = self.test.batch(range(min(self.latency_batch, len(self.test))))["image"].float()
            x = x / 255.0 if x.max() > 1.5 else x
            ms = latency({"original": self.model, "pruned": small}, x, repeats=self.repeats)
            s0, s1 = size(self.model, x[:1]), size(small, x[:1])
            self._metrics[key] = {"auc_original": self._metrics["original"],
                                  "auc_pruned": evaluate(small, self.test, device=None).auc,
                                  "params_ratio": s1["params"] / s0["params"], "macs_ratio": s1["macs"] / s0["macs"],
                                  "latency_ratio": ms["pruned"] / ms["original"]}
        return self._metrics[key]

    def _figure_png(self) -> bytes:
        import matplotlib.pyplot as plt

        from workbench.attribution import attribute
        from workbench.viz.attribution import attribution_grid

        c = self.controls
        i = c["index"].value
        key = (c["criterion"].value, c["unit"].value, round(c["ratio"].value, 4), i)
        if key not in self._maps:
            b = self.test.batch([i])
            x = b["image"].float()
            x = x / 255.0 if x.max() > 1.5 else x
            was = self.model.training  # a model straight from fit is in training mode: BatchNorm
            self.model.eval()            # would refuse one image (and update its statistics)
            try:
                with torch.no_grad():
                    target = self.model(x).argmax(-1)
            finally:
                self.model.train(was)
            atts = {name: attribute(m, x, target=target, method=self.method).smoothed(1.0)
                    for name, m in (("original", self.model), ("pruned", self.pruned()))}
            fig = attribution_grid(x, atts, masks=b.get("masks") or None, structures=self.structures or None,
                                   figsize=(5.2, 2.8))
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=100)
            plt.close(fig)
            self._maps[key] = buf.getvalue()
        return self._maps[key]

    # -- actions --------------------------------------------------------------------------------
    def redraw(self) -> None:
        """Recompute what the settings need (from the caches) and redraw maps and numbers."""
        c = self.controls
        try:
            n = self._numbers()
            self.image.value = self._figure_png()
            self.state = {"ratio": c["ratio"].value, "criterion": c["criterion"].value, "unit": c["unit"].value,
                          "index": c["index"].value, **n}
            rows = [("AUC original", f"{n['auc_original']:.3f}"), ("AUC pruned", f"{n['auc_pruned']:.3f}"),
                    ("params", f"{n['params_ratio']:.2f}x"), ("MACs", f"{n['macs_ratio']:.2f}x"),
                    (f"latency (batch {self.latency_batch})", f"{n['latency_ratio']:.2f}x")]
            self.metrics.value = "<table>" + "".join(
                f"<tr><td>{html.escape(k)}</td><td style='padding-left:8px'><b>{v}</b></td></tr>" for k, v in rows
            ) + "</table>"
            self.last_error = None
        except Exception as e:  # shown in the widget, not raised into the event loop
            show_error(self, e, "pruner redraw", self.metrics)


def pruner(model: torch.nn.Module, calibration: Any, test: Any, *, ratio: float = 0.5,
           criterion: str = "gradient_x_activation", unit: str | None = None,
           criteria: Sequence[str] = ("gradient_x_activation", "integrated_gradients", "weight_magnitude", "random"),
           method: str = "input_x_gradient", structures: Sequence[str] | None = None) -> Pruner:
    """An interactive pruning widget: ratio, criterion and unit kind -> AUC, latency, parameters and
    the two models' relevance maps side by side with anatomy contours.

    Args:
        model: a timm ViT or CNN (not modified).
        calibration: images the criteria score units on (a dataset or ``(images, labels)``).
        test: a dataset with masks to evaluate and explain on.
        ratio, criterion, unit: initial settings (unit: the model's first kind when None).
        criteria: criteria offered in the dropdown.
        method: attribution method of the maps (``workbench.attribution.METHODS``).
        structures: outlined structures (lungs, heart, nodule and device by default).

    Returns:
        A :class:`Pruner` (an ``ipywidgets.VBox``): display it in a notebook.
    """
    return Pruner(model, calibration, test, ratio=ratio, criterion=criterion, unit=unit, criteria=criteria,
                  method=method, structures=structures)
