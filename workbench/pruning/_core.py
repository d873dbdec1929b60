"""The ``scores`` verb and its ``Scores`` result: one relevance score per unit per layer.

Aggregation (image criteria): for image ``i`` and unit ``u`` the criterion's values at the unit's
activation are summed over positions (tokens or pixels; a head sums its channels too; a residual
group averages its convolutions) into a signed contribution ``r[i, u]``; the unit's score is the
mean over **every** calibration image of ``|r[i, u]|`` (mean absolute contribution: a unit that
pushes some images up and others down still matters). With ``masks=`` only positions inside (or
outside) the given structures count, weighted by how much of each patch or feature-map cell the
structure covers; a ViT's class and register tokens are not in the image and count in neither.
Per class (``per_class=True``), class ``c``'s score averages the images whose target is ``c``.
Stability: images are split by dataset index into two halves (even / odd) and each layer's
scores on the two halves are rank-correlated (Spearman).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_choice, check_data, check_device, check_int, check_model
from .._device import model_on
from ._units import UNITS, Probe, UnitSet, require_units
from .criteria import CRITERIA

__all__ = ["Scores", "scores", "WHERE", "TARGETS"]

WHERE = ("inside", "outside")
TARGETS = ("label", "predicted")


def _ranks(v: torch.Tensor) -> torch.Tensor:
    """Average ranks (ties share the mean of their ranks), 0-based."""
    _, inv, counts = torch.unique(v.double(), return_inverse=True, return_counts=True)
    return (counts.cumsum(0) - (counts + 1) / 2.0)[inv]


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rho of two score vectors (NaN for fewer than two units or a constant one)."""
    if len(a) < 2:
        return float("nan")
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = float((ra.square().sum() * rb.square().sum()).sqrt())
    return float((ra * rb).sum()) / den if den > 0 else float("nan")


@dataclass(frozen=True)
class Scores:
    """Result of :func:`scores`: relevance per unit of every prunable layer.

    Attributes:
        values: ``{layer key: (units,) float}`` on the CPU (higher = more relevant = kept longer).
        unit: "mlp", "heads" or "channels".
        criterion: the criterion's name.
        per_class: ``{class name: {layer key: (units,)}}`` when asked for, else None.
        halves: the scores on the even- and odd-index halves of the calibration set, or None.
        stability: ``{layer key: Spearman rho}`` between the halves plus ``"overall"`` (all layers,
            each divided by its mean); empty for data-free criteria.
        n_images: calibration images that counted (per half: ``params["n_half"]``).
        params: settings (target, masks, where, batch size, criterion keywords, seconds).
        members: ``{layer key: member layer names}`` (the convolutions of a residual group).

    Scores combine elementwise with numbers and other scores of the same layers
    (``s_all - 2 * s_device``), e.g. to rank units that fire on a device first for removal.
    """

    values: dict[str, torch.Tensor]
    unit: str
    criterion: str
    per_class: dict[str, dict[str, torch.Tensor]] | None = None
    halves: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] | None = None
    stability: dict[str, float] = field(default_factory=dict)
    n_images: int = 0
    params: dict[str, Any] = field(default_factory=dict)
    members: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def layers(self) -> list[str]:
        return list(self.values)

    @property
    def num_units(self) -> int:
        return int(sum(len(v) for v in self.values.values()))

    def for_class(self, name: str | int) -> "Scores":
        """The scores of one class (needs ``per_class=True``)."""
        if self.per_class is None:
            raise ValueError("these scores have no per-class values; compute them with scores(..., per_class=True).")
        key = name if isinstance(name, str) else list(self.per_class)[int(name)]
        if key not in self.per_class:
            raise ValueError(f"no class {name!r}; classes are {list(self.per_class)}.")
        return replace(self, values=self.per_class[key], per_class=None, halves=None, stability={},
                       params={**self.params, "class": key})

    def _combine(self, other: Any, op: Callable[[torch.Tensor, Any], torch.Tensor], sym: str) -> "Scores":
        if isinstance(other, Scores):
            if other.unit != self.unit or list(other.values) != list(self.values) or any(
                    len(other.values[k]) != len(v) for k, v in self.values.items()):
                raise ValueError("cannot combine scores of different layers or unit kinds; compute both on the "
                                 "same model with the same unit=.")
            vals = {k: op(v, other.values[k]) for k, v in self.values.items()}
            crit = f"({self.criterion} {sym} {other.criterion})"
        elif isinstance(other, (int, float)) and not isinstance(other, bool):
            vals = {k: op(v, float(other)) for k, v in self.values.items()}
            crit = f"({self.criterion} {sym} {other})"
        else:
            return NotImplemented
        return Scores(vals, self.unit, crit, n_images=self.n_images, members=self.members,
                      params={**self.params, "combined": True})

    def __add__(self, o: Any) -> "Scores":
        return self._combine(o, torch.add, "+")

    def __sub__(self, o: Any) -> "Scores":
        return self._combine(o, torch.sub, "-")

    def __mul__(self, o: Any) -> "Scores":
        return self._combine(o, torch.mul, "*")

    def __rmul__(self, o: Any) -> "Scores":
        return self._combine(o, torch.mul, "*")

    def __truediv__(self, o: Any) -> "Scores":
        return self._combine(o, lambda a, b: a / (b.clamp_min(1e-12) if torch.is_tensor(b) else b), "/")

    def __neg__(self) -> "Scores":
        return self._combine(-1.0, torch.mul, "*")

    def table(self) -> Any:
        """One row per layer: units, mean score, and the halves' Spearman rho (pandas DataFrame)."""
        import pandas as pd

        rows = [{"layer": k, "units": len(v), "mean": float(v.mean()), "max": float(v.max()),
                 "stability": self.stability.get(k, float("nan"))} for k, v in self.values.items()]
        return pd.DataFrame(rows)

    def plot(self, ax: Any = None, **style: Any) -> Any:
        """Sorted unit scores per layer (``workbench.viz.pruning.score_profile``)."""
        from workbench.viz.pruning import score_profile

        return score_profile(self, ax=ax, **style)


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------
def _as_unit_matrix(t: torch.Tensor, probe: Probe, module: nn.Module) -> tuple[torch.Tensor, str, tuple[int, ...]]:
    """Activation-shaped values -> ``(B, P, channels)`` with the position layout."""
    if t.ndim == 2:
        return t.unsqueeze(1), "none", ()
    if t.ndim == 3:
        return t, "tokens", (t.shape[1],)
    if isinstance(module, nn.Linear):  # channels-last feature maps (B, h, w, C)
        return t.flatten(1, 2), "grid", tuple(t.shape[1:3])
    return t.flatten(2).transpose(1, 2), "grid", tuple(t.shape[2:])


