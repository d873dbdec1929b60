"""Concept activation vectors (CAVs) at any layer, and TCAV with its significance test (Kim et al. 2018).

A CAV is the normal of a linear probe that separates a concept's examples from others at a layer:
``v = w / |w|`` with ``w`` the weights of an L2-regularised logistic regression (scikit-learn), oriented
toward the concept. Examples are either images of the concept (negatives: random images), or masks
of a structure on images (positives: the layer's activations averaged inside the mask; negatives:
averaged outside it, on the same images, so that the image content cancels out).

Layer activations are pooled one of three ways (``pool=``):

- ``"flatten"``: the whole activation of the layer, flattened (``(B, N*D)`` tokens or ``(B, C*h*w)``);
  what captum's TCAV does, and the default for image examples;
- ``"mean"``: the mean over tokens / positions (``(B, D)``): fewer dimensions, fewer examples needed;
- ``"mask"``: a mask-weighted mean over the patch grid (``(B, D)``), for structure examples.

``layer="pooled"`` is the model's pooled features (timm ``forward_head(pre_logits=True)``; what a
post-hoc CBM projects), reached without hooks; any other layer is a module name (``"blocks.3"``,
``"layer4"``) whose output is recorded by ``workbench.capture``.

TCAV (Kim et al.): the directional derivative of the target class logit along a CAV is the dot
product of the logit's gradient w.r.t. the layer (pooled like the CAV: flattened for "flatten"; summed
over positions for "mean"/"mask", i.e. every position moved along ``v``) with ``v``; the TCAV score is
the share of target-class images where it is positive. Significance: CAVs of the concept against
``n_random`` random example sets give ``n_random`` scores; the null scores come from random-vs-random
CAVs against the same random sets; a two-sided t-test compares the two (scipy ``ttest_ind``, as the
reference implementation). ``null="pairs"`` (the default) gives every null CAV its own positive random
set, as the reference implementation does when no ``random_counterpart`` is named (it runs every random
set against the others); ``null="counterpart"`` uses one random set as the positive set of every null
CAV (the reference's ``random_counterpart`` option). With one counterpart the null scores share that
set, so their mean is that set's score rather than 0.5 and their spread is too small: on the phantom's
black-box ViT an unrelated concept (the marker) came out significant in 11 of 24 class x seed runs
with a counterpart and in none with pairs (benchmarks/README.md, "TCAV: which null"). Neither null
covers the draw of the concept's own examples (fixed for all its CAVs): when the class gradients all
point one way, a set of random images posing as a concept is still often "significant" (a third of 24
draws with either null on a planted model whose gradients do), so repeat a finding over a few
``seed=`` values.

Gradients are computed once for all CAVs (a CAV only enters through a dot product), so the cost is
one forward+backward of the target images, one forward of each example set and the probes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._validate import check_choice, check_images, check_int, check_model, check_number

POOLS = ("flatten", "mean", "mask")
CLASSIFIERS = ("logistic", "sgd")
NULLS = ("pairs", "counterpart")


# --------------------------------------------------------------------------------------------------
# layer activations
# --------------------------------------------------------------------------------------------------
def _is_vit(model: nn.Module) -> bool:
    return hasattr(model, "blocks") and hasattr(model, "patch_embed")


def _grid(act: torch.Tensor, model: nn.Module, size: tuple[int, int]) -> torch.Tensor:
    """A layer output as a (B, D, h, w) grid: CNN maps as they are, ViT tokens without prefix tokens."""
    if act.ndim == 4:
        return act
    if act.ndim == 3:
        base = getattr(model, "backbone", model)
        if not _is_vit(base):
            raise ValueError(f"the layer output has shape {tuple(act.shape)} (tokens) but the model is not a ViT with "
                             "a patch grid; use pool='flatten' or 'mean'.")
        from workbench.attribution.methods_cam import _tokens_to_grid

        return _tokens_to_grid(act, base, size)
    raise ValueError(f"pool='mask' needs a spatial layer (CNN maps or ViT tokens); the layer output has shape "
                     f"{tuple(act.shape)}. Pick a block or stage (e.g. 'blocks.3', 'layer3').")


def _mask_weights(masks: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """(B, H, W) bool -> (B, h, w) share of each grid cell inside the mask."""
    return F.adaptive_avg_pool2d(masks.float()[:, None], hw)[:, 0]


def pool_activations(act: torch.Tensor, pool: str, *, model: nn.Module | None = None, size: tuple[int, int] = (0, 0),
                     masks: torch.Tensor | None = None, inside: bool = True) -> torch.Tensor:
    """Pool a layer output ``(B, ...)`` into ``(B, F)`` vectors (see the module docstring)."""
    if pool == "flatten" or act.ndim == 2:
        return act.flatten(1)
    if pool == "mean":
        return act.mean(1) if act.ndim == 3 else act.mean((2, 3))
    g = _grid(act, model, size)
    w = _mask_weights(masks.to(g.device), tuple(g.shape[-2:])).to(g.dtype)
    if not inside:
        w = 1.0 - w
    return (g * w[:, None]).sum((2, 3)) / w.sum((1, 2)).clamp(min=1e-6)[:, None]


def pool_gradients(grad: torch.Tensor, pool: str, *, model: nn.Module | None = None,
                   size: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """The gradient w.r.t. a layer output, pooled so that ``pooled . v`` is the directional derivative
    along a CAV ``v`` learned with the same ``pool`` (sums over positions for "mean"/"mask")."""
    if pool == "flatten" or grad.ndim == 2:
        return grad.flatten(1)
    if pool == "mean":
        return grad.sum(1) if grad.ndim == 3 else grad.sum((2, 3))
    return _grid(grad, model, size).sum((2, 3))


def _pooled_logits(model: nn.Module, feats: torch.Tensor) -> torch.Tensor:
    from ._model import ConceptBottleneck

    if isinstance(model, ConceptBottleneck):
        return model.forward_concepts(model.head_input(model.adapt(model.concept_head(feats))))
    if not hasattr(model, "get_classifier"):
        raise ValueError(f"TCAV at layer='pooled' needs the model's classifier on pooled features (timm's "
                         f"get_classifier); {type(model).__name__} has none. Name a module instead (e.g. 'blocks.3').")
    return model.get_classifier()(feats)


def _pooled(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    from ._model import ConceptBottleneck

    if isinstance(model, ConceptBottleneck):
        return model.features(x)
    if not all(hasattr(model, a) for a in ("forward_features", "forward_head")):
        raise ValueError(f"layer='pooled' needs a timm-style model (forward_features, forward_head(pre_logits=True)); "
                         f"{type(model).__name__} has none. Name a module instead (e.g. layer='blocks.3').")
    return model.forward_head(model.forward_features(x), pre_logits=True)


def check_layer(model: nn.Module, layer: Any) -> str:
    check_model(model)
    if not isinstance(layer, str):
        raise TypeError(f"layer must be a module name (e.g. 'blocks.3', 'layer4') or 'pooled'; got {layer!r}.")
    if layer != "pooled":
        names = dict(model.named_modules())
        if layer not in names:
            close = [n for n in names if n and layer.split(".")[-1] in n][:8]
            raise ValueError(f"model has no layer {layer!r}; some that exist: {close or [n for n in names if n][:8]}, "
                             "or 'pooled' (the pooled features).")
    return layer


def _forward(model: nn.Module, x: torch.Tensor, layer: str, grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(layer output, logits); the output keeps its graph when ``grad`` (pooled features without ``grad``:
    no logits)."""
    if layer == "pooled":
        feats = _pooled(model, x)
        return feats, (_pooled_logits(model, feats) if grad else None)
    from workbench.capture import record_outputs

    with record_outputs(model, [layer], detach=not grad) as rec:
        logits = model(x)
    if layer not in rec:
        raise ValueError(f"layer {layer!r} did not run in the model's forward; pick another layer.")
    return rec[layer], logits


