"""Token activations of a model's layer over a dataset: in memory (``activations``) or on disk (``cache``).
"""
from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import nn

from workbench._device import model_on

from .layers import forward_to, infer_layout, model_identity, resolve_layer
from .training import TensorTokens, check_finite


def dataset_fingerprint(data: Any) -> str:
    """A short hash of a dataset: its length, ids and (in-memory datasets) image bytes; for other
    datasets the first and last images."""
    h = hashlib.sha1()
    if torch.is_tensor(data):
        h.update(str(tuple(data.shape)).encode())
        h.update(data.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]
    h.update(str(len(data)).encode())
    for i in getattr(data, "ids", None) or []:
        h.update(str(i).encode())
    images = getattr(data, "images", None)
    if torch.is_tensor(images):
        h.update(images.detach().cpu().contiguous().numpy().tobytes())
    elif len(data):
        for i in {0, len(data) - 1}:
            h.update(torch.as_tensor(data[i]["image"]).float().numpy().tobytes())
    return h.hexdigest()[:16]


def activations(model: nn.Module, data: Any, *, layer: str | int, tokens: str = "patch", batch_size: int = 64,
                device: str | torch.device | None = None) -> TensorTokens:
    """Token activations of ``layer`` for every image, held in memory (small datasets and tests; use
    :func:`cache` for a store on disk). Rows are image-major: image ``i``'s tokens are rows
    ``i * T ... (i + 1) * T - 1`` with ``T = layout.per_image``.

    Returns:
        A :class:`~workbench.sae.training.TensorTokens` whose ``source`` records the model, layer,
        token layout and dataset (so a trained SAE knows where it belongs).
    """
    from workbench._train_data import BatchSource, as_source

    from ._apply import first_images

    src_data = as_source(data)
    if len(src_data) == 0:
        raise ValueError("the dataset is empty; give at least one image to collect activations from.")
    name = resolve_layer(model, layer)
    run, dev = model_on(model, device)
    layout = infer_layout(run, forward_to(run, first_images(data).to(dev), name), tokens)
    out = []
    for b in BatchSource(src_data, batch_size, dev, keep_on_device=False)(shuffle=False):
        out.append(layout.select(forward_to(run, b["image"], name)).float().cpu())
    x = torch.cat(out).reshape(-1, layout.d)
    check_finite(x, f"the activations of layer {name!r}")
    source = {"model": model_identity(model), "layer": name, "layout": layout.to_dict(),
              "dataset": dataset_fingerprint(data), "n_images": len(src_data)}
    return TensorTokens(x, source=source)