def _region_weights(mask: torch.Tensor, layout: str, shape: tuple[int, ...], model: nn.Module,
                    where: str) -> torch.Tensor:
    """(B, H, W) bool mask -> (B, P) weights: the covered fraction of each position (inside) or its
    complement (outside); non-image tokens get 0."""
    m = mask.float().unsqueeze(1)
    if layout == "grid":
        w = F.adaptive_avg_pool2d(m, shape).flatten(1)
        return w if where == "inside" else 1.0 - w
    if layout == "tokens":
        pe = getattr(model, "patch_embed", None)
        grid = tuple(int(g) for g in getattr(pe, "grid_size", ()) or ())
        prefix = int(getattr(model, "num_prefix_tokens", 0) or 0)
        if len(grid) != 2 or prefix + grid[0] * grid[1] != shape[0]:
            raise ValueError(f"cannot place the {shape[0]} tokens of this model on its image grid; masks= needs a "
                             "timm ViT with a patch_embed grid (or a CNN).")
        w = F.adaptive_avg_pool2d(m, grid).flatten(1)
        w = w if where == "inside" else 1.0 - w
        return torch.cat([torch.zeros(len(w), prefix, device=w.device), w], 1)
    raise ValueError("masks= needs activations with spatial positions (tokens or feature maps).")


