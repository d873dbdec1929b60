"""``workbench.data.load``: one entry point for every data source."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Callable, Sequence

from workbench._checks import check_int
from workbench._image import size_pair
from workbench.data._base import ArrayDataset
from workbench.data.transforms import resize_images, resize_masks, to_channels

__all__ = ["load"]


def _valid_forms() -> str:
    from workbench.data.npz import medmnist_names
    return ('"phantom" (the built-in anatomical phantom); "medmnist:<name>" or "medmnist:<name>@<size>" with '
            f"<name> one of {', '.join(medmnist_names())} and size 28/64/128/224; a path to a MedMNIST-layout "
            ".npz file; a path to a folder dataset (images/, optional masks/<structure>/ and labels.csv)")


def _finish(ds: ArrayDataset, size: Any, channels: int | None, transform: Callable | None) -> ArrayDataset:
    """Resize (images bilinear+antialias, masks nearest), convert channels, attach the transform."""
    if size is not None:
        ds.images = resize_images(ds.images, size)
        ds.masks = {k: resize_masks(m, size) for k, m in ds.masks.items()}
    if channels is not None:
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1, 3 or None (keep); got {channels!r}.")
        ds.images = to_channels(ds.images, channels)
    ds.transform = transform
    return ds


def _remember_arguments(fn: Callable) -> Callable:
    """Record the arguments of ``load`` on the dataset it returns (``ds.load_args``, JSON values;
    paths made absolute) so a figure's sidecar can load the same data again."""
    import functools
    import inspect

    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ds = fn(*args, **kwargs)
        bound = sig.bind(*args, **kwargs)
        bound.apply_defaults()
        rec = {k: v for k, v in bound.arguments.items() if k != "options"}
        rec.update(bound.arguments.get("options") or {})
        for key in ("source", "data_dir"):
            v = rec.get(key)
            named = isinstance(v, str) and (v.strip().lower() == "phantom" or v.strip().lower().startswith("medmnist:"))
            if isinstance(v, (str, os.PathLike)) and not (key == "source" and named):
                rec[key] = str(Path(v).expanduser().resolve())
        if rec.get("transform") is not None:
            rec["transform"] = repr(rec["transform"])
        with contextlib.suppress(AttributeError):
            ds.load_args = rec
        return ds

    return wrapper


