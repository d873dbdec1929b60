"""Ranks under ``torchrun`` (and the single-process default): who am I, which images are mine,
and collective helpers that are no-ops in one process."""
from __future__ import annotations

import atexit
import datetime
import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

# a dataset-wide job may keep one rank busy long after another reached a barrier
_TIMEOUT = datetime.timedelta(seconds=float(os.environ.get("WORKBENCH_DIST_TIMEOUT", 4 * 3600)))


@dataclass(frozen=True)
class Dist:
    """This process's place in a ``torchrun`` launch.

    Attributes:
        rank: global rank (0 in a single process).
        world_size: number of processes (1 in a single process).
        local_rank: rank on this machine (picks the GPU).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """True on rank 0, the rank that merges and reports."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError as e:
        raise ValueError(f"environment variable {name}={value!r} is not an integer; torchrun sets RANK, "
                         "WORLD_SIZE and LOCAL_RANK to integers (unset them to run in one process).") from e


def distributed(backend: str | None = None) -> Dist:
    """This process's rank and world size, from ``torchrun``'s environment (RANK, WORLD_SIZE, LOCAL_RANK).

    Outside ``torchrun`` (no WORLD_SIZE, or 1) it returns rank 0 of 1 and touches nothing. Under
    ``torchrun`` with more than one process it initialises the default process group on first
    call (``nccl`` when CUDA is available, else ``gloo``; ``backend=`` overrides) and, on CUDA,
    makes ``cuda:LOCAL_RANK`` the current device. Calling it again returns the same answer.

    Examples:
        >>> d = distributed()          # a plain ``python`` process
        >>> (d.rank, d.world_size, d.is_main)
        (0, 1, True)
    """
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return Dist()
    rank, local = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank} is outside 0..WORLD_SIZE-1 ({world - 1}); launch with torchrun, which sets both.")
    import torch.distributed as td
    if not td.is_available():  # pragma: no cover - every official build has it
        raise RuntimeError("this PyTorch build has no torch.distributed; run in one process (unset WORLD_SIZE).")
    if not td.is_initialized():
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local % max(1, torch.cuda.device_count()))
        td.init_process_group(backend=backend, timeout=_TIMEOUT)
        atexit.register(_shutdown)
    return Dist(rank=td.get_rank(), world_size=td.get_world_size(), local_rank=local)


def _shutdown() -> None:
    """Destroy the process group ``distributed()`` created, while the interpreter is still whole.

    Without it gloo's worker threads can outlive the interpreter's teardown and the process dies with SIGABRT
    ("terminate called without an active exception") after its work is done, which ``torchrun``
    reports as a failed rank (pytorch/pytorch#179291 describes the mechanism: gloo work objects still
    holding tensors are freed after the interpreter is gone); a garbage collection right after frees
    the ones in reference cycles too. No barrier first: a rank leaving on an error would meet its
    peers' pending collective instead and both would hang.
    """
    import gc

    import torch.distributed as td
    if td.is_available() and td.is_initialized():
        try:
            td.destroy_process_group()
        except Exception:  # noqa: BLE001 - exiting anyway; a failed tear-down must not mask the job's result
            pass
        gc.collect()  # work objects still holding the group's buffers go now, not during interpreter teardown


def rank_device(device: str | torch.device | None = "auto") -> torch.device:
    """The device this rank runs on: ``"auto"`` is ``cuda:LOCAL_RANK`` under ``torchrun`` with
    GPUs (one GPU per process), otherwise ``workbench._device.resolve_device(device)``."""
    from workbench._device import resolve_device
    dev = resolve_device(device)
    d = distributed()
    if dev.type == "cuda" and dev.index is None and d.distributed:
        dev = torch.device("cuda", d.local_rank % max(1, torch.cuda.device_count()))
    return dev


def split_indices(n: int, rank: int | None = None, world_size: int | None = None) -> list[int]:
    """The indices ``0..n-1`` that ``rank`` takes out of ``world_size`` (strided: ``rank::world_size``).

    Over all ranks every index appears exactly once. Defaults: this process's rank and world size.

    Examples:
        >>> split_indices(7, 0, 3), split_indices(7, 1, 3), split_indices(7, 2, 3)
        ([0, 3, 6], [1, 4], [2, 5])
    """
    d = distributed() if rank is None or world_size is None else None
    rank = d.rank if rank is None else rank
    world_size = d.world_size if world_size is None else world_size
    if not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative int; got {n!r}.")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must lie in 0..world_size-1; got rank={rank}, world_size={world_size}.")
    return list(range(rank, int(n), world_size))


def barrier() -> None:
    """Wait for every rank (a no-op in one process)."""
    import torch.distributed as td
    if td.is_available() and td.is_initialized() and td.get_world_size() > 1:
        td.barrier()


def broadcast(obj: Any, src: int = 0) -> Any:
    """``obj`` from rank ``src`` on every rank (picklable objects; a no-op in one process)."""
    import torch.distributed as td
    if not (td.is_available() and td.is_initialized() and td.get_world_size() > 1):
        return obj
    box = [obj]
    td.broadcast_object_list(box, src=src)
    return box[0]


def all_gather(obj: Any) -> list[Any]:
    """One picklable object per rank, in rank order, on every rank (``[obj]`` in one process)."""
    import torch.distributed as td
    if not (td.is_available() and td.is_initialized() and td.get_world_size() > 1):
        return [obj]
    out: list[Any] = [None] * td.get_world_size()
    td.all_gather_object(out, obj)
    return out


def all_reduce_sum(values: Sequence[float]) -> list[float]:
    """Element-wise sum of a few floats over ranks (the values themselves in one process)."""
    return [float(v) for v in np.sum(np.asarray(all_gather([float(v) for v in values]), dtype=np.float64), 0)]


def gather_by_index(indices: Sequence[int] | torch.Tensor | np.ndarray, values: torch.Tensor | np.ndarray,
                    n: int) -> np.ndarray:
    """Put every rank's rows back in dataset order: ``out[indices[j]] = values[j]`` over all ranks.

    Args:
        indices: (m,) dataset indices this rank computed.
        values: (m, ...) their results.
        n: dataset length; every index in 0..n-1 must come from exactly one rank.

    Returns:
        (n, ...) numpy array, the same on every rank.

    Raises:
        ValueError: an index missing or computed twice (a sharding bug, never silently averaged).
    """
    idx = np.asarray(torch.as_tensor(indices).cpu() if torch.is_tensor(indices) else indices, dtype=np.int64)
    vals = values.detach().cpu().numpy() if torch.is_tensor(values) else np.asarray(values)
    if len(idx) != len(vals):
        raise ValueError(f"{len(idx)} indices but {len(vals)} rows of values; pass one row per index.")
    parts = all_gather((idx, vals))
    all_idx = np.concatenate([p[0] for p in parts])
    counts = np.bincount(all_idx, minlength=n) if len(all_idx) else np.zeros(n, np.int64)
    if len(counts) > n or (counts != 1).any():
        missing, twice = np.flatnonzero(counts[:n] == 0)[:5].tolist(), np.flatnonzero(counts > 1)[:5].tolist()
        raise ValueError(f"gathering {n} rows over ranks: indices missing {missing}, repeated {twice}, or beyond n; "
                         "each rank must compute a disjoint share (workbench.jobs.split_indices).")
    sample = next((p[1] for p in parts if len(p[1])), vals)
    out = np.empty((n, *sample.shape[1:]), dtype=sample.dtype)
    for i, v in parts:
        out[i] = v
    return out
