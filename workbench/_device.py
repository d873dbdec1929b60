"""Device selection shared by every long job."""
from __future__ import annotations

import copy

import torch


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Return a ``torch.device``; ``"auto"`` (or None) picks CUDA, then MPS, then CPU.

    A device that does not exist here (``"cuda"`` without a GPU, ``"cuda:3"`` on a machine with
    one) raises a ValueError that says what to use instead, before any work starts.

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
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device {device!r} is not a valid torch device; use 'auto', 'cpu', 'cuda' or 'cuda:0'.") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this PyTorch has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ValueError(f"device {device!r} asks for a CUDA GPU but {why} here; use device='auto' (the GPU "
                             "when there is one, else the CPU) or 'cpu'.")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r} does not exist: this machine has {torch.cuda.device_count()} "
                             f"CUDA device(s) (cuda:0..cuda:{torch.cuda.device_count() - 1}).")
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError(f"device {device!r} asks for Apple MPS, which is not available here; use device='auto' "
                             "or 'cpu'.")
    return dev


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
