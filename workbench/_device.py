"""Device selection shared by every long job."""
from __future__ import annotations

import copy

import torch


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Return a ``torch.device``; ``"auto"`` (or None) picks CUDA, then MPS, then CPU.

    Examples:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device {device!r} is not a valid torch device; use 'auto', 'cpu', 'cuda' or 'cuda:0'.") from e


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a parameter-free model)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def model_on(model: torch.nn.Module, device: str | torch.device | None) -> tuple[torch.nn.Module, torch.device]:
    """``(model, device)`` to run on: the model itself when ``device`` is None or already its device,
    else a deep copy moved there (the caller's model never changes device).

    Examples:
        >>> m = torch.nn.Linear(2, 2)
        >>> model_on(m, None)[0] is m, model_on(m, "cpu")[1]
        (True, device(type='cpu'))
    """
    here = model_device(model)
    dev = here if device is None else resolve_device(device)
    if dev == here:
        return model, dev
    return copy.deepcopy(model).to(dev), dev
