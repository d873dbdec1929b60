"""Training and evaluation: ``fit`` (a training verb: it updates the model in place and returns
its ``History``), ``evaluate`` (AUC and accuracy with bootstrap CIs) and ``predict``.

Examples:
    >>> import torch, workbench as wb
    >>> from workbench.data._base import ArrayDataset
    >>> x = torch.rand(32, 1, 16, 16); y = (x.mean((1, 2, 3)) > 0.5).long()
    >>> ds = ArrayDataset(x, y, classes=("neg", "pos"), task="binary")
    >>> model = wb.models.create("resnet18", num_classes=2, img_size=16, in_chans=1)
    >>> history = fit(model, ds, epochs=1, batch_size=16, progress=False)
    >>> len(history.rows)
    1
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from workbench import _checks as ck
from workbench._device import model_device
from workbench.jobs._dist import Dist, all_reduce_sum, broadcast, distributed, gather_by_index, rank_device
from workbench._train_distill import make_distill
from workbench._train_guide import GUIDE_WEIGHT, make_guide
from workbench._train_data import (BatchSource, TensorSource, as_source, class_weights, describe_nan, labels_of,
                                   resolve_workers, task_of)
from workbench._train_metrics import (Evaluation, accuracy_score, auc_score, bootstrap_ci,
                                      per_class_auc)

__all__ = ["fit", "evaluate", "predict", "History", "Evaluation", "class_weights"]


@dataclass(frozen=True)
class History:
    """What ``fit`` did, one row per epoch.

    Attributes:
        rows: per epoch a dict with epoch, loss (mean training loss), val_auc, val_acc (NaN without
            validation data), lr (at the end of the epoch), seconds, images_per_s (training only).
        best_epoch: the epoch (1-based) with the best validation AUC, None without validation.
        stopped_early: whether early stopping ended training before ``epochs``.
        restored_best: whether the best epoch's weights were put back into the model.
    """

    rows: tuple[dict[str, float], ...]
    best_epoch: int | None = None
    stopped_early: bool = False
    restored_best: bool = False

    def column(self, key: str) -> list[float]:
        """One column over epochs, e.g. ``history.column("val_auc")``."""
        return [r[key] for r in self.rows]

    @property
    def loss(self) -> list[float]:
        return self.column("loss")

    @property
    def val_auc(self) -> list[float]:
        return self.column("val_auc")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN becomes None)."""
        clean = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
                 for r in self.rows]
        return {"rows": clean, "best_epoch": self.best_epoch, "stopped_early": self.stopped_early,
                "restored_best": self.restored_best}

    def plot(self, ax: Any = None, **style: Any) -> Any:
        """Training curves (``workbench.viz.training.training_curves``)."""
        from workbench.viz.training import training_curves

        return training_curves(self, ax=ax, **style)


def _loss_fn(task: str, weights: torch.Tensor | None) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if task == "multilabel":
        return lambda logits, y: F.binary_cross_entropy_with_logits(logits.float(), y.float(), pos_weight=weights)
    return lambda logits, y: F.cross_entropy(logits.float(), y.long(), weight=weights)


