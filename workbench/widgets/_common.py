"""Pieces every widget shares (no science here)."""
from __future__ import annotations

import html
import io
from pathlib import Path
from typing import Any, Sequence

import numpy as np


def png_bytes(rgb: np.ndarray, min_size: int = 0) -> bytes:
    """(H, W, 3) uint8 -> PNG bytes, upscaled by pixel repetition to at least ``min_size`` px.

    Widgets show images as ``ipywidgets.Image`` PNG bytes: fast, and testable (the value changes
    when the view changes).
    """
    from PIL import Image

    f = max(1, int(np.ceil(min_size / max(rgb.shape[:2]))))
    if f > 1:
        rgb = np.repeat(np.repeat(rgb, f, 0), f, 1)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def show_error(widget: Any, err: Exception, what: str, target: Any = None) -> None:
    """A redraw's exception shown in the widget (``target``, default its ``status`` line) and logged,
    not raised into the event loop; ``widget.last_error`` keeps it (the tests read it)."""
    import logging

    widget.last_error = f"{type(err).__name__}: {err}"
    logging.getLogger(type(widget).__module__).warning("%s failed: %s", what, widget.last_error)
    (target if target is not None else widget.status).value = (
        f"<span style='color:#CC3311'>{html.escape(widget.last_error)}</span>")


class ExportView:
    """Mixin of the widgets' export button: saves ``self.figure()`` with ``self.params()`` in the sidecar.

    The widget provides ``figure()``, ``params()``, ``controls["path"]``, ``controls["format"]`` and a
    ``status`` HTML widget; ``export`` sets ``last_export`` to the written paths.
    """

    def export(self, path: str | None = None, formats: Sequence[str] | None = None) -> list[Path]:
        """Save the current view (format and path from the controls by default) + sidecar JSON."""
        import matplotlib.pyplot as plt

        from workbench.viz import save_figure

        w: Any = self
        fig = w.figure()
        try:
            out = save_figure(fig, path or w.controls["path"].value, formats=formats or [w.controls["format"].value],
                              params=w.params())
        finally:
            plt.close(fig)
        w.last_export = out
        w.status.value = "saved " + ", ".join(html.escape(str(o)) for o in out)
        return out
