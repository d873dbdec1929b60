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


def set_threads(n: int | str = "auto") -> int:
    """Set how many CPU threads torch and the BLAS libraries (numpy, scikit-learn) use; returns it.

    ``"auto"`` takes the cores that the 1-minute load average leaves free (at least one): on a CPU
    another job keeps busy, torch's and OpenBLAS's threads spin-wait for the busy core, so fewer
    threads run faster. Measured on the 2-core development machine beside one busy process: the
    quickstart's first overlay (training a small model) took 241-252 s with torch's default two
    threads and 56-67 s with one; an sklearn probe ran 20-45x slower with two BLAS threads. On an
    idle machine ``"auto"`` keeps every core. The load average includes this process's own recent
    work, so call it before a long job, not in the middle of one. ``OMP_NUM_THREADS``, when set, caps
    "auto" (a limit the user or the notebook runner chose).

    Args:
        n: a number of threads (>= 1) or "auto".

    Examples:
        >>> set_threads(1)
        1
    """
    import math
    import os

    cores = os.cpu_count() or 1
    if n == "auto":
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):  # no load average (Windows): keep every core
            load = 0.0
        n = max(1, min(cores, math.floor(cores - load + 0.5)))
        cap = os.environ.get("OMP_NUM_THREADS", "")
        if cap.isdigit() and int(cap) >= 1:  # a limit the user or a runner set (the notebook runner's threads)
            n = min(n, int(cap))
    elif isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"threads must be a positive int or 'auto'; got {n!r}.")
    torch.set_num_threads(int(n))
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=int(n), user_api="blas")
    except ImportError:  # scikit-learn brings threadpoolctl; without it only torch is limited
        pass
    return int(n)