def _batches(n: int, batch_size: int):
    for s in range(0, n, batch_size):
        yield slice(s, min(n, s + batch_size))


def layer_activations(model: nn.Module, images: torch.Tensor, layer: str, *, pool: str = "flatten",
                      masks: torch.Tensor | None = None, inside: bool = True, batch_size: int = 64,
                      device: Any = None) -> torch.Tensor:
    """Pooled activations ``(N, F)`` of ``images`` at ``layer`` (CPU, float32; model in eval mode,
    restored afterwards). ``masks`` (N, H, W) with ``pool="mask"``."""
    from ._predict import _Eval

    layer = check_layer(model, layer)
    x_all = check_images(images, model=model)
    check_int(batch_size, "batch_size")
    size = tuple(x_all.shape[-2:])
    out = []
    with _Eval(model, device) as (m, dev), torch.no_grad():
        for sl in _batches(len(x_all), batch_size):
            act, _ = _forward(m, x_all[sl].to(dev), layer, grad=False)
            mk = masks[sl] if masks is not None else None
            out.append(pool_activations(act.float(), pool, model=m, size=size, masks=mk, inside=inside).cpu())
    return torch.cat(out)


def layer_gradients(model: nn.Module, images: torch.Tensor, layer: str, target: torch.Tensor, *, pool: str = "flatten",
                    batch_size: int = 64, device: Any = None) -> torch.Tensor:
    """Gradients ``(N, F)`` of the ``target`` class logit w.r.t. ``layer``, pooled like the CAVs."""
    from ._predict import _Eval

    layer = check_layer(model, layer)
    x_all = check_images(images, model=model)
    size = tuple(x_all.shape[-2:])
    out = []
    with _Eval(model, device) as (m, dev), torch.enable_grad():
        for sl in _batches(len(x_all), batch_size):
            # an input that requires grad keeps the layer in the graph even for parameter-free models;
            # autograd.grad w.r.t. the layer stops there, so nothing before it is back-propagated
            act, logits = _forward(m, x_all[sl].to(dev).requires_grad_(True), layer, grad=True)
            t = target[sl].to(logits.device)
            (g,) = torch.autograd.grad(logits.gather(1, t[:, None]).sum(), act)
            out.append(pool_gradients(g.float(), pool, model=m, size=size).cpu())
    return torch.cat(out)


