"""Figures that rebuild from their sidecar: figure recipes, ``draw`` and ``rebuild``.

A *recipe* is a function ``(model, data, **params) -> Figure`` registered under a name; it
computes what it shows (communities, attributions, budgets...) from a model and a dataset and
draws it with a figure function. ``draw(name, model, data, **params)`` runs it and records on
the figure everything needed to draw it again; ``save_figure`` writes that record into the JSON
sidecar; ``rebuild(sidecar)`` loads the same checkpoint and data, checks that they are the ones
recorded (SHA-256 of the checkpoint file; of the dataset's images, labels and masks) and draws
and saves the figure again, in the recorded style. Same inputs and versions give the same pixels.

The record (sidecar key ``"recipe"``, format ``workbench-figure/1``)::

    {"name": "community_overlay", "module": "workbench.viz.overlays",
     "params": {...every parameter, defaults included...}, "seed": 0,
     "model": {"path": "/abs/model.safetensors", "relative": "model.safetensors", "sha256": "..."},
     "data": {"load": {...wb.data.load arguments...}, "sha256": "...", "n": 200},
     "files": {"sae": {"path": ..., "relative": ..., "sha256": ...}}}

``model`` is a dict of such entries (by name) when a recipe takes several models.

Add a recipe for a new figure kind in a few lines, beside its figure function::

    from workbench.viz import recipe

    @recipe("latent_grid", files=("sae",))
    def _latent_grid(model, data, *, sae: str, latent: int = 0, layer: str = "blocks.1", n: int = 8):
        from workbench.sae import load_sae, top_activations
        sae_model = load_sae(sae)
        return latent_grid(top_activations(model, sae_model, data, layer=layer), latent, data, n=n)

Parameters must be JSON values (numbers, strings, lists, dicts, None): the recipe is always called
with the parameters as read back from JSON, at draw and at rebuild alike. Parameters named in
``files=`` are paths whose files are hashed and checked like the checkpoint. ``model=False`` /
``data=False`` for recipes that take no model or no data; ``loader=`` for models that
``workbench.models.load`` cannot rebuild.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import inspect
import json
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from .._registry import Registry

FORMAT = "workbench-figure/1"
#: modules whose import registers the built-in recipes
BUILTIN_MODULES = ("workbench.viz.overlays", "workbench.viz.attribution", "workbench.viz.evaluation",
                   "workbench.viz.gallery", "workbench.viz.training")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A registered figure recipe (see the module docstring)."""

    name: str
    fn: Callable[..., Any]
    model: bool = True
    data: bool = True
    files: tuple[str, ...] = ()
    loader: Callable[[str], Any] | None = None

    def parameters(self) -> dict[str, Any]:
        """{name: default} of the recipe's keyword parameters (``inspect.Parameter.empty`` if none)."""
        skip = int(self.model) + int(self.data)
        params = list(inspect.signature(self.fn).parameters.values())[skip:]
        return {p.name: p.default for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


RECIPES: Registry[Recipe] = Registry("figure recipe")


def recipe(name: str, *, model: bool = True, data: bool = True, files: tuple[str, ...] = (),
           loader: Callable[[str], Any] | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``fn(model, data, **params) -> Figure`` as the rebuildable recipe ``name``.

    Args:
        name: the recipe's name (``draw(name, ...)``); a duplicate raises.
        model: the recipe's first argument is a model (or a dict of models).
        data: its next argument is a dataset made by ``workbench.data.load``.
        files: parameters that name files (e.g. an SAE checkpoint), hashed and checked on rebuild.
        loader: ``path -> model`` for checkpoints ``workbench.models.load`` cannot rebuild.
    """

    def add(fn: Callable[..., Any]) -> Callable[..., Any]:
        RECIPES.register(name, Recipe(name, fn, model, data, tuple(files), loader))
        return fn

    return add


def recipes() -> list[str]:
    """Names of the registered recipes (the built-in ones are imported first)."""
    _import_builtins()
    return RECIPES.names()


def _import_builtins() -> None:
    for mod in BUILTIN_MODULES:
        importlib.import_module(mod)


def _get(name: str, module: str | None = None) -> Recipe:
    _import_builtins()
    if module and name not in RECIPES:
        with contextlib.suppress(ImportError):
            importlib.import_module(module)
    return RECIPES.get(name)


def batch_of(data: Any, indices: Any = None) -> dict[str, Any]:
    """A batch dict (image, label, masks, mask_present...) of ``indices`` (all when None): the helper
    recipes use to turn their ``indices`` parameter into inputs."""
    idx = list(range(len(data))) if indices is None else [int(i) for i in indices]
    if hasattr(data, "batch"):
        return data.batch(idx)
    from workbench.data._base import collate

    return collate([data[i] for i in idx])


# ------------------------------------------------------------------------------------------ hashes

_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file (cached by path, size and modification time)."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _FILE_HASHES:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _FILE_HASHES[key] = h.hexdigest()
    return _FILE_HASHES[key]


def data_sha256(data: Any) -> str:
    """SHA-256 of a dataset's contents: images, labels and masks of an in-memory dataset; the ids
    and length of any other (a lazy folder is not read whole)."""
    import torch

    h = hashlib.sha256()

    def add(t: Any) -> None:
        t = torch.as_tensor(t).detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())

    if torch.is_tensor(getattr(data, "images", None)):
        add(data.images)
        if getattr(data, "labels", None) is not None:
            add(data.labels)
        for k in sorted(getattr(data, "masks", {}) or {}):
            h.update(k.encode())
            add(data.masks[k])
    else:
        from workbench.jobs import fingerprint

        h.update(json.dumps(fingerprint(data), sort_keys=True).encode())
    return h.hexdigest()


def _file_entry(path: str | os.PathLike) -> dict[str, Any]:
    p = Path(path).expanduser().resolve()
    return {"path": str(p), "sha256": file_sha256(p)}


# --------------------------------------------------------------------------------------- the record


def _json_params(name: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` as read back from JSON (tuples and ranges become lists); refuses other values."""
    def plain(x: Any) -> Any:
        if isinstance(x, range):
            return list(x)
        if hasattr(x, "tolist") and not isinstance(x, (str, bytes)) and getattr(x, "ndim", 1) <= 1 \
                and getattr(x, "numel", lambda: getattr(x, "size", 0))() <= 10_000:
            return x.tolist()  # a small index tensor / array
        if isinstance(x, Mapping):
            return {str(k): plain(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        return x

    out = {}
    for k, v in params.items():
        try:
            out[k] = json.loads(json.dumps(plain(v)))
        except (TypeError, ValueError):
            raise TypeError(f"parameter {k!r} of figure recipe {name!r} is a {type(v).__name__}; a rebuildable "
                            "figure's parameters must be JSON values (numbers, strings, lists, dicts, None): "
                            "pass indices or names rather than tensors or objects.") from None
    return out


def _bind(r: Recipe, params: Mapping[str, Any]) -> dict[str, Any]:
    valid = r.parameters()
    unknown = [k for k in params if k not in valid]
    if unknown:
        listing = ", ".join(f"{k}={v!r}" if v is not inspect.Parameter.empty else k for k, v in valid.items())
        raise TypeError(f"figure recipe {r.name!r} has no parameter(s) {unknown}; its parameters are: {listing}.")
    missing = [k for k, v in valid.items() if v is inspect.Parameter.empty and k not in params]
    if missing:
        raise TypeError(f"figure recipe {r.name!r} needs parameter(s) {missing}.")
    return {**{k: v for k, v in valid.items() if v is not inspect.Parameter.empty}, **params}


def _model_entry(model: Any, checkpoint: Any, recipe_name: str) -> dict[str, Any] | None:
    from workbench.models import saved_checkpoint

    path = checkpoint if checkpoint is not None else saved_checkpoint(model)
    if path is None:
        warnings.warn(f"figure {recipe_name!r}: its model was not saved (or was trained after saving), so the "
                      "sidecar cannot rebuild it; save the model with wb.models.save(model, path) before drawing.",
                      stacklevel=4)
        return None
    from workbench.models import checkpoint_paths

    return _file_entry(checkpoint_paths(path)[0])


def _load_model(r: Recipe, entry: Mapping[str, Any]) -> Any:
    if r.loader is not None:
        return r.loader(entry["path"])
    from workbench.models import load

    return load(entry["path"])


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch and numpy for the body and restore both generators afterwards."""
    import numpy as np
    import torch

    state = np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        np.random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(state)


def draw(name: str, model: Any = None, data: Any = None, *, checkpoint: Any = None, seed: int = 0,
         **params: Any) -> Any:
    """Draw the figure of recipe ``name`` and record how (``save_figure`` writes it to the sidecar).

    Args:
        name: a recipe (``workbench.viz.recipes()``).
        model: a model, a checkpoint path, or a dict {name: model or path} for recipes comparing
            several; its checkpoint is the file it was last saved to or loaded from (its weights
            must still equal the file's) or ``checkpoint``.
        data: a dataset from ``workbench.data.load`` (its arguments are recorded).
        checkpoint: the model's checkpoint path when it was not saved or loaded in this session.
        seed: seeds torch and numpy while the recipe runs (restored afterwards), and is the
            recipe's own ``seed`` parameter where it has one.
        **params: the recipe's parameters (JSON values).

    Returns:
        The Figure, with ``fig.workbench_record``.
    """
    r = _get(name)
    if r.model and model is None:
        raise TypeError(f"figure recipe {name!r} needs a model (or a checkpoint path).")
    if r.data and data is None:
        raise TypeError(f"figure recipe {name!r} needs data: a dataset from workbench.data.load(...).")
    if "seed" in r.parameters():  # one seed: the recipe's own and the generators'
        params = {**params, "seed": seed}
    bound = _json_params(name, _bind(r, params))
    with _seeded(int(seed)):  # loading a model from a path draws from the generators too
        fig, record = _draw(r, model, data, checkpoint, int(seed), bound)
    fig.workbench_record = record
    return fig


def _draw(r: Recipe, model: Any, data: Any, checkpoint: Any, seed: int, bound: dict[str, Any]) -> tuple[Any, dict]:
    name = r.name
    record: dict[str, Any] = {"name": name, "module": r.fn.__module__, "params": bound, "seed": seed}
    args = []
    if r.model:
        models = dict(model) if isinstance(model, Mapping) else {"": model}
        entries, loaded = {}, {}
        for key, m in models.items():
            ck = checkpoint.get(key) if isinstance(checkpoint, Mapping) else checkpoint
            if isinstance(m, (str, os.PathLike)):
                ck, m = m, _load_model(r, {"path": str(m)})
            entries[key], loaded[key] = _model_entry(m, ck, name), m
        record["model"] = entries[""] if list(entries) == [""] else entries
        args.append(loaded[""] if list(loaded) == [""] else loaded)
    if r.data:
        load_args = getattr(data, "load_args", None)
        if load_args is None:
            warnings.warn(f"figure {name!r}: the data were not made by workbench.data.load, so the sidecar cannot "
                          "load them again to rebuild the figure.", stacklevel=2)
        record["data"] = {"load": load_args, "sha256": data_sha256(data), "n": len(data)}
        args.append(data)
    record["files"] = {k: _file_entry(bound[k]) for k in r.files if bound.get(k) is not None}
    return r.fn(*args, **bound), record


def with_relative(record: Mapping[str, Any], base: Path) -> dict[str, Any]:
    """``record`` with each recorded file's path also relative to ``base`` (the sidecar's folder),
    so a folder moved together with its checkpoint still rebuilds."""
    def rel(entry: Any) -> Any:
        if isinstance(entry, dict) and "sha256" in entry and "path" in entry:
            return {**entry, "relative": os.path.relpath(entry["path"], base.resolve())}
        if isinstance(entry, dict):
            return {k: rel(v) for k, v in entry.items()}
        return entry

    return {**record, "model": rel(record.get("model")), "files": rel(record.get("files") or {})}


# ---------------------------------------------------------------------------------------- rebuild


def _resolve(entry: Mapping[str, Any], base: Path, what: str, override: Any = None) -> Path:
    """The recorded file (beside the sidecar first, then its absolute path), its hash checked."""
    if override is not None:
        candidates = [Path(override).expanduser()]
        if candidates[0].suffix != ".safetensors" and what == "checkpoint":
            candidates.append(candidates[0].with_name(candidates[0].name + ".safetensors"))
    else:
        candidates = [base / entry["relative"]] if entry.get("relative") else []
        candidates.append(Path(entry["path"]))
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise FileNotFoundError(f"the {what} this figure was drawn from is missing: looked for "
                                f"{' and '.join(str(p) for p in candidates)}. Restore it, or pass its new place "
                                f"(CLI: --checkpoint PATH) if it moved.")
    now = file_sha256(path)
    if now != entry["sha256"]:
        raise ValueError(f"the {what} {path} differs from the one this figure was drawn from (SHA-256 "
                         f"{now[:12]}... now, {entry['sha256'][:12]}... recorded): it was retrained or replaced. "
                         "Rebuilding would draw another figure; restore the original file or draw anew.")
    return path


def read_sidecar(path: str | os.PathLike) -> dict[str, Any]:
    """A figure's sidecar JSON, checked to be a rebuildable record of this format."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no sidecar at {path}; pass the .json written beside a figure by save_figure.")
    try:
        side = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not a figure sidecar (not valid JSON: {e}).") from e
    fmt = side.get("format") if isinstance(side, dict) else None
    if fmt is None:
        raise ValueError(f"{path} was written by an older workbench that did not record how to draw the figure "
                         f"(no 'format'; this version writes {FORMAT}), so it cannot be rebuilt. Draw it again "
                         "with wb.viz.draw(recipe, model, data, ...) and save_figure to get a rebuildable sidecar.")
    if fmt != FORMAT:
        raise ValueError(f"{path} has sidecar format {fmt!r}; this workbench reads {FORMAT!r}. Use the workbench "
                         f"version recorded in it ({side.get('versions', {}).get('workbench', 'unknown')}).")
    if not side.get("recipe"):
        raise ValueError(f"{path} records a figure saved from a Figure object, not drawn from a recipe, so it "
                         "cannot be rebuilt: draw it with wb.viz.draw(recipe, model, data, ...) "
                         f"(recipes: {', '.join(recipes())}).")
    return side


def rebuild(sidecar: str | os.PathLike, out: str | os.PathLike | None = None, *,
            checkpoint: str | os.PathLike | None = None) -> list[Path]:
    """Draw a saved figure again from its sidecar and save it.

    Args:
        sidecar: the ``.json`` written by ``save_figure`` for a figure made with :func:`draw`.
        out: where to write (a path stem, or a folder to write under the original name); None
            overwrites the original files.
        checkpoint: the model checkpoint's new path if it moved (its hash must still match).

    Returns:
        The written paths (figures, then the new sidecar).

    Raises:
        FileNotFoundError: the checkpoint or a recorded file is missing.
        ValueError: the sidecar is of an older format or records no recipe; the checkpoint, a
            file or the data differ from the record.
    """
    from ._export import save_figure
    from ._style import style

    sidecar = Path(sidecar)
    side = read_sidecar(sidecar)
    rec = side["recipe"]
    r = _get(rec["name"], rec.get("module"))
    base = sidecar.parent
    args = []
    if r.model:
        entry = rec.get("model")
        entries = {"": entry} if entry is None or "sha256" in entry else dict(entry)
        unsaved = [k or "its model" for k, e in entries.items() if e is None]
        if unsaved:
            raise ValueError(f"{sidecar} was drawn from {', '.join(unsaved)} without a saved checkpoint, so it "
                             "cannot be rebuilt; save the model (wb.models.save) and draw the figure again.")
        loaded = {k: _load_model(r, {"path": str(_resolve(e, base, f"checkpoint {k!r}" if k else "checkpoint",
                                                          None if k else checkpoint))})
                  for k, e in entries.items()}
        args.append(loaded[""] if list(loaded) == [""] else loaded)
    if r.data:
        data_rec = rec.get("data") or {}
        if not data_rec.get("load"):
            raise ValueError(f"{sidecar} was drawn from data not made by workbench.data.load, so they cannot be "
                             "loaded again; draw it from wb.data.load(...) data.")
        from workbench.data import load

        data = load(**data_rec["load"])
        now = data_sha256(data)
        if now != data_rec["sha256"]:
            raise ValueError(f"the data loaded with {data_rec['load']} differ from those the figure was drawn from "
                             f"(SHA-256 {now[:12]}... now, {data_rec['sha256'][:12]}... recorded; {len(data)} vs "
                             f"{data_rec.get('n')} samples): the files or the generator changed. Rebuilding "
                             "would draw another figure.")
        args.append(data)
    for k, entry in (rec.get("files") or {}).items():
        _resolve(entry, base, f"file {k!r}")
    _warn_versions(side.get("versions") or {}, sidecar)
    st = side.get("style") or {"name": "notebook"}
    kw = {k: st.get(k) for k in ("columns", "width", "palette") if st.get(k) is not None}
    with style(st["name"], **kw), _seeded(int(rec.get("seed", 0))):
        fig = r.fn(*args, **rec["params"])
    fig.workbench_record = rec
    target = sidecar.with_suffix("")
    if out is not None:
        target = Path(out) / sidecar.stem if Path(out).is_dir() else Path(out)
    try:
        return save_figure(fig, target, formats=side.get("formats") or [Path(f).suffix[1:] for f in side["files"]],
                           params=side.get("params"), dpi=side.get("dpi"))
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


def _warn_versions(recorded: Mapping[str, str], sidecar: Path) -> None:
    from ._export import versions

    now = versions()
    differ = {k: (v, now.get(k)) for k, v in recorded.items() if k in now and now[k] != v}
    if differ:
        what = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in differ.items())
        warnings.warn(f"{sidecar.name} was drawn with other package versions ({what}); the figure may differ "
                      "in small ways.", stacklevel=3)
