"""Scoring explanations: against anatomy (localisation, alignment), against the model
(faithfulness, sanity) and for shortcuts (audit). Functions are re-exported lazily."""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "anatomy_alignment": "workbench.evaluation.alignment",
    "Alignment": "workbench.evaluation.alignment",
    "pointing_game": "workbench.evaluation.localisation",
    "relevance_mass": "workbench.evaluation.localisation",
    "relevance_rank_accuracy": "workbench.evaluation.localisation",
    "topk_iou": "workbench.evaluation.localisation",
    "structure_budget": "workbench.evaluation.localisation",
    "cohort_budget": "workbench.evaluation.localisation",
    "evaluate_localisation": "workbench.evaluation.localisation",
    "deletion_insertion": "workbench.evaluation.faithfulness",
    "randomisation_test": "workbench.evaluation.sanity",
    "mask_of_truth": "workbench.evaluation.shortcut",
    "subgroup_metrics": "workbench.evaluation.shortcut",
    "shortcut_audit": "workbench.evaluation.shortcut",
    "mask_of_truth_protocol": "workbench.evaluation.shortcut",
    "ShortcutAudit": "workbench.evaluation.shortcut",
    "Faithfulness": "workbench.evaluation.faithfulness",
    "LocalisationScore": "workbench.evaluation.localisation",
    "burnt_in_marks": "workbench.evaluation.marks",
}


def __getattr__(name: str) -> Any:
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'workbench.evaluation' has no attribute {name!r}")
    value = getattr(importlib.import_module(mod), name)
    globals()[name] = value
    return value


__all__ = list(_EXPORTS)