# --------------------------------------------------------------------------------------------------
# CAVs
# --------------------------------------------------------------------------------------------------
def fit_probe(pos: np.ndarray, neg: np.ndarray, *, classifier: str = "logistic", c: float = 1.0,
              seed: int = 0) -> tuple[np.ndarray, float]:
    """A linear probe separating ``pos`` (label 1) from ``neg`` (label 0): ``(w, b)`` in the input's
    units (standardisation folded back in), so ``x . w + b`` is the probe's logit."""
    from threadpoolctl import threadpool_limits   # scikit-learn's dependency

    x = np.concatenate([pos, neg]).astype(np.float64)
    y = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])
    mu, sd = x.mean(0), x.std(0)
    sd[sd < 1e-8] = 1.0
    xs = (x - mu) / sd
    # one BLAS thread: these products are small, and on a CPU busy with other jobs OpenBLAS's threads
    # spin-wait (an sklearn probe over 6,144 features took 0.76-1.7 s instead of 37 ms)
    with threadpool_limits(1, user_api="blas"):
        if classifier == "logistic" and len(xs) < xs.shape[1]:
            wd, b0 = _logistic_dual(xs, y, c)
            return wd / sd, float(b0 - (wd * mu / sd).sum())
        if classifier == "logistic":
            from sklearn.linear_model import LogisticRegression

            clf = LogisticRegression(C=c, max_iter=500)
        else:
            from sklearn.linear_model import SGDClassifier

            clf = SGDClassifier(alpha=0.01, max_iter=1000, tol=1e-3, random_state=seed)
        clf.fit(xs, y)
    w = clf.coef_[0] / sd
    b = float(clf.intercept_[0] - (clf.coef_[0] * mu / sd).sum())
    return w, b


