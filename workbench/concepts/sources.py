"""Concept sources behind one adapter: where the concepts of a concept model come from.

Every source has ``names`` (the K concepts), ``scores(images) -> (B, K)`` (higher = more present) and
``annotate(dataset) -> dataset`` (a copy whose ``concepts`` are the source's values in [0, 1] and
whose ``concept_names`` are ``names``), so that ``wb.concepts.create(backbone, concepts=source, ...)``
and ``wb.fit(cbm, source.annotate(train))`` train a CBM on any of them. Registered kinds
(``SOURCES.names()``; ``concept_source(kind, ...)`` builds one):

- ``"labels"``: the concept labels a dataset carries (the phantom's five findings; a folder dataset's
  0/1 columns loaded with ``concept_columns=``); missing labels stay NaN (masked out of the loss).
- ``"cav"``: CAV probes at a layer of a model (``learn_cavs``; from example images, or from masks of
  a structure); ``scores`` are the probes' probabilities.
- ``"text"``: text concepts scored by a CLIP-style model the user supplies (open_clip's
  ``encode_image``/``encode_text`` and its tokenizer; the ``clip`` extra), as in label-free CBMs
  (Oikarinen et al. 2023; Yan et al. 2023): ``scores`` are cosine similarities between the image and
  each concept's prompt embedding (prompts averaged); ``annotate`` turns them into soft labels by
  standardising each concept over the dataset and a logistic squash (``sigmoid(z / temperature)``).
- ``"sae"``: latents of a sparse autoencoder on a model's layer (``workbench.sae``; label-free
  concepts as in Mammo-SAE): ``scores`` are the chosen latents' activations pooled over the image's
  tokens (``wb.sae.latents``); ``annotate`` scales each latent by its 99th percentile over the dataset
  (clipped to [0, 1]), so a latent that fires as strongly as it usually does at its peak reads 1.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch

from workbench._registry import Registry

from ._validate import check_images

SOURCES: Registry[Any] = Registry("concept source")


def _array_dataset(data: Any, what: str) -> Any:
    from workbench.data._base import ArrayDataset

    if not isinstance(data, ArrayDataset):
        raise TypeError(f"{what} needs an in-memory dataset (workbench.data.load(...)); got {type(data).__name__}.")
    return data


def with_concepts(data: Any, concepts: torch.Tensor, names: Sequence[str]) -> Any:
    """A copy of an in-memory dataset whose concepts are ``concepts`` (N, K) named ``names``."""
    from workbench.data._base import ArrayDataset

    ds = _array_dataset(data, "with_concepts")
    return ArrayDataset(ds.images, ds.labels, classes=ds.classes, task=ds.task, masks=ds.masks,
                        mask_present=ds.mask_present, concepts=torch.as_tensor(concepts, dtype=torch.float32),
                        concept_names=tuple(names), meta=ds.meta, ids=ds.ids, transform=ds.transform, name=ds.name)


def select_concepts(data: Any, names: Sequence[str]) -> Any:
    """A copy of a dataset with only the concepts ``names``, in that order (what a CBM with these
    concepts trains on).

    Raises:
        ValueError: the dataset has no concept labels, or lacks some of ``names`` (the valid ones are listed).
    """
    have = tuple(getattr(data, "concept_names", ()) or ())
    if getattr(data, "concepts", None) is None or not have:
        raise ValueError(f"the dataset {getattr(data, 'name', '')!r} has no concept labels; load one with concepts (the "
                         "phantom, or a folder dataset with concept_columns=[...]).")
    missing = [n for n in names if n not in have]
    if missing:
        raise ValueError(f"unknown concept(s) {missing}; the dataset's concepts are {list(have)}.")
    if tuple(names) == have:
        return data
    ds = _array_dataset(data, "select_concepts (to reorder or drop concepts)")
    return with_concepts(ds, ds.concepts[:, [have.index(n) for n in names]], names)


@SOURCES.register("labels")
class LabelConcepts:
    """Concept labels of a dataset (``names``: all of its concepts by default)."""

    kind = "labels"

    def __init__(self, data: Any, names: Sequence[str] | None = None) -> None:
        have = tuple(getattr(data, "concept_names", ()) or ())
        if not have:
            raise ValueError("the dataset has no concept labels; use the phantom or a folder dataset loaded with "
                             "concept_columns=[...].")
        self.names = tuple(names) if names is not None else have
        select_concepts(data, self.names)  # validates the names

    def scores(self, images: Any) -> torch.Tensor:
        """The labels of a batch dict (labels are not predicted from pixels: pass ``dataset.batch(...)``)."""
        if not isinstance(images, Mapping) or images.get("concepts") is None:
            raise TypeError("label concepts are read from data, not computed from pixels: pass a batch dict "
                            "(dataset.batch(indices)) or use annotate(dataset).")
        return images["concepts"]

    def annotate(self, data: Any) -> Any:
        return select_concepts(data, self.names)


@SOURCES.register("cav")
class CAVConcepts:
    """Concepts scored by CAV probes (``learn_cavs``) at a layer of ``model``."""

    kind = "cav"

    def __init__(self, model: torch.nn.Module, cavs: Any) -> None:
        if getattr(cavs, "pool", None) == "mask":
            raise ValueError("CAVs learned from structure masks score masked regions, not whole images; learn the "
                             "CAVs from example images (pool='mean' or 'flatten') to score images.")
        self.model, self.cavs, self.names = model, cavs, tuple(cavs.names)

    def scores(self, images: Any, *, batch_size: int = 64) -> torch.Tensor:
        return self.cavs.scores(self.model, check_images(images), batch_size=batch_size)

    def annotate(self, data: Any, *, batch_size: int = 64) -> Any:
        ds = _array_dataset(data, "annotate")
        return with_concepts(ds, self.scores(ds.batch()["image"], batch_size=batch_size), self.names)


@SOURCES.register("text")
class TextConcepts:
    """Text concepts scored by a CLIP-style model (e.g. open_clip's), supplied by the user.

    Args:
        model: has ``encode_image(x)`` and ``encode_text(tokens)`` (open_clip's ``CLIP``); not changed.
        tokenizer: ``list[str] -> tokens`` (e.g. ``open_clip.get_tokenizer(name)``).
        prompts: ``{concept: prompt or [prompts]}`` (prompt embeddings of a concept are averaged).
        image_size: the model's input side (default ``model.visual.image_size``).
        mean, std: the model's input normalisation (default open_clip's OpenAI constants).
        temperature: the squash of ``annotate``.
    """

    kind = "text"

    def __init__(self, model: torch.nn.Module, tokenizer: Callable[[list[str]], Any],
                 prompts: Mapping[str, str | Sequence[str]], *, image_size: int | None = None,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 temperature: float = 1.0) -> None:
        if not hasattr(model, "encode_image") or not hasattr(model, "encode_text"):
            raise TypeError(f"text concepts need a CLIP-style model with encode_image and encode_text (open_clip); "
                            f"got {type(model).__name__}.")
        if not isinstance(prompts, Mapping) or not prompts:
            raise ValueError("prompts must be a non-empty dict {concept: prompt or list of prompts}.")
        self.model, self.tokenizer = model, tokenizer
        self.names = tuple(str(k) for k in prompts)
        self.prompts = {k: [v] if isinstance(v, str) else list(v) for k, v in prompts.items()}
        if any(not p for p in self.prompts.values()):
            raise ValueError("every concept needs at least one prompt.")
        size = image_size or getattr(getattr(model, "visual", None), "image_size", None)
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size) if size else 224
        if mean is None or std is None:
            try:
                from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
            except ImportError:  # pragma: no cover - the clip extra is installed in dev
                OPENAI_DATASET_MEAN, OPENAI_DATASET_STD = (0.481, 0.458, 0.408), (0.269, 0.261, 0.276)
            mean, std = mean or OPENAI_DATASET_MEAN, std or OPENAI_DATASET_STD
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0; got {temperature!r}.")
        self.temperature = float(temperature)
        self._text: torch.Tensor | None = None

    def _device(self) -> torch.device:
        from workbench._device import model_device

        return model_device(self.model)

    @torch.no_grad()
    def text_embeddings(self) -> torch.Tensor:
        """(K, E) unit prompt embeddings (the mean of each concept's prompts, renormalised)."""
        if self._text is None:
            was = self.model.training
            self.model.eval()
            try:
                embs = []
                for k in self.names:
                    t = self.tokenizer(self.prompts[k])
                    e = self.model.encode_text(t.to(self._device()) if torch.is_tensor(t) else t).float()
                    embs.append(torch.nn.functional.normalize(torch.nn.functional.normalize(e, dim=-1).mean(0), dim=0))
                self._text = torch.stack(embs).cpu()
            finally:
                self.model.train(was)
        return self._text

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            x = torch.nn.functional.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                                                align_corners=False, antialias=True)
        return (x - self.mean) / self.std

    @torch.no_grad()
    def scores(self, images: Any, *, batch_size: int = 64) -> torch.Tensor:
        """(B, K) cosine similarities between each image and each concept's prompts."""
        x = check_images(images)
        text = self.text_embeddings()
        out = []
        was = self.model.training
        self.model.eval()
        try:
            for s in range(0, len(x), batch_size):
                e = self.model.encode_image(self._prepare(x[s:s + batch_size]).to(self._device())).float().cpu()
                out.append(torch.nn.functional.normalize(e, dim=-1) @ text.T)
        finally:
            self.model.train(was)
        return torch.cat(out)

    def annotate(self, data: Any, *, batch_size: int = 64) -> Any:
        """Soft concept labels: per concept, similarities standardised over the dataset, then squashed."""
        ds = _array_dataset(data, "annotate")
        s = self.scores(ds.batch()["image"], batch_size=batch_size)
        z = (s - s.mean(0)) / s.std(0).clamp(min=1e-8)
        return with_concepts(ds, torch.sigmoid(z / self.temperature), self.names)


@SOURCES.register("sae")
class SAEConcepts:
    """Latents of a sparse autoencoder (``workbench.sae``) on a model's layer as concepts.

    Args:
        sae: a trained SAE (``wb.sae.train`` / ``wb.sae.load``).
        model: the model whose layer the SAE reads; not changed.
        latents: the latent indices to use as concepts (e.g. from ``wb.sae.atlas(...).best_per_structure()``
            or ``wb.sae.class_latents``).
        names: a name per latent (default ``"latent_<i>"``).
        pool: how tokens are pooled per image ("mean", "max", "sum"; ``wb.sae.latents``).
        layer: the SAE's layer when it does not record it.
        check_model: refuse a model other than the one the SAE's store came from (``wb.sae.latents``).
    """

    kind = "sae"

    def __init__(self, sae: Any, model: torch.nn.Module, latents: Sequence[int], *,
                 names: Sequence[str] | None = None, pool: str = "mean", layer: str | None = None,
                 check_model: bool = True) -> None:
        idx = [int(i) for i in latents]
        d_sae = int(getattr(sae, "d_sae", 0) or sae.dictionary.shape[0])
        if not idx:
            raise ValueError("latents is empty; pick the SAE latents to use as concepts (e.g. the best latent per "
                             "structure of wb.sae.atlas).")
        bad = [i for i in idx if not 0 <= i < d_sae]
        if bad:
            raise ValueError(f"latent indices {bad} are out of range for an SAE with {d_sae} latents.")
        if names is not None and len(names) != len(idx):
            raise ValueError(f"names has {len(names)} entries for {len(idx)} latents; give one name per latent.")
        self.sae, self.model, self.latents, self.pool, self.layer = sae, model, idx, pool, layer
        self.check_model = check_model
        self.names = tuple(names) if names is not None else tuple(f"latent_{i}" for i in idx)

    def _pooled(self, data: Any, batch_size: int) -> torch.Tensor:
        from workbench.sae import latents

        lat = latents(self.sae, self.model, data, pool=self.pool, layer=self.layer, batch_size=batch_size,
                      check_model=self.check_model)
        return lat.pooled[:, self.latents].float()

    def scores(self, images: Any, *, batch_size: int = 64) -> torch.Tensor:
        """(B, K) the latents' pooled activations."""
        return self._pooled(check_images(images), batch_size)

    def annotate(self, data: Any, *, batch_size: int = 64) -> Any:
        """Soft concept labels: each latent divided by its 99th percentile over ``data``, clipped to [0, 1]."""
        ds = _array_dataset(data, "annotate")
        a = self._pooled(ds, batch_size)
        top = torch.quantile(a, 0.99, dim=0).clamp(min=1e-8)
        return with_concepts(ds, (a / top).clamp(0, 1), self.names)


def concept_source(kind: str, *args: Any, **kw: Any) -> Any:
    """Build a concept source of a registered kind (``SOURCES.names()``), e.g.
    ``concept_source("labels", train)``, ``concept_source("cav", model, cavs)``,
    ``concept_source("text", clip_model, tokenizer, {"effusion": "a chest x-ray with pleural effusion"})``,
    ``concept_source("sae", sae, model, latents=[3, 17])``."""
    return SOURCES.get(kind)(*args, **kw)