def _targets(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, target: Any, task: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(image index, class)`` pairs to explain for one batch."""
    b = len(images)
    if isinstance(target, int) and not isinstance(target, bool):
        return torch.arange(b), torch.full((b,), int(target), dtype=torch.long)
    if target == "predicted" or (target == "label" and labels is None):
        with torch.no_grad():
            return torch.arange(b), model(images).argmax(-1).long().cpu()
    if task == "multilabel":
        pos = labels.cpu().float() > 0.5
        img, cls = pos.nonzero(as_tuple=True)
        return img, cls.long()
    return torch.arange(b), labels.cpu().long().reshape(b)


def _check_target(target: Any, num_classes: int) -> None:
    if isinstance(target, bool) or not (target in TARGETS or isinstance(target, int)):
        raise ValueError(f"target must be 'label', 'predicted' or a class index; got {target!r}.")
    if isinstance(target, int) and not 0 <= target < num_classes:
        raise ValueError(f"target {target} is out of range for a model with {num_classes} outputs.")


def _region_source(data: Any, masks: Any) -> tuple[tuple[str, ...] | None, torch.Tensor | None]:
    """``masks=`` -> (structure names read from the data's batches, or a (N, H, W) tensor)."""
    if masks is None:
        return None, None
    if isinstance(masks, str):
        masks = (masks,)
    if torch.is_tensor(masks):
        if masks.ndim != 3 or len(masks) != len(data):
            raise ValueError(f"masks has shape {tuple(masks.shape)}; pass one (H, W) mask per calibration image, "
                             f"(N={len(data)}, H, W), or structure names of the dataset.")
        return None, masks.bool()
    names = tuple(masks)
    if not names or not all(isinstance(n, str) for n in names):
        raise TypeError(f"masks must be structure names, a (N, H, W) bool tensor or None; got {masks!r}.")
    have = tuple(getattr(data, "structures", ()) or ())
    missing = [n for n in names if n not in have]
    if missing:
        raise ValueError(f"the calibration data has no masks for {missing}; its structures are {list(have)}. "
                         "Pass structure names it has, or a (N, H, W) mask tensor.")
    return names, None


def _accumulate(acc: dict[str, torch.Tensor], key: str, value: torch.Tensor) -> None:
    acc[key] = acc[key] + value if key in acc else value.clone()


def scores(model: nn.Module, data: Any, unit: str = "mlp", criterion: str = "gradient_x_activation", *,
           target: str | int = "label", per_class: bool = False, masks: Any = None, where: str = "inside",
           batch_size: int = 32, device: str | torch.device | None = None, seed: int = 0,
           example_inputs: torch.Tensor | None = None, progress: bool = True, **criterion_kw: Any) -> Scores:
    """Score every unit of every prunable layer on a calibration set.

    Args:
        model: a timm ViT (``unit="mlp"`` or ``"heads"``) or CNN (``"channels"``); not modified
            (its train/eval mode is restored; it runs in eval mode).
        data: the calibration set: a dataset (``workbench.data.load``), an ``(images, labels)``
            pair, or images ``(N, C, H, W)`` in [0, 1] (then ``target="predicted"``). Every image
            counts (no "last batch only"). None for data-free criteria.
        unit: "mlp" (hidden neurons of each transformer MLP), "heads" (attention heads) or
            "channels" (convolution channels; residual groups together).
        criterion: a name from ``CRITERIA.names()`` (see ``workbench.pruning.criteria``).
        target: the logit to explain: "label" (each image's class; multilabel: each positive
            label), "predicted", or a class index.
        per_class: also keep one score per unit for each class (``Scores.per_class``).
        masks: restrict relevance to structures: names of the data's masks (their union), or a
            ``(N, H, W)`` bool tensor in data order. Images whose structure is not annotated are
            left out. Needs an image criterion.
        where: "inside" the masks or "outside" them.
        batch_size: calibration images per pass.
        device: where to run (None: the model's device; "auto": CUDA/MPS/CPU); a copy of the model
            is moved, never the model itself.
        seed: seed of the random criterion.
        example_inputs: ``(1, C, H, W)`` to trace the model (``channels``; default from its config).
        progress: show a tqdm bar.
        **criterion_kw: passed to the criterion (e.g. ``n_steps=`` for integrated gradients).

    Returns:
        Scores (``values[layer]`` is ``(units,)``; higher = more relevant).

    Examples:
        >>> import workbench as wb
        >>> m = wb.models.create("vit_tiny", num_classes=2, img_size=32, in_chans=1, depth=1, embed_dim=32, num_heads=2)
        >>> x, y = torch.rand(8, 1, 32, 32), torch.randint(0, 2, (8,))
        >>> s = scores(m, (x, y), unit="mlp", progress=False)
        >>> {k: tuple(v.shape) for k, v in s.values.items()}
        {'blocks.0.mlp': (128,)}
    """
    import time

    from tqdm.auto import tqdm

    from .._train_data import BatchSource, as_source, task_of

    check_model(model)
    crit = CRITERIA.get(criterion)
    if unit not in UNITS:
        raise ValueError(f"unknown unit kind {unit!r}; valid kinds are: {', '.join(UNITS)}.")
    check_choice(where, "where", WHERE)
    check_int(batch_size, "batch_size")
    if data is not None and crit.needs_data:
        data = check_data(data, model, name="the calibration set")  # images as the model will see them
    run, dev = model_on(model, None if device is None else check_device(device))
    if crit.per_image and any(getattr(m, "inplace", False) for m in run.modules()):
        run = copy.deepcopy(run)  # in-place activations (ResNet's ReLU) overwrite the recorded layer outputs
        for m in run.modules():
            if getattr(m, "inplace", False):
                m.inplace = False
    if example_inputs is not None:
        example_inputs = example_inputs.to(dev)
    sets = require_units(run, unit, example_inputs)
    members = {s.key: s.producers for s in sets}
    params: dict[str, Any] = {"target": target, "masks": None if masks is None or torch.is_tensor(masks) else masks,
                              "where": where if masks is not None else None, "batch_size": batch_size,
                              **{k: v for k, v in criterion_kw.items() if isinstance(v, (int, float, str, bool))}}
    t0 = time.perf_counter()
    modes = {m: m.training for m in run.modules()}
    run.eval()
    try:
        if not crit.needs_data:
            if masks is not None or per_class:
                raise ValueError(f"criterion {criterion!r} does not look at images, so it has no per-class or "
                                 "per-structure scores; use an image criterion: "
                                 f"{', '.join(n for n in CRITERIA.names() if CRITERIA.get(n).per_image)}.")
            kw = dict(criterion_kw)
            if criterion == "random":
                kw.setdefault("seed", seed)
            if "example_inputs" in crit.fn.__code__.co_varnames:
                kw.setdefault("example_inputs", example_inputs)
            vals = crit.fn(run, sets, None, **kw)
            return Scores({k: v.float().cpu() for k, v in vals.items()}, unit, criterion, members=members,
                          params={**params, "seconds": time.perf_counter() - t0})
        if data is None:
            raise ValueError(f"criterion {criterion!r} needs calibration data; pass a dataset or (images, labels).")
        src = as_source(data)
        task = task_of(src) if not torch.is_tensor(data) else "multiclass"
        has_labels = not torch.is_tensor(data)
        num_classes = int(getattr(run, "workbench_config", {}).get("num_classes", 0)) or None
        if num_classes is None:
            with torch.no_grad():
                num_classes = int(run(next(iter(BatchSource(src, 1, dev)(shuffle=False)))["image"]).shape[-1])
        _check_target(target, num_classes)
        names, mask_tensor = _region_source(src, masks)
        if masks is not None and not crit.per_image:
            raise ValueError(f"criterion {criterion!r} scores whole layers, not image positions; masks= needs an "
                             f"image criterion: {', '.join(n for n in CRITERIA.names() if CRITERIA.get(n).per_image)}.")
        fields = ("masks",) if names else ()
        source = BatchSource(src, batch_size, dev, 0, keep_on_device=False, fields=fields)
        if not crit.per_image:
            return _model_criterion(crit, run, unit, sets, source, params, members, example_inputs, criterion_kw, t0)
        classes = list(getattr(src, "classes", ())) or [str(c) for c in range(num_classes)]
        mods = dict(run.named_modules())
        probes = list(dict.fromkeys((p.module, p.use_input) for s in sets for p in s.probes))
        layers = [(mods[n], u) for n, u in probes]
        pos = {pu: i for i, pu in enumerate(probes)}
        sums: list[dict[str, torch.Tensor]] = [{}, {}]
        counts = [0, 0]
        pc_sums: dict[int, dict[str, torch.Tensor]] = {}
        pc_counts: dict[int, int] = {}
        images_seen = 0
        bar = tqdm(total=source.num_batches(), desc=f"scores ({criterion})", disable=not progress, unit="batch")
        try:
            for batch in source(shuffle=False):
                x, idx = batch["image"], batch["index"].cpu()
                labels = batch["label"] if has_labels and target == "label" else None
                img, cls = _targets(run, x, labels, target, task)
                region = None
                if names:
                    region = torch.zeros(x.shape[0], *x.shape[-2:], dtype=torch.bool, device=x.device)
                    present = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
                    for n in names:
                        region |= batch["masks"][n].bool()
                        present |= batch["mask_present"][n].bool()
                    keep = present.cpu()[img]
                    img, cls = img[keep], cls[keep]
                elif mask_tensor is not None:
                    region = mask_tensor[idx].to(x.device)
                images_seen += len(x)
                bar.update(1)
                if len(img) == 0:
                    continue
                vals = crit.fn(run, x[img.to(x.device)], cls.to(dev), layers, **criterion_kw)
                reg = None if region is None else region[img.to(region.device)]
                contrib = []
                for (name, _), v in zip(probes, vals):
                    mat, layout, shape = _as_unit_matrix(v.float(), Probe(name, False), mods[name])
                    if reg is not None:
                        mat = mat * _region_weights(reg, layout, shape, run, where).unsqueeze(-1)
                    contrib.append(mat.sum(1).cpu())
                half = (idx[img] % 2).long()
                for s in sets:
                    r = torch.zeros(len(img), s.size)
                    cnt = torch.zeros(s.size)
                    for p in s.probes:
                        c = contrib[pos[(p.module, p.use_input)]]
                        if p.per_unit > 1:
                            c = c.reshape(len(c), -1, p.per_unit).sum(-1)
                        ix = torch.arange(c.shape[1]) if p.index is None else torch.tensor(p.index)
                        r.index_add_(1, ix, c)
                        cnt.index_add_(0, ix, torch.ones(c.shape[1]))
                    a = (r / cnt.clamp_min(1)).abs()
                    for h in (0, 1):
                        _accumulate(sums[h], s.key, a[half == h].sum(0))
                    if per_class:
                        for c_ in cls.unique().tolist():
                            _accumulate(pc_sums.setdefault(int(c_), {}), s.key, a[cls == c_].sum(0))
                for h in (0, 1):
                    counts[h] += int((half == h).sum())
                if per_class:
                    for c_ in cls.unique().tolist():
                        pc_counts[int(c_)] = pc_counts.get(int(c_), 0) + int((cls == c_).sum())
        finally:
            bar.close()
    finally:
        for m, t in modes.items():
            m.training = t
    n = counts[0] + counts[1]
    if n == 0:
        raise ValueError("no calibration image could be scored: "
                         + ("none has the structures " + str(list(names)) + " annotated." if names else
                            "every image was skipped (no positive label to explain); pass target='predicted'."))
    values = {k: (sums[0].get(k, 0) + sums[1].get(k, 0)) / n for k in members}
    halves = None
    stability: dict[str, float] = {}
    if counts[0] and counts[1]:
        halves = tuple({k: sums[h][k] / counts[h] for k in members} for h in (0, 1))
        stability = {k: _spearman(halves[0][k], halves[1][k]) for k in members}
        stability["overall"] = _spearman(*(torch.cat([v / v.mean().clamp_min(1e-12) for v in hv.values()])
                                           for hv in halves))
    pc = None
    if per_class:
        pc = {classes[c] if c < len(classes) else str(c): {k: v / pc_counts[c] for k, v in d.items()}
              for c, d in sorted(pc_sums.items())}
    return Scores(values, unit, criterion, pc, halves, stability, images_seen,
                  {**params, "n_half": list(counts), "n_pairs": n, "seconds": time.perf_counter() - t0}, members)


def _model_criterion(crit: Any, run: nn.Module, unit: str, sets: list[UnitSet], source: Any, params: dict[str, Any],
                     members: dict[str, tuple[str, ...]], example_inputs: Any,
                     criterion_kw: dict[str, Any], t0: float) -> Scores:
    """A data-driven model criterion (tp_taylor): all batches, and each half for the stability."""
    import time

    kw = dict(criterion_kw)
    if "example_inputs" in crit.fn.__code__.co_varnames:
        kw.setdefault("example_inputs", example_inputs)

    def batches(half: int | None):
        for b in source(shuffle=False):
            if half is None:
                yield b
                continue
            sel = (b["index"].cpu() % 2) == half
            if sel.any():
                d = sel.to(b["image"].device)
                yield {"image": b["image"][d], "label": b["label"][d.to(b["label"].device)]}

    vals = crit.fn(run, sets, batches(None), **kw)
    halves = tuple(crit.fn(run, sets, batches(h), **kw) for h in (0, 1))
    stability = {k: _spearman(halves[0][k], halves[1][k]) for k in vals}
    stability["overall"] = _spearman(*(torch.cat([v / v.mean().clamp_min(1e-12) for v in hv.values()])
                                       for hv in halves))
    return Scores({k: v.float().cpu() for k, v in vals.items()}, unit, crit.name, None, halves, stability,
                  len(source), {**params, "seconds": time.perf_counter() - t0}, members)

