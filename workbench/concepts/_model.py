"""Concept bottleneck models (Koh et al. 2020) over any backbone of ``workbench.models.create``, and
post-hoc CBMs (Yuksekgonul et al. 2023) over a frozen trained model's features projected on CAVs.

A CBM is an ``nn.Module`` whose ``forward`` returns class logits, so ``wb.fit``, ``wb.evaluate``,
attribution and pruning work on it unchanged::

    images -> backbone -> pooled features (B, D) -> concept head -> concept logits z (B, K)
           -> head input a = sigmoid(z) ("sigmoid", default) or z ("logit") -> task head -> (B, C)

Training modes (one ``wb.fit`` call each; ``fit`` calls ``training_loss``):

- ``"joint"``: task loss on the predicted concepts plus ``concept_weight`` x the concept loss; both
  flow into the backbone. The default weight is 10: at 1 the jointly trained concept logits carried
  more than the concepts (leakage: in the benchmark, ResNet-18 and ViT, correcting all five concepts
  gave 0.909 / 0.794 task accuracy, concept AUC 0.968 / 0.871); at 10 the same runs gave 1.000 / 1.000,
  concept AUC 0.976 / 0.941, and task accuracy 0.902 / 0.821 (black box 0.887 / 0.627).
- ``"sequential"``: the task head sees the predicted concepts detached (no task gradient reaches
  the concept predictor). Koh et al. train the head after the predictor has converged; here both
  train in the same run, so the head follows the predictor and ends on its final outputs. For the
  strict two-stage version, refit the head afterwards with ``finetune_head`` on the training data.
- ``"independent"``: the task head is trained on the true concepts (a missing label, NaN, is replaced
  by the detached prediction) and the concept predictor on the concept loss alone; at test time the
  head sees the predictions.

The concept loss is a binary cross-entropy on the concept logits, averaged over the labelled
(image, concept) pairs only: missing labels (NaN) are masked out. Task heads: ``"linear"``
(``sparsity`` > 0 adds an L1 penalty on its weights: a sparse head), or ``"mlp"`` (one hidden ReLU
layer of ``hidden`` units). Concept logits of the last training batches are tracked (exponential
moving averages of their 5th/95th percentiles and mean) so that interventions on a logit layer can
use the 5th/95th percentile of training logits as "absent"/"present" (Koh et al.); ``calibrate_``
recomputes them exactly on a dataset. Test-time improvement (``test_time_improve``) writes a
per-concept affine map of the concept logits (``adapt_gain``, ``adapt_bias``; identity by default):
no other weight changes, and the adapted model saves and reloads like any other.
"""
from __future__ import annotations

import copy
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

MODES = ("joint", "sequential", "independent")
HEADS = ("linear", "mlp")
ACTIVATIONS = ("sigmoid", "logit")
KIND = "concept_bottleneck"


def _check_choice(name: str, value: Any, valid: Sequence[str]) -> str:
    if value not in valid:
        raise ValueError(f"{name} must be one of {list(valid)}; got {value!r}.")
    return value


def has_pooled_features(model: nn.Module) -> bool:
    """True for timm-style models: ``forward_features``, ``forward_head(pre_logits=True)``,
    ``num_features`` and ``reset_classifier``."""
    return all(hasattr(model, a) for a in ("forward_features", "forward_head", "num_features", "reset_classifier"))


def pooled_backbone(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose classifier is removed (its forward returns pooled features).

    The caller's model is never changed.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"backbone must be a model name for workbench.models.create or an nn.Module; got "
                        f"{type(model).__name__}.")
    if not has_pooled_features(model):
        raise ValueError(
            f"backbone {type(model).__name__} has no pooled features: a concept bottleneck needs a timm-style "
            "model with forward_features, forward_head(pre_logits=True), num_features and reset_classifier. "
            "Create it with workbench.models.create (any timm CNN or ViT), or pass a model name.")
    bb = copy.deepcopy(model)
    bb.reset_classifier(0)
    return bb


