"""Our localisation metrics equal Quantus's on identical inputs.

Definitional differences (documented in workbench.evaluation.localisation):
- pointing game: Quantus counts a hit if *any* maximal pixel lies in the mask; ours with
  ``ties="any"`` is identical (our default ``"fraction"`` differs only when the maximum is tied).
- relevance mass: Quantus uses the signed map (abs=False); ours with ``positive_only=False`` is
  identical (our default keeps positive relevance only, as Arras et al.). Quantus's
  max-normalisation cancels in the ratio.
- rank accuracy: identical without ties (ours resolves ties at the K-th value in expectation,
  Quantus by argsort order).
- empty masks: Quantus returns NaN; we exclude the image and count it.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

quantus = pytest.importorskip("quantus")

from workbench.evaluation import pointing_game, relevance_mass, relevance_rank_accuracy  # noqa: E402


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    b, h, w = 12, 16, 16
    a = rng.normal(size=(b, 1, h, w)).astype(np.float32)  # continuous: no ties
    s = np.zeros((b, 1, h, w), np.float32)
    for i in range(b):
        r, c = rng.integers(0, h - 5, size=2)
        s[i, 0, r:r + rng.integers(2, 6), c:c + rng.integers(2, 6)] = 1
    # make a few maps peak inside their mask so that hits and misses both occur
    for i in range(0, b, 3):
        rr, cc = np.argwhere(s[i, 0] > 0)[0]
        a[i, 0, rr, cc] = 10.0
    x = rng.random((b, 1, h, w)).astype(np.float32)
    y = np.zeros(b, dtype=int)
    return x, y, a, s


def _q(metric, x, y, a, s):
    return np.asarray(metric(model=None, x_batch=x, y_batch=y, a_batch=a, s_batch=s, channel_first=True),
                      dtype=float)


def test_pointing_game_equals_quantus(batch):
    x, y, a, s = batch
    ref = _q(quantus.PointingGame(disable_warnings=True), x, y, a, s)
    ours = pointing_game(torch.from_numpy(a[:, 0]), torch.from_numpy(s[:, 0] > 0), ties="any").scores.numpy()
    assert 0 < ref.mean() < 1
    np.testing.assert_allclose(ours, ref)


def test_relevance_mass_equals_quantus(batch):
    x, y, a, s = batch
    ref = _q(quantus.RelevanceMassAccuracy(disable_warnings=True), x, y, a, s)
    ours = relevance_mass(torch.from_numpy(a[:, 0]), torch.from_numpy(s[:, 0] > 0), positive_only=False).scores.numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-6)
    # on non-negative maps the default (positive_only) equals Quantus too
    ap = np.abs(a)
    ref2 = _q(quantus.RelevanceMassAccuracy(disable_warnings=True), x, y, ap, s)
    ours2 = relevance_mass(torch.from_numpy(ap[:, 0]), torch.from_numpy(s[:, 0] > 0)).scores.numpy()
    np.testing.assert_allclose(ours2, ref2, rtol=1e-4, atol=1e-6)


def test_rank_accuracy_equals_quantus(batch):
    x, y, a, s = batch
    ref = _q(quantus.RelevanceRankAccuracy(disable_warnings=True), x, y, a, s)
    ours = relevance_rank_accuracy(torch.from_numpy(a[:, 0]), torch.from_numpy(s[:, 0] > 0)).scores.numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)
