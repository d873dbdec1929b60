"""Layer-wise relevance propagation (LRP, Bach et al. 2015) through zennit.

One implementation serves two callers: the attribution method ``"lrp"`` (relevance at the input)
and :func:`lrp_relevance`, the internal API that also returns relevance at intermediate layers
(the pruning criterion of ``workbench.pruning`` calls it to score units).

Which models
    zennit attaches one rule per *module*, so LRP is exact only where every operation of the
    forward pass is a module it has a rule for, or a canonizer rewrites it into one. Supported:

    * **timm ResNets** (``BasicBlock`` / ``Bottleneck`` without squeeze-excitation or
      anti-aliasing: ``resnet18/26/34/50/101/152``, what ``wb.models.create("resnet18")`` builds):
      our canonizer rewrites each block's in-place residual ``x += shortcut`` into zennit's ``Sum``
      module (Norm rule), BatchNorm is merged into the preceding convolution, and timm's fast
      global average pool gets the Norm rule (relevance split by contribution, not uniformly);
    * **torchvision ResNets** (zennit's own ``ResNetCanonizer``) and **VGG-style CNNs**
      (torchvision ``VGG`` / ``AlexNet``, or ``nn.Sequential`` stacks of Conv2d, BatchNorm,
      ReLU, pooling, Dropout, Flatten and Linear);
    * the input standardisation inside a workbench model's first convolution
      (``StandardizedConv2d``) is split off during the call into its own module with the
      pass-through rule, so the first-layer rule sees the standardised input and the ZBox bounds
      are the image range [0, 1] mapped through the same standardisation.

    Anything else raises ``ValueError`` naming what is not supported: ViTs (LayerNorm, GELU,
    softmax attention: use ``"chefer"``), ConvNeXt, DenseNet (BatchNorm before convolution,
    concatenation), squeeze-excitation gates. ``strict=False`` accepts an unknown container class
    (e.g. your own ``nn.Module`` CNN) whose leaves are all supported; its forward code is then taken
    on trust: a functional residual ``x + y`` there would be treated as a plain gradient.

Rules (``composite=``, zennit's composites)
    ``"epsilon_plus_flat"`` (default; Kohlbrenner et al. 2020's recommendation for CNNs: LRP-z+
    in convolutions, LRP-epsilon in dense layers, the flat rule in the first layer),
    ``"epsilon_gamma_box"`` (gamma rule in convolutions, ZBox in the first layer with the image's
    bounds), ``"epsilon_plus"``, ``"epsilon_alpha2_beta1"``, ``"epsilon_alpha2_beta1_flat"``.

Output relevance
    The relevance put at the output is the target *logit* (zennit's examples use a one-hot 1): the
    maps are then in logit units like integrated gradients', and positive relevance is evidence for
    the target whatever the logit's sign. With ``zero_params="bias"`` (biases excluded from every
    rule) relevance is conserved: each image's input relevance sums to its target logit.

The model is never mutated: canonizers (BatchNorm merge, block and stem rewrites) and rule hooks
are applied inside the call (``workbench.capture.zennit_rules``) and removed in ``finally``; the
state dict, module tree and forward are as before, also after an exception.

Internal API for relevance at units::

    rel = lrp_relevance(model, images, target, layers=["layer3", "layer4.0.conv2"])
    rel.input                    # (B, C, H, W) relevance at the input
    rel.layers["layer3"]         # (B, C', h, w) relevance at that module's *output*
    unit_scores(rel, "layer3")   # (C',) summed over batch and positions: one score per channel

Relevance at a module's output is what the LRP backward pass carries at that tensor (zennit
propagates relevance as the gradient), so it sums over all units to the relevance that flows
through that layer (all of it for a layer every path passes through, e.g. a ResNet stage).
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, NamedTuple, Sequence

import torch
from torch import nn

from ._core import MethodOutput, register_method, select_target

COMPOSITES = ("epsilon_plus_flat", "epsilon_gamma_box", "epsilon_plus", "epsilon_alpha2_beta1",
              "epsilon_alpha2_beta1_flat")

_LEAVES = (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d, nn.AvgPool2d,
           nn.AdaptiveAvgPool2d, nn.Identity, nn.Dropout, nn.Dropout2d, nn.Flatten)


class Relevance(NamedTuple):
    """What :func:`lrp_relevance` returns.

    Attributes:
        input: ``(B, C, H, W)`` relevance at the input.
        layers: ``{name: tensor}`` relevance at each requested module's output (its shape).
        logits: ``(B, K)`` the model's outputs (detached).
        target: ``(B,)`` the explained classes.
    """

    input: torch.Tensor
    layers: dict[str, torch.Tensor]
    logits: torch.Tensor
    target: torch.Tensor


class _Standardize(nn.Module):
    """``(x - mean) / std`` as a module of its own, so the pass-through rule can be attached."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.mean, self.std = mean, std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _require_zennit() -> None:
    try:
        import zennit  # noqa: F401
    except ImportError as e:  # pragma: no cover - zennit is in the dev extras
        raise ImportError("LRP needs zennit: pip install 'workbench[lrp]' (or pip install zennit).") from e


