"""Machinery shared by the analyses: an SAE bound to a model's layer, run over a dataset in batches."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

from workbench._device import model_device, model_on

from .autoencoders import SAE
from .layers import TokenLayout, forward_to, infer_layout, resolve_layer
from .training import check_finite


@dataclass
class Bound:
    """An SAE, the model and layer it reads, and the token layout (all on one device)."""

    sae: SAE
    model: nn.Module
    layer: str
    layout: TokenLayout
    device: torch.device


def _arch(cfg: Any) -> Any:
    """A model config without what does not change the architecture (where its weights came from)."""
    return {k: v for k, v in cfg.items() if k != "pretrained"} if isinstance(cfg, dict) else cfg


def _describe(fp: dict[str, Any]) -> str:
    cfg = fp.get("model")
    name = cfg.get("name", cfg.get("timm_name")) if isinstance(cfg, dict) else cfg
    return f"{name} with weights {str(fp.get('weights_sha256', ''))[:12]}"


def check_call(model: nn.Module, data: Any, batch_size: int, *, labels: bool = False, name: str = "data") -> Any:
    """The common boundary checks of the analyses (``workbench._checks``): model, non-empty data,
    batch size; ``labels=True`` refuses bare image tensors."""
    from workbench._checks import check_dataset, check_int, check_model

    check_model(model)
    check_int(batch_size, "batch_size")
    if labels and torch.is_tensor(data):
        raise ValueError(f"{name} must carry labels: pass a dataset or an (images, labels) pair, not bare images.")
    return check_dataset(data, name=name)


def bind(sae: SAE, model: nn.Module, *, layer: str | int | None = None, tokens: str | None = None,
         device: str | torch.device | None = None, check_model: bool = True, probe: torch.Tensor | None = None) -> Bound:
    """Check that ``sae`` fits ``model``'s layer and return them bound on one device.

    The layer and token selection default to the SAE's ``source`` (the store it was trained on).
    ``check_model=True`` refuses a model whose weights differ from the ones the store was cached
    from (pass False on purpose, e.g. to apply one dictionary to a fine-tuned model).
    """
    if not isinstance(sae, SAE):
        raise TypeError(f"expected a workbench SAE (workbench.sae.train / load); got {type(sae).__name__}.")
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch model; got {type(model).__name__}.")
    src = sae.source or {}
    src_layer = src.get("layer")
    if layer is None and src_layer is None:
        raise ValueError("this SAE does not record the layer it was trained on (it was trained on a raw tensor); "
                         "pass layer= (e.g. 'blocks.2') and tokens= as when the activations were collected.")
    name = resolve_layer(model, src_layer if layer is None else layer)
    if src_layer is not None and name != src_layer:
        raise ValueError(f"the SAE was trained on layer {src_layer!r} but layer {name!r} was asked for; an SAE only "
                         f"reads the layer it was trained on. Use layer={src_layer!r} or train an SAE on {name!r}.")
    src_model = src.get("model") or {}
    if src_model:
        from workbench.jobs import fingerprint

        here = fingerprint(model)
        if _arch(src_model.get("model")) != _arch(here["model"]):
            raise ValueError(f"the SAE was trained on activations of another architecture ({_describe(src_model)}) "
                             f"than this model ({_describe(here)}); load the model its store was cached from.")
        if check_model and src_model.get("weights_sha256") != here["weights_sha256"]:
            raise ValueError(f"the SAE was trained on activations of another model ({_describe(src_model)}; this "
                             f"model is {_describe(here)}). Load the model its store was cached from, or pass "
                             "check_model=False to apply this dictionary to another model on purpose (e.g. a "
                             "fine-tuned one: workbench.sae.compare_models).")
    run_model, dev = model_on(model, device)
    run_sae = sae if model_device(sae) == dev else copy.deepcopy(sae).to(dev)
    run_sae.eval()
    tokens = tokens or (src.get("layout") or {}).get("tokens", "patch")
    if probe is None:
        cfg = getattr(model, "workbench_config", None) or {}
        size = cfg.get("img_size", [224, 224])
        probe = torch.zeros(1, int(cfg.get("in_chans", 3)), int(size[0]), int(size[1]))
    else:  # the data's own first image: channels and size before the probing forward (workbench._checks)
        from workbench._checks import check_images

        check_images(probe, model, name="the images", value_range=None)
    layout = infer_layout(run_model, forward_to(run_model, probe.to(dev), name), tokens)
    if src.get("layout") and TokenLayout.from_dict(src["layout"]) != layout:
        raise ValueError(f"the SAE was trained on tokens laid out as {src['layout']} but this model's layer {name!r} "
                         f"gives {layout.to_dict()}; use the image size and model of its store.")
    if layout.d != sae.d:
        raise ValueError(f"layer {name!r} has width {layout.d} but the SAE reads d={sae.d}; pick the layer it was "
                         "trained on.")
    return Bound(run_sae, run_model, name, layout, dev)


def first_images(data: Any) -> torch.Tensor:
    """One image of ``data`` as a (1, C, H, W) batch (to probe a layer's layout)."""
    if torch.is_tensor(data):
        return data[:1].float()
    if isinstance(data, (tuple, list)) and data and torch.is_tensor(data[0]):
        return data[0][:1].float()
    if len(data) == 0:
        raise ValueError("the dataset is empty; give at least one image.")
    x = data[0]["image"]
    return (x.float() / 255.0 if x.dtype == torch.uint8 else x.float())[None]


def batches(bound: Bound, data: Any, *, batch_size: int = 64, masks: bool = False,
            attribute: int | str | None = None) -> Iterator[dict[str, Any]]:
    """Dataset batches on the bound device, each with ``acts`` (B, T, d) kept tokens of the layer and
    ``codes`` (B, T, d_sae) their SAE codes; with ``masks=True`` also the structure masks.

    With ``attribute`` (a class index, or "default": class 1 of binary tasks, else 0) the model
    runs to its output with the layer's tokens written as ``decode(codes) + error`` (error held
    fixed, so the output is unchanged) and each batch also carries ``reliance`` (B, d_sae): per
    latent, ``sum over tokens of code x d objective / d code`` where the objective is the target's
    log-probability (its logit for multilabel tasks): attribution patching, as in sparse feature
    circuits (Marks et al. 2024).
    """
    from workbench._train_data import BatchSource, as_source, task_of

    from .layers import splice

    src = as_source(data)
    if len(src) == 0:
        raise ValueError("the dataset is empty; give at least one image.")
    task = task_of(src) if attribute is not None and not torch.is_tensor(data) else "multiclass"
    fields = ("masks",) if masks else ()
    from workbench._checks import check_images

    for b in BatchSource(src, batch_size, bound.device, keep_on_device=False, fields=fields)(shuffle=False):
        check_images(b["image"], bound.model, name="the images")
        if attribute is None:
            acts = bound.layout.select(forward_to(bound.model, b["image"], bound.layer)).float()
            check_finite(acts, f"the activations of layer {bound.layer!r}")
            with torch.no_grad():
                b["acts"], b["codes"] = acts, bound.sae.encode(acts)
            yield b
            continue
        held: dict[str, torch.Tensor] = {}

        def fn(t: torch.Tensor) -> torch.Tensor:
            held["acts"] = t.detach().float()
            codes = bound.sae.encode(held["acts"]).detach().requires_grad_(True)
            x_hat = bound.sae.decode(codes)
            held["codes"] = codes
            return x_hat + (held["acts"] - x_hat).detach()

        was = bound.model.training
        bound.model.eval()
        try:
            with torch.enable_grad(), splice(bound.model, bound.layer, bound.layout, fn):
                logits = bound.model(b["image"]).float()
                t = target_class(task, logits.shape[1], attribute)
                obj = logits[:, t] if task == "multilabel" else logits.log_softmax(-1)[:, t]
                (grad,) = torch.autograd.grad(obj.sum(), held["codes"])
        finally:
            bound.model.train(was)
        b["acts"], b["codes"] = held["acts"], held["codes"].detach()
        b["reliance"] = (b["codes"] * grad).sum(1)
        yield b


def target_class(task: str, num_logits: int, target: int | str) -> int:
    """The class index to attribute: ``"default"`` is class 1 of binary tasks, else class 0."""
    if target == "default":
        return 1 if task == "binary" and num_logits == 2 else 0
    if isinstance(target, bool) or not isinstance(target, int) or not 0 <= target < num_logits:
        raise ValueError(f"target must be a class index in [0, {num_logits - 1}]; got {target!r}.")
    return target