def _param_groups(model: torch.nn.Module, weight_decay: float, lr: float) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on biases, norms and position embeddings; a model may scale the
    learning rate of some parameters with ``lr_scale(name) -> float`` (a concept bottleneck's small
    task head learns 10x faster than its backbone)."""
    scale = getattr(model, "lr_scale", None)
    groups: dict[tuple[bool, float], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = not (p.ndim <= 1 or name.endswith((".bias", "pos_embed", "cls_token", "reg_token")))
        groups.setdefault((decay, float(scale(name)) if callable(scale) else 1.0), []).append(p)
    return [{"params": ps, "weight_decay": weight_decay if decay else 0.0, "lr": lr * mult}
            for (decay, mult), ps in sorted(groups.items(), key=lambda kv: (not kv[0][0], kv[0][1]))]


def _schedule(plan: dict[str, int], warmup: int) -> Callable[[int], float]:
    """Linear warmup then cosine to 0 at ``plan["total"]`` steps (``plan`` may shrink mid-run)."""
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(1, plan["total"] - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))
    return f


def _resolve_weights(class_weights_arg: Any, data: Any, task: str, num_logits: int,
                     device: torch.device) -> torch.Tensor | None:
    if class_weights_arg is None or class_weights_arg is False:
        return None
    if isinstance(class_weights_arg, str):
        if class_weights_arg != "auto":
            raise ValueError(f"class_weights must be 'auto', None or a sequence of {num_logits} floats; "
                             f"got {class_weights_arg!r}.")
        w = class_weights(labels_of(data), task, num_logits)
    else:
        w = torch.as_tensor(class_weights_arg, dtype=torch.float32)
        if w.shape != (num_logits,):
            raise ValueError(f"class_weights has shape {tuple(w.shape)}; expected ({num_logits},), one per output.")
    return w.to(device)


def _num_logits(model: torch.nn.Module, src: BatchSource) -> int:
    cfg = getattr(model, "workbench_config", None)
    if cfg and "num_classes" in cfg:
        return int(cfg["num_classes"])
    x = src.first_image()
    with torch.no_grad():
        was = model.training
        model.eval()
        try:
            return int(model(x[:1]).shape[-1])
        finally:
            model.train(was)


def _objective(model: torch.nn.Module, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
               device_type: str, use_amp: bool) -> Callable[[dict[str, Any]], tuple[torch.Tensor, torch.Tensor]]:
    """``batch -> (loss, logits)`` for one training step.

    A model may define its own objective as a method ``training_loss(batch, task_loss) -> (loss,
    logits)`` (e.g. a concept bottleneck adds its concept loss), where ``task_loss(logits, label)``
    is fit's class-weighted task loss; a model attribute ``batch_fields`` (e.g. ``("concepts",)``)
    names the extra fields its batches need (see ``workbench._train_data.FIELDS``).
    """
    custom = getattr(model, "training_loss", None)

    def objective(batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=use_amp):
            if custom is not None:
                return custom(batch, loss_fn)
            logits = model(batch["image"])
        return loss_fn(logits, batch["label"]), logits
    return objective


class _Step(torch.nn.Module):
    """The training objective as a module, so DistributedDataParallel wraps every objective
    (also a model's own ``training_loss``): its forward runs through DDP, which then averages
    the gradients of the model's parameters over ranks during backward."""

    def __init__(self, model: torch.nn.Module, objective: Callable[[dict[str, Any]], Any]) -> None:
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.objective(batch)


def _ddp(model: torch.nn.Module, objective: Callable, dev: torch.device) -> torch.nn.Module:
    """``objective`` wrapped in DistributedDataParallel (rank 0's weights are broadcast to all ranks)."""
    from torch.nn.parallel import DistributedDataParallel
    return DistributedDataParallel(_Step(model, objective), device_ids=[dev.index] if dev.type == "cuda" else None)


def fit(model: torch.nn.Module, train: Any, val: Any = None, *, epochs: int = 10, batch_size: int = 64,
        lr: float = 1e-3, weight_decay: float = 0.05, device: str | torch.device = "auto",
        class_weights: Any = "auto", early_stopping: int | None = None,
        augment: Callable[[dict[str, Any]], Any] | None = None, num_workers: int | str = "auto",
        seed: int = 0, amp: bool | str = "auto", progress: bool = True, grad_clip: float | None = None,
        warmup: float = 0.05, max_seconds: float | None = None, guide_masks: str | Sequence[str] | None = None,
        guide_weight: float = GUIDE_WEIGHT, teacher: torch.nn.Module | None = None, distill_weight: float = 0.5,
        temperature: float = 2.0) -> History:
    """Train ``model`` in place (a training verb) and return its ``History``.

    AdamW (no weight decay on biases, norms and position embeddings), a per-step cosine schedule
    after a short linear warmup, cross-entropy (binary/multiclass; binary tasks have two logits)
    or BCE (multilabel). The model is moved to ``device`` and stays there; its train/eval mode is
    restored at the end. With ``val`` the validation AUC is computed each epoch; with
    ``early_stopping`` training stops after that many epochs without improvement and the best
    epoch's weights are restored. Training draws from its own RNG stream seeded by ``seed`` (the
    global RNG state is restored afterwards): same seed, same weights on CPU.

    Args:
        model: a classifier ``(B, C, H, W) -> (B, num_classes)``.
        train: a dataset (``workbench.data.load``) or an ``(images, labels)`` pair of tensors.
            In-memory ArrayDatasets are batched by indexing (and, on CUDA, copied to the GPU once);
            other datasets go through a DataLoader with workers and pinned memory.
        val: optional validation data, same kinds as ``train``.
        epochs: maximum number of epochs.
        batch_size: samples per step.
        lr: peak learning rate.
        weight_decay: AdamW weight decay.
        device: "auto" (CUDA, MPS, CPU), or a device.
        class_weights: "auto" (inverse class frequency; multilabel: BCE pos_weight), None, or (C,) floats.
        early_stopping: patience in epochs on validation AUC (needs ``val``); None disables it.
        augment: called on each training batch ``{"image": (B,C,H,W) on device, "label": ...,
            "index": ...}`` (plus "masks"/"concepts" when the objective needs them, so masks move
            with the image)
            (e.g. ``workbench.data.transforms.RandomAffine``); returns a batch dict or an image tensor.
        num_workers: DataLoader workers ("auto": half the cores, at most 4).
        seed: seed for shuffling, augmentation and dropout.
        amp: "auto" (bf16 autocast on CUDA only), True (bf16 autocast on any device) or False.
        progress: show a tqdm progress bar.
        grad_clip: max gradient norm, None for no clipping.
        warmup: warmup length as a fraction of all steps.
        max_seconds: a training time budget: after each epoch the number of epochs that still fit
            is estimated, the cosine schedule is shortened to end there, and training stops then.
        guide_masks: mask-guided training ("right for the right reasons", Ross et al. 2017): a
            structure name (e.g. "lesion") or several (their union); input gradients outside it are
            penalised for the samples that have a non-empty mask, the others train normally
            (``workbench._train_guide``). About 2-3x the cost of a plain step.
        guide_weight: the penalty's weight (``workbench._train_guide.GUIDE_WEIGHT`` by default).
        teacher: knowledge distillation (Hinton et al. 2015; ``workbench._train_distill``): a trained
            model with the same outputs (e.g. the dense model a pruned one was cut from); the loss
            becomes ``(1 - distill_weight) x task loss + distill_weight x T^2 x KL`` of the softened
            outputs. The teacher is moved to the training device and run in eval mode without
            gradients (its mode is restored; its weights never change). One more forward per step.
        distill_weight: the distillation term's share of the loss, in [0, 1].
        temperature: ``T``, the softening of both models' outputs.

    Returns:
        History with one row per epoch.

    Raises:
        ValueError: NaN/inf loss or inputs (naming the epoch and batch), labels that do not fit
            the model, early stopping without validation data.
    """
    from tqdm.auto import tqdm

    ck.check_model(model)
    ck.check_int(epochs, "epochs")
    ck.check_int(batch_size, "batch_size")
    ck.check_number(lr, "lr", low=0, low_open=True)
    ck.check_number(weight_decay, "weight_decay", low=0)
    ck.check_number(warmup, "warmup", low=0, high=1)
    ck.check_number(grad_clip, "grad_clip", low=0, low_open=True, none_ok=True)
    ck.check_number(max_seconds, "max_seconds", low=0, low_open=True, none_ok=True)
    if augment is not None:
        ck.check_callable(augment, "augment", "workbench.data.transforms.RandomHorizontalFlip(0.5)")
    if early_stopping is not None and (val is None or not isinstance(early_stopping, int) or early_stopping < 1):
        raise ValueError("early_stopping is a patience in epochs (int >= 1) on validation AUC and needs "
                         f"val data; got early_stopping={early_stopping!r}, val={'given' if val is not None else None}.")
    dist = distributed()
    dev = rank_device(device)
    train = as_source(ck.check_data(train, model, name="train"))
    task = task_of(train)
    guide = make_guide(train, guide_masks, guide_weight, task) if guide_masks is not None else None
    use_amp = (dev.type == "cuda") if amp == "auto" else bool(amp)
    was_training = model.training
    model.to(dev)
    src = BatchSource(train, batch_size, dev, resolve_workers(num_workers),
                      fields=tuple(dict.fromkeys((*getattr(model, "batch_fields", ()), *(("masks",) if guide else ())))))
    num_logits = _num_logits(model, src)
    _check_against_model(train, task, num_logits, "train")
    val_src = None
    if val is not None:
        val = as_source(ck.check_data(val, model, name="val"), task, num_logits)
        _check_against_model(val, task, num_logits, "val")
        val_src = BatchSource(val, max(batch_size, 256), dev, resolve_workers(num_workers))
    weights = _resolve_weights(class_weights, train, task, num_logits, dev)
    loss_fn = _loss_fn(task, weights)
    objective = _objective(model, loss_fn, dev.type, use_amp)
    teacher_was = None
    if teacher is not None:
        objective = make_distill(model, teacher, distill_weight, temperature, task, dev, use_amp).wrap(objective)
        teacher_logits = _num_logits(teacher, src)   # the same probe as the model's, now that it is on dev
        if teacher_logits != num_logits:
            raise ValueError(f"the teacher has {teacher_logits} outputs but the model {num_logits}; distillation "
                             "needs a teacher for the same task (the dense model a pruned one was cut from).")
        teacher_was = teacher.training
        teacher.eval()
    if guide is not None:
        objective = guide.wrap(objective)
    trained = model
    if dist.distributed:  # torchrun: DistributedDataParallel; each rank takes its share of every batch
        trained = _ddp(model, objective, dev)
        objective = trained
    steps_per_epoch = src.num_batches(drop_last=True, world=dist.world_size)
    total = steps_per_epoch * epochs
    opt = torch.optim.AdamW(_param_groups(model, weight_decay, lr), lr=lr, betas=(0.9, 0.999),
                            foreach=True if dev.type != "mps" else None)
    plan = {"total": total, "epochs": epochs}
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(plan, max(1, int(warmup * total))))
    rows: list[dict[str, float]] = []
    best_auc, best_epoch, best_state, bad_epochs = -math.inf, None, None, 0
    stopped = False
    devices = [dev.index or 0] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        bar = tqdm(total=epochs, desc="fit", disable=not progress or not dist.is_main, unit="epoch")
        t_start = time.perf_counter()
        try:
            for epoch in range(1, epochs + 1):
                trained.train()
                t0 = time.perf_counter()
                loss_sum = torch.zeros((), device=dev)
                seen = 0
                for step, batch in enumerate(src(shuffle=True, generator=gen, drop_last=True, rank=dist.rank,
                                                 world=dist.world_size)):
                    if augment is not None:
                        out = augment(batch)
                        batch = out if isinstance(out, dict) else {**batch, "image": out}
                    if epoch == 1 and step == 0:  # as the model sees it: after transforms and augment
                        ck.check_images(batch["image"], model, name="train images", value_range=None)
                    loss, _ = objective(batch)
                    if not torch.isfinite(loss):
                        why = describe_nan(batch["image"], batch["index"]) or f"the loss became {loss.item()}"
                        raise ValueError(f"training diverged at epoch {epoch}, batch {step + 1} of {steps_per_epoch}: "
                                         f"{why}. Clean the inputs (NaN/inf), or lower lr (now {lr}) "
                                         "and/or set grad_clip=1.0.")
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    if grad_clip is not None:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                    opt.step()
                    sched.step()
                    loss_sum += loss.detach() * len(batch["label"])
                    seen += len(batch["label"])
                train_s = time.perf_counter() - t0
                loss_total, seen_total = all_reduce_sum([float(loss_sum), seen]) if dist.distributed else \
                    (float(loss_sum), seen)
                row = {"epoch": epoch, "loss": loss_total / max(1, seen_total), "val_auc": float("nan"),
                       "val_acc": float("nan"), "lr": sched.get_last_lr()[0]}
                if val_src is not None:
                    probs, labels = _predict_source(model, val_src, task, use_amp, dist)
                    row["val_auc"] = auc_score(probs, labels, task)
                    row["val_acc"] = accuracy_score(probs, labels, task)
                    if not math.isnan(row["val_auc"]) and row["val_auc"] > best_auc:
                        best_auc, best_epoch, bad_epochs = row["val_auc"], epoch, 0
                        if early_stopping is not None:
                            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                    else:
                        bad_epochs += 1
                row["seconds"] = time.perf_counter() - t0
                row["images_per_s"] = seen_total / train_s if train_s > 0 else float("nan")
                rows.append(row)
                bar.update(1)
                bar.set_postfix(loss=f"{row['loss']:.4f}", val_auc=f"{row['val_auc']:.3f}")
                if early_stopping is not None and bad_epochs >= early_stopping:
                    stopped = epoch < epochs
                    break
                if max_seconds is not None:
                    spent = broadcast(time.perf_counter() - t_start)  # the same decision on every rank
                    fits = epoch + int((max_seconds - spent) // max(spent / epoch, 1e-9))
                    if fits < plan["epochs"]:  # shorten the cosine so it ends within the budget
                        plan["epochs"] = max(epoch, fits)
                        plan["total"] = max(steps_per_epoch * plan["epochs"], sched.last_epoch + 1)
                    if epoch >= plan["epochs"]:
                        stopped = epoch < epochs
                        break
        finally:
            bar.close()
            model.train(was_training)
            if teacher_was is not None:
                teacher.train(teacher_was)
    restored = False
    if best_state is not None and best_epoch != rows[-1]["epoch"]:
        model.load_state_dict(best_state)
        restored = True
    return History(rows=tuple(rows), best_epoch=best_epoch, stopped_early=stopped, restored_best=restored)


def _check_against_model(data: Any, task: str, num_logits: int, name: str) -> None:
    """Labels in the model's range and, for datasets, as many outputs as classes."""
    classes = getattr(data, "classes", ())
    if classes and not isinstance(data, TensorSource):
        ck.check_outputs(num_logits, num_classes=len(classes), task=task, name="the model")
    ck.check_labels(labels_of(data), task=task, num_outputs=num_logits, name=f"{name} labels")


@torch.no_grad()
def _predict_source(model: torch.nn.Module, src: BatchSource, task: str, use_amp: bool = False,
                    dist: Dist | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and labels over ``src``; with a distributed ``dist`` each rank predicts its
    share and every rank gets all of them back in dataset order."""
    was = model.training
    model.eval()
    probs, labels, indices = [], [], []
    rank, world = (dist.rank, dist.world_size) if dist is not None else (0, 1)
    try:
        for i, batch in enumerate(src(shuffle=False, rank=rank, world=world)):
            x, y = batch["image"], batch["label"]
            if i == 0:
                ck.check_images(x, model, value_range=None)
            if not torch.isfinite(x).all():
                raise ValueError(f"cannot predict: {describe_nan(x, batch['index'])}; clean or drop those samples.")
            with torch.autocast(src.device.type, dtype=torch.bfloat16, enabled=use_amp):
                logits = model(x)
            logits = logits.float()
            probs.append((torch.sigmoid(logits) if task == "multilabel" else logits.softmax(-1)).cpu())
            labels.append(y.cpu())
            indices.append(torch.as_tensor(batch["index"]).cpu())
    finally:
        model.train(was)
    p, y = torch.cat(probs).numpy(), torch.cat(labels).numpy()
    if world > 1:
        idx = torch.cat(indices)
        p, y = gather_by_index(idx, p, len(src)), gather_by_index(idx, y, len(src))
    return p, y


def _classes(data: Any) -> tuple[str, ...]:
    from workbench.data._info import dataset_info
    return tuple(data.classes) if isinstance(data, TensorSource) else dataset_info(data).classes


def _dist_for(distributed_arg: bool | None) -> Dist | None:
    """The process group to share inference over: under torchrun unless ``distributed=False``."""
    if distributed_arg is False:
        return None
    d = distributed()
    if distributed_arg and not d.distributed:
        raise ValueError("distributed=True needs a torchrun launch with more than one process (WORLD_SIZE > 1); "
                         "leave it None to run in this process.")
    return d if d.distributed else None


class _OnDevice:
    """Temporarily move a model to ``device`` (restoring its device in finally)."""

    def __init__(self, model: torch.nn.Module, device: str | torch.device | None) -> None:
        self.model, self.orig = model, model_device(model)
        self.dev = self.orig if device is None else rank_device(device)

    def __enter__(self) -> torch.device:
        if self.dev != self.orig:
            self.model.to(self.dev)
        return self.dev

    def __exit__(self, *exc: Any) -> bool:
        if self.dev != self.orig:
            self.model.to(self.orig)
        return False


def predict(model: torch.nn.Module, data_or_images: Any, *, batch_size: int = 256,
            device: str | torch.device | None = None, task: str | None = None, num_workers: int | str = "auto",
            distributed: bool | None = None) -> torch.Tensor:
    """Class probabilities for a dataset or an image tensor.

    Args:
        model: a classifier; its train/eval mode and device are restored afterwards.
        data_or_images: a dataset, an ``(images, labels)`` pair, or images ``(N, C, H, W)`` in [0, 1].
        batch_size: images per forward pass.
        device: where to run (None: the model's device; "auto": CUDA/MPS/CPU).
        task: for raw tensors, "multilabel" gives sigmoids; otherwise softmax (datasets know their task).
        num_workers: DataLoader workers for datasets read from disk ("auto": half the cores, at most 4).
        distributed: under torchrun (None or True) every rank must call it: each predicts its share
            and all get every probability back; False runs on this rank alone.

    Returns:
        (N, C) float probabilities on the CPU (softmax over classes, or per-label sigmoid).
    """
    ck.check_model(model)
    ck.check_int(batch_size, "batch_size")
    src_data = as_source(ck.check_data(data_or_images, model), task)
    t = task or task_of(src_data)
    with _OnDevice(model, device) as dev:
        src = BatchSource(src_data, batch_size, dev, resolve_workers(num_workers), keep_on_device=False)
        probs, _ = _predict_source(model, src, t, dist=_dist_for(distributed))
    return torch.from_numpy(probs)


def evaluate(model: torch.nn.Module, data: Any, *, batch_size: int = 256, device: str | torch.device | None = "auto",
             bootstrap: int = 0, ci: float = 0.95, seed: int = 0, num_workers: int | str = "auto",
             distributed: bool | None = None) -> Evaluation:
    """AUC and accuracy of ``model`` on ``data``, with percentile bootstrap CIs on request.

    Binary: AUC of class 1; multiclass: macro one-vs-rest AUC; multilabel: macro AUC over labels
    (sklearn.metrics.roc_auc_score). Accuracy is top-1 (multilabel: mean per-label at 0.5).

    Args:
        model: a classifier; not modified (mode and device restored).
        data: a dataset or an ``(images, labels)`` pair.
        batch_size: images per forward pass.
        device: "auto", a device, or None (the model's device).
        bootstrap: number of bootstrap resamples over samples (0: no CIs; 1000 is typical).
        ci: interval coverage.
        seed: bootstrap seed.
        num_workers: DataLoader workers for datasets read from disk ("auto": half the cores, at most 4).
        distributed: under torchrun (None or True) every rank must call it: each predicts its share,
            the predictions of all ranks are gathered and every rank returns the same Evaluation;
            False evaluates on this rank alone.

    Returns:
        Evaluation (``.to_dict()`` for JSON).
    """
    ck.check_model(model)
    ck.check_int(batch_size, "batch_size")
    ck.check_int(bootstrap, "bootstrap", minimum=0)
    ck.check_number(ci, "ci", low=0, high=1, low_open=True, high_open=True)
    src_data = as_source(ck.check_data(data, model))
    task = task_of(src_data)
    with _OnDevice(model, device) as dev:
        src = BatchSource(src_data, batch_size, dev, resolve_workers(num_workers), keep_on_device=False)
        probs, labels = _predict_source(model, src, task, dist=_dist_for(distributed))
    expected = labels.shape[1] if task == "multilabel" else len(_classes(src_data))
    if expected and probs.shape[1] != expected:
        raise ValueError(f"the model has {probs.shape[1]} outputs but the data has {expected} "
                         f"{'labels' if task == 'multilabel' else 'classes'}; evaluate a model trained "
                         "for this dataset (num_classes=len(dataset.classes)).")
    ck.check_labels(labels, task=task, num_outputs=probs.shape[1], name="labels")
    auc_ci = acc_ci = None
    if bootstrap:
        auc_ci, acc_ci = bootstrap_ci(probs, labels, task, n=int(bootstrap), ci=ci, seed=seed)
    auc = auc_score(probs, labels, task)
    if math.isnan(auc):
        present = np.unique(labels).tolist() if task != "multilabel" else "no label with both 0 and 1"
        warnings.warn(f"AUC is undefined (NaN) on these {len(labels)} samples: the labels hold a single class "
                      f"({present}); evaluate on data with positives and negatives (accuracy is still reported).",
                      UserWarning, stacklevel=2)
    return Evaluation(auc=auc, accuracy=accuracy_score(probs, labels, task),
                      per_class_auc=tuple(float(a) for a in per_class_auc(probs, labels, task)),
                      n=int(len(labels)), task=task, classes=_classes(src_data),
                      auc_ci=auc_ci, accuracy_ci=acc_ci, ci=ci, bootstrap=int(bootstrap))
