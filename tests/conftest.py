"""Shared fixtures: tiny models and small phantom batches, seconds on a CPU."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")
# Tiny test models run fastest on one thread (and do not fight other jobs on a shared CPU). The same
# for numpy's BLAS: with pytest-xdist's workers on a 2-core CPU, OpenBLAS's default threads spin-wait
# for cores (a 120 x 6,144 Gram product took 0.2 s instead of 5 ms).
torch.set_num_threads(1)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")   # subprocesses (torchrun, notebook kernels)
try:
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")
except ImportError:  # pragma: no cover - scikit-learn brings it
    pass

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("WORKBENCH_SHARED_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to ../shared/data (real MedMNIST and chest X-ray files); skips when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}; set WORKBENCH_SHARED_DATA to run this test.")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