def _timm_classes() -> tuple[type, ...]:
    from timm.layers.adaptive_avgmax_pool import FastAdaptiveAvgPool, SelectAdaptivePool2d
    from timm.models.resnet import BasicBlock, Bottleneck, ResNet

    return ResNet, BasicBlock, Bottleneck, SelectAdaptivePool2d, FastAdaptiveAvgPool


def _tv_classes() -> tuple[type, ...]:
    from torchvision.models import AlexNet, ResNet, VGG
    from torchvision.models.resnet import BasicBlock, Bottleneck

    return ResNet, BasicBlock, Bottleneck, VGG, AlexNet


def _leaves(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if not any(True for _ in m.children())]


def support(model: nn.Module, *, strict: bool = True) -> str:
    """Which canonizers ``model`` needs: ``"timm_resnet"``, ``"torchvision_resnet"`` or ``"sequential"``.

    Raises:
        ValueError: the model has modules zennit has no exact rule for (listed), BatchNorm that
            does not follow a convolution or linear layer, or (``strict``) a container class whose
            forward code LRP cannot see.
    """
    _require_zennit()
    from zennit.layer import Sum

    t_resnet, t_basic, t_bottle, t_pool, t_fast = _timm_classes()
    v_resnet, v_basic, v_bottle, v_vgg, v_alex = _tv_classes()
    leaf_ok = _LEAVES + (t_fast, Sum)
    bad = {type(m).__name__ for _, m in _leaves(model) if not isinstance(m, leaf_ok)}
    bad |= {type(m).__name__ for m in model.modules()  # e.g. timm's BatchNormAct2d (norm + activation)
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and type(m) not in (nn.BatchNorm1d, nn.BatchNorm2d)}
    bad = sorted(bad)
    blocks = [m for m in model.modules() if isinstance(m, (t_basic, t_bottle))]
    gated = sorted({type(m).__name__ for m in blocks if getattr(m, "se", None) is not None})
    if bad or gated:
        what = bad + [f"{g} with squeeze-excitation" for g in gated]
        raise ValueError(
            f"LRP (zennit) has no exact rule for {what} in this {type(model).__name__}. Supported: timm and "
            "torchvision ResNets, VGG-style CNNs (Conv2d, BatchNorm, ReLU, pooling, Dropout, Flatten, Linear). "
            "For vision transformers use method='chefer' (Chefer et al.'s relevance) or integrated_gradients; "
            "for other CNNs integrated_gradients, deeplift or gradcam.")
    last = None
    for name, m in _leaves(model):
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) and not isinstance(last, (nn.Conv2d, nn.Linear)):
            raise ValueError(f"BatchNorm {name!r} does not directly follow a convolution or linear layer, so it "
                             "cannot be merged into one for LRP (pre-activation networks, DenseNet); use "
                             "integrated_gradients or deeplift for this model.")
        if not isinstance(m, (nn.Identity, nn.Dropout, nn.Dropout2d)):
            last = m
    known = (nn.Sequential, t_resnet, t_basic, t_bottle, t_pool, v_resnet, v_basic, v_bottle, v_vgg, v_alex)
    custom = sorted({type(m).__name__ for m in model.modules()
                     if any(True for _ in m.children()) and not isinstance(m, known)})
    if custom and strict:
        raise ValueError(
            f"LRP attaches rules to modules, but the forward code of {custom} may combine tensors functionally "
            "(a residual x + y, a gate x * g), which LRP would treat as a plain gradient. If that code only chains "
            "its submodules (and reshapes), pass strict=False.")
    if isinstance(model, t_resnet) or blocks:
        return "timm_resnet"
    if isinstance(model, v_resnet) or any(isinstance(m, (v_basic, v_bottle)) for m in model.modules()):
        return "torchvision_resnet"
    return "sequential"


# --------------------------------------------------------------------------- canonizers

