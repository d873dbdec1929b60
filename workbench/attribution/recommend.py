"""``recommend(model, modality=...)``: which attribution method to trust for a model and modality,
with the evidence.

The evidence is the real-lesion benchmark's table (``benchmarks/bench_lesions.py``, which writes
``evidence.json`` next to this module with ``--write-evidence``): per modality and architecture family,
every method's pointing game (raw and with a tolerance), relevance mass in the lesion and deletion
AUC with 95 % bootstrap CIs, on real annotated lesions (BUSI breast ultrasound) or the phantom's
nodules (radiograph-like). The recommendation is the method with the highest raw pointing game among
those that run on the model; ties (overlapping CIs) are broken by relevance mass. Settings are the
method's defaults unless the benchmark ran it otherwise (they are returned in ``kwargs``).
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
        note: caveats (e.g. the model differs from the benchmark's, a target not met).
    """

    method: str
    kwargs: dict[str, Any]
    modality: str
    family: str
    evidence: pd.DataFrame = field(repr=False)
    source: str = ""
    note: str = ""

    def __str__(self) -> str:
        top = self.evidence.head(5).to_string(index=False)
        return (f"{self.method} {self.kwargs or ''} for {self.family.upper()}s on {self.modality} "
                f"({self.source})\n{top}\n{self.note}").strip()


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
    # ranked by the lower end of the pointing game's 95 % CI first: a method measured on 8 lesions (0.52
    # [0.20, 0.82]) must not win on luck over one measured on all 98 (0.47 [0.39, 0.55])
    rows = rows[[_runs(model, m) for m in rows["method"]]].sort_values(["pointing_lo", "pointing", "mass"],
                                                                        ascending=False)
    best = rows.iloc[0]
    notes = [entry[fam].get("note", "")]
    if best["pointing"] < 0.8:
        notes.append(f"the best raw pointing game here is {best['pointing']:.2f}: treat single maps with care and "
                     "read them with the lesion outlined.")
    kwargs = dict(entry[fam].get("kwargs", {}).get(best["method"], {}))
    return Recommendation(method=str(best["method"]), kwargs=kwargs, modality=key, family=fam,
                          evidence=rows.reset_index(drop=True), source=entry[fam]["source"],
                          note=" ".join(n for n in notes if n))