def _logistic_dual(x: np.ndarray, y: np.ndarray, c: float, *, tol: float = 1e-10,
                   max_iter: int = 100) -> tuple[np.ndarray, float]:
    """L2 logistic regression, sklearn's ``LogisticRegression(C=c)`` objective
    ``c * sum(log-loss) + |w|^2 / 2`` (intercept not penalised), solved by Newton's method in the
    span of the examples (``w = x.T @ a``: n + 1 unknowns instead of d + 1).

    Why our own: a CAV probe has far fewer examples than features (120 example images against
    6,144 flattened ViT-token features), where sklearn's L-BFGS iterates in d dimensions. Here a
    probe costs one n x n Gram matrix and a few (n+1)-sized solves: 16 ms against sklearn's 37 ms
    on this CPU (one BLAS thread each, median of 5), for the 20-odd probes per concept of a TCAV
    run. Same minimiser (tested against sklearn).
    """
    k = x @ x.T
    n = len(y)
    a, b = np.zeros(n), 0.0

    def objective(a_: np.ndarray, b_: float) -> float:
        f = k @ a_ + b_
        return float(c * (np.logaddexp(0.0, f) - y * f).sum() + 0.5 * a_ @ k @ a_)

    cur = objective(a, b)
    for _ in range(max_iter):
        f = k @ a + b
        p = 1.0 / (1.0 + np.exp(-f))
        g = p - y
        s = p * (1.0 - p)
        # Newton system with the alpha rows divided by K (K(cSK + I) da + K cS1 db = -K(cg + a))
        m = np.empty((n + 1, n + 1))
        m[:n, :n] = c * s[:, None] * k + np.eye(n)
        m[:n, n] = c * s
        m[n, :n] = c * (s @ k)
        m[n, n] = c * s.sum() + 1e-12
        rhs = -np.concatenate([c * g + a, [c * g.sum()]])
        try:
            step = np.linalg.solve(m, rhs)
        except np.linalg.LinAlgError:
            step = np.linalg.lstsq(m, rhs, rcond=None)[0]
        t = 1.0
        while True:   # backtracking: Newton's full step can overshoot on separable data
            new = objective(a + t * step[:n], b + t * step[n])
            if new <= cur or t < 1e-6:
                break
            t *= 0.5
        a, b = a + t * step[:n], b + t * step[n]
        done = cur - new <= tol * max(1.0, abs(cur))
        cur = new
        if done:
            break
    return x.T @ a, float(b)


@dataclass(frozen=True)
class CAVSet:
    """CAVs of K concepts at one layer (``learn_cavs``).

    Attributes:
        names: the K concept names.
        layer: the layer name ("pooled" for pooled features).
        pool: how activations were pooled ("flatten", "mean" or "mask").
        weights: (K, F) probe weights (``directions`` are their unit vectors).
        biases: (K,) probe biases; ``sigmoid(act . w + b)`` is the probe's concept probability.
        accuracy: (K,) held-out accuracy of each probe (3-fold cross-validation).
        n_examples: (K,) positive examples per concept.
    """

    names: tuple[str, ...]
    layer: str
    pool: str
    weights: torch.Tensor
    biases: torch.Tensor
    accuracy: torch.Tensor
    n_examples: tuple[int, ...]
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def directions(self) -> torch.Tensor:
        """(K, F) unit CAVs pointing toward each concept."""
        return F.normalize(self.weights, dim=1)

    def scores(self, model: nn.Module, images: torch.Tensor, *, masks: torch.Tensor | None = None,
               batch_size: int = 64) -> torch.Tensor:
        """(B, K) concept probabilities of ``images`` from the probes (masks for pool="mask")."""
        act = layer_activations(model, images, self.layer, pool=self.pool, masks=masks, batch_size=batch_size)
        return torch.sigmoid(act @ self.weights.T + self.biases)


def _min_examples(name: str, n: int, minimum: int) -> None:
    if n < minimum:
        raise ValueError(f"the example set of concept {name!r} has {n} example(s); a CAV needs at least {minimum} "
                         "(tens are typical: Kim et al. used 50-100 per set). Add examples, or lower min_examples=.")


