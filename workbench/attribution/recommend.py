"""``recommend(model, modality=...)``: which attribution method to trust for a model and modality,
with the evidence.

The evidence is the real-lesion benchmark's table (``benchmarks/bench_lesions.py``, which writes
``evidence.json`` next to this module with ``--write-evidence``): per modality and architecture family,
every method's pointing game (raw and with a tolerance), relevance mass in the lesion and deletion
AUC with 95 % bootstrap CIs, on real annotated lesions (BUSI breast ultrasound) or the phantom's
nodules (radiograph-like). The recommendation is the method with the highest lower bound of the
pointing game's CI among those that run on the model; ties are broken by the pointing game, then by
relevance mass. Settings are the method's defaults unless the benchmark ran it otherwise (they are
returned in ``kwargs``). Where the evidence has a smoothing sigma for a method (chosen on validation
lesions, scored on test lesions: ``bench_lesions.py --stages smooth``), the method is ranked by the
pointing game of its smoothed maps and the sigma is returned in ``smooth``;
:meth:`Recommendation.attribute` applies both.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd
from torch import nn

EVIDENCE = Path(__file__).with_name("evidence.json")
ALIASES = {"us": "ultrasound", "ultrasound": "ultrasound", "breast_ultrasound": "ultrasound",
           "xray": "radiograph", "x-ray": "radiograph", "cxr": "radiograph", "radiograph": "radiograph",
           "chest_xray": "radiograph", "phantom": "radiograph"}
RESOLUTION = {"ultrasound": 128, "radiograph": 64}  # the benchmark's image width, for the smoothing sigma


@dataclass(frozen=True)
class Recommendation:
    """What :func:`recommend` returns.

    Attributes:
        method: the registered method name to pass to ``wb.attribute``.
        kwargs: its settings (``wb.attribute(model, x, method=r.method, **r.kwargs)``).
        modality: the modality the evidence is for.
        family: ``"cnn"`` or ``"vit"``.
        evidence: the benchmark rows for this modality and family, best first (method, pointing with
            CI, pointing with tolerance, mass, deletion AUC, n).
        source: where the numbers come from.
        note: caveats (e.g. the model differs from the benchmark's, a target not met, no method
            beating a map that always points at the image's centre).
        smooth: Gaussian sigma (pixels at the benchmark's resolution) to blur the maps with before
            reading where they point (``Attribution.smoothed``); 0 = use the raw maps.
    """

    method: str
    kwargs: dict[str, Any]
    modality: str
    family: str
    evidence: pd.DataFrame = field(repr=False)
    source: str = ""
    note: str = ""
    smooth: float = 0.0

    def __str__(self) -> str:
        top = self.evidence.head(5).to_string(index=False)
        blur = f", maps smoothed with sigma {self.smooth:g} px" if self.smooth else ""
        return (f"{self.method} {self.kwargs or ''}{blur} for {self.family.upper()}s on {self.modality} "
                f"({self.source})\n{top}\n{self.note}").strip()

    def attribute(self, model: nn.Module, images: Any, target: Any = None, **overrides: Any) -> Any:
        """``wb.attribute`` with the recommended method and settings, smoothed as recommended.

        ``overrides`` replace the recommended keyword arguments. The sigma is in pixels of the
        benchmark's images (128 px for ultrasound, 64 px for radiographs); it is scaled to your
        images' width, so the blur covers the same share of the image.
        """
        from . import attribute

        att = attribute(model, images, target=target, method=self.method, **{**self.kwargs, **overrides})
        if not self.smooth:
            return att
        return att.smoothed(self.smooth * att.maps.shape[-1] / RESOLUTION.get(self.modality, att.maps.shape[-1]))


@lru_cache(maxsize=1)
def _load() -> dict[str, Any]:
    if not EVIDENCE.is_file():
        raise FileNotFoundError(f"{EVIDENCE} is missing; run benchmarks/bench_lesions.py --write-evidence.")
    return json.loads(EVIDENCE.read_text())


def modalities() -> list[str]:
    """Modalities with evidence."""
    return sorted(_load()["modalities"])


def _family(model: nn.Module) -> str:
    from .methods_cam import is_vit

    return "vit" if is_vit(model) else "cnn"


def _runs(model: nn.Module, method: str) -> bool:
    if method == "lrp":
        from .methods_lrp import support

        try:
            support(model)
        except (ValueError, ImportError):
            return False
    if method == "deeplift":
        from .methods_captum import _INEXACT

        return not any(isinstance(m, _INEXACT) or type(m).__name__ == "Attention" for m in model.modules())
    return True


def recommend(model: nn.Module, modality: str = "ultrasound") -> Recommendation:
    """The attribution method that localised real findings best for this kind of model and modality:
    the highest lower bound of the pointing game's 95 % CI (then the pointing game, then relevance mass).

    Args:
        model: the classifier you want to explain (its family, CNN or ViT, picks the evidence; methods
            that cannot run on it, e.g. LRP on an unsupported CNN, are skipped).
        modality: ``"ultrasound"`` or ``"radiograph"`` (aliases: "us", "xray", "cxr", ...); see
            :func:`modalities`.

    Returns:
        A :class:`Recommendation` (``print`` it for the evidence table).

    Raises:
        ValueError: an unknown modality (the known ones are listed).
        TypeError: ``model`` is not an ``nn.Module``.

    Examples:
        >>> import workbench as wb
        >>> m = wb.models.create("resnet18", num_classes=3, img_size=128, in_chans=1)
        >>> r = recommend(m, modality="ultrasound")
        >>> r.family, r.method in wb.attribution.METHODS
        ('cnn', True)
    """
    from .._checks import check_model

    check_model(model)
    key = ALIASES.get(str(modality).lower().replace(" ", "_")) if isinstance(modality, str) else None
    data = _load()
    if key is None or key not in data["modalities"]:
        raise ValueError(f"no evidence for modality {modality!r}; known modalities: {modalities()} (aliases "
                         f"{sorted(ALIASES)}). For another modality, run benchmarks/bench_lesions.py on your own "
                         "annotated data, or start from the 'radiograph' evidence and check with "
                         "wb.evaluation.evaluate_localisation.")
    fam = _family(model)
    entry = data["modalities"][key]
    rows = pd.DataFrame(entry[fam]["rows"])
    # the score a method is ranked by: its smoothed maps' pointing game where the evidence chose a sigma
    # (on validation lesions), else the raw maps'
    has = rows["pointing_smooth"].notna() if "pointing_smooth" in rows else pd.Series(False, index=rows.index)
    for k in ("", "_lo"):
        rows[f"score{k}"] = rows.get(f"pointing_smooth{k}", rows[f"pointing{k}"]).where(has, rows[f"pointing{k}"])
    # ranked by the lower end of the pointing game's 95 % CI first: a method measured on 8 lesions (0.52
    # [0.20, 0.82]) must not win on luck over one measured on all 98 (0.47 [0.39, 0.55])
    rows = rows[[_runs(model, m) for m in rows["method"]]].sort_values(["score_lo", "score", "mass"],
                                                                        ascending=False)
    best = rows.iloc[0]
    sigma = float(best["smooth_sigma"]) if "smooth_sigma" in rows and pd.notna(best.get("smooth_sigma")) else 0.0
    notes = [entry[fam].get("note", "")]
    if best["score"] < 0.8:
        what = f"on maps smoothed with sigma {sigma:g} px" if sigma else "on raw maps"
        notes.append(f"the best pointing game here is {best['score']:.2f} ({what}): treat single maps with care and "
                     "read them with the lesion outlined.")
    centre = entry[fam].get("image_centre")
    if centre is not None and best["score"] <= centre:
        notes.append(f"A map that always points at the image's centre hits {centre:.2f} of these lesions: no method "
                     "here locates them better than that, so the maps say little about where this kind of model looks.")
    kwargs = dict(entry[fam].get("kwargs", {}).get(best["method"], {}))
    return Recommendation(method=str(best["method"]), kwargs=kwargs, modality=key, family=fam,
                          evidence=rows.drop(columns=["score", "score_lo"]).reset_index(drop=True),
                          source=entry[fam]["source"], note=" ".join(n for n in notes if n), smooth=sigma)
