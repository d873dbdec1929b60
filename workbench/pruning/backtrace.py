"""DL-Backtrace relevance at the units (optional; never installed with the workbench).

DL-Backtrace (AryaXAI's ``dl-backtrace`` package, the criterion of Malik et al.'s
interpretability-aware pruning) is source-available under a non-commercial licence and pins
``torch==2.6`` and TensorFlow, so it must never enter the workbench's environment.

Status (checked on the CPU development machine, in separate virtual environments): the package
could not be imported at all, so no model of ours could be scored with it and the adapter from its
per-node relevance to our units is not written. ``dl-backtrace`` 0.1.24 and 0.1.20 ship a prebuilt
CUDA extension (``wt_fc_v3_ops``) that is Python 3.12 only and, with PyPI's torch 2.6.0, fails to
load (undefined symbol ``c10::detail::torchInternalAssertFail``: built against another C++ ABI);
0.1.12 compiles its CUDA extension at import time and fails without a GPU. The criterion therefore
raises with what was found; use ``lrp`` (the closest relevance-propagation criterion) or
``integrated_gradients``.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

INSTALL = ("DL-Backtrace is optional and not installed: the dl-backtrace package is source-available under a "
           "non-commercial licence and pins torch 2.6 and TensorFlow, so it must live in a separate environment "
           "(python -m venv dlb && dlb/bin/pip install dl-backtrace). Note that its releases 0.1.12-0.1.24 could not "
           "be imported on a CPU-only machine (workbench.pruning.backtrace says why); criterion='lrp' or "
           "'integrated_gradients' need nothing extra.")


def backtrace_relevance(model: nn.Module, images: torch.Tensor, target: torch.Tensor,
                        layers: Sequence[tuple[nn.Module, bool]]) -> list[torch.Tensor]:
    """DL-Backtrace relevance at each layer (see the module docstring)."""
    try:
        import dl_backtrace  # noqa: F401
    except ImportError as e:
        raise ImportError(INSTALL) from e
    raise NotImplementedError(
        "the dl_backtrace criterion has no adapter yet: dl-backtrace 0.1.12-0.1.24 could not be imported on the "
        "CPU machine the workbench is developed on (a prebuilt CUDA extension with a C++ ABI mismatch, or one "
        "compiled at import time that needs a GPU), so its relevance could not be checked against our models. "
        "Use criterion='lrp' or 'integrated_gradients'.")