def _unpack_examples(name: str, ex: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(ex, Mapping):
        if "image" not in ex:
            raise ValueError(f"examples[{name!r}] is a dict without 'image'; pass images (N, C, H, W), a batch dict, "
                             "or an (images, masks) pair.")
        return check_images(ex["image"], f"examples[{name!r}]"), None
    if isinstance(ex, (tuple, list)) and len(ex) == 2:
        imgs = check_images(ex[0], f"examples[{name!r}] images")
        m = torch.as_tensor(ex[1]).bool()
        if m.shape != (imgs.shape[0], *imgs.shape[-2:]):
            raise ValueError(f"examples[{name!r}] masks have shape {tuple(m.shape)}; expected "
                             f"{(imgs.shape[0], *imgs.shape[-2:])}, one (H, W) mask per image.")
        empty = (~m.flatten(1).any(1)).nonzero().flatten().tolist()
        if empty:
            raise ValueError(f"examples[{name!r}] has empty masks for images {empty[:10]}; drop those images.")
        return imgs, m
    return check_images(ex, f"examples[{name!r}]"), None


def learn_cavs(model: nn.Module, examples: Mapping[str, Any], *, layer: str = "pooled", negatives: Any = None,
               pool: str | None = None, classifier: str = "logistic", c: float = 1.0, min_examples: int = 10,
               batch_size: int = 64, device: Any = None, seed: int = 0) -> CAVSet:
    """Learn one CAV per concept at ``layer`` from example sets.

    Args:
        model: any model (a CBM, a timm CNN or ViT); not changed.
        examples: ``{name: images (N, C, H, W)}`` (positives; ``negatives`` are required) or
            ``{name: (images, masks)}`` with one (H, W) bool mask per image (inside vs outside the
            mask, on the same images; ``pool`` becomes "mask").
        layer: a module name or "pooled".
        negatives: images (M, C, H, W) used as negatives for image examples (e.g. random images).
        pool: "flatten", "mean" or "mask" (default: "mask" for mask examples, else "mean").
        classifier: "logistic" (L2 logistic regression, ``C=c``) or "sgd" (captum's default probe:
            SGDClassifier(alpha=0.01)).
        min_examples: the smallest example set accepted.
        batch_size, device: forward passes.
        seed: seed of the "sgd" probe and the cross-validation folds.

    Returns:
        A :class:`CAVSet`.
    """
    from sklearn.model_selection import StratifiedKFold

    layer = check_layer(model, layer)
    check_choice(classifier, "classifier", CLASSIFIERS)
    check_int(min_examples, "min_examples", minimum=2)
    check_number(c, "c", low=0, low_open=True)
    if not isinstance(examples, Mapping) or not examples:
        raise ValueError("examples must be a non-empty dict {concept name: images or (images, masks)}.")
    names, ws, bs, accs, ns = [], [], [], [], []
    neg_act: dict[str, torch.Tensor] = {}
    pools: set[str] = set()
    for name, ex in examples.items():
        imgs, masks = _unpack_examples(str(name), ex)
        _min_examples(str(name), len(imgs), min_examples)
        p = pool or ("mask" if masks is not None else "mean")
        if p not in POOLS:
            raise ValueError(f"pool must be one of {list(POOLS)}; got {p!r}.")
        if masks is not None:
            pos = layer_activations(model, imgs, layer, pool="mask", masks=masks, batch_size=batch_size, device=device)
            neg = layer_activations(model, imgs, layer, pool="mask", masks=masks, inside=False,
                                    batch_size=batch_size, device=device)
            p = "mask"
        else:
            if p == "mask":
                raise ValueError(f"pool='mask' needs (images, masks) examples; examples[{name!r}] has images only.")
            if negatives is None:
                raise ValueError("image examples need negatives= (e.g. random images of the dataset) to learn CAVs "
                                 "against.")
            if p not in neg_act:
                negs = check_images(negatives, "negatives")
                _min_examples("negatives", len(negs), min_examples)
                neg_act[p] = layer_activations(model, negs, layer, pool=p, batch_size=batch_size, device=device)
            pos = layer_activations(model, imgs, layer, pool=p, batch_size=batch_size, device=device)
            neg = neg_act[p]
        a, b_ = pos.numpy(), neg.numpy()
        w, b = fit_probe(a, b_, classifier=classifier, c=c, seed=seed)
        x = np.concatenate([a, b_])
        y = np.concatenate([np.ones(len(a)), np.zeros(len(b_))])
        folds = StratifiedKFold(n_splits=3, shuffle=True, random_state=seed)
        correct = 0
        for tr, te in folds.split(x, y):
            wf, bf = fit_probe(x[tr][y[tr] == 1], x[tr][y[tr] == 0], classifier=classifier, c=c, seed=seed)
            correct += int((((x[te] @ wf + bf) > 0) == (y[te] == 1)).sum())
        names.append(str(name))
        ws.append(torch.as_tensor(w, dtype=torch.float32))
        bs.append(b)
        accs.append(correct / len(y))
        ns.append(len(imgs))
        pools.add(p)
    if len(pools) > 1:
        raise ValueError(f"the example sets were pooled differently ({sorted(pools)}): CAVs of one set must share "
                         "a feature space; give all concepts as images, or all as (images, masks).")
    return CAVSet(names=tuple(names), layer=layer, pool=pools.pop(),
                  weights=torch.stack(ws), biases=torch.tensor(bs, dtype=torch.float32),
                  accuracy=torch.tensor(accs, dtype=torch.float32), n_examples=tuple(ns),
                  params={"classifier": classifier, "c": c, "seed": seed})


def concept_examples(data: Any, names: Sequence[str], *, n: int = 50, seed: int = 0) -> dict[str, torch.Tensor]:
    """Example images of concepts from a dataset's labels: ``{name: (n', C, H, W)}``.

    A name is a concept of the dataset (images whose label is 1) or a boolean field of the samples'
    ``meta`` (the phantom's distractors ``device`` and ``marker``: images where it is True). At most
    ``n`` images per concept, drawn at random.

    Raises:
        ValueError: a name that is neither (the valid ones are listed).
    """
    rng = np.random.default_rng(seed)
    have = tuple(getattr(data, "concept_names", ()) or ())
    meta = list(getattr(data, "meta", []) or [])
    flags = sorted({k for m in meta[:50] for k, v in m.items() if isinstance(v, bool)})
    out = {}
    for name in names:
        if name in have:
            yes = (torch.as_tensor(data.concepts)[:, have.index(name)] == 1).nonzero().flatten().numpy()
        elif name in flags:
            yes = np.array([i for i, m in enumerate(meta) if m.get(name) is True])
        else:
            raise ValueError(f"unknown concept {name!r}: not among the dataset's concepts {list(have)} nor its "
                             f"boolean meta fields {flags}.")
        pick = rng.choice(yes, size=min(n, len(yes)), replace=False) if len(yes) else yes
        out[str(name)] = data.batch(torch.as_tensor(pick, dtype=torch.long))["image"]
    return out


def random_images(data: Any, n: int = 200, *, seed: int = 0) -> torch.Tensor:
    """``n`` images drawn at random from a dataset (the pool TCAV draws its random sets from)."""
    check_int(n, "n")
    rng = np.random.default_rng(seed)
    return data.batch(torch.as_tensor(rng.choice(len(data), size=min(n, len(data)), replace=False)))["image"]


# --------------------------------------------------------------------------------------------------
# TCAV
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TCAVResult:
    """TCAV scores with the significance test (``tcav``).

    Attributes:
        table: one row per concept: ``score`` (mean TCAV score over the CAVs against random sets),
            ``score_std``, ``random_score`` (mean of the null: random vs random CAVs), ``p_value``
            (two-sided t-test), ``p_bonferroni`` (times the number of concepts), ``significant``
            (``p_value < alpha``), ``magnitude`` (captum's magnitude score, mean), ``cav_accuracy`` (the probes'
            training accuracy).
        scores: (K, R) TCAV score of each concept's CAV against each random set.
        random_scores: (R,) TCAV scores of the null CAVs.
        target: the class explained; ``layer``, ``pool``: where; ``alpha``: the test level.
        directional: (K, R, B) directional derivatives (for cross-checks).
        cavs: (K, R, F) the unit CAVs of each concept against each random set.
    """

    table: Any
    scores: torch.Tensor
    random_scores: torch.Tensor
    target: int
    layer: str
    pool: str
    alpha: float
    directional: torch.Tensor
    cavs: torch.Tensor
    params: dict[str, Any] = field(default_factory=dict)

    def significant(self) -> list[str]:
        """Names of the concepts whose score differs from random at level ``alpha``."""
        return [n for n, s in self.table["significant"].items() if s]

    def plot(self, ax: Any = None, **style: Any) -> Any:
        """Bars of TCAV scores with the random null (``workbench.viz.concepts.tcav_bars``)."""
        from workbench.viz.concepts import tcav_bars

        return tcav_bars(self, ax=ax, **style)


def _two_sided_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided t-test p-value (scipy ``ttest_ind``); constant samples: 1 if equal means, else 0."""
    import warnings

    from scipy import stats

    if np.std(a) < 1e-12 and np.std(b) < 1e-12:
        return 1.0 if abs(np.mean(a) - np.mean(b)) < 1e-12 else 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        p = stats.ttest_ind(a, b).pvalue
    return float(p) if np.isfinite(p) else 1.0


def _draw_sets(n_pool: int, size: int, count: int, rng: np.random.Generator) -> list[np.ndarray]:
    return [rng.choice(n_pool, size=size, replace=False) for _ in range(count)]


def tcav(model: nn.Module, images: Any, examples: Mapping[str, Any], *, layer: str, target: int,
         random: Any = None, n_random: int = 10, n_examples: int | None = None, pool: str = "flatten",
         classifier: str = "logistic", c: float = 1.0, alpha: float = 0.05, min_examples: int = 10,
         null: str = "pairs", batch_size: int = 64, device: Any = None, seed: int = 0) -> TCAVResult:
    """TCAV scores of concepts for one class, each with a significance test against random CAVs.

    Args:
        model: any classifier (black box or CBM); not changed.
        images: images of the class to explain (B, C, H, W) in [0, 1], or a batch dict.
        examples: ``{name: images}`` of each concept, or ``{name: (images, masks)}`` of a structure
            (then ``pool`` must be "mask": the concept's activations are averaged inside its masks, the
            random sets' over their whole patch grid, and gradients are summed over the grid).
        layer: a module name (e.g. ``"blocks.3"``, ``"layer4"``) or "pooled".
        target: the class index explained.
        random: a pool of random images (M, C, H, W) from which the random sets are drawn (``2 *
            n_random`` with ``null="pairs"``, ``n_random + 1`` with a counterpart; each without
            replacement; sets may overlap when the pool is small). None pools
            every image given (the class images and all concepts' examples): pass random images of
            the dataset instead when you have them (``random_images``).
        n_random: R, the number of random sets (Kim et al.: tens or more; 10 is quick).
        n_examples: examples per set (default: the smallest concept set, at most half the pool).
        pool: "flatten" (captum's choice), "mean" or "mask".
        classifier, c: the probe (see ``learn_cavs``).
        alpha: significance level of the two-sided t-test.
        min_examples: the smallest example set accepted.
        null: how the null CAVs are formed: "pairs" (default; null CAV i separates a random set of its
            own from random set i, the negatives of the concepts' CAV i) or "counterpart" (one random
            set against every random set i; see the module docstring for why pairs is the default).
        batch_size, device: forward passes.
        seed: draws of the random sets and of the concept examples.

    Returns:
        A :class:`TCAVResult`.
    """
    layer = check_layer(model, layer)
    x = check_images(images, model=model)
    if random is None:
        parts = [x] + [_unpack_examples(str(k), v)[0] for k, v in examples.items()] if isinstance(examples, Mapping) else [x]
        random = torch.cat(parts)
    rnd = check_images(random, "random", model=model)
    n_out = (getattr(model, "workbench_config", None) or {}).get("num_classes")
    check_int(target, "target", minimum=0, maximum=None if n_out is None else int(n_out) - 1)
    check_choice(pool, "pool", POOLS)
    check_choice(classifier, "classifier", CLASSIFIERS)
    check_choice(null, "null", NULLS)
    check_int(n_random, "n_random (the t-test needs several random CAVs)", minimum=2)
    check_int(min_examples, "min_examples", minimum=2)
    check_number(c, "c", low=0, low_open=True)
    if not isinstance(examples, Mapping) or not examples:
        raise ValueError("examples must be a non-empty dict {concept name: images or (images, masks)}.")
    check_number(alpha, "alpha", low=0, high=1, low_open=True, high_open=True)
    rng = np.random.default_rng(seed)
    unpacked = {str(k): _unpack_examples(str(k), v) for k, v in examples.items()}
    for name, (imgs, _) in unpacked.items():
        _min_examples(name, len(imgs), min_examples)
    n = n_examples or min(min(len(i) for i, _ in unpacked.values()), len(rnd) // 2)
    _min_examples("random (each random set: half the pool at most)", min(n, len(rnd) // 2), min_examples)
    n = min(n, len(rnd) // 2)
    if isinstance(target, bool) or not isinstance(target, (int, np.integer)):
        raise TypeError(f"target must be a class index (int); got {target!r}.")
    tgt = torch.full((len(x),), int(target), dtype=torch.long)
    kw = dict(batch_size=batch_size, device=device)
    has_masks = [k for k, (_, m) in unpacked.items() if m is not None]
    if has_masks and pool != "mask":
        raise ValueError(f"concepts {has_masks} are given as (images, masks): pass pool='mask' (their activations "
                         "are averaged inside the masks).")
    if pool == "mask" and len(has_masks) != len(unpacked):
        raise ValueError("pool='mask' needs (images, masks) examples for every concept; "
                         f"{[k for k in unpacked if k not in has_masks]} have images only.")
    grads = layer_gradients(model, x, layer, tgt, pool=pool, **kw).numpy()
    whole = torch.ones(len(rnd), *rnd.shape[-2:], dtype=torch.bool) if pool == "mask" else None
    rnd_act = layer_activations(model, rnd, layer, pool=pool, masks=whole, **kw).numpy()
    sets = _draw_sets(len(rnd), n, n_random + 1, rng)

    def score(w: np.ndarray) -> tuple[float, float, np.ndarray]:
        d = grads @ (w / max(np.linalg.norm(w), 1e-12))
        return float((d > 0).mean()), float(d.mean()), d

    def unit(w: np.ndarray) -> np.ndarray:
        return (w / max(np.linalg.norm(w), 1e-12)).astype(np.float32)

    # the null's own positive sets come from a second stream, so the concepts' draws do not depend on `null`
    own = _draw_sets(len(rnd), n, n_random, np.random.default_rng([seed, 1])) if null == "pairs" else None
    rows, all_scores, all_dd, all_cavs = {}, [], [], []
    nulls, null_mag = [], []
    for i in range(1, n_random + 1):
        base = rnd_act[sets[0] if null == "counterpart" else own[i - 1]]
        w, _ = fit_probe(base, rnd_act[sets[i]], classifier=classifier, c=c, seed=seed + i)
        s, m, _ = score(w)
        nulls.append(s)
        null_mag.append(m)
    for name, (imgs, masks) in unpacked.items():
        pick = rng.choice(len(imgs), size=min(n, len(imgs)), replace=False)
        if masks is not None:
            pos = layer_activations(model, imgs[pick], layer, pool="mask", masks=masks[pick], **kw).numpy()
        else:
            pos = layer_activations(model, imgs[pick], layer, pool=pool, **kw).numpy()
        sc, mags, dds, accs, vs = [], [], [], [], []
        for i in range(1, n_random + 1):
            neg = rnd_act[sets[i]]
            w, b = fit_probe(pos, neg, classifier=classifier, c=c, seed=seed + i)
            s, m, d = score(w)
            sc.append(s)
            mags.append(m)
            dds.append(d)
            vs.append(unit(w))
            accs.append(float(np.concatenate([(pos @ w + b) > 0, (neg @ w + b) <= 0]).mean()))
        p = _two_sided_p(sc, nulls)
        rows[name] = {"score": float(np.mean(sc)), "score_std": float(np.std(sc, ddof=1)),
                      "random_score": float(np.mean(nulls)), "p_value": p,
                      "p_bonferroni": min(1.0, p * len(unpacked)), "significant": bool(p < alpha),
                      "magnitude": float(np.mean(mags)), "cav_accuracy": float(np.mean(accs))}
        all_scores.append(sc)
        all_dd.append(np.stack(dds))
        all_cavs.append(np.stack(vs))
    import pandas as pd

    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "concept"
    return TCAVResult(table=table, scores=torch.tensor(all_scores, dtype=torch.float32),
                      random_scores=torch.tensor(nulls, dtype=torch.float32), target=int(target), layer=layer,
                      pool=pool, alpha=float(alpha), directional=torch.as_tensor(np.stack(all_dd), dtype=torch.float32),
                      cavs=torch.as_tensor(np.stack(all_cavs)),
                      params={"n_random": n_random, "n_examples": int(n), "classifier": classifier, "c": c,
                              "null": null, "seed": seed, "n_images": int(len(x)),
                              "random_magnitude": float(np.mean(null_mag)) if null_mag else math.nan})
