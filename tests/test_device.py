"""CPU thread policy (wb.set_threads)."""
from __future__ import annotations

import pytest
import torch


def test_set_threads_number_auto_and_bad_input(monkeypatch):
    import os

    from threadpoolctl import threadpool_info, threadpool_limits

    from workbench._device import set_threads

    before = torch.get_num_threads()
    blas = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
    try:
        assert set_threads(1) == 1 and torch.get_num_threads() == 1
        assert all(p["num_threads"] == 1 for p in threadpool_info() if p["user_api"] == "blas")
        cores = os.cpu_count() or 1
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
        assert set_threads("auto") == cores                       # idle: every core
        monkeypatch.setattr(os, "getloadavg", lambda: (cores + 3.0, 0.0, 0.0))
        assert set_threads("auto") == 1                           # busy: one thread
        monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert set_threads("auto") == 1                           # the runner's cap
        for bad in (0, -2, 1.5, "many", True):
            with pytest.raises(ValueError, match="positive int or 'auto'"):
                set_threads(bad)
    finally:
        torch.set_num_threads(before)
        if blas:
            threadpool_limits(limits=min(blas), user_api="blas")
