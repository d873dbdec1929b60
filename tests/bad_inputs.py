"""A table of bad (and borderline-valid) inputs over every public verb, and how to score them.

One table drives both ``tests/test_bad_inputs.py`` (one assertion per case) and
``benchmarks/bench_validation.py`` (counts per outcome, before and after the checks). A new public
verb must get at least one case here: ``tests/test_bad_inputs.py`` enumerates the verbs
(:func:`public_verbs`) and fails for any verb without a case (or an entry in ``EXEMPT`` saying why
it takes no user data).

How to add a case: append ``Case(verb, name, call, says=...)`` where ``verb`` is the public dotted
name (``"sae.train"``, ``"concepts.fit"``, ``"cli.explain"``), ``call(ctx)`` calls it once with one
bad input (``ctx`` holds tiny models, a phantom batch and temporary paths: see :class:`Ctx`),
``says`` is a regular expression the error message must match (what a clear message names), and
``expect`` is ``"error"`` (the default), ``"warn"`` (a matching warning is enough) or ``"ok"`` (a
borderline input that is valid as documented and must run).

Outcomes (rules, applied by :func:`classify`):

- **clear**: the call raised ``ValueError``, ``TypeError``, ``LookupError`` or one of the
  file-system errors ``FileNotFoundError``/``FileExistsError``/``PermissionError``/
  ``NotADirectoryError``/``IsADirectoryError`` (or, for ``expect="warn"``, warned) by an explicit
  ``raise`` statement of workbench's own code (the innermost frame of the traceback: not torch,
  timm or numpy, nor a torch error surfacing in a workbench line), the message is not a raw OS
  error (``[Errno N] ...``) and it matches ``says``. For a CLI case: a non-zero exit code
  with one line on stderr (``workbench <cmd>: error: ...``) matching ``says``, no traceback.
- **unclear**: any other exception (a torch/timm/OS error, an AssertionError, a message that does
  not name the problem), or a CLI case that printed a traceback.
- **silent**: a bad input accepted without an error (or, for ``expect="warn"``, without a
  matching warning): a silently wrong result.
- **fine**: a borderline input that is valid as documented (``expect="ok"``) ran.
- **false alarm**: such a valid input was rejected.
"""
from __future__ import annotations

import contextlib
import copy
import importlib
import inspect
import io
import re
import shutil
import sys
import tempfile
import traceback
import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

USER_ERRORS = (ValueError, TypeError, LookupError, FileNotFoundError, FileExistsError, PermissionError,
               NotADirectoryError, IsADirectoryError)
OUTCOMES = ("clear", "unclear", "silent", "fine", "false alarm")

# Namespaces whose ``__all__`` functions are public verbs; those not on main yet are skipped.
NAMESPACES = ("data", "models", "train", "attention", "attribution", "evaluation", "viz", "widgets",
              "concepts", "sae", "pruning", "jobs")
# Public classes whose constructor takes user data (a boundary like a verb).
CLASS_VERBS = ("data.ArrayDataset", "jobs.Job")
# Public functions that take no user data, or are plumbing rather than verbs: why each is exempt.
EXEMPT = {
    "resolve_device": "covered through every verb's device= argument and the CLI cases",
    "data.shared_data_path": "no arguments",
    "data.default_data_dir": "no arguments",
    "data.collate": "internal collate_fn for DataLoaders (samples come from workbench datasets)",
    "models.list_models": "no user data",
    "models.default_patch_size": "a lookup used by create",
    "models.checkpoint_paths": "path arithmetic; save/load cases cover checkpoints",
    "models.create_from_config": "load's rebuild step; corrupt configs are covered by models.load cases",
    "viz.versions": "no arguments",
    "viz.colours": "a palette lookup",
    "viz.structure_colours": "a palette lookup",
    "attribution.register_method": "a decorator for developers",
    "attribution.select_target": "internal step of attribute (covered by its target cases)",
    "attribution.default_window": "a default lookup for occlusion",
    "train.class_weights": "internal step of fit (covered by fit's class_weights case)",
    "sae.register_kind": "a decorator for developers",
    "pruning.register_criterion": "a decorator for developers",
    "data.without_masks": "plumbing of fit / predict / explain (their data cases cover it)",
    "viz.recipe": "a decorator for developers (registers a figure recipe)",
    "viz.recipes": "no arguments",
    "jobs.distributed": "reads torchrun's environment; no user data",
    "jobs.barrier": "a torch.distributed collective; no user data",
    "jobs.broadcast": "a torch.distributed collective of any picklable object",
    "jobs.all_gather": "a torch.distributed collective of any picklable object",
    "jobs.all_reduce_sum": "a torch.distributed collective over numbers",
}


@dataclass(frozen=True)
class Case:
    """One input to one verb. See the module docstring."""

    verb: str
    name: str
    call: Callable[["Ctx"], Any]
    says: str = ""
    expect: str = "error"
    issue: bool = False  # listed in issue 17

    @property
    def id(self) -> str:
        return f"{self.verb}:{self.name}"