class ConceptBottleneck(nn.Module):
    """A concept bottleneck model (see the module docstring); build it with ``create`` or ``posthoc``.

    Attributes:
        backbone: the feature extractor (a copy of the given model without its classifier).
        concept_head: ``Linear(D, K)``: pooled features -> concept logits.
        task_head: ``Linear(K, C)`` or a small MLP: head input -> class logits.
        concepts: the K concept names; ``classes``: class names when known.
        batch_fields: ``("concepts",)`` when training needs concept labels (``wb.fit`` reads it).
    """

    def __init__(self, backbone: nn.Module, concepts: Sequence[str], num_classes: int, *, mode: str = "joint",
                 head: str = "linear", hidden: int = 32, activation: str = "sigmoid", concept_weight: float = 10.0,
                 sparsity: float = 0.0, freeze_backbone: bool = False, posthoc: bool = False,
                 classes: Sequence[str] | None = None, backbone_config: dict[str, Any] | None = None,
                 head_lr: float = 10.0) -> None:
        super().__init__()
        _check_choice("mode", mode, MODES)
        _check_choice("head", head, HEADS)
        _check_choice("activation", activation, ACTIVATIONS)
        concepts = [str(c) for c in concepts]
        if not concepts:
            raise ValueError("concepts is empty; name at least one concept (e.g. the phantom's findings).")
        if len(set(concepts)) != len(concepts):
            raise ValueError(f"concept names must be unique; got {concepts}.")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int (2 for binary tasks); got {num_classes!r}.")
        if classes is not None and len(classes) != num_classes:
            raise ValueError(f"classes has {len(classes)} names but num_classes is {num_classes}.")
        if not float(head_lr) > 0:
            raise ValueError(f"head_lr must be > 0 (a multiple of fit's lr for the task head); got {head_lr!r}.")
        for name, v in (("concept_weight", concept_weight), ("sparsity", sparsity)):
            if not float(v) >= 0:
                raise ValueError(f"{name} must be >= 0; got {v!r}.")
        if mode == "independent" and float(concept_weight) == 0:
            raise ValueError("mode='independent' trains the concept predictor on the concept loss alone; "
                             "concept_weight must be > 0.")
        k = len(concepts)
        self.backbone = backbone
        self.concept_head = nn.Linear(int(backbone.num_features), k)
        if head == "linear":
            self.task_head: nn.Module = nn.Linear(k, num_classes)
        else:
            self.task_head = nn.Sequential(nn.Linear(k, int(hidden)), nn.ReLU(), nn.Linear(int(hidden), num_classes))
        self.concepts = tuple(concepts)
        self.classes = tuple(classes) if classes is not None else None
        self.mode, self.head, self.activation = mode, head, activation
        self.concept_weight, self.sparsity = float(concept_weight), float(sparsity)
        self.head_lr = float(head_lr)
        self.freeze_backbone, self.posthoc = bool(freeze_backbone), bool(posthoc)
        self.batch_fields = ("concepts",) if self.concept_weight > 0 else ()
        # running statistics of training concept logits (intervention range, source means)
        self.register_buffer("logit_lo", torch.full((k,), -4.0))
        self.register_buffer("logit_hi", torch.full((k,), 4.0))
        self.register_buffer("logit_mean", torch.zeros(k))
        self.register_buffer("stats_batches", torch.zeros((), dtype=torch.long))
        # per-class running sums of training concept logits (the source statistics of test_time_improve)
        self.register_buffer("class_logit_sum", torch.zeros(num_classes, k))
        self.register_buffer("class_count", torch.zeros(num_classes))
        # test-time adaptation: z -> adapt_gain * z + adapt_bias (identity unless adapted)
        self.register_buffer("adapt_gain", torch.ones(k))
        self.register_buffer("adapt_bias", torch.zeros(k))
        if self.freeze_backbone:
            for p in self.backbone.parameters():
                p.requires_grad_(False)
        if self.posthoc:
            for p in self.concept_head.parameters():
                p.requires_grad_(False)
        bb_cfg = copy.deepcopy(backbone_config) if backbone_config is not None else None
        self.workbench_config = {
            "kind": KIND, "name": f"cbm({(bb_cfg or {}).get('name', type(backbone).__name__)})",
            "timm_name": (bb_cfg or {}).get("timm_name"), "num_classes": int(num_classes),
            "img_size": (bb_cfg or {}).get("img_size"), "in_chans": (bb_cfg or {}).get("in_chans"),
            "concepts": list(self.concepts), "classes": list(self.classes) if self.classes else None,
            "mode": mode, "head": head, "hidden": int(hidden), "activation": activation,
            "concept_weight": self.concept_weight, "sparsity": self.sparsity, "head_lr": self.head_lr,
            "freeze_backbone": self.freeze_backbone, "posthoc": self.posthoc, "backbone": bb_cfg,
        }

    # -- the parts ------------------------------------------------------------------------------
    @property
    def num_concepts(self) -> int:
        return len(self.concepts)

    @property
    def num_classes(self) -> int:
        return int(self.workbench_config["num_classes"])

    def train(self, mode: bool = True) -> "ConceptBottleneck":
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()  # a frozen backbone keeps its normalisation statistics and no dropout
        return self

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features ``(B, D)``."""
        return self.backbone.forward_head(self.backbone.forward_features(images), pre_logits=True)

    def concept_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Concept logits ``(B, K)`` (after any test-time adaptation)."""
        return self.adapt(self.concept_head(self.features(images)))

    def adapt(self, z: torch.Tensor) -> torch.Tensor:
        """The test-time affine map of concept logits (identity unless ``test_time_improve`` set it)."""
        return z * self.adapt_gain + self.adapt_bias

    def head_input(self, z: torch.Tensor) -> torch.Tensor:
        """Concept logits -> what the task head reads: probabilities ("sigmoid") or the logits."""
        return torch.sigmoid(z) if self.activation == "sigmoid" else z

    def value_to_input(self, values: torch.Tensor) -> torch.Tensor:
        """Concept values in [0, 1] (0 absent, 1 present) -> head input. On a logit layer 0 and 1 map to
        the 5th and 95th percentiles of training logits (Koh et al.), values between linearly."""
        if self.activation == "sigmoid":
            return values
        return self.logit_lo + values * (self.logit_hi - self.logit_lo)

    def forward_concepts(self, head_input: torch.Tensor) -> torch.Tensor:
        """Class logits ``(B, C)`` from head inputs ``(B, K)``."""
        return self.task_head(head_input)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.task_head(self.head_input(self.concept_logits(images)))

    # -- training (called by wb.fit) ------------------------------------------------------------
    def lr_scale(self, name: str) -> float:
        """``wb.fit``'s learning-rate multiple for a parameter: ``head_lr`` for the task head (a K x C
        layer on [0, 1] concept probabilities moves too slowly at a backbone's rate), 1 elsewhere."""
        return self.head_lr if name.startswith("task_head.") else 1.0

    def concept_loss(self, z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """BCE with logits over labelled (image, concept) pairs; NaN labels are masked out."""
        known = torch.isfinite(target)
        per = F.binary_cross_entropy_with_logits(z.float(), torch.where(known, target, 0.0).float(), reduction="none")
        return (per * known).sum() / known.sum().clamp(min=1)

    def training_loss(self, batch: dict[str, Any], task_loss: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss, logits)`` of one training batch: the task loss of the mode plus ``concept_weight`` x the
        concept loss plus ``sparsity`` x the L1 norm of the task head's first weight matrix."""
        if self.concept_weight > 0 or self.mode == "independent":
            c = batch["concepts"]
            if c.shape[-1] != self.num_concepts:
                raise ValueError(f"the batch has {c.shape[-1]} concept labels per image but the model has "
                                 f"{self.num_concepts} concepts {list(self.concepts)}; train on a dataset with "
                                 "exactly these concepts (workbench.concepts.select_concepts(dataset, names)).")
        z = self.concept_logits(batch["image"])
        a = self.head_input(z)
        logits = self.task_head(a)
        if self.mode == "joint":
            task_logits = logits
        elif self.mode == "sequential":
            task_logits = self.task_head(a.detach())
        else:
            true = batch["concepts"]
            known = torch.isfinite(true)
            a_true = torch.where(known, self.value_to_input(torch.where(known, true, 0.0)).to(a.dtype), a.detach())
            task_logits = self.task_head(a_true)
        loss = task_loss(task_logits, batch["label"])
        if self.concept_weight > 0:
            loss = loss + self.concept_weight * self.concept_loss(z, batch["concepts"])
        if self.sparsity > 0:
            w = self.task_head.weight if self.head == "linear" else self.task_head[0].weight
            loss = loss + self.sparsity * w.abs().sum()
        if self.training:
            self._track(z.detach(), batch["label"])
        return loss, logits

    @torch.no_grad()
    def _track(self, z: torch.Tensor, labels: torch.Tensor, momentum: float = 0.05, decay: float = 0.99) -> None:
        """Running statistics of training concept logits: EMAs of the 5th/95th percentiles and the mean,
        and decayed per-class sums (recent, better-trained batches weigh most)."""
        z = z.float()
        q = torch.quantile(z, torch.tensor([0.05, 0.95], device=z.device), dim=0)
        m = 1.0 if int(self.stats_batches) == 0 else momentum
        self.logit_lo.lerp_(q[0], m)
        self.logit_hi.lerp_(q[1], m)
        self.logit_mean.lerp_(z.mean(0), m)
        self.stats_batches += 1
        if labels.ndim == 1:
            onehot = F.one_hot(labels.long(), self.num_classes).float()
            self.class_logit_sum.mul_(decay).add_(onehot.T @ z)
            self.class_count.mul_(decay).add_(onehot.sum(0))

    def source_class_means(self) -> torch.Tensor:
        """(C, K) mean training concept logit per class (NaN for classes never seen in training)."""
        cnt = self.class_count[:, None]
        return torch.where(cnt > 0, self.class_logit_sum / cnt.clamp(min=1e-12), torch.full_like(self.class_logit_sum,
                                                                                             float("nan")))

    def extra_repr(self) -> str:
        return (f"concepts={list(self.concepts)}, mode={self.mode!r}, head={self.head!r}, "
                f"activation={self.activation!r}, concept_weight={self.concept_weight}, posthoc={self.posthoc}")


def _names_of(concepts: Any) -> list[str]:
    """Concept names from a list of names, a dataset (its concept_names) or a concept source."""
    if isinstance(concepts, str):
        raise TypeError(f"concepts must be a list of names, not the string {concepts!r}; e.g. concepts=[{concepts!r}].")
    names = getattr(concepts, "concept_names", None) or getattr(concepts, "names", None)
    if names is None:
        if concepts is None:
            raise ValueError("concepts is required: a list of names, a dataset with concepts or a concept source.")
        names = concepts
    return [str(n) for n in names]


def create(backbone: str | nn.Module, concepts: Any, num_classes: int, mode: str = "joint", *,
           head: str = "linear", hidden: int = 32, activation: str = "sigmoid", concept_weight: float = 10.0,
           sparsity: float = 0.0, freeze_backbone: bool = False, classes: Sequence[str] | None = None,
           head_lr: float = 10.0, **backbone_kw: Any) -> ConceptBottleneck:
    """A concept bottleneck model over a backbone.

    Args:
        backbone: a model name for ``workbench.models.create`` (``backbone_kw`` are its keywords:
            ``img_size``, ``in_chans``, ``patch_size``, ``depth``...), or a model (timm-style, e.g. from
            ``wb.models.create``); a model is copied, never changed.
        concepts: the K concept names (a list, a dataset with ``concept_names``, or a concept source).
        num_classes: C, the task's classes.
        mode: "joint", "sequential" or "independent" (module docstring).
        head: "linear" or "mlp".
        hidden: hidden units of the "mlp" head.
        activation: "sigmoid" (the head reads concept probabilities) or "logit" (concept logits).
        concept_weight: weight of the concept loss against the task loss (0: train on the task only;
            default 10, see the module docstring; lower it for task accuracy at the cost of interventions).
        sparsity: L1 weight on the task head (a sparse, readable head); 0 disables it.
        freeze_backbone: train only the heads on a fixed backbone.
        classes: class names (for tables and figures).
        head_lr: the task head's learning rate as a multiple of ``wb.fit``'s ``lr``. The head is a
            K x C layer on [0, 1] concept probabilities; to express a rule such as "pneumothorax wins
            over effusion" its weights must reach several units, which at a backbone's rate (1e-3, a
            few hundred AdamW steps) they do not: in bench_concepts.py (phantom ``diagnosis``, ResNet-18,
            5,000 images x 4 epochs, head at 1x) concept AUC reached 0.95 while the head, still near its
            initialisation, gave 0.28 task accuracy and 0.22 with every concept corrected. 10x moved the
            head 7x further in the same steps on the tests' toy task (accuracy 0.48 -> 0.63); on the
            phantom's ``diagnosis`` (ResNet-18, 1,000 images x 5 epochs, 300 test images) 0.13 -> 0.56.

    Returns:
        A :class:`ConceptBottleneck`; ``wb.fit(cbm, dataset_with_concepts)`` trains it.

    Examples:
        >>> cbm = create("resnet18", concepts=["a", "b"], num_classes=3, img_size=32, in_chans=1)
        >>> cbm(torch.rand(2, 1, 32, 32)).shape, cbm.concept_logits(torch.rand(2, 1, 32, 32)).shape
        (torch.Size([2, 3]), torch.Size([2, 2]))
    """
    names = _names_of(concepts)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int (2 for binary tasks); got {num_classes!r}.")
    if isinstance(backbone, str):
        from workbench.models import create as create_model

        model = create_model(backbone, num_classes=num_classes, **backbone_kw)
        bb_cfg = model.workbench_config
        model.reset_classifier(0)
        bb = model
    else:
        if backbone_kw:
            raise TypeError(f"backbone keywords {sorted(backbone_kw)} apply to a backbone name only; the model "
                            "passed is used as it is.")
        bb = pooled_backbone(backbone)
        bb_cfg = getattr(backbone, "workbench_config", None)
    return ConceptBottleneck(bb, names, num_classes, mode=mode, head=head, hidden=hidden, activation=activation,
                             concept_weight=concept_weight, sparsity=sparsity, freeze_backbone=freeze_backbone,
                             classes=classes, backbone_config=bb_cfg, head_lr=head_lr)


def posthoc(model: nn.Module, cavs: Any, num_classes: int, *, head: str = "linear", sparsity: float = 0.0,
            hidden: int = 32, classes: Sequence[str] | None = None) -> ConceptBottleneck:
    """A post-hoc CBM (Yuksekgonul et al. 2023): a frozen trained model's pooled features projected on
    CAVs, then a task head trained on those concept scores.

    The concept logits are the CAV probes' logits ``z_k = f(x) . w_k + b_k`` (a projection on the CAV
    direction, scaled and shifted so that ``sigmoid(z_k)`` is the probe's probability), the head reads
    them as logits (``activation="logit"``) and is the only part ``wb.fit`` trains (no concept labels
    needed). ``sparsity`` > 0 gives the paper's sparse, interpretable head.

    Args:
        model: the trained model (copied and frozen; never changed).
        cavs: a ``CAVSet`` learned at ``layer="pooled"`` of ``model`` (``workbench.concepts.learn_cavs``).
        num_classes: C.
        head, sparsity, hidden, classes: as in ``create``.

    Returns:
        A :class:`ConceptBottleneck` with ``posthoc=True``.
    """
    if getattr(cavs, "layer", None) != "pooled":
        raise ValueError(f"a post-hoc CBM projects the model's pooled features on CAVs; learn them with "
                         f"learn_cavs(model, examples, layer='pooled'); got CAVs at layer {getattr(cavs, 'layer', None)!r}.")
    bb = pooled_backbone(model)
    w = torch.as_tensor(cavs.weights, dtype=torch.float32)
    if w.ndim != 2 or w.shape[1] != int(bb.num_features):
        raise ValueError(f"the CAVs have shape {tuple(w.shape)} but the model's pooled features have "
                         f"{bb.num_features} dims; learn the CAVs on this model at layer='pooled'.")
    cbm = ConceptBottleneck(bb, cavs.names, num_classes, mode="joint", head=head, hidden=hidden, activation="logit",
                            concept_weight=0.0, sparsity=sparsity, freeze_backbone=True, posthoc=True,
                            classes=classes, backbone_config=getattr(model, "workbench_config", None))
    with torch.no_grad():
        cbm.concept_head.weight.copy_(w)
        cbm.concept_head.bias.copy_(torch.as_tensor(cavs.biases, dtype=torch.float32))
    return cbm


def from_config(config: dict[str, Any]) -> ConceptBottleneck:
    """Rebuild a CBM (random weights) from its ``workbench_config``; ``workbench.models.load`` calls it."""
    from workbench.models import create_from_config

    bb_cfg = config.get("backbone")
    if not bb_cfg:
        raise ValueError("the concept model's config has no backbone config; it was built on a model without "
                         "workbench_config and cannot be rebuilt. Save the backbone's state_dict yourself.")
    model = create_from_config(bb_cfg)
    model.reset_classifier(0)
    return ConceptBottleneck(model, config["concepts"], int(config["num_classes"]), mode=config.get("mode", "joint"),
                             head=config.get("head", "linear"), hidden=int(config.get("hidden", 32)),
                             activation=config.get("activation", "sigmoid"),
                             concept_weight=float(config.get("concept_weight", 1.0)),
                             sparsity=float(config.get("sparsity", 0.0)),
                             freeze_backbone=bool(config.get("freeze_backbone", False)),
                             posthoc=bool(config.get("posthoc", False)), classes=config.get("classes"),
                             head_lr=float(config.get("head_lr", 1.0)),
                             backbone_config=bb_cfg)


def is_cbm(model: Any) -> bool:
    return isinstance(model, ConceptBottleneck)


def check_cbm(model: Any, verb: str) -> ConceptBottleneck:
    if not is_cbm(model):
        raise TypeError(f"{verb} needs a concept bottleneck model (workbench.concepts.create or posthoc); got "
                        f"{type(model).__name__}. For a black-box model use workbench.concepts.tcav.")
    return model


@torch.no_grad()
def calibrate_(cbm: ConceptBottleneck, data: Any, *, batch_size: int = 256) -> ConceptBottleneck:
    """Set the CBM's intervention range (5th/95th percentiles), mean and per-class means of concept logits
    exactly from ``data`` (in place; ``wb.fit`` keeps running estimates of them already)."""
    from ._predict import concept_logits_of

    z, y, _ = concept_logits_of(check_cbm(cbm, "calibrate_"), data, batch_size=batch_size, adapted=False,
                                with_labels=True)
    q = torch.quantile(z, torch.tensor([0.05, 0.95]), dim=0)
    dev = cbm.logit_lo.device
    cbm.logit_lo.copy_(q[0].to(dev))
    cbm.logit_hi.copy_(q[1].to(dev))
    cbm.logit_mean.copy_(z.mean(0).to(dev))
    if y.ndim == 1:
        onehot = F.one_hot(y.long(), cbm.num_classes).float()
        cbm.class_logit_sum.copy_((onehot.T @ z).to(dev))
        cbm.class_count.copy_(onehot.sum(0).to(dev))
    cbm.stats_batches.fill_(max(1, int(cbm.stats_batches)))
    return cbm