def _basic_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """timm ``BasicBlock.forward`` with the residual sum as a zennit ``Sum`` module."""
    out = self.aa(self.act1(self.drop_block(self.bn1(self.conv1(x)))))
    out = self.bn2(self.conv2(out))
    return self.act2(_residual(self, x, out))


def _bottleneck_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """timm ``Bottleneck.forward`` with the residual sum as a zennit ``Sum`` module."""
    out = self.act1(self.bn1(self.conv1(x)))
    out = self.aa(self.act2(self.drop_block(self.bn2(self.conv2(out)))))
    out = self.bn3(self.conv3(out))
    return self.act3(_residual(self, x, out))


def _residual(self: nn.Module, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    if self.drop_path is not None:
        out = self.drop_path(out)
    shortcut = self.downsample(x) if self.downsample is not None else x
    return self.canonizer_sum(torch.stack([shortcut, out], dim=-1))


def _canonizers(kind: str) -> list[Any]:
    from zennit.canonizers import AttributeCanonizer, Canonizer, SequentialMergeBatchNorm
    from zennit.layer import Sum
    from zennit.torchvision import ResNetCanonizer

    from ..models.factory import StandardizedConv2d

    class StemCanonizer(Canonizer):
        """Split a ``StandardizedConv2d`` into ``_Standardize`` + a plain Conv2d sharing its parameters."""

        def __init__(self) -> None:
            self.swaps: list[tuple[nn.Module, str, nn.Module]] = []

        def apply(self, root_module: nn.Module) -> list[Any]:
            inst = StemCanonizer()
            for parent in list(root_module.modules()):
                for key, child in list(parent.named_children()):
                    if isinstance(child, StandardizedConv2d):
                        plain = nn.Conv2d(child.in_channels, child.out_channels, child.kernel_size, child.stride,
                                          child.padding, child.dilation, child.groups, child.bias is not None,
                                          child.padding_mode, device="meta")
                        plain.weight = child.weight
                        plain.bias = child.bias
                        setattr(parent, key, nn.Sequential(_Standardize(child.mean, child.std), plain))
                        inst.swaps.append((parent, key, child))
            return [inst]

        def register(self) -> None:  # pragma: no cover - apply does the work
            pass

        def remove(self) -> None:
            for parent, key, child in reversed(self.swaps):
                setattr(parent, key, child)
            self.swaps = []

        def copy(self) -> "StemCanonizer":
            return StemCanonizer()

    def blocks(name: str, module: nn.Module) -> dict[str, Any] | None:
        _, t_basic, t_bottle, _, _ = _timm_classes()
        if isinstance(module, (t_basic, t_bottle)):
            fwd = _bottleneck_forward if isinstance(module, t_bottle) else _basic_forward
            return {"forward": fwd.__get__(module), "canonizer_sum": Sum()}
        return None

    out: list[Any] = [StemCanonizer()]
    if kind == "timm_resnet":
        out += [SequentialMergeBatchNorm(), AttributeCanonizer(blocks)]
    elif kind == "torchvision_resnet":
        out += [ResNetCanonizer()]
    else:
        out += [SequentialMergeBatchNorm()]
    return out


def _bounds(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ZBox bounds: the image range [0, 1] as seen by the first convolution (standardised if it is)."""
    from ..models.factory import StandardizedConv2d

    low, high = torch.zeros_like(images[:1]), torch.ones_like(images[:1])
    first = next((m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))), None)
    if isinstance(first, StandardizedConv2d):
        low, high = (low - first.mean) / first.std, (high - first.mean) / first.std
    return low, high


def make_composite(model: nn.Module, images: torch.Tensor, composite: str = "epsilon_plus_flat", *,
                   epsilon: float = 1e-6, gamma: float = 0.25, zero_params: str | Sequence[str] | None = None,
                   strict: bool = True) -> Any:
    """The zennit composite (rules + canonizers) for ``model``; see the module docstring."""
    from zennit import composites as zc
    from zennit.rules import Norm, Pass

    if composite not in COMPOSITES:
        raise ValueError(f"composite {composite!r} is not one of {list(COMPOSITES)}.")
    kind = support(model, strict=strict)
    _, _, _, _, t_fast = _timm_classes()
    extra = [(_Standardize, Pass()), (t_fast, Norm())]  # zennit maps nn.AdaptiveAvgPool2d to Norm itself
    kw: dict[str, Any] = {"layer_map": extra, "zero_params": zero_params, "canonizers": _canonizers(kind)}
    if composite == "epsilon_gamma_box":
        low, high = _bounds(model, images)
        return zc.EpsilonGammaBox(low=low, high=high, epsilon=epsilon, gamma=gamma, **kw)
    cls = {"epsilon_plus_flat": zc.EpsilonPlusFlat, "epsilon_plus": zc.EpsilonPlus,
           "epsilon_alpha2_beta1": zc.EpsilonAlpha2Beta1,
           "epsilon_alpha2_beta1_flat": zc.EpsilonAlpha2Beta1Flat}[composite]
    return cls(epsilon=epsilon, **kw)


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        yield
    finally:
        for m, flag in modes:
            m.training = flag


def lrp_relevance(model: nn.Module, images: torch.Tensor, target: Any = None, *, layers: Sequence[str] = (),
                  composite: str = "epsilon_plus_flat", epsilon: float = 1e-6, gamma: float = 0.25,
                  zero_params: str | Sequence[str] | None = None, strict: bool = True,
                  input_relevance: bool = True) -> Relevance:
    """LRP relevance at the input and at the outputs of ``layers`` (the internal API; see the module docstring).

    Args:
        model: a supported CNN (see :func:`support`); run in eval mode, mode restored, never mutated.
        images: ``(B, C, H, W)`` in [0, 1] on the model's device and dtype.
        target: None (predicted class), an int or a ``(B,)`` tensor of classes.
        layers: module names (as in ``model.named_modules()``) whose output relevance to return.
        composite, epsilon, gamma, zero_params, strict: the rules (module docstring).
        input_relevance: False skips the propagation below the earliest of ``layers`` (the
            returned ``input`` is then None): pruning scores need only the layers.

    Returns:
        :class:`Relevance`.
    """
    from ..capture import record_outputs, zennit_rules

    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError(f"images must be a (B, C, H, W) tensor; got {getattr(images, 'shape', type(images))}.")
    names = dict(model.named_modules())
    missing = [n for n in layers if n not in names]
    if missing:
        raise ValueError(f"model has no module(s) {missing}; pick names from model.named_modules(), "
                         f"e.g. {[n for n in names if n][:6]}.")
    comp = make_composite(model, images, composite, epsilon=epsilon, gamma=gamma, zero_params=zero_params,
                          strict=strict)
    if not input_relevance and not layers:
        raise ValueError("input_relevance=False needs layers whose relevance to return.")
    x = images.detach().clone().requires_grad_(input_relevance)
    with _eval_mode(model), torch.enable_grad(), zennit_rules(model, comp), \
            record_outputs(model, list(layers)) as rec:  # names resolved after the canonizers' swaps
        logits = model(x)
        t = select_target(logits, None if target is None else torch.as_tensor(target, device=logits.device)
                          .expand(logits.shape[0]).long())
        init = torch.zeros_like(logits).scatter(1, t[:, None], logits.gather(1, t[:, None]))
        acts = [rec[n] for n in layers]
        wrt = [x, *acts] if input_relevance else acts
        grads = torch.autograd.grad(logits, wrt, grad_outputs=init.detach())
    if not input_relevance:
        grads = (None, *grads)
    return Relevance(None if grads[0] is None else grads[0].detach(),
                     {n: g.detach() for n, g in zip(layers, grads[1:])}, logits.detach(), t.detach())


def unit_scores(relevance: Relevance, layer: str, *, absolute: bool = False) -> torch.Tensor:
    """One score per unit of ``layer`` (channel of a conv output, feature of a linear output): the
    relevance summed over the batch and positions, ``(units,)`` (``absolute``: of |relevance|)."""
    r = relevance.layers[layer]
    r = r.abs() if absolute else r
    return r.transpose(0, 1).reshape(r.shape[1], -1).sum(1)


@register_method("lrp", own_target=True)
def lrp(model: nn.Module, images: torch.Tensor, target: torch.Tensor | None, *, composite: str = "epsilon_plus_flat",
        epsilon: float = 1e-6, gamma: float = 0.25, zero_params: str | None = None,
        strict: bool = True) -> MethodOutput:
    """LRP through zennit (module docstring: models, rules, output relevance); map = sum over channels.

    Cost: one forward and one modified backward (each layer's rule re-runs that layer): about
    2-3x a forward+backward. CNNs only; ViTs raise with a pointer to ``"chefer"``.
    """
    rel = lrp_relevance(model, images, target, composite=composite, epsilon=epsilon, gamma=gamma,
                        zero_params=zero_params, strict=strict)
    return MethodOutput(raw=rel.input, target=rel.target, params={"composite": composite})
