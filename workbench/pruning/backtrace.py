"""DL-Backtrace relevance at the units (optional; never installed with the workbench).

DL-Backtrace (AryaXAI's ``dl-backtrace`` package, the criterion of Malik et al.'s
interpretability-aware pruning) is source-available under a non-commercial licence and pins
``torch==2.6`` and TensorFlow, so it must never enter the workbench's environment. Install it in an
environment of its own (``python -m venv dlb && dlb/bin/pip install dl-backtrace``) and run the
workbench from there.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

INSTALL = ("DL-Backtrace is optional and not installed: it is source-available under a non-commercial "
           "licence and pins torch 2.6 and TensorFlow, so install it in a separate environment "
           "(python -m venv dlb && dlb/bin/pip install dl-backtrace) and run the workbench there; or use "
           "criterion='lrp' or 'integrated_gradients', which need nothing extra.")


def backtrace_relevance(model: nn.Module, images: torch.Tensor, target: torch.Tensor,
                        layers: Sequence[tuple[nn.Module, bool]]) -> list[torch.Tensor]:
    """DL-Backtrace relevance at each layer (see the module docstring)."""
    try:
        import dl_backtrace  # noqa: F401
    except ImportError as e:
        raise ImportError(INSTALL) from e
    raise NotImplementedError