class Ctx:
    """Tiny models, data and paths shared by the cases (built lazily, once)."""

    size = 32

    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="wb_bad_inputs_"))

    def close(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    # ---------------------------------------------------------------- models
    @cached_property
    def vit(self) -> torch.nn.Module:
        import workbench as wb

        torch.manual_seed(0)
        return wb.models.create("vit_tiny", num_classes=2, img_size=self.size, in_chans=1, patch_size=8,
                                depth=2, embed_dim=32, num_heads=2).eval()

    @cached_property
    def cnn(self) -> torch.nn.Module:
        import workbench as wb

        torch.manual_seed(0)
        return wb.models.create("test_resnet", num_classes=2, img_size=self.size, in_chans=1).eval()

    @cached_property
    def cnn3(self) -> torch.nn.Module:
        """Three outputs, for a two-class dataset."""
        import workbench as wb

        return wb.models.create("test_resnet", num_classes=3, img_size=self.size, in_chans=1).eval()

    def fresh(self, which: str = "cnn") -> torch.nn.Module:
        """A copy for verbs that train in place."""
        return copy.deepcopy(getattr(self, which))

    # ---------------------------------------------------------------- data
    @cached_property
    def ds(self) -> Any:
        import workbench as wb

        return wb.data.load("phantom", n=16, size=self.size, cache=False, progress=False)

    @cached_property
    def batch(self) -> dict[str, Any]:
        return self.ds.batch(range(4))

    @property
    def x(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(0)
        return torch.rand(4, 1, self.size, self.size, generator=g)

    @property
    def y(self) -> torch.Tensor:
        return torch.tensor([0, 1, 0, 1])

    def xs(self, kind: str) -> Any:
        """Bad (or borderline) image batches, (4, 1, 32, 32) unless the kind says otherwise."""
        x = self.x
        if kind == "x255":
            return x * 255
        if kind == "nan":
            x[1, 0, 3, 4] = float("nan")
            return x
        if kind == "inf":
            x[2, 0, 5, 5] = float("inf")
            return x
        if kind == "chans3":
            return x.repeat(1, 3, 1, 1)
        if kind == "size48":
            return torch.rand(4, 1, 48, 48)
        if kind == "int64":
            return (x * 255).long()
        if kind == "list":
            return [img for img in x]
        if kind == "hw":
            return x[0, 0]
        if kind == "empty":
            return x[:0]
        if kind == "standardised":
            return (x - 0.5) / 0.25
        if kind == "hair":  # augmentation strays a hair outside [0, 1]
            return x * 1.04 - 0.02
        if kind == "uint8":
            return (x * 255).to(torch.uint8)
        if kind == "float64":
            return x.double()
        if kind == "bool":
            return x > 0.5
        raise KeyError(kind)

    @cached_property
    def maps(self) -> Any:
        import workbench as wb

        return wb.attention_maps(self.vit, self.x)

    @cached_property
    def comms(self) -> Any:
        import workbench as wb

        return wb.communities(self.maps, k=2)

    @cached_property
    def batch_comms(self) -> Any:
        import workbench as wb

        return wb.communities(self.vit, self.batch["image"], k=2)

    @cached_property
    def attr(self) -> Any:
        import workbench as wb

        return wb.attribute(self.cnn, self.batch["image"], method="saliency")

    @cached_property
    def faith(self) -> Any:
        from workbench.evaluation import deletion_insertion

        return deletion_insertion(self.cnn, self.batch["image"], self.attr, steps=2)

    @cached_property
    def sae(self) -> Any:
        """A small top-k SAE on the tiny ViT's second block (trained on the phantom batch)."""
        import workbench as wb

        acts = wb.sae.activations(self.vit, self.ds, layer="blocks.1")
        return wb.sae.train(acts, "topk", expansion=2, k=4, epochs=1, batch_size=32, progress=False)

    @cached_property
    def cbm(self) -> Any:
        """A tiny joint concept bottleneck over the phantom's five findings."""
        import workbench as wb

        torch.manual_seed(0)
        return wb.concepts.create("vit_tiny", concepts=list(self.ds.concept_names), num_classes=2, img_size=self.size,
                                  in_chans=1, patch_size=8, depth=2, embed_dim=32, num_heads=2).eval()

    @cached_property
    def history(self) -> Any:
        import workbench as wb

        return wb.fit(self.fresh(), (self.x, self.y), epochs=1, batch_size=4, progress=False)

    def masks(self, kind: str = "ok") -> dict[str, torch.Tensor]:
        m = {k: self.batch["masks"][k].clone() for k in ("left_lung", "right_lung", "heart")}
        if kind == "empty":
            return {k: torch.zeros_like(v) for k, v in m.items()}
        if kind == "size64":
            return {k: torch.nn.functional.interpolate(v[:, None].float(), size=(64, 64))[:, 0] > 0.5
                    for k, v in m.items()}
        if kind == "batch2":
            return {k: v[:2] for k, v in m.items()}
        return m

    # ---------------------------------------------------------------- files
    @cached_property
    def npz(self) -> Path:
        return self.write_npz("ok.npz")

    def write_npz(self, name: str, *, labels: Any = None, images: Any = None) -> Path:
        rng = np.random.default_rng(0)
        arrays = {}
        for s in ("train", "val", "test"):
            arrays[f"{s}_images"] = rng.integers(0, 256, (16, 28, 28), dtype=np.uint8) if images is None else images
            arrays[f"{s}_labels"] = np.tile([0, 1], 8)[:, None] if labels is None else labels
        path = self.tmp / name
        np.savez(path, **arrays)
        return path

    @cached_property
    def ckpt(self) -> Path:
        import workbench as wb

        model = wb.models.create("test_resnet", num_classes=2, img_size=28, in_chans=1)
        wb.models.save(model, self.tmp / "ckpt" / "model")
        return self.tmp / "ckpt" / "model"

    @cached_property
    def a_file(self) -> Path:
        p = self.tmp / "a_file.txt"
        p.write_text("not a folder")
        return p

    @property
    def unwritable(self) -> Path:
        """A path that cannot be written: below a regular file."""
        return self.a_file / "out"

    @property
    def readonly(self) -> Path:
        """A path on a read-only file system (sysfs), also for root."""
        return Path("/sys/workbench_out/fig.png")

    def folder(self, name: str, *, csv: str | None = "id,label\nim0,0\nim1,1\n", mask_size: int | None = None,
               corrupt: bool = False) -> Path:
        """A tiny folder dataset (two 28 px PNGs), optionally with a mask of another size or a bad file."""
        from PIL import Image

        root = self.tmp / name
        (root / "images").mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((28, 28), 40 * (i + 1), np.uint8)).save(root / "images" / f"im{i}.png")
        if corrupt:
            (root / "images" / "im1.png").write_bytes(b"\x89PNG not really")
        if csv is not None:
            (root / "labels.csv").write_text(csv)
        if mask_size is not None:
            (root / "masks" / "lung").mkdir(parents=True)
            for i in range(2):
                Image.fromarray(np.zeros((mask_size, mask_size), np.uint8)).save(root / "masks" / "lung" / f"im{i}.png")
        return root

    def cli(self, *argv: str) -> tuple[int, str]:
        """Run ``workbench argv...`` in-process; (exit code, stderr). Exceptions propagate (a traceback)."""
        from workbench.cli import main

        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = main(list(argv))
            except SystemExit as e:  # argparse's usage errors
                code = e.code if isinstance(e.code, int) else 2
        return code, err.getvalue()


# =================================================================================================
# the table
# =================================================================================================
CASES: list[Case] = []


def case(verb: str, name: str, call: Callable[[Ctx], Any], says: str = "", expect: str = "error",
         issue: bool = False) -> None:
    CASES.append(Case(verb, name, call, says, expect, issue))


# ------------------------------------------------------------------ images into every image verb
IMAGE_KINDS = {  # kind: (says, expect, listed in the issue)
    "x255": (r"255", "error", True),
    "nan": (r"nan", "error", True),
    "inf": (r"inf", "error", True),
    "chans3": (r"channel", "error", True),
    "size48": (r"32", "error", True),
    "int64": (r"float|dtype", "error", False),
    "list": (r"tensor", "error", False),
    "hw": (r"\(B, C, H, W\)|shape", "error", False),
    "empty": (r"empty|B = 0|at least one", "error", False),
    "standardised": (r"\[0, 1\]|standardi", "error", False),
    "bool": (r"float|dtype|bool", "error", False),
    "hair": ("", "ok", False),
    "float64": ("", "ok", False),
}


def _fit_pair(ctx: Ctx, x: Any) -> Any:
    import workbench as wb

    y = torch.tensor([0, 1] * 8)[: (len(x) if hasattr(x, "__len__") else 4)]
    return wb.fit(ctx.fresh(), (x, y), epochs=1, batch_size=2, progress=False)


def _eval_pair(ctx: Ctx, x: Any) -> Any:
    import workbench as wb

    y = torch.tensor([0, 1] * 8)[: (len(x) if hasattr(x, "__len__") else 4)]
    return wb.evaluate(ctx.cnn, (x, y), device="cpu")


IMAGE_VERBS: dict[str, Callable[[Ctx, Any], Any]] = {
    "attribute": lambda c, x: __import__("workbench").attribute(c.cnn, x, method="saliency"),
    "attention_maps": lambda c, x: __import__("workbench").attention_maps(c.vit, x),
    "chefer_relevance": lambda c, x: __import__("workbench").chefer_relevance(c.vit, x),
    "communities": lambda c, x: __import__("workbench").communities(c.vit, x, k=2),
    "train.predict": lambda c, x: __import__("workbench.train", fromlist=["predict"]).predict(c.cnn, x),
    "fit": _fit_pair,
    "evaluate": _eval_pair,
    "evaluation.deletion_insertion": lambda c, x: __import__("workbench.evaluation", fromlist=["x"]).deletion_insertion(
        c.cnn, x, torch.rand(4, 32, 32), steps=2),
}
CNN_VERBS = ("attribute", "train.predict", "fit", "evaluate", "evaluation.deletion_insertion")
for _verb, _fn in IMAGE_VERBS.items():
    for _kind, (_says, _expect, _issue) in IMAGE_KINDS.items():
        if _kind == "size48" and _verb in CNN_VERBS:  # a CNN takes any size: valid input
            _says, _expect, _issue = "", "ok", False
        case(_verb, f"images {_kind}", (lambda f, k: lambda c: f(c, c.xs(k)))(_fn, _kind), _says, _expect, _issue)

# uint8 tensors: documented for attribute (scaled by 1/255), a dataset storage format elsewhere
case("attribute", "images uint8 (documented: scaled by 1/255)",
     lambda c: __import__("workbench").attribute(c.cnn, c.xs("uint8"), method="saliency"), expect="ok")
case("attention_maps", "images uint8", lambda c: __import__("workbench").attention_maps(c.vit, c.xs("uint8")),
     r"uint8|float")
case("attribute", "ViT images 0-255", lambda c: __import__("workbench").attribute(c.vit, c.xs("x255"), method="chefer"),
     r"255", issue=True)
case("attribute", "ViT images 48 px", lambda c: __import__("workbench").attribute(c.vit, c.xs("size48"), method="saliency"),
     r"32", issue=True)
case("fit", "ViT images 48 px", lambda c: _wb().fit(c.fresh("vit"), (c.xs("size48"), c.y), epochs=1, batch_size=2,
                                                     progress=False), r"32", issue=True)
case("train.predict", "ViT images 48 px", lambda c: importlib.import_module("workbench.train").predict(
    c.vit, c.xs("size48")), r"32", issue=True)
case("evaluate", "ViT images 48 px", lambda c: _wb().evaluate(c.vit, (c.xs("size48"), c.y), device="cpu"), r"32")
case("attribute", "ViT images 3 channels",
     lambda c: __import__("workbench").attribute(c.vit, c.xs("chans3"), method="integrated_gradients", n_steps=2),
     r"channel", issue=True)
case("evaluation.randomisation_test", "images 0-255", lambda c: __import__("workbench.evaluation", fromlist=["x"]).randomisation_test(
    c.cnn, c.xs("x255")[:2], "saliency", layers=["fc"], progress=False), r"255")
case("evaluation.randomisation_test", "images 3 channels", lambda c: __import__("workbench.evaluation", fromlist=["x"]).randomisation_test(
    c.cnn, c.xs("chans3")[:2], "saliency", layers=["fc"], progress=False), r"channel")


def _ev() -> Any:
    return importlib.import_module("workbench.evaluation")


def _wb() -> Any:
    return importlib.import_module("workbench")


def _viz() -> Any:
    return importlib.import_module("workbench.viz")


def _data() -> Any:
    return importlib.import_module("workbench.data")


def _models() -> Any:
    return importlib.import_module("workbench.models")


# ------------------------------------------------------------------ fit: labels, data, arguments
def _fit(c: Ctx, data: Any, model: Any = None, **kw: Any) -> Any:
    kw = {"epochs": 1, "batch_size": 4, "progress": False, **kw}
    return _wb().fit(model if model is not None else c.fresh(), data, **kw)


case("fit", "fractional labels in a pair", lambda c: _fit(c, (c.x, torch.tensor([0.2, 0.7, 0.4, 0.9]))),
     r"fraction|integer|whole", issue=True)
case("fit", "empty dataset", lambda c: _fit(c, c.ds.subset([])), r"empty|no samples|0 samples", issue=True)
case("fit", "empty pair", lambda c: _fit(c, (c.x[:0], c.y[:0])), r"empty|no samples|0 samples", issue=True)
case("fit", "3-output model, 2 classes", lambda c: _fit(c, c.ds, model=c.fresh("cnn3")), r"3 outputs|num_classes",
     issue=True)
case("fit", "plain list of samples", lambda c: _fit(c, [c.ds[i] for i in range(4)]), r"list", issue=True)
case("fit", "augment='flip'", lambda c: _fit(c, c.ds, augment="flip"), r"augment|callable", issue=True)
case("fit", "labels out of range", lambda c: _fit(c, (c.x, torch.tensor([0, 1, 2, 5]))), r"5|range")
case("fit", "negative labels", lambda c: _fit(c, (c.x, torch.tensor([0, -1, 0, 1]))), r"-1|range|negative")
case("fit", "labels length mismatch", lambda c: _fit(c, (c.x, torch.tensor([0, 1, 0]))), r"3|rows|length")
case("fit", "NaN labels", lambda c: _fit(c, (c.x, torch.tensor([0.0, float("nan"), 1.0, 0.0]))), r"nan")
case("fit", "string labels", lambda c: _fit(c, (c.x, ["a", "b", "a", "b"])), r"label")
case("fit", "multilabel labels wrong width", lambda c: _fit(c, (c.x, torch.ones(4, 3))), r"3|outputs|num_classes")
case("fit", "epochs=0", lambda c: _fit(c, c.ds, epochs=0), r"epochs")
case("fit", "batch_size=0", lambda c: _fit(c, c.ds, batch_size=0), r"batch_size")
case("fit", "batch_size=2.5", lambda c: _fit(c, c.ds, batch_size=2.5), r"batch_size")
case("fit", "lr=-1", lambda c: _fit(c, c.ds, lr=-1.0), r"lr")
case("fit", "lr='fast'", lambda c: _fit(c, c.ds, lr="fast"), r"lr")
case("fit", "weight_decay=-0.1", lambda c: _fit(c, c.ds, weight_decay=-0.1), r"weight_decay")
case("fit", "warmup=2", lambda c: _fit(c, c.ds, warmup=2.0), r"warmup")
case("fit", "grad_clip=0", lambda c: _fit(c, c.ds, grad_clip=0.0), r"grad_clip")
case("fit", "max_seconds=-5", lambda c: _fit(c, c.ds, max_seconds=-5), r"max_seconds")
case("fit", "class_weights wrong length", lambda c: _fit(c, c.ds, class_weights=[1.0, 2.0, 3.0]), r"class_weights")
case("fit", "early_stopping without val", lambda c: _fit(c, c.ds, early_stopping=2), r"val")
case("fit", "num_workers=-1", lambda c: _fit(c, c.ds, num_workers=-1), r"num_workers")
case("fit", "device='cuda' without a GPU", lambda c: _fit(c, c.ds, device="cuda"), r"cuda|gpu", issue=True)
case("fit", "device='tpu'", lambda c: _fit(c, c.ds, device="tpu"), r"device")
case("fit", "val with other classes", lambda c: _fit(c, c.ds, val=(c.x, torch.tensor([0, 1, 2, 2]))), r"val|2|range")
case("fit", "model is not a module", lambda c: _wb().fit("resnet18", c.ds, epochs=1, progress=False), r"model|Module")
case("fit", "labels (N, 1) (documented)", lambda c: _fit(c, (c.x, c.y[:, None])), expect="ok")
case("fit", "float labels 0.0/1.0", lambda c: _fit(c, (c.x, c.y.float())), expect="ok")
case("fit", "uint8 dataset images", lambda c: _fit(c, c.ds), expect="ok")
case("fit", "augment transform (documented)",
     lambda c: _fit(c, c.ds, augment=_data().transforms.RandomIntensity(brightness=0.1, contrast=0.1, seed=0)),
     expect="ok")
case("fit", "float dataset images 0-255",
     lambda c: _fit(c, _data().ArrayDataset(c.x * 255, c.y, classes=("a", "b"), task="binary")), r"255",
     issue=True)

# ------------------------------------------------------------------ evaluate / predict
case("evaluate", "one-class test set", lambda c: _wb().evaluate(c.cnn, (c.x, torch.zeros(4, dtype=torch.long)),
                                                                device="cpu"),
     r"one class|only|single class|undefined", expect="warn", issue=True)
case("evaluate", "bootstrap=-5", lambda c: _wb().evaluate(c.cnn, c.ds, device="cpu", bootstrap=-5), r"bootstrap",
     issue=True)
case("evaluate", "bootstrap=2.5", lambda c: _wb().evaluate(c.cnn, c.ds, device="cpu", bootstrap=2.5), r"bootstrap")
case("evaluate", "ci=1.5", lambda c: _wb().evaluate(c.cnn, c.ds, device="cpu", bootstrap=10, ci=1.5), r"ci")
case("evaluate", "batch_size=0", lambda c: _wb().evaluate(c.cnn, c.ds, device="cpu", batch_size=0), r"batch_size")
case("evaluate", "empty dataset", lambda c: _wb().evaluate(c.cnn, c.ds.subset([]), device="cpu"), r"empty|no samples")
case("evaluate", "3-output model", lambda c: _wb().evaluate(c.cnn3, c.ds, device="cpu"), r"3 outputs|num_classes")
case("evaluate", "plain list", lambda c: _wb().evaluate(c.cnn, [c.ds[0], c.ds[1]], device="cpu"), r"list")
case("evaluate", "fractional labels", lambda c: _wb().evaluate(c.cnn, (c.x, torch.tensor([0.2, 0.7, 0.4, 0.9])),
                                                               device="cpu"), r"fraction|integer")
case("evaluate", "device='cuda' without a GPU", lambda c: _wb().evaluate(c.cnn, c.ds, device="cuda"), r"cuda|gpu")
case("train.predict", "batch_size=-1", lambda c: importlib.import_module("workbench.train").predict(
    c.cnn, c.x, batch_size=-1), r"batch_size")
case("train.predict", "a string", lambda c: importlib.import_module("workbench.train").predict(c.cnn, "images.png"),
     r"str|tensor|dataset")

# ------------------------------------------------------------------ attribute: arguments
_attr = lambda c, **kw: _wb().attribute(c.cnn, c.x[:2], **kw)  # noqa: E731
case("attribute", "unknown method", lambda c: _attr(c, method="gradcam++"), r"unknown|valid")
case("attribute", "target out of range", lambda c: _attr(c, method="saliency", target=5), r"5|outputs")
case("attribute", "target float", lambda c: _attr(c, method="saliency", target=torch.tensor([0.5, 1.0])), r"target")
case("attribute", "target wrong length", lambda c: _attr(c, method="saliency", target=[0, 1, 1]), r"target")
case("attribute", "nt_samples=0", lambda c: _attr(c, method="smoothgrad", nt_samples=0), r"nt_samples", issue=True)
case("attribute", "n_steps=0", lambda c: _attr(c, method="integrated_gradients", n_steps=0), r"n_steps")
case("attribute", "internal_batch_size=0", lambda c: _attr(c, method="saliency", internal_batch_size=0),
     r"internal_batch_size")
case("attribute", "unknown keyword", lambda c: _attr(c, method="saliency", steps=3), r"steps|keyword")
case("attribute", "gradcam unknown layer", lambda c: _attr(c, method="gradcam", layer="layer9"), r"layer9|layer")
case("attribute", "occlusion window larger than image", lambda c: _attr(c, method="occlusion", window=64),
     r"window")
case("attribute", "model is a string", lambda c: _wb().attribute("resnet18", c.x, method="saliency"), r"model")
case("attribute", "device='cuda' without a GPU", lambda c: _attr(c, method="saliency", device="cuda"), r"cuda|gpu")
case("attribute", "chefer on a CNN", lambda c: _attr(c, method="chefer"), r"attention|ViT|transformer")

# ------------------------------------------------------------------ attention and derived maps
case("attention_maps", "CNN model", lambda c: _wb().attention_maps(c.cnn, c.x), r"attention")
case("attention_maps", "layer out of range", lambda c: _wb().attention_maps(c.vit, c.x, layers=[7]), r"7|layer")
case("attention_maps", "unknown layer name", lambda c: _wb().attention_maps(c.vit, c.x, layers=["blocks.9.attn"]),
     r"blocks\.9|layer")
case("attention_maps", "images slightly out of range (augmentation)",
     lambda c: _wb().attention_maps(c.vit, c.xs("hair")), expect="ok")
case("chefer_relevance", "target out of range", lambda c: _wb().chefer_relevance(c.vit, c.x, target=4), r"4|target")
case("chefer_relevance", "start_layer=5", lambda c: _wb().chefer_relevance(c.vit, c.x, start_layer=5), r"start_layer")
case("rollout", "not AttentionMaps", lambda c: _wb().rollout(torch.rand(2, 3, 17, 17)), r"AttentionMaps")
case("rollout", "head_fusion='median'", lambda c: _wb().rollout(c.maps, head_fusion="median"), r"head_fusion|median")
case("rollout", "discard_ratio=1.5", lambda c: _wb().rollout(c.maps, discard_ratio=1.5), r"discard_ratio")
case("attention.cls_attention", "layer=5", lambda c: importlib.import_module("workbench.attention").cls_attention(
    c.maps, layer=5), r"layer")
case("attention.cls_attention", "head=9", lambda c: importlib.import_module("workbench.attention").cls_attention(
    c.maps, head=9), r"head")
case("attention.upsample", "size=0", lambda c: importlib.import_module("workbench.attention").upsample(
    torch.rand(2, 4, 4), 0), r"size")
case("attention.upsample", "mode='cubic'", lambda c: importlib.import_module("workbench.attention").upsample(
    torch.rand(2, 4, 4), 8, mode="cubic"), r"mode|cubic")

# ------------------------------------------------------------------ communities
case("communities", "k=1", lambda c: _wb().communities(c.maps, k=1), r"k")
case("communities", "k larger than patches", lambda c: _wb().communities(c.maps, k=40), r"patches")
case("communities", "unknown method", lambda c: _wb().communities(c.maps, k=2, method="louvain"), r"louvain|valid")
case("communities", "layer=9", lambda c: _wb().communities(c.maps, k=2, layer=9), r"layer")
case("communities", "head=7", lambda c: _wb().communities(c.maps, k=2, head=7), r"head")
case("communities", "model without images", lambda c: _wb().communities(c.vit, k=2), r"images")
case("communities", "a tensor instead of maps", lambda c: _wb().communities(torch.rand(2, 17, 17), k=2),
     r"AttentionMaps|model")
case("communities", "dcmm on a plain ViT", lambda c: _wb().communities(c.maps, k=2, method="dcmm"), r"dcmm|DCMM")

# ------------------------------------------------------------------ evaluation
_pg = lambda c, maps, masks, **kw: _ev().pointing_game(maps, masks, **kw)  # noqa: E731
case("evaluation.anatomy_alignment", "all-empty masks",
     lambda c: _ev().anatomy_alignment(c.batch_comms, c.masks("empty")), r"empty", issue=True)
case("evaluation.anatomy_alignment", "masks of another size",
     lambda c: _ev().anatomy_alignment(c.batch_comms, c.masks("size64")), r"64|size|resize")
case("evaluation.anatomy_alignment", "masks of another batch",
     lambda c: _ev().anatomy_alignment(c.batch_comms, c.masks("batch2")), r"2|images")
case("evaluation.anatomy_alignment", "not Communities",
     lambda c: _ev().anatomy_alignment(c.maps, c.masks()), r"Communities")
case("evaluation.anatomy_alignment", "masks not a mapping or tensor",
     lambda c: _ev().anatomy_alignment(c.batch_comms, ["left_lung"]), r"masks")
case("evaluation.pointing_game", "masks of another size", lambda c: _pg(c, c.attr, c.masks("size64")), r"resize")
case("evaluation.pointing_game", "masks of another batch", lambda c: _pg(c, c.attr, c.masks("batch2")), r"images|mask")
case("evaluation.pointing_game", "ties='random'", lambda c: _pg(c, c.attr, c.masks(), ties="random"), r"ties")
case("evaluation.pointing_game", "tolerance=-2", lambda c: _pg(c, c.attr, c.masks(), tolerance=-2), r"tolerance")
case("evaluation.pointing_game", "maps (B, C, H, W) with C=3",
     lambda c: _pg(c, torch.rand(4, 3, 32, 32), c.masks()), r"\(B, H, W\)")
case("evaluation.pointing_game", "all-empty masks (documented: warning, mean 0)",
     lambda c: _pg(c, c.attr, c.masks("empty")), expect="ok")
case("evaluation.relevance_mass", "NaN in maps (documented: counted as 0)",
     lambda c: _ev().relevance_mass(torch.where(c.attr.maps > 0, c.attr.maps, torch.nan), c.masks()), expect="ok")
case("evaluation.relevance_mass", "masks of another size",
     lambda c: _ev().relevance_mass(c.attr, c.masks("size64")), r"resize")
case("evaluation.relevance_mass", "masks a list", lambda c: _ev().relevance_mass(c.attr, [1, 2]), r"mask")
case("evaluation.relevance_rank_accuracy", "masks of another size",
     lambda c: _ev().relevance_rank_accuracy(c.attr, c.masks("size64")), r"resize")
case("evaluation.topk_iou", "k=0", lambda c: _ev().topk_iou(c.attr, c.masks(), k=0), r"k")
case("evaluation.topk_iou", "k=-0.5", lambda c: _ev().topk_iou(c.attr, c.masks(), k=-0.5), r"k")
case("evaluation.topk_iou", "k larger than the image", lambda c: _ev().topk_iou(c.attr, c.masks(), k=5000), r"k|pixels")
case("evaluation.structure_budget", "masks empty dict", lambda c: _ev().structure_budget(c.attr, {}), r"empty")
case("evaluation.structure_budget", "masks of another size",
     lambda c: _ev().structure_budget(c.attr, c.masks("size64")), r"resize")
case("evaluation.cohort_budget", "bootstrap=-1", lambda c: _ev().cohort_budget(c.attr, c.masks(), bootstrap=-1),
     r"bootstrap", issue=True)
case("evaluation.cohort_budget", "ci=95", lambda c: _ev().cohort_budget(c.attr, c.masks(), ci=95), r"ci")
case("evaluation.cohort_budget", "no masks", lambda c: _ev().cohort_budget(c.attr), r"masks")
case("evaluation.evaluate_localisation", "masks of another size",
     lambda c: _ev().evaluate_localisation(c.attr, c.masks("size64")), r"resize")
case("evaluation.evaluate_localisation", "k=2.5", lambda c: _ev().evaluate_localisation(c.attr, c.masks(), k=2.5),
     r"k")
case("evaluation.deletion_insertion", "steps=0",
     lambda c: _ev().deletion_insertion(c.cnn, c.x, c.attr, steps=0), r"steps")
case("evaluation.deletion_insertion", "maps of another batch",
     lambda c: _ev().deletion_insertion(c.cnn, c.x, torch.rand(2, 32, 32), steps=2), r"images|maps")
case("evaluation.deletion_insertion", "target out of range",
     lambda c: _ev().deletion_insertion(c.cnn, c.x, torch.rand(4, 32, 32), target=7, steps=2), r"7|classes")
case("evaluation.deletion_insertion", "baseline='noise'",
     lambda c: _ev().deletion_insertion(c.cnn, c.x, torch.rand(4, 32, 32), baseline="noise", steps=2), r"baseline")
case("evaluation.deletion_insertion", "batch_size=0",
     lambda c: _ev().deletion_insertion(c.cnn, c.x, torch.rand(4, 32, 32), batch_size=0, steps=2), r"batch_size")
case("evaluation.deletion_insertion", "mode='both'",
     lambda c: _ev().deletion_insertion(c.cnn, c.x, torch.rand(4, 32, 32), mode="both", steps=2), r"mode")
case("evaluation.deletion_insertion", "coarser maps (documented: resized)",
     lambda c: _ev().deletion_insertion(c.cnn, c.x, torch.rand(4, 8, 8), steps=2), expect="ok")
case("evaluation.randomisation_test", "unknown method",
     lambda c: _ev().randomisation_test(c.cnn, c.x[:2], "magic", layers=["fc"], progress=False), r"magic|valid")
case("evaluation.randomisation_test", "unknown layer",
     lambda c: _ev().randomisation_test(c.cnn, c.x[:2], "saliency", layers=["head9"], progress=False), r"head9")
case("evaluation.randomisation_test", "order='random'",
     lambda c: _ev().randomisation_test(c.cnn, c.x[:2], "saliency", order="random", progress=False), r"order")
case("evaluation.randomisation_test", "similarity='pearson'",
     lambda c: _ev().randomisation_test(c.cnn, c.x[:2], "saliency", similarity="pearson", progress=False),
     r"pearson|similarity")
case("evaluation.mask_of_truth", "unknown structure", lambda c: _ev().mask_of_truth(c.ds, "liver"), r"liver")
case("evaluation.mask_of_truth", "variant='inside'", lambda c: _ev().mask_of_truth(c.ds, "heart", variant="inside"),
     r"variant")
case("evaluation.mask_of_truth", "fill='noise'", lambda c: _ev().mask_of_truth(c.ds, "heart", fill="noise"), r"fill")
case("evaluation.mask_of_truth", "not a dataset", lambda c: _ev().mask_of_truth([1, 2], "heart"), r"dataset|batch")
case("evaluation.subgroup_metrics", "unknown meta key",
     lambda c: _ev().subgroup_metrics(c.cnn, c.ds, "scanner", bootstrap=0), r"scanner")
case("evaluation.subgroup_metrics", "bootstrap=-3",
     lambda c: _ev().subgroup_metrics(c.cnn, c.ds, "site", bootstrap=-3), r"bootstrap")
case("evaluation.subgroup_metrics", "probs of another length",
     lambda c: _ev().subgroup_metrics(c.cnn, c.ds, "site", probs=torch.rand(3, 2), bootstrap=0), r"probs|3|16")
case("evaluation.mask_of_truth_protocol", "unknown variant",
     lambda c: _ev().mask_of_truth_protocol(c.cnn, c.ds, variants=("inside",)), r"variant")
case("evaluation.mask_of_truth_protocol", "train without train_data",
     lambda c: _ev().mask_of_truth_protocol(c.cnn, c.ds, train=True), r"train_data")
case("evaluation.mask_of_truth_protocol", "unknown structure",
     lambda c: _ev().mask_of_truth_protocol(c.cnn, c.ds, structures=("liver",)), r"liver")
case("evaluation.shortcut_audit", "unknown structure",
     lambda c: _ev().shortcut_audit(c.cnn, c.ds, structures=("liver",), bootstrap=0), r"liver")
case("evaluation.shortcut_audit", "n_budget=0",
     lambda c: _ev().shortcut_audit(c.cnn, c.ds, bootstrap=0, method="saliency", n_budget=0), r"n_budget")
case("evaluation.shortcut_audit", "3-output model",
     lambda c: _ev().shortcut_audit(c.cnn3, c.ds, bootstrap=0), r"3 outputs|num_classes")

# ------------------------------------------------------------------ data
_load = lambda *a, **kw: _data().load(*a, **kw)  # noqa: E731
case("data.load", "n=-1", lambda c: _load("phantom", n=-1, size=32, cache=False, progress=False), r"\bn\b", issue=True)
case("data.load", "n=-1 on an .npz", lambda c: _load(c.npz, n=-1), r"\bn\b", issue=True)
case("data.load", "n=0", lambda c: _load(c.npz, n=0), r"\bn\b")
case("data.load", "n=2.5", lambda c: _load(c.npz, n=2.5), r"\bn\b")
case("data.load", "size=0", lambda c: _load(c.npz, size=0), r"size")
case("data.load", "size=-8", lambda c: _load("phantom", n=4, size=-8, cache=False, progress=False), r"size")
case("data.load", "size='big'", lambda c: _load(c.npz, size="big"), r"size")
case("data.load", "channels=2", lambda c: _load(c.npz, channels=2), r"channels")
case("data.load", "unknown source", lambda c: _load("phantomm"), r"phantomm|source")
case("data.load", "missing .npz", lambda c: _load(c.tmp / "missing.npz"), r"missing\.npz|no such")
case("data.load", "unknown split", lambda c: _load(c.npz, split="tst"), r"split")
case("data.load", "phantom any split name (documented: its own draw)",
     lambda c: _load("phantom", split="tst", n=4, size=32, cache=False, progress=False), expect="ok")
case("data.load", "phantom unknown task", lambda c: _load("phantom", n=4, size=32, task="cancer", cache=False,
                                                          progress=False), r"task|cancer")
case("data.load", "phantom unknown option", lambda c: _load("phantom", n=4, size=32, colour=True, cache=False,
                                                            progress=False), r"colour")
case("data.load", "label 255 in a binary .npz", lambda c: _load(c.write_npz("l255.npz", labels=np.r_[[0, 1] * 7, 1, 255])),
     r"255", issue=True)
case("data.load", "fractional labels in an .npz", lambda c: _load(c.write_npz("frac.npz", labels=np.linspace(0, 1, 16))),
     r"integer|non-integer")
case("data.load", "float images 0-255 in an .npz",
     lambda c: _load(c.write_npz("f255.npz", images=np.full((16, 28, 28), 200.0))), r"\[0, 1\]|255")
case("data.load", "NaN images in an .npz",
     lambda c: _load(c.write_npz("nan.npz", images=np.full((16, 28, 28), np.nan))), r"nan")
case("data.load", "corrupt .npz", lambda c: (c.tmp / "bad.npz").write_bytes(b"PK\x03\x04garbage") and _load(c.tmp / "bad.npz"),
     r"corrupt|read")
case("data.load", "folder: labels.csv without id",
     lambda c: _load(c.folder("noid", csv="name,label\nim0,0\nim1,1\n")), r"id")
case("data.load", "folder: corrupt image", lambda c: _load(c.folder("corrupt", corrupt=True)), r"im1|image|read")
case("data.load", "folder: mask of another size than its image",
     lambda c: _load(c.folder("mask64", mask_size=64)), r"64x64")
case("data.load", "folder: unknown label column", lambda c: _load(c.folder("lc"), label_column="finding"), r"finding")
case("data.load", "folder: label 255 among 0/1",
     lambda c: _load(c.folder("l255", csv="id,label\nim0,0\nim1,255\n")), r"255")
case("data.load", "folder: no images/",
     lambda c: _load(c.tmp), r"images")
case("data.load", "source is a number", lambda c: _load(42), r"source")
case("data.load", "size=(32, 48) for an .npz (documented)", lambda c: _load(c.npz, size=(32, 48)), expect="ok")
case("data.load", "phantom size=(32, 48)", lambda c: _load("phantom", n=4, size=(32, 48), cache=False,
                                                           progress=False), r"int|square")
_AD = lambda *a, **kw: _data().ArrayDataset(*a, **kw)  # noqa: E731
case("data.ArrayDataset", "float images 0-255", lambda c: _AD(c.x * 255, c.y, classes=("a", "b"), task="binary"),
     r"255", issue=True)
case("data.ArrayDataset", "NaN images", lambda c: _AD(c.xs("nan"), c.y, classes=("a", "b"), task="binary"), r"nan")
case("data.ArrayDataset", "inf images", lambda c: _AD(c.xs("inf"), c.y, classes=("a", "b"), task="binary"), r"inf")
case("data.ArrayDataset", "labels out of range", lambda c: _AD(c.x, torch.tensor([0, 1, 2, 0]), classes=("a", "b"),
                                                               task="binary"), r"2|range|lie")
case("data.ArrayDataset", "fractional labels", lambda c: _AD(c.x, torch.tensor([0.0, 0.5, 1.0, 0.0]),
                                                             classes=("a", "b"), task="binary"), r"fraction|integer")
case("data.ArrayDataset", "mask of another size", lambda c: _AD(c.x, c.y, classes=("a", "b"), task="binary",
                                                                  masks={"lung": torch.zeros(4, 16, 16)}), r"lung|geometry")
case("data.ArrayDataset", "unknown task", lambda c: _AD(c.x, c.y, classes=("a", "b"), task="regression"), r"task")
case("data.ArrayDataset", "int64 images", lambda c: _AD(c.xs("int64"), c.y, classes=("a", "b"), task="binary"),
     r"uint8|float")
case("data.ArrayDataset", "uint8 images (documented)", lambda c: _AD(c.xs("uint8"), c.y, classes=("a", "b"),
                                                                     task="binary"), expect="ok")
case("data.resize_images", "size=0", lambda c: _data().resize_images(c.x, 0), r"size")
case("data.resize_images", "(H, W) tensor", lambda c: _data().resize_images(c.x[0, 0], 16), r"shape|\(N, C, H, W\)|dim")
case("data.resize_masks", "size=-4", lambda c: _data().resize_masks(c.masks()["heart"], -4), r"size")
case("data.label_map", "empty masks dict", lambda c: _data().label_map({}, ["heart"]), r"empty|masks")
case("data.label_map", "masks of different sizes",
     lambda c: _data().label_map({"a": torch.zeros(4, 8, 8, dtype=torch.bool), "b": torch.zeros(4, 9, 9, dtype=torch.bool)},
                                 ["a", "b"]), r"shape|size")
case("data.to_numpy_image", "a string", lambda c: _data().to_numpy_image("image.png"), r"tensor|image")
case("data.transforms", "RandomAffine degrees=-5 scale=(0, 1)",
     lambda c: _data().transforms.RandomAffine(10, scale=(0.0, 1.0)), r"scale")
case("data.transforms", "Resize size=0", lambda c: _data().transforms.Resize(0), r"size")
case("data.transforms", "RandomHorizontalFlip p=2", lambda c: _data().transforms.RandomHorizontalFlip(2.0), r"\bp\b")

# ------------------------------------------------------------------ models
_create = lambda *a, **kw: _models().create(*a, **kw)  # noqa: E731
case("models.create", "unknown name", lambda c: _create("resnet19", num_classes=2), r"resnet19")
case("models.create", "num_classes=0", lambda c: _create("resnet18", num_classes=0, img_size=32, in_chans=1),
     r"num_classes")
case("models.create", "num_classes=2.5", lambda c: _create("resnet18", num_classes=2.5, img_size=32, in_chans=1),
     r"num_classes")
case("models.create", "in_chans=0", lambda c: _create("resnet18", num_classes=2, img_size=32, in_chans=0), r"in_chans")
case("models.create", "img_size=-32", lambda c: _create("vit_tiny", num_classes=2, img_size=-32, in_chans=1,
                                                         patch_size=8, depth=1), r"img_size")
case("models.create", "patch_size does not divide img_size",
     lambda c: _create("vit_tiny", num_classes=2, img_size=30, in_chans=1, patch_size=8, depth=1), r"patch")
case("models.create", "attention='sparse'", lambda c: _create("vit_tiny", num_classes=2, img_size=32, in_chans=1,
                                                               patch_size=8, depth=1, attention="sparse"), r"attention")
case("models.create", "dcmm on a CNN", lambda c: _create("resnet18", num_classes=2, img_size=32, in_chans=1,
                                                          attention="dcmm"), r"dcmm|ViT|attention")
case("models.save", "unwritable path", lambda c: _models().save(c.cnn, c.unwritable / "model"), r"writ|folder|director",
     issue=True)
case("models.save", "read-only file system", lambda c: _models().save(c.cnn, c.readonly.with_suffix("")),
     r"writ|permission", issue=True)
case("models.save", "a plain torch module", lambda c: _models().save(torch.nn.Linear(2, 2), c.tmp / "lin"),
     r"workbench_config")
case("models.save", "into a new folder (documented: created)",
     lambda c: _models().save(c.cnn, c.tmp / "new" / "deep" / "model"), expect="ok")
case("models.load", "missing checkpoint", lambda c: _models().load(c.tmp / "nothing"), r"not found")
case("models.load", "corrupt config", lambda c: (c.tmp / "bad.json").write_text("{oops") and (
    c.tmp / "bad.safetensors").write_bytes(b"x") and _models().load(c.tmp / "bad"), r"JSON|corrupt")
case("models.load", "corrupt weights", lambda c: shutil.copy(str(c.ckpt) + ".json", c.tmp / "badw.json") and (
    c.tmp / "badw.safetensors").write_bytes(b"\x00" * 16) and _models().load(c.tmp / "badw"), r"corrupt|read")
case("models.load", "device='cuda' without a GPU", lambda c: _models().load(c.ckpt, device="cuda"), r"cuda|gpu")
case("models.load_weights", "weights of another model", lambda c: _models().load_weights(c.cnn3, c.ckpt), r"fit")
case("models.load_if_present", "corrupt config", lambda c: (c.tmp / "lip.json").write_text("{oops") and (
    c.tmp / "lip.safetensors").write_bytes(b"x") and _models().load_if_present(c.tmp / "lip"), r"JSON|corrupt")
case("models.load_if_present", "another image size (documented: warns, None)",
     lambda c: _models().load_if_present(c.ckpt, img_size=64), r"img_size", expect="warn")
case("models.read_config", "missing config", lambda c: _models().read_config(c.tmp / "nothing"), r"not found")

# ------------------------------------------------------------------ viz
case("viz.community_overlay", "masks of another size",
     lambda c: _viz().community_overlay(c.batch["image"], c.batch_comms, 0, masks=c.masks("size64")), r"64|size|resize",
     issue=True)
case("viz.community_overlay", "index out of range",
     lambda c: _viz().community_overlay(c.batch["image"], c.batch_comms, 9), r"index", issue=True)
case("viz.community_overlay", "index=-9", lambda c: _viz().community_overlay(c.batch["image"], c.batch_comms, -9),
     r"index", issue=True)
case("viz.community_overlay", "image of another size",
     lambda c: _viz().community_overlay(torch.rand(4, 1, 64, 64), c.batch_comms, 0, masks=c.masks()), r"64|size")
case("viz.community_overlay", "alpha=2", lambda c: _viz().community_overlay(c.batch["image"], c.batch_comms, 0, alpha=2),
     r"alpha")
case("viz.community_overlay", "not Communities",
     lambda c: _viz().community_overlay(c.batch["image"], c.maps, 0), r"Communities")
case("viz.community_overlay", "no image (documented: grey canvas)",
     lambda c: _viz().community_overlay(None, c.batch_comms, 0), expect="ok")
case("viz.community_grid", "index out of range",
     lambda c: _viz().community_grid(c.batch["image"], c.vit, index=7, k=2), r"index")
case("viz.community_grid", "layer out of range",
     lambda c: _viz().community_grid(c.batch["image"], c.vit, layers=[5], k=2), r"layer")
case("viz.attention_grid", "index out of range", lambda c: _viz().attention_grid(c.maps, index=9), r"index")
case("viz.attention_grid", "head out of range", lambda c: _viz().attention_grid(c.maps, heads=[5]), r"head")
case("viz.attention_grid", "not AttentionMaps", lambda c: _viz().attention_grid(torch.rand(2, 2, 17, 17)),
     r"AttentionMaps")
case("viz.attribution_grid", "indices out of range",
     lambda c: _viz().attribution_grid(c.batch["image"], {"s": c.attr}, indices=[0, 8]), r"ind")
case("viz.attribution_grid", "attributions of other images",
     lambda c: _viz().attribution_grid(torch.rand(2, 1, 32, 32), {"s": c.attr}), r"images")
case("viz.attribution_grid", "masks of another size",
     lambda c: _viz().attribution_grid(c.batch["image"], {"s": c.attr}, masks=c.masks("size64")), r"64|size|resize")
case("viz.gallery", "n=0", lambda c: _viz().gallery(c.ds, n=0), r"\bn\b")
case("viz.gallery", "indices out of range", lambda c: _viz().gallery(c.ds, indices=[0, 99]), r"99|ind|range")
case("viz.gallery", "not a dataset", lambda c: _viz().gallery(torch.rand(4, 1, 32, 32)), r"dataset")
case("viz.save_figure", "unwritable folder",
     lambda c: _viz().save_figure(__import__("matplotlib.pyplot").pyplot.figure(), c.unwritable / "fig.png"),
     r"writ|folder|director", issue=True)
case("viz.save_figure", "read-only file system",
     lambda c: _viz().save_figure(__import__("matplotlib.pyplot").pyplot.figure(), c.readonly), r"writ|permission",
     issue=True)
case("viz.save_figure", "format jpgx",
     lambda c: _viz().save_figure(__import__("matplotlib.pyplot").pyplot.figure(), c.tmp / "f.png", formats=["jpgx"]),
     r"jpgx|format")
case("viz.save_figure", "not a figure", lambda c: _viz().save_figure("figure", c.tmp / "f.png"), r"Figure")
case("viz.budget_bars", "not a budget table", lambda c: _viz().budget_bars(torch.rand(3)), r"DataFrame|budget")
case("viz.deletion_curves", "not Faithfulness", lambda c: _viz().deletion_curves(torch.rand(3, 5)), r"Faithfulness")
case("viz.deletion_curves", "unknown mode", lambda c: _viz().deletion_curves(c.faith, modes=("both",)), r"mode|both")
case("viz.audit_figure", "not an audit", lambda c: _viz().audit_figure({"a": 1}), r"ShortcutAudit|audit")
case("viz.training_curves", "not a History", lambda c: _viz().training_curves([0.5, 0.4]), r"History")
case("viz.draw_contours", "masks of another size", lambda c: _viz().draw_contours(
    __import__("matplotlib.pyplot").pyplot.subplots()[1], c.masks("size64"), index=0), expect="ok")
case("widgets.explorer", "a CNN", lambda c: importlib.import_module("workbench.widgets").explorer(c.cnn, c.ds),
     r"attention|ViT")
case("widgets.explorer", "not a dataset", lambda c: importlib.import_module("workbench.widgets").explorer(c.vit, c.x),
     r"dataset")

# ------------------------------------------------------------------ attribution helpers
case("attribution.normalise", "mode='zscore'", lambda c: importlib.import_module("workbench.attribution").normalise(
    c.attr, mode="zscore"), r"zscore|mode")
case("attribution.baseline_like", "baseline='noise'", lambda c: importlib.import_module(
    "workbench.attribution").baseline_like(c.x, "noise"), r"noise|baseline")
case("attribution.default_cam_layer", "model without convolutions",
     lambda c: importlib.import_module("workbench.attribution").default_cam_layer(torch.nn.Linear(2, 2), (32, 32)),
     r"layer|conv")
case("attribution.baseline_set", "n=0", lambda c: importlib.import_module("workbench.attribution").baseline_set(
    c.ds, n=0), r"\bn\b")
case("attribution.baseline_set", "images 0-255", lambda c: importlib.import_module("workbench.attribution").baseline_set(
    c.xs("x255"), n=2), r"255")
case("attribution.baseline_set", "a list", lambda c: importlib.import_module("workbench.attribution").baseline_set(
    [c.x[0]], n=2), r"dataset|tensor")
case("attribution.slic_segments", "n_segments=0", lambda c: importlib.import_module(
    "workbench.attribution").slic_segments(c.x, n_segments=0), r"n_segments")

# ------------------------------------------------------------------ dataset-wide jobs
def _jobs() -> Any:
    return importlib.import_module("workbench.jobs")


case("jobs.Job", "n=0 (empty dataset)", lambda c: _jobs().Job(c.tmp / "j0", {"a": 1}, n=0, progress=False), r"\bn\b|empty")
case("jobs.Job", "shard_size=0", lambda c: _jobs().Job(c.tmp / "j1", {"a": 1}, n=4, shard_size=0, progress=False),
     r"shard_size")
case("jobs.Job", "out is a file", lambda c: _jobs().Job(c.a_file, {"a": 1}, n=4, progress=False), r"file|folder")
case("jobs.Job", "unwritable out", lambda c: _jobs().Job(c.unwritable, {"a": 1}, n=4, progress=False),
     r"writ|folder|director")
case("jobs.Job", "spec not JSON", lambda c: _jobs().Job(c.tmp / "j2", {"model": c.cnn}, n=4, progress=False), r"JSON")
case("jobs.Job", "dtype='int8'", lambda c: _jobs().Job(c.tmp / "j3", {"a": 1}, n=4, dtype="int8", progress=False),
     r"dtype")
case("jobs.open_store", "missing folder", lambda c: _jobs().open_store(c.tmp / "no_job"), r"no_job|finished|manifest")
case("jobs.split_indices", "n=-1", lambda c: _jobs().split_indices(-1, 0, 1), r"\bn\b")
case("jobs.split_indices", "rank=2 of 2", lambda c: _jobs().split_indices(4, 2, 2), r"rank")
case("jobs.gather_by_index", "missing indices", lambda c: _jobs().gather_by_index([0, 2], torch.zeros(2, 3), 4),
     r"missing")
case("jobs.gather_by_index", "values of another length",
     lambda c: _jobs().gather_by_index([0, 1], torch.zeros(3, 3), 2), r"indices|rows")
case("jobs.fingerprint", "a string", lambda c: _jobs().fingerprint("resnet18"), r"model|dataset")
case("jobs.rank_device", "cuda without a GPU", lambda c: _jobs().rank_device("cuda"), r"cuda|gpu")


# ------------------------------------------------------------------ sparse autoencoders (owner: sae)
def _sae() -> Any:
    return importlib.import_module("workbench.sae")


case("sae.create", "unknown kind", lambda c: _sae().create("gated2", d=32), r"gated2|kind")
case("sae.create", "k larger than the dictionary", lambda c: _sae().create("topk", d=8, expansion=2, k=64), r"\bk\b")
case("sae.create", "d=0", lambda c: _sae().create("topk", d=0, k=4), r"\bd\b")
case("sae.train", "a list of tensors", lambda c: _sae().train([torch.rand(8, 4)], progress=False), r"store|tensor")
case("sae.train", "NaN activations", lambda c: _sae().train(torch.full((64, 8), float("nan")), expansion=2, k=2,
                                                              progress=False), r"nan")
case("sae.train", "enc_scale=0", lambda c: _sae().train(torch.rand(64, 8), expansion=2, k=2, enc_scale=0, progress=False),
     r"enc_scale")
case("sae.train", "batch_size=0", lambda c: _sae().train(torch.rand(64, 8), expansion=2, k=2, batch_size=0,
                                                         progress=False), r"batch_size")
case("sae.train", "epochs=0", lambda c: _sae().train(torch.rand(64, 8), expansion=2, k=2, epochs=0, progress=False),
     r"epochs")
case("sae.train", "device='cuda' without a GPU", lambda c: _sae().train(torch.rand(64, 8), expansion=2, k=2,
                                                                        device="cuda", progress=False), r"cuda|gpu")
case("sae.save", "unwritable path", lambda c: _sae().save(c.sae.sae, c.unwritable / "sae"), r"writ|folder|director")
case("sae.save", "not an SAE", lambda c: _sae().save(c.cnn, c.tmp / "sae_cnn"), r"SAE")
case("sae.load", "missing", lambda c: _sae().load(c.tmp / "no_sae"), r"not found")
case("sae.cache", "unwritable out", lambda c: _sae().cache(c.vit, c.ds, layer="blocks.1", out=c.unwritable,
                                                           progress=False), r"writ|folder|director")
case("sae.cache", "images 0-255", lambda c: _sae().cache(c.vit, c.xs("x255"), layer="blocks.1", out=c.tmp / "s255",
                                                         progress=False), r"255")
case("sae.cache", "unknown layer", lambda c: _sae().cache(c.vit, c.ds, layer="blocks.9", out=c.tmp / "s9",
                                                          progress=False), r"blocks\.9")
case("sae.open_store", "missing folder", lambda c: _sae().open_store(c.tmp / "no_store"), r"no_store|finished")
case("sae.activations", "images 3 channels", lambda c: _sae().activations(c.vit, c.xs("chans3"), layer="blocks.1"),
     r"channel")
case("sae.activations", "images 0-255", lambda c: _sae().activations(c.vit, c.xs("x255"), layer="blocks.1"), r"255")
case("sae.latents", "images NaN", lambda c: _sae().latents(c.sae.sae, c.vit, c.xs("nan")), r"nan")
case("sae.latents", "images 48 px", lambda c: _sae().latents(c.sae.sae, c.vit, c.xs("size48")), r"32")
case("sae.latents", "pool='median'", lambda c: _sae().latents(c.sae.sae, c.vit, c.ds, pool="median"), r"pool")
case("sae.latents", "not an SAE", lambda c: _sae().latents(c.cnn, c.vit, c.ds), r"SAE")
case("sae.fidelity", "images 0-255", lambda c: _sae().fidelity(c.sae.sae, c.vit, (c.xs("x255"), c.y)), r"255")
case("sae.fidelity", "bootstrap=-1", lambda c: _sae().fidelity(c.sae.sae, c.vit, c.ds, bootstrap=-1), r"bootstrap")
case("sae.top_activations", "n=0", lambda c: _sae().top_activations(c.sae.sae, c.vit, c.ds, n=0), r"\bn\b")
case("sae.top_activations", "unknown region", lambda c: _sae().top_activations(c.sae.sae, c.vit, c.ds, region="liver"),
     r"liver")
case("sae.heatmaps", "latent out of range", lambda c: _sae().heatmaps(c.sae.sae, c.vit, c.x, 999), r"999|latent")
case("sae.heatmaps", "images 3 channels", lambda c: _sae().heatmaps(c.sae.sae, c.vit, c.xs("chans3"), 0), r"channel")
case("sae.class_latents", "nothing to rank", lambda c: _sae().class_latents(), r"sae|precomputed|data|model")
case("sae.reliance", "target out of range", lambda c: _sae().reliance(c.sae.sae, c.vit, c.ds, target=5), r"target|5")
case("sae.atlas", "data without masks", lambda c: _sae().atlas(c.sae.sae, c.vit, c.x), r"mask|dataset")
case("sae.atlas", "unknown structure", lambda c: _sae().atlas(c.sae.sae, c.vit, c.ds, structures=["liver"]), r"liver")
case("sae.confounders", "unknown suspect", lambda c: _sae().confounders(c.sae.sae, c.vit, c.ds, suspects=("scanner",)),
     r"scanner")
case("sae.intervene", "ks=(0,)", lambda c: _sae().intervene(c.sae.sae, c.vit, c.ds, ks=(0,), bootstrap=0, random=0),
     r"\bks\b|\bk\b")
case("sae.intervene", "unknown mode", lambda c: _sae().intervene(c.sae.sae, c.vit, c.ds, modes=("zero",), bootstrap=0,
                                                                random=0), r"mode")
case("sae.compare_models", "a CNN beside the ViT",
     lambda c: _sae().compare_models(c.sae.sae, c.vit, c.cnn, c.ds), r"architecture|layer|model")
case("sae.layer_names", "not a model", lambda c: _sae().layer_names("vit_tiny"), r"model|Module")
case("widgets.latent_browser", "not an SAE", lambda c: importlib.import_module("workbench.widgets").latent_browser(
    c.cnn, c.vit, c.ds), r"SAE")
case("widgets.latent_browser", "not a dataset", lambda c: importlib.import_module("workbench.widgets").latent_browser(
    c.sae.sae, c.vit, c.x), r"dataset")
case("cli.sae", "cache: unwritable --out", lambda c: c.cli(
    "sae", "cache", "--checkpoint", str(c.ckpt), "--data", _npz(c), "--layer", "layer1", "--out", str(c.unwritable),
    "--no-progress"), r"writ|folder|director")
case("cli.sae", "cache: unknown --layer", lambda c: c.cli(
    "sae", "cache", "--checkpoint", str(c.ckpt), "--data", _npz(c), "--layer", "layer9", "--out", str(c.tmp / "sc"),
    "--no-progress"), r"layer9")
case("cli.sae", "train: missing --store", lambda c: c.cli(
    "sae", "train", "--store", str(c.tmp / "no_store"), "--out", str(c.tmp / "st" / "sae"), "--no-progress"),
     r"no_store|finished")
case("cli.sae", "train: --device cuda without a GPU", lambda c: c.cli(
    "sae", "train", "--store", str(c.tmp / "no_store"), "--out", str(c.tmp / "st2" / "sae"), "--device", "cuda",
    "--no-progress"), r"cuda|gpu")
case("viz.sae_training", "not a TrainLog", lambda c: _viz().sae_training([1.0, 2.0]), r"TrainLog|log")
case("viz.latent_heatmap", "heatmap of another batch size",
     lambda c: _viz().latent_heatmap(c.x[0], torch.rand(3, 4, 4)), r"heatmap|shape")
case("viz.latent_grid", "latent out of range", lambda c: _viz().latent_grid(
    _sae().top_activations(c.sae.sae, c.vit, c.ds, n=2), 999, c.ds), r"999|latent")
case("viz.atlas_bars", "not an Atlas", lambda c: _viz().atlas_bars({"a": 1}), r"Atlas")
case("viz.atlas_matrix", "not an Atlas", lambda c: _viz().atlas_matrix([1, 2]), r"Atlas")
case("viz.class_latent_bars", "not ClassLatents", lambda c: _viz().class_latent_bars({"a": 1}), r"ClassLatents")
case("viz.intervention_curves", "not an Intervention", lambda c: _viz().intervention_curves({"a": 1}),
     r"Intervention")

# ------------------------------------------------------------------ pruning (owner: prune)
def _pr() -> Any:
    return importlib.import_module("workbench.pruning")


def _scores(c: Ctx, **kw: Any) -> Any:
    return _pr().scores(c.vit, (c.x, c.y), **{"unit": "mlp", "progress": False, **kw})


case("pruning.scores", "images 0-255", lambda c: _pr().scores(c.vit, (c.xs("x255"), c.y), unit="mlp", progress=False),
     r"255")
case("pruning.scores", "images 3 channels", lambda c: _pr().scores(c.vit, (c.xs("chans3"), c.y), unit="mlp",
                                                                   progress=False), r"channel")
case("pruning.scores", "unknown criterion", lambda c: _scores(c, criterion="magic"), r"magic")
case("pruning.scores", "unit='channels' on a ViT", lambda c: _scores(c, unit="channels"), r"channels|unit")
case("pruning.scores", "batch_size=0", lambda c: _scores(c, batch_size=0), r"batch_size")
case("pruning.scores", "where='around'", lambda c: _scores(c, where="around"), r"where")
case("pruning.scores", "empty data", lambda c: _pr().scores(c.vit, (c.x[:0], c.y[:0]), unit="mlp", progress=False),
     r"empty")
case("pruning.prune", "ratio=1.5", lambda c: _pr().prune(c.vit, _scores(c), ratio=1.5), r"ratio")
case("pruning.prune", "not Scores", lambda c: _pr().prune(c.vit, {"blocks.0": torch.rand(4)}, ratio=0.5), r"Scores")
case("pruning.prune", "scope='model'", lambda c: _pr().prune(c.vit, _scores(c), ratio=0.5, scope="model"), r"scope")
case("pruning.prune", "scores of another model", lambda c: _pr().prune(c.cnn, _scores(c), ratio=0.5),
     r"model|layer|unit")
case("pruning.find_units", "unknown unit", lambda c: _pr().find_units(c.vit, "neurons"), r"neurons|unit")
case("pruning.kinds_of", "not a model", lambda c: _pr().kinds_of("vit"), r"model|Module")
case("pruning.size", "example of another size", lambda c: _pr().size(c.vit, torch.rand(1, 1, 48, 48)), r"32")
case("pruning.latency", "repeats=0", lambda c: _pr().latency({"a": c.vit}, c.x[:1], repeats=0), r"repeats")
case("pruning.latency", "min_round_s=-1", lambda c: _pr().latency({"a": c.vit}, c.x[:1], min_round_s=-1), r"min_round_s")
case("pruning.report", "images 0-255", lambda c: _pr().report(c.vit, c.vit, (c.xs("x255"), c.y), masks=False,
                                                              n_explain=2, repeats=1, bootstrap=0), r"255")
case("pruning.report", "bootstrap=-1", lambda c: _pr().report(c.vit, c.vit, c.ds, n_explain=2, repeats=1,
                                                              bootstrap=-1), r"bootstrap")
case("pruning.audit_gap", "unknown meta key", lambda c: _pr().audit_gap(c.cnn, c.ds, by="scanner"), r"scanner")
case("pruning.sweep", "ratio 1.2", lambda c: _pr().sweep(c.vit, (c.x, c.y), (c.x, c.y), ratios=(0.5, 1.2),
                                                          criteria=("random",), progress=False), r"ratio")
case("pruning.sweep", "epochs=-1", lambda c: _pr().sweep(c.vit, (c.x, c.y), (c.x, c.y), epochs=-1,
                                                         criteria=("random",), progress=False), r"epochs")
case("pruning.curve_area", "lengths differ", lambda c: _pr().curve_area([0.1, 0.5], [1.0]), r"length|ratios|values")
case("viz.score_profile", "not Scores", lambda c: _viz().score_profile({"a": 1}), r"Scores")
case("viz.sweep_curves", "not a SweepResult", lambda c: _viz().sweep_curves([1, 2]), r"SweepResult|sweep")
case("viz.report_figure", "not a PruneReport", lambda c: _viz().report_figure({"a": 1}), r"PruneReport|report")
case("widgets.pruner", "test set without labels", lambda c: importlib.import_module("workbench.widgets").pruner(
    c.vit, c.ds, c.x), r"dataset|labels")
case("cli.prune", "--ratio 1.5", lambda c: c.cli("prune", "--checkpoint", str(c.ckpt), "--data", _npz(c), "--out",
                                                 str(c.tmp / "p1"), "--ratio", "1.5"), r"ratio")
case("cli.prune", "unwritable --out", lambda c: c.cli("prune", "--checkpoint", str(c.ckpt), "--data", _npz(c),
                                                      "--out", str(c.unwritable)), r"writ|folder|director")


# ------------------------------------------------------------------ concept bottlenecks (owner: concepts)
def _cc() -> Any:
    return importlib.import_module("workbench.concepts")


_NO_CONCEPTS = lambda c: _data().ArrayDataset(c.x, c.y, classes=("a", "b"), task="binary")  # noqa: E731
case("concepts.create", "unknown mode", lambda c: _cc().create("vit_tiny", ["nodule"], 2, mode="hybrid", img_size=32,
                                                                in_chans=1, patch_size=8, depth=1), r"mode|hybrid")
case("concepts.create", "no concepts", lambda c: _cc().create("vit_tiny", [], 2, img_size=32, in_chans=1, patch_size=8,
                                                               depth=1), r"concept")
case("concepts.create", "num_classes=0", lambda c: _cc().create("vit_tiny", ["nodule"], 0, img_size=32, in_chans=1,
                                                                 patch_size=8, depth=1), r"num_classes")
case("concepts.create", "unknown head", lambda c: _cc().create("vit_tiny", ["nodule"], 2, head="tree", img_size=32,
                                                                in_chans=1, patch_size=8, depth=1), r"head|tree")
case("concepts.posthoc", "cavs not CAVs", lambda c: _cc().posthoc(c.vit, {"nodule": torch.rand(32)}, 2), r"CAV")
case("concepts.from_config", "not a config", lambda c: _cc().from_config({"name": "vit_tiny"}), r"config|concept")
case("concepts.calibrate_", "not a concept model", lambda c: _cc().calibrate_(c.cnn, c.ds), r"concept")
case("concepts.predict", "images 0-255", lambda c: _cc().predict(c.cbm, c.xs("x255")), r"255")
case("concepts.predict", "images 3 channels", lambda c: _cc().predict(c.cbm, c.xs("chans3")), r"channel")
case("concepts.predict", "not a concept model", lambda c: _cc().predict(c.cnn, c.x), r"concept")
case("concepts.intervene", "unknown concept", lambda c: _cc().intervene(c.cbm, c.x, {"tumour": 1.0}), r"tumour")
case("concepts.intervene", "images NaN", lambda c: _cc().intervene(c.cbm, c.xs("nan"), {"nodule": 1.0}), r"nan")
case("concepts.intervention_curve", "unknown order", lambda c: _cc().intervention_curve(c.cbm, c.ds, order="best"),
     r"order|best")
case("concepts.intervention_curve", "bootstrap=-1", lambda c: _cc().intervention_curve(c.cbm, c.ds, bootstrap=-1),
     r"bootstrap")
case("concepts.intervention_curve", "data without concepts", lambda c: _cc().intervention_curve(
    c.cbm, _NO_CONCEPTS(c), bootstrap=0), r"concept")
case("concepts.concept_maps", "unknown method", lambda c: _cc().concept_maps(c.cbm, c.x, method="magic"), r"magic|method")
case("concepts.concept_maps", "images 0-255", lambda c: _cc().concept_maps(c.cbm, c.xs("x255")), r"255")
case("concepts.score_concept_maps", "masks of another size", lambda c: _cc().score_concept_maps(
    _cc().concept_maps(c.cbm, c.batch["image"]), {"nodule": torch.zeros(4, 64, 64, dtype=torch.bool)}),
     r"64|size|resize")
case("concepts.quality", "data without concepts", lambda c: _cc().quality(c.cbm, _NO_CONCEPTS(c)), r"concept")
case("concepts.learn_cavs", "unknown layer", lambda c: _cc().learn_cavs(c.vit, {"nodule": c.x}, layer="blocks.9",
                                                                        negatives=c.x), r"blocks\.9")
case("concepts.learn_cavs", "too few examples", lambda c: _cc().learn_cavs(c.vit, {"nodule": c.x}, negatives=c.x),
     r"example")
case("concepts.tcav", "target out of range", lambda c: _cc().tcav(c.vit, c.x, {"nodule": c.x}, layer="blocks.1",
                                                                  target=5, random=c.x, min_examples=2), r"target|5")
case("concepts.layer_activations", "images 0-255", lambda c: _cc().layer_activations(c.vit, c.xs("x255"), "blocks.1"),
     r"255")
case("concepts.layer_activations", "unknown layer", lambda c: _cc().layer_activations(c.vit, c.x, "blocks.9"),
     r"blocks\.9")
case("concepts.concept_examples", "unknown concept", lambda c: _cc().concept_examples(c.ds, ["tumour"]), r"tumour")
case("concepts.random_images", "n=0", lambda c: _cc().random_images(c.ds, n=0), r"\bn\b")
case("concepts.test_time_improve", "not a concept model", lambda c: _cc().test_time_improve(c.cnn, c.ds), r"concept")
case("concepts.test_time_normalise", "a ViT without source images",
     lambda c: _cc().test_time_normalise(c.vit), r"source=")
case("concepts.test_time_normalise", "prior=-1", lambda c: _cc().test_time_normalise(c.cnn, prior=-1), r"prior")
case("concepts.test_time_normalise", "source images 0-255",
     lambda c: _cc().test_time_normalise(c.vit, c.xs("x255")), r"255")
case("concepts.test_time_align", "no source images", lambda c: _cc().test_time_align(c.vit, None, c.x), r"source=")
case("concepts.test_time_align", "site images 0-255", lambda c: _cc().test_time_align(c.vit, c.x, c.xs("x255")), r"255")
case("concepts.test_time_align", "site images 3 channels", lambda c: _cc().test_time_align(c.vit, c.x, c.xs("chans3")),
     r"channel")
case("concepts.test_time_align", "unknown layer", lambda c: _cc().test_time_align(c.vit, c.x, c.x, layers=["blocks.9"]),
     r"blocks\.9")
case("concepts.finetune_head", "steps=0", lambda c: _cc().finetune_head(c.cbm, c.ds, steps=0), r"steps")
case("concepts.support_set", "per_class=0", lambda c: _cc().support_set(c.ds, per_class=0), r"per_class")
case("concepts.fit_head", "on='labels'", lambda c: _cc().fit_head(c.cbm, c.ds, on="labels"), r"on must be one of")
case("concepts.fit_head", "a black-box model", lambda c: _cc().fit_head(c.cnn, c.ds), r"concept")
case("concepts.fit_head", "l2=-1", lambda c: _cc().fit_head(c.cbm, c.ds, l2=-1), r"l2")
case("set_threads", "threads=0", lambda c: importlib.import_module("workbench").set_threads(0), r"positive int or 'auto'")
case("set_threads", "threads='many'", lambda c: importlib.import_module("workbench").set_threads("many"),
     r"positive int or 'auto'")
case("concepts.concept_source", "unknown kind", lambda c: _cc().concept_source("magic", c.ds), r"magic|kind")
case("concepts.select_concepts", "unknown names", lambda c: _cc().select_concepts(c.ds, ["tumour"]), r"tumour")
case("concepts.with_concepts", "concepts of another length", lambda c: _cc().with_concepts(
    c.ds, torch.rand(3, 2), ["a", "b"]), r"3|16|concepts")
case("viz.contribution_bars", "not a prediction", lambda c: _viz().contribution_bars({"a": 1}), r"ConceptPrediction|predict")
case("viz.concept_intervention_curves", "not a curve", lambda c: _viz().concept_intervention_curves([1, 2]),
     r"InterventionCurve|curve")
case("viz.tcav_bars", "not a TCAV result", lambda c: _viz().tcav_bars({"a": 1}), r"TCAV")
case("viz.concept_map", "not ConceptMaps", lambda c: _viz().concept_map(torch.rand(2, 4, 4)), r"ConceptMaps")
case("viz.concept_panel", "not a prediction", lambda c: _viz().concept_panel({"a": 1}), r"ConceptPrediction|predict")
case("viz.alignment_heatmap", "not an Alignment", lambda c: _viz().alignment_heatmap({"a": 1}), r"Alignment")
case("viz.style", "unknown style", lambda c: _viz().style("poster").__enter__(), r"poster|style")
case("viz.use_style", "unknown style", lambda c: _viz().use_style("poster"), r"poster|style")
case("viz.draw", "unknown recipe", lambda c: _viz().draw("no_such_figure"), r"no_such_figure|recipe")
case("viz.rebuild", "missing sidecar", lambda c: _viz().rebuild(c.tmp / "none.json"), r"none\.json|not found")
case("models.saved_checkpoint", "not a model", lambda c: _models().saved_checkpoint("model"), r"model|Module")
case("widgets.concept_explorer", "not a concept model", lambda c: importlib.import_module(
    "workbench.widgets").concept_explorer(c.cnn, c.ds), r"concept")
case("cli.figure", "missing sidecar", lambda c: c.cli("figure", "rebuild", str(c.tmp / "none.json")),
     r"none\.json|not found")


# ------------------------------------------------------------------ CheXmask and dataset info (owner: data)
case("data.attach_chexmask", "missing csv", lambda c: _data().attach_chexmask(c.ds, c.tmp / "no.csv"), r"no\.csv")
case("data.attach_chexmask", "min_dice=2", lambda c: _data().attach_chexmask(c.ds, c.a_file, min_dice=2.0),
     r"min_dice")
case("data.dataset_info", "a string", lambda c: _data().dataset_info("phantom"), r"dataset")
case("data.decode_rle", "malformed", lambda c: _data().decode_rle("1 2 3", 4, 4), r"RLE|pairs")
case("data.decode_rle", "runs beyond the image", lambda c: _data().decode_rle("10 20", 4, 4), r"fit|16|beyond")
case("data.write_folder", "unwritable root", lambda c: _data().write_folder(c.ds, c.unwritable),
     r"writ|folder|director")
case("data.write_folder", "format='gif'", lambda c: _data().write_folder(c.ds, c.tmp / "wf", format="gif"),
     r"format|gif")
case("data.write_folder", "images 0-255", lambda c: _data().write_folder(
    _data().ArrayDataset(c.x, c.y, classes=("a", "b"), task="binary", transform=lambda s: {**s, "image": s["image"] * 255}),
    c.tmp / "wf255"), r"255")
case("data.write_chexmask_csv", "unwritable path", lambda c: _data().write_chexmask_csv(c.ds, c.unwritable / "m.csv"),
     r"writ|folder|director")
case("data.write_chexmask_csv", "no such structures", lambda c: _data().write_chexmask_csv(
    c.ds, c.tmp / "m.csv", structures=("liver",)), r"liver")
case("data.as_dataset", "a string", lambda c: _data().as_dataset("phantom"), r"dataset")
case("data.encode_rle", "a 3-D mask", lambda c: _data().encode_rle(np.zeros((2, 4, 4))), r"2-D|shape")


# ------------------------------------------------------------------ dataset-wide explanations (owner: data)
def _explain(c: Ctx, data: Any = None, **kw: Any) -> Any:
    kw = {"out": Path(tempfile.mkdtemp(dir=c.tmp)) / "explain", "method": "saliency", "progress": False, "num_workers": 0, **kw}
    return _wb().explain_dataset(c.cnn, c.ds if data is None else data, **kw)


case("explain_dataset", "unwritable out", lambda c: _explain(c, out=c.unwritable), r"writ|folder|director")
case("explain_dataset", "unknown method", lambda c: _explain(c, method="magic"), r"magic")
case("explain_dataset", "batch_size=0", lambda c: _explain(c, batch_size=0), r"batch_size")
case("explain_dataset", "target=5", lambda c: _explain(c, target=5), r"5|target")
case("explain_dataset", "on_error='ignore'", lambda c: _explain(c, on_error="ignore"), r"on_error")
case("explain_dataset", "images tensor, not a dataset", lambda c: _explain(c, data=c.x), r"dataset|labels")
case("explain_dataset", "empty dataset", lambda c: _explain(c, data=c.ds.subset([])), r"empty|item")
case("explain_dataset", "3-channel dataset", lambda c: _explain(c, data=_data().ArrayDataset(
    c.xs("chans3"), c.y, classes=("a", "b"), task="binary")), r"channel")
case("explain_dataset", "device='cuda' without a GPU", lambda c: _explain(c, device="cuda"), r"cuda|gpu")


# ------------------------------------------------------------------ the command line
_npz = lambda c: str(c.npz)  # noqa: E731
case("cli.train", "--device cuda without a GPU", lambda c: c.cli(
    "train", "--data", _npz(c), "--out", str(c.tmp / "t1"), "--epochs", "1", "--device", "cuda", "--no-progress"),
     r"cuda|gpu", issue=True)
case("cli.train", "unwritable --out", lambda c: c.cli(
    "train", "--data", _npz(c), "--out", str(c.unwritable), "--epochs", "1", "--no-progress"), r"writ|folder|director",
     issue=True)
case("cli.train", "read-only --out", lambda c: c.cli(
    "train", "--data", _npz(c), "--out", str(c.readonly.parent), "--epochs", "1", "--no-progress"), r"writ|permission",
     issue=True)
case("cli.train", "--epochs 0", lambda c: c.cli("train", "--data", _npz(c), "--out", str(c.tmp / "t2"), "--epochs",
                                                "0", "--no-progress"), r"epochs")
case("cli.train", "unknown --data", lambda c: c.cli("train", "--data", "phantomm", "--out", str(c.tmp / "t3")),
     r"phantomm")
case("cli.train", "unknown --model", lambda c: c.cli("train", "--data", _npz(c), "--model", "resnet19", "--out",
                                                     str(c.tmp / "t4"), "--no-progress"), r"resnet19")
case("cli.train", "--size -3", lambda c: c.cli("train", "--data", _npz(c), "--size", "-3", "--out", str(c.tmp / "t5")),
     r"size")
case("cli.train", "--batch-size 0", lambda c: c.cli("train", "--data", _npz(c), "--batch-size", "0", "--out",
                                                    str(c.tmp / "t6"), "--no-progress"), r"batch")
case("cli.train", "--lr abc", lambda c: c.cli("train", "--data", _npz(c), "--lr", "abc", "--out", str(c.tmp / "t7")),
     r"lr|float")
case("cli.evaluate", "missing --checkpoint", lambda c: c.cli("evaluate", "--checkpoint", str(c.tmp / "none"), "--data",
                                                             _npz(c)), r"not found")
case("cli.evaluate", "--device cuda without a GPU", lambda c: c.cli(
    "evaluate", "--checkpoint", str(c.ckpt), "--data", _npz(c), "--device", "cuda", "--bootstrap", "0"), r"cuda|gpu",
     issue=True)
case("cli.evaluate", "--bootstrap -1", lambda c: c.cli("evaluate", "--checkpoint", str(c.ckpt), "--data", _npz(c),
                                                       "--bootstrap", "-1", "--device", "cpu"), r"bootstrap")
case("cli.evaluate", "--split tst", lambda c: c.cli("evaluate", "--checkpoint", str(c.ckpt), "--data", _npz(c),
                                                    "--split", "tst", "--device", "cpu"), r"split")
case("cli.explain", "unwritable --out", lambda c: c.cli("explain", "--checkpoint", str(c.ckpt), "--data", _npz(c),
                                                        "--out", str(c.unwritable), "--no-progress"), r"writ|folder|director")
case("cli.explain", "--device cuda without a GPU", lambda c: c.cli(
    "explain", "--checkpoint", str(c.ckpt), "--data", _npz(c), "--out", str(c.tmp / "e1"), "--device", "cuda",
    "--no-progress"), r"cuda|gpu")
case("cli.explain", "unknown --method", lambda c: c.cli("explain", "--checkpoint", str(c.ckpt), "--data", _npz(c),
                                                        "--out", str(c.tmp / "e2"), "--method", "magic", "--no-progress"),
     r"magic")
case("cli.explain", "--batch-size 0", lambda c: c.cli("explain", "--checkpoint", str(c.ckpt), "--data", _npz(c),
                                                      "--out", str(c.tmp / "e3"), "--batch-size", "0", "--no-progress"),
     r"batch")
case("cli.notebook", "unknown notebook", lambda c: c.cli("notebook", "99_nothing", "--out", str(c.tmp / "nb0")),
     r"99_nothing")
case("cli.notebook", "--param without =", lambda c: c.cli("notebook", "00", "--param", "epochs", "--out",
                                                          str(c.tmp / "nb")), r"param|KEY=VALUE|=")
case("cli.notebook", "unwritable --out", lambda c: c.cli("notebook", "00", "--out", str(c.unwritable)),
     r"writ|folder|director")
case("cli.demo", "unwritable --out", lambda c: c.cli("demo", "--quick", "--no-progress", "--out", str(c.unwritable)),
     r"writ|folder|director", issue=True)
case("cli.demo", "--device cuda without a GPU", lambda c: c.cli(
    "demo", "--quick", "--no-progress", "--device", "cuda", "--out", str(c.tmp / "d1")), r"cuda|gpu", issue=True)
case("cli.demo", "--epochs 0", lambda c: c.cli("demo", "--quick", "--no-progress", "--epochs", "0", "--out",
                                               str(c.tmp / "d2")), r"epochs")


# =================================================================================================
# scoring
# =================================================================================================
def _raised_in_workbench(tb: Any) -> bool:
    import workbench

    frames = traceback.extract_tb(tb)
    if not frames or not frames[-1].filename.startswith(str(Path(workbench.__file__).parent)):
        return False
    # an explicit ``raise`` in workbench, not an IndexError of tensor indexing surfacing in a workbench line
    return (frames[-1].line or "").lstrip().startswith("raise")


def classify(c: Case, ctx: Ctx) -> tuple[str, str]:
    """(outcome, detail) of running case ``c`` (see the module docstring for the rules)."""
    says = re.compile(c.says, re.I) if c.says else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = c.call(ctx)
        except Exception as e:  # noqa: BLE001 - scoring every exception is the point
            msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
            detail = f"{type(e).__name__}: {msg}"
            if c.expect == "ok":
                return "false alarm", detail
            clear = (isinstance(e, USER_ERRORS) and _raised_in_workbench(e.__traceback__)
                     and not msg.startswith("[Errno") and (says is None or bool(says.search(msg))))
            return ("clear" if clear else "unclear"), detail
        finally:
            import matplotlib.pyplot as plt

            plt.close("all")
    warned = [str(w.message) for w in caught if says is not None and says.search(str(w.message))]
    if c.verb.startswith("cli."):
        code, err = result
        lines = [ln for ln in err.strip().splitlines() if ln.strip()]
        detail = f"exit {code}: {err.strip()[-300:]}"
        if code == 0:
            return "silent", detail
        one_line = [ln for ln in lines if ln.startswith("workbench") or ln.startswith("usage:")]
        ok = (one_line and "Traceback" not in err and "[Errno" not in err
              and (says is None or bool(says.search(err))))
        return ("clear" if ok else "unclear"), detail
    if c.expect == "ok":
        return "fine", "ran"
    if c.expect == "warn" and warned:
        return "clear", f"warned: {warned[0]}"
    return "silent", "returned without an error" + (f" (warnings: {[str(w.message)[:80] for w in caught]})"
                                                     if caught else "")


def public_verbs() -> list[str]:
    """Dotted names of the public verbs on this checkout (functions exported by ``workbench`` and
    by each namespace in ``NAMESPACES`` that exists, the classes of ``CLASS_VERBS``, and one
    ``cli.<command>`` per CLI command)."""
    import workbench as wb
    from workbench.cli import COMMANDS

    out = set(CLASS_VERBS)
    seen: set[int] = set()  # one name per function (wb.fit is wb.train.fit)
    for name in wb.__all__:
        obj = getattr(wb, name, None)
        if inspect.isfunction(obj):
            out.add(name)
            seen.add(id(obj))
    root = Path(wb.__file__).parent
    for ns in NAMESPACES:
        if not ((root / ns).is_dir() or (root / f"{ns}.py").is_file()):
            continue  # that capability is not on this checkout yet (an editable install may see another tree)
        try:
            mod = importlib.import_module(f"workbench.{ns}")
        except ModuleNotFoundError as e:
            if e.name and e.name.startswith(f"workbench.{ns}"):
                continue  # that capability is not on this checkout yet
            raise
        for name in getattr(mod, "__all__", ()):
            try:
                obj = getattr(mod, name)
            except (AttributeError, ImportError):
                continue
            if inspect.ismodule(obj):
                if name == "transforms":
                    out.add(f"{ns}.transforms")
                continue
            if inspect.isfunction(obj) and id(obj) not in seen:
                out.add(f"{ns}.{name}")
                seen.add(id(obj))
    out.update(f"cli.{c}" for c in COMMANDS)
    return sorted(out)


# ------------------------------------------------------------------ lesion evidence and burnt-in marks
def _marks(x: Any, **kw: Any) -> Any:
    return importlib.import_module("workbench.evaluation").burnt_in_marks(x, **kw)


for _kind in ("x255", "nan", "inf", "list", "empty", "standardised", "int64", "bool", "float64"):
    _says, _expect, _issue = IMAGE_KINDS[_kind]
    case("evaluation.burnt_in_marks", f"images {_kind}", lambda c, k=_kind: _marks(c.xs(k)), _says, _expect, _issue)
case("evaluation.burnt_in_marks", "images uint8 (documented: scaled by 1/255)", lambda c: _marks(c.xs("uint8")),
     expect="ok")
case("evaluation.burnt_in_marks", "threshold=2", lambda c: _marks(c.x, threshold=2.0), r"threshold")
case("evaluation.burnt_in_marks", "max_size=0", lambda c: _marks(c.x, max_size=0), r"max_size")
case("evaluation.burnt_in_marks", "dilate=-1", lambda c: _marks(c.x, dilate=-1), r"dilate")
case("attribution.recommend", "unknown modality", lambda c: importlib.import_module(
    "workbench.attribution").recommend(c.cnn, modality="mri"), r"mri.*known modalities")
case("attribution.recommend", "a model name instead of a model", lambda c: importlib.import_module(
    "workbench.attribution").recommend("resnet18", modality="ultrasound"), r"nn.Module|model")


def verbs_without_cases() -> list[str]:
    covered = {c.verb for c in CASES}
    return [v for v in public_verbs() if v not in covered and v not in EXEMPT]


def run_all(cases: list[Case] | None = None) -> list[dict[str, Any]]:
    """Classify every case; one dict per case (verb, name, outcome, detail, issue). Cases of verbs
    that this checkout does not have (an older commit) get the outcome "absent"."""
    ctx = Ctx()
    rows = []
    present = set(public_verbs()) | set(EXEMPT)
    try:
        for c in cases or CASES:
            torch.manual_seed(0)
            if c.verb not in present and c.verb != "data.transforms":
                rows.append({"verb": c.verb, "name": c.name, "expect": c.expect, "outcome": "absent",
                             "detail": "verb not in this checkout", "issue": c.issue})
                continue
            outcome, detail = classify(c, ctx)
            rows.append({"verb": c.verb, "name": c.name, "expect": c.expect, "outcome": outcome,
                         "detail": detail.replace("\n", " ")[:300], "issue": c.issue})
    finally:
        ctx.close()
    return rows


if __name__ == "__main__":  # quick look: python tests/bad_inputs.py [verb-prefix]
    prefix = sys.argv[1] if len(sys.argv) > 1 else ""
    for r in run_all([c for c in CASES if c.verb.startswith(prefix)]):
        print(f"{r['outcome']:12s} {r['verb']:32s} {r['name']:40s} {r['detail'][:150]}")