@_remember_arguments
def load(source: str | os.PathLike, split: str | None = "train", size: int | Sequence[int] | None = None, *,
         n: int | None = None, seed: int = 0, channels: int | None = None, transform: Callable | None = None,
         label_column: str | Sequence[str] | None = "label", data_dir: str | os.PathLike | None = None,
         download: bool = True, lazy: bool | None = None, **options: Any) -> Any:
    """Load a dataset from a source string or path (in memory, or lazily for large folders).

    Args:
        source: one of
            - ``"phantom"``: the built-in anatomical phantom (offline; ``n``, ``seed`` and
              ``**options`` go to ``workbench.data.phantom.load_phantom``; size defaults to 128);
            - ``"medmnist:<name>"`` or ``"medmnist:<name>@<size>"`` (e.g. "medmnist:pneumoniamnist@64"):
              read from a local file (``data_dir``, ``shared_data_path()/medmnist``, ``data/medmnist``)
              without the network, else downloaded by the ``medmnist`` package when ``download``;
              a ``size`` of 28/64/128/224 picks that file, any other size resizes the 28 px file;
            - a path to a MedMNIST-layout ``.npz`` (``{split}_images``, ``{split}_labels``);
            - a path to a folder dataset (see ``workbench.data.folder``), e.g.
              ``load(shared_data_path() / "cxr_anatomy", label_column="finding")``.
        split: "train", "val" or "test" (folders: the ``split`` column's value; None = all rows).
        size: resize images (antialiased bilinear) and masks (nearest) to an int or (H, W) at load time.
        n: number of samples (phantom: generated; other sources: the first n).
        seed: phantom seed.
        channels: 1 or 3 to convert images (1 -> 3 repeats, 3 -> 1 luminance); None keeps them.
        transform: callable applied to every sample and batch (``workbench.data.transforms``).
        label_column: folder datasets: the target column of labels.csv (a list for multilabel,
            None for no labels).
        data_dir: MedMNIST: folder holding / receiving the .npz; phantom: cache folder.
        download: MedMNIST: allow downloading a missing file.
        lazy: folder datasets: True reads images on access (a ``FolderDataset``), False reads them
            all now (an ``ArrayDataset``), None (default) goes lazy above 10,000 images or 1 GiB
            (``workbench.data.folder``). Other sources are always in memory.
        **options: source-specific options (phantom: task, sites, shortcut, cache, progress...;
            .npz/MedMNIST: task, classes; folders: name, concept_columns).

    Returns:
        An in-memory ArrayDataset (images uint8 or float (N, C, H, W), labels, masks, meta), or
        for a large or ``lazy=True`` folder a FolderDataset with the same samples read on access.

    Examples:
        >>> ds = load("phantom", n=8, size=64)                              # doctest: +SKIP
        >>> ds = load("medmnist:breastmnist", split="test")                 # doctest: +SKIP
        >>> ds = load("../shared/data/cxr_anatomy", label_column="finding", size=128)  # doctest: +SKIP
        >>> ds = load("/data/nih_cxr14", lazy=True, size=224)      # 112k images, read in workers  # doctest: +SKIP
    """
    check_int(n, "n", none_ok=True)
    if size is not None:
        size_pair(size, "size")
    is_folder_or_npz = not (isinstance(source, str) and (source == "phantom" or source.startswith("medmnist:")))
    if lazy and not (is_folder_or_npz and Path(str(source)).expanduser().is_dir()):
        raise ValueError(f"lazy=True applies to folder datasets only; {str(source)!r} is loaded into memory "
                         "(leave lazy unset).")
    if label_column != "label" and not is_folder_or_npz:
        raise ValueError(f"label_column applies to folder datasets only; got label_column={label_column!r} "
                         f"for source {source!r}.")
    if isinstance(source, str) and source.strip().lower() == "phantom":
        try:
            from workbench.data.phantom import load_phantom
        except ImportError as e:  # pragma: no cover - the phantom ships with the package
            raise ImportError(f"the phantom source is unavailable ({e}).") from e
        kw = dict(options)
        if data_dir is not None:
            kw["data_dir"] = data_dir
        ds = load_phantom(split=split, n=n, size=size or 128, seed=seed, **kw)
        return _finish(ds, None, channels, transform)
    if isinstance(source, str) and source.strip().lower().startswith("medmnist:"):
        from workbench.data.npz import load_medmnist, parse_medmnist
        _check_options(options, ("task",), source)
        name, file_size, resize = parse_medmnist(source.strip(), size)
        ds = load_medmnist(name, split, file_size, data_dir=data_dir, download=download, n=n,
                           task=options.get("task"), fallback="@" not in source)
        if tuple(ds.images.shape[-2:]) != (file_size, file_size) and resize is None:
            resize = file_size  # a local file of another size stood in for the requested one
        return _finish(ds, resize, channels, transform)
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"source must be a string or a path; got {type(source).__name__}. Valid: {_valid_forms()}.")
    path = Path(source).expanduser()
    if path.is_dir():
        _check_options(options, ("name", "concept_columns"), source)
        from workbench.data.folder import load_folder
        ds = load_folder(path, split, size, label_column=label_column, n=n, channels=channels,
                         name=options.get("name"), lazy=lazy, concept_columns=options.get("concept_columns"))
        ds.transform = transform
        return ds
    if path.suffix.lower() == ".npz":
        if not path.is_file():
            raise FileNotFoundError(f"no such .npz file: {path}.")
        _check_options(options, ("task", "classes", "name"), source)
        from workbench.data.npz import load_npz
        ds = load_npz(path, split, n=n, **options)
        return _finish(ds, size, channels, transform)
    hint = ""
    from workbench.data.npz import medmnist_names
    if str(source).lower() in medmnist_names():
        hint = f' Did you mean "medmnist:{str(source).lower()}"?'
    elif path.is_file():
        hint = f" {path} is a file but not a .npz."
    elif not path.exists() and (os.sep in str(source) or "." in str(source)):
        hint = f" {path} does not exist."
    raise ValueError(f"unknown data source {str(source)!r}.{hint} Valid forms: {_valid_forms()}.")


def _check_options(options: dict, allowed: tuple[str, ...], source: Any) -> None:
    bad = sorted(set(options) - set(allowed))
    if bad:
        raise TypeError(f"unexpected option(s) {bad} for source {str(source)!r}; this source accepts "
                        f"{list(allowed)} besides split, size, n, channels, transform, data_dir, download.")
