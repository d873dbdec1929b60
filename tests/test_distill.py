"""Knowledge distillation (fit(..., teacher=...)): the term's value, its effect, the teacher left as it
was, and clear errors."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import workbench as wb
from workbench._train_distill import Distill


def _data(n: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=g)
    y = (x[:, 0, :4].mean((1, 2)) > x[:, 0, 4:].mean((1, 2))).long()
    return x, y


def _net(seed: int = 0, out: int = 2) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, out))


def test_the_term_is_t2_times_the_kl_of_softened_outputs_and_zero_when_equal():
    s, t = torch.randn(5, 3), torch.randn(5, 3)
    d = Distill(nn.Identity(), 0.5, 2.0, "multiclass", "cpu", False)
    manual = 4.0 * (F.softmax(t / 2, -1) * (F.log_softmax(t / 2, -1) - F.log_softmax(s / 2, -1))).sum(-1).mean()
    torch.testing.assert_close(d.divergence(s, t), manual)
    assert float(d.divergence(t, t)) == pytest.approx(0.0, abs=1e-6)
    ml = Distill(nn.Identity(), 0.5, 1.0, "multilabel", "cpu", False)
    assert float(ml.divergence(t, t)) == pytest.approx(0.0, abs=1e-6) and float(ml.divergence(s, t)) > 0


def test_a_student_equal_to_its_teacher_starts_at_zero_loss_under_pure_distillation():
    """With distill_weight=1 the loss is the distillation term alone: zero for a student equal to its
    teacher (it stays near zero while training); mixing in the labels makes it the weighted task loss.
    The teacher's weights and mode are left as they were."""
    x, y = _data()
    teacher = _net().train()
    before = copy.deepcopy(teacher.state_dict())
    h = wb.fit(copy.deepcopy(teacher), (x, y), epochs=2, batch_size=16, lr=1e-3, progress=False, teacher=teacher,
               distill_weight=1.0, class_weights=None)
    assert h.rows[0]["loss"] < 1e-4
    h = wb.fit(copy.deepcopy(teacher), (x, y), epochs=1, batch_size=16, lr=1e-3, progress=False, teacher=teacher,
               distill_weight=0.5, class_weights=None)
    assert h.rows[0]["loss"] > 0.2   # half a cross-entropy near log 2
    assert teacher.training and all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())


def test_distillation_pulls_a_student_towards_its_teacher():
    """A student trained on the teacher alone agrees with it more than one trained on the labels alone
    when the teacher disagrees with the labels (here: the teacher predicts the flipped label)."""
    x, y = _data(128)
    teacher = _net(1)
    wb.fit(teacher, (x, 1 - y), epochs=30, batch_size=32, lr=1e-2, progress=False, class_weights=None)
    teacher.eval()
    agree = {}
    for w in (0.0, 1.0):
        student = _net(2)
        wb.fit(student, (x, y), epochs=30, batch_size=32, lr=1e-2, progress=False, teacher=teacher, distill_weight=w,
               class_weights=None)
        with torch.no_grad():
            agree[w] = float((student(x).argmax(1) == teacher(x).argmax(1)).float().mean())
    assert agree[1.0] > 0.8 > agree[0.0]


def test_bad_teachers_and_settings_raise_clearly():
    x, y = _data(16)
    m = _net()
    with pytest.raises(TypeError, match="teacher must be a trained model"):
        wb.fit(m, (x, y), epochs=1, progress=False, teacher="dense.safetensors")
    with pytest.raises(ValueError, match="teacher is the model being trained"):
        wb.fit(m, (x, y), epochs=1, progress=False, teacher=m)
    with pytest.raises(ValueError, match="teacher has 3 outputs but the model 2"):
        wb.fit(m, (x, y), epochs=1, progress=False, teacher=_net(out=3))
    with pytest.raises(ValueError, match="distill_weight"):
        wb.fit(m, (x, y), epochs=1, progress=False, teacher=_net(), distill_weight=1.5)
    with pytest.raises(ValueError, match="temperature"):
        wb.fit(m, (x, y), epochs=1, progress=False, teacher=_net(), temperature=0)
