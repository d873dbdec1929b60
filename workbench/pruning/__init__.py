"""Interpretability-guided structured pruning.

Score the units of a model on calibration images (``scores``), remove the least relevant ones so
the model really gets smaller and faster (``prune``: Torch-Pruning's dependency graph with our
scores), and check what it cost: size, speed, AUC and whether explanations still fall on the same
anatomy (``report``), over many ratios and criteria (``sweep``).

Examples:
    >>> import torch, workbench as wb
    >>> m = wb.models.create("vit_tiny", num_classes=2, img_size=32, in_chans=1, depth=2, embed_dim=32, num_heads=2)
    >>> x, y = torch.rand(8, 1, 32, 32), torch.randint(0, 2, (8,))
    >>> s = wb.pruning.scores(m, (x, y), unit="mlp", criterion="gradient_x_activation", progress=False)
    >>> small = wb.pruning.prune(m, s, ratio=0.5)
    >>> small.blocks[0].mlp.fc1.out_features, m.blocks[0].mlp.fc1.out_features
    (64, 128)
"""
from __future__ import annotations

from ._core import Scores, scores
from ._prune import ScoreImportance, prune
from ._units import UNITS, find_units, kinds_of
from .criteria import CRITERIA, register_criterion
from .report import PruneReport, audit_gap, latency, report, size
from .sweep import SweepResult, curve_area, sweep

__all__ = ["scores", "Scores", "prune", "ScoreImportance", "CRITERIA", "register_criterion", "UNITS",
           "find_units", "kinds_of", "report", "PruneReport", "latency", "size", "audit_gap", "sweep", "SweepResult",
           "curve_area"]
