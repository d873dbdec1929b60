"""workbench.train: fit, evaluate, predict on tiny in-memory data."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

import workbench.train as wt
from workbench.data._base import ArrayDataset, BaseDataset


def tiny_net(c_in: int = 1, classes: int = 2) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv2d(c_in, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Dropout(0.1),
                               torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(32, classes))


def separable(n: int = 96, seed: int = 0, size: int = 12) -> ArrayDataset:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.rand(n, 1, size, size, generator=g) * 0.5
    x[y == 1, :, 2:6, 2:6] += 0.5
    return ArrayDataset((x * 255).to(torch.uint8), y, classes=("neg", "pos"), task="binary")


class ListDataset(BaseDataset):
    """A non-array dataset (goes through the DataLoader path)."""

    def __init__(self, ds: ArrayDataset) -> None:
        self.ds, self.classes, self.task = ds, ds.classes, ds.task
        self.structures, self.concept_names = ds.structures, ds.concept_names

    def __len__(self) -> int:
        return len(self.ds)

    def _get(self, i: int) -> dict:
        return self.ds[i]


def test_fit_reduces_loss_and_learns():
    ds = separable()
    model = tiny_net()
    hist = wt.fit(model, ds, separable(64, seed=1), epochs=8, batch_size=16, lr=1e-2, progress=False)
    assert len(hist.rows) == 8 and hist.best_epoch is not None
    assert hist.loss[-1] < hist.loss[0]
    assert wt.evaluate(model, separable(64, seed=2), device="cpu").auc > 0.9
    assert set(hist.rows[0]) >= {"epoch", "loss", "val_auc", "val_acc", "lr", "seconds", "images_per_s"}
    assert model.training  # the caller's mode is restored


def test_fit_dataloader_path_and_tuple_input():
    ds = separable(48)
    h = wt.fit(tiny_net(), ListDataset(ds), epochs=2, batch_size=16, num_workers=0, progress=False)
    assert len(h.rows) == 2 and math.isnan(h.rows[0]["val_auc"])
    h = wt.fit(tiny_net(), (ds.images.float() / 255, ds.labels), epochs=1, batch_size=16, progress=False)
    assert len(h.rows) == 1


def test_seed_reproducible():
    def run(seed):
        torch.manual_seed(0)
        m = tiny_net()
        wt.fit(m, separable(48), epochs=2, batch_size=16, seed=seed, progress=False,
               augment=lambda b: {**b, "image": b["image"] + 0.01 * torch.randn_like(b["image"])})
        return torch.cat([p.flatten() for p in m.parameters()])

    a, b, c = run(0), run(0), run(1)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_class_weights():
    w = wt.class_weights(torch.tensor([0, 0, 0, 1]), "binary", 2)
    torch.testing.assert_close(w, torch.tensor([4 / 6, 2.0]))
    w = wt.class_weights(torch.tensor([0, 1, 1, 2, 2, 2]), "multiclass", 4)
    torch.testing.assert_close(w, torch.tensor([6 / 4, 6 / 8, 6 / 12, 1.0]))  # absent class -> 1
    w = wt.class_weights(torch.tensor([[1, 0], [0, 0], [0, 1], [0, 1]]).float(), "multilabel", 2)
    torch.testing.assert_close(w, torch.tensor([3.0, 1.0]))
    with pytest.raises(ValueError, match="class_weights has shape"):
        wt.fit(tiny_net(), separable(32), epochs=1, class_weights=[1.0, 2.0, 3.0], progress=False)


def test_early_stopping_restores_best(monkeypatch):
    model = tiny_net()
    scripted = iter([0.6, 0.9, 0.7, 0.65, 0.6, 0.5])
    snapshots = []

    def fake_auc(probs, labels, task):
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        return next(scripted)

    monkeypatch.setattr(wt, "auc_score", fake_auc)
    h = wt.fit(model, separable(48), separable(32, 1), epochs=6, batch_size=16, lr=1e-2,
               early_stopping=2, progress=False)
    assert h.best_epoch == 2 and len(h.rows) == 4 and h.stopped_early and h.restored_best
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, snapshots[1][k])
    with pytest.raises(ValueError, match="needs val"):
        wt.fit(tiny_net(), separable(32), epochs=1, early_stopping=2, progress=False)


def test_nan_input_and_nan_loss_errors():
    ds = separable(32)
    x = ds.images.float() / 255
    x[5, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"non-finite values \(1 NaN and 0 inf pixels, in images \[5\]"):
        wt.fit(tiny_net(), (x, ds.labels), epochs=1, batch_size=32, progress=False)  # before any step

    class Exploding(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(1, 2)

        def forward(self, x):
            return self.lin(x.mean((1, 2, 3))[:, None]) * float("inf")

    with pytest.raises(ValueError, match="loss became nan.*lower lr"):
        wt.fit(Exploding(), ds, epochs=1, batch_size=16, progress=False)
    with pytest.raises(ValueError, match="non-finite.*NaN"):
        wt.predict(tiny_net(), x)


def test_labels_must_fit_model():
    ds = separable(32)
    with pytest.raises(ValueError, match="num_classes"):
        wt.fit(tiny_net(classes=1), ds, epochs=1, progress=False)


class Lookup(torch.nn.Module):
    """Returns the (N, C) logits stored in the input image (N, C, 1, 1)."""

    input_range = None  # its "images" are logits: tell the boundary checks not to expect [0, 1]

    def forward(self, x):
        return x.flatten(1)


def _known(task: str, n: int = 120, c: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    if task == "multilabel":
        y = (rng.random((n, c)) < 0.4).astype(np.float32)
        logits = y * 1.0 + rng.normal(size=(n, c))
        probs = 1 / (1 + np.exp(-logits))
    else:
        k = 2 if task == "binary" else c
        y = rng.integers(0, k, n)
        logits = np.eye(k)[y] * 1.0 + rng.normal(size=(n, k))
        probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    x = torch.tensor(logits, dtype=torch.float32)[:, :, None, None]
    classes = tuple(f"c{i}" for i in range(logits.shape[1]))
    return ArrayDataset(x, torch.tensor(y), classes=classes, task=task), probs, y


@pytest.mark.parametrize("task", ["binary", "multiclass", "multilabel"])
def test_evaluate_matches_sklearn(task):
    ds, probs, y = _known(task)
    ev = wt.evaluate(Lookup(), ds, device="cpu", bootstrap=100, seed=0)
    if task == "binary":
        ref, acc = roc_auc_score(y, probs[:, 1]), (probs.argmax(1) == y).mean()
    elif task == "multiclass":
        ref, acc = roc_auc_score(y, probs, multi_class="ovr", average="macro"), (probs.argmax(1) == y).mean()
    else:
        ref, acc = roc_auc_score(y, probs, average="macro"), ((probs >= 0.5) == y).mean()
    assert ev.auc == pytest.approx(ref, abs=1e-6) and ev.accuracy == pytest.approx(acc)
    assert ev.n == len(y) and len(ev.per_class_auc) == probs.shape[1] and ev.task == task
    assert ev.auc_ci[0] <= ev.auc <= ev.auc_ci[1] and ev.accuracy_ci[0] <= ev.accuracy <= ev.accuracy_ci[1]
    d = ev.to_dict()
    assert d["auc"] == ev.auc and d["bootstrap"] == 100
    torch.testing.assert_close(wt.predict(Lookup(), ds), torch.tensor(probs, dtype=torch.float32))


def test_predict_raw_tensor_restores_mode():
    model = tiny_net(classes=3)
    model.train()
    p = wt.predict(model, torch.rand(5, 1, 8, 8))
    assert p.shape == (5, 3) and torch.allclose(p.sum(1), torch.ones(5)) and model.training
    p = wt.predict(model, torch.rand(5, 1, 8, 8), task="multilabel")
    assert ((p > 0) & (p < 1)).all() and not torch.allclose(p.sum(1), torch.ones(5))


def test_fit_vit_with_random_affine_and_plot():
    import matplotlib

    matplotlib.use("Agg")
    import workbench.models as wm
    from workbench.data.transforms import RandomAffine

    ds = separable(32, size=16)
    model = wm.create("vit_tiny", 2, 16, 1, patch_size=4, depth=1)
    h = wt.fit(model, ds, ds, epochs=2, batch_size=16, augment=RandomAffine(degrees=5, translate=0.05),
               progress=False)
    fig = h.plot()
    assert fig.axes and h.to_dict()["rows"][0]["epoch"] == 1


def test_evaluate_rejects_model_with_wrong_outputs():
    ds, _, _ = _known("binary")
    model = tiny_net(c_in=2, classes=3)
    model.input_range = None  # the images of _known are logits
    with pytest.raises(ValueError, match="2 classes"):
        wt.evaluate(model, ds, device="cpu")


def test_time_budget_shortens_schedule():
    h = wt.fit(tiny_net(), separable(32), epochs=50, batch_size=16, max_seconds=1e-6, progress=False)
    assert len(h.rows) == 1 and h.stopped_early


class _ConceptModel(torch.nn.Module):
    """A model with its own objective: fit hands it batches with the fields it names."""

    batch_fields = ("concepts", "masks")

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2))
        self.seen: list[dict] = []

    def forward(self, x):
        return self.net(x)

    def training_loss(self, batch, task_loss):
        self.seen.append({k: batch[k] for k in ("concepts", "masks", "mask_present", "index")})
        logits = self(batch["image"])
        return task_loss(logits, batch["label"]) + 0.0 * batch["concepts"].sum(), logits


@pytest.mark.parametrize("in_memory", [True, False])
def test_fit_passes_requested_fields_to_a_model_objective(in_memory):
    n = 12
    x = torch.rand(n, 1, 8, 8)
    concepts = torch.rand(n, 3)
    masks = {"lesion": torch.rand(n, 8, 8) > 0.5}
    ds = ArrayDataset(x, torch.arange(n) % 2, classes=("a", "b"), task="binary", masks=masks,
                      concepts=concepts, concept_names=("c0", "c1", "c2"))
    data = ds if in_memory else ListDataset(ds)
    model = _ConceptModel()
    wt.fit(model, data, epochs=1, batch_size=4, progress=False, num_workers=0)
    assert len(model.seen) == 3
    for b in model.seen:  # each batch carries the rows of its own samples
        idx = b["index"]
        assert torch.equal(b["concepts"], concepts[idx])
        assert torch.equal(b["masks"]["lesion"], masks["lesion"][idx])
        assert b["mask_present"]["lesion"].all()


def test_fit_fields_need_a_dataset():
    model = _ConceptModel()
    with pytest.raises(ValueError, match="pass a dataset"):
        wt.fit(model, (torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 0, 1])), epochs=1, progress=False)
    ds = ArrayDataset(torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 0, 1]), classes=("a", "b"), task="binary")
    with pytest.raises(ValueError, match="has none"):
        wt.fit(model, ds, epochs=1, progress=False)
