"""Run the project's notebooks with other parameters, and keep their paired sources in sync.

A notebook's source is a jupytext percent script ``notebooks/NN_name.py`` paired with
``notebooks/NN_name.ipynb`` (committed without outputs). Its first code cell is tagged
``parameters`` (papermill's convention): plain assignments, one name per line, whose literal
defaults give each parameter its type. Small settings for the test suite are declared in the
notebook's own metadata, in the script's header::

    # ---
    # jupyter:
    #   workbench:
    #     test_parameters: {N_TRAIN: 64, EPOCHS: 1}
    # ---

:func:`run` executes a notebook through papermill (which injects the given values in a cell after
the parameters cell) in the notebooks folder, so relative paths resolve as in JupyterLab, and
writes the executed copy to ``out``; a notebook with an ``OUT`` parameter writes its figures there
too. :func:`check` reports pairs that are out of sync and :func:`sync` rewrites each ``.ipynb``
from its script. The command line is ``workbench notebook`` (``workbench.cli.notebook``).

Papermill and jupytext do the work (parameter injection, inspection of the parameters cell,
pairing); this module adds only the checks a user needs: names and types of parameters against
the parameters cell, and clear errors.

Examples:
    >>> names()[:1]                                                       # doctest: +SKIP
    ['00_quickstart']
    >>> result = run("quickstart", {"EPOCHS": 1}, out="runs/quick")       # doctest: +SKIP
"""
from __future__ import annotations

import ast
import contextlib
import dataclasses
import os
import re
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

__all__ = ["Parameter", "NotebookRun", "NotebookError", "notebooks_dir", "names", "find", "parameters",
           "test_parameters", "parse_param", "check_parameters", "parameterize", "run", "check", "sync"]

#: a notebook source: two digits, an underscore, a name (``00_quickstart.py``)
SOURCE_PATTERN = re.compile(r"^\d\d_\w+\.py$")
#: the per-cell timeout of a run (seconds): generous, for a loaded machine; the work is kept small
CELL_TIMEOUT = 600
#: seconds a kernel may take to start on a busy machine
START_TIMEOUT = 180


class NotebookError(RuntimeError):
    """A notebook raised while it ran; the message names the cell and where the executed copy is."""


@dataclasses.dataclass(frozen=True)
class Parameter:
    """One assignment of a notebook's parameters cell.

    Attributes:
        name: the variable name.
        default: its default value (a Python literal), or None when the default is not a literal.
        source: the default as written in the cell.
        type: the expected type's name ("int", "float", "str", "bool", "list", "dict", or "any").
        help: the comment after the assignment.
    """

    name: str
    default: Any
    source: str
    type: str
    help: str = ""


@dataclasses.dataclass(frozen=True)
class NotebookRun:
    """The result of :func:`run`.

    Attributes:
        name: the notebook's name (``00_quickstart``).
        output: the executed copy (``out/<name>.ipynb``).
        parameters: the values injected.
        seconds: wall time of the whole run (kernel start included).
        cell_seconds: wall time of each code cell, in order (papermill's record).
    """

    name: str
    output: Path
    parameters: dict[str, Any]
    seconds: float
    cell_seconds: tuple[float, ...]


# ---------------------------------------------------------------------------------------- finding


def notebooks_dir(root: str | os.PathLike | None = None) -> Path:
    """The notebooks folder: ``root``, else ``$WORKBENCH_NOTEBOOKS``, else the repository's
    ``notebooks/`` beside the package (an editable install), else ``./notebooks``."""
    if root is None:
        root = os.environ.get("WORKBENCH_NOTEBOOKS")
    if root is not None:
        path = Path(root).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"notebooks folder {path} does not exist; pass the folder that holds "
                                    "NN_name.py / NN_name.ipynb pairs.")
        return path
    for path in (Path(__file__).resolve().parents[1] / "notebooks", Path.cwd() / "notebooks"):
        if path.is_dir():
            return path
    raise FileNotFoundError("no notebooks folder found beside the package or in the current folder; "
                            "pass root= (CLI: --dir) or set WORKBENCH_NOTEBOOKS.")


def names(root: str | os.PathLike | None = None) -> list[str]:
    """Names (``NN_name``) of the notebooks: every ``NN_name.py`` or ``NN_name.ipynb`` in the folder."""
    folder = notebooks_dir(root)
    stems = {p.stem for p in folder.glob("*.py") if SOURCE_PATTERN.match(p.name)}
    stems |= {p.stem for p in folder.glob("*.ipynb") if SOURCE_PATTERN.match(p.stem + ".py")}
    return sorted(stems)


def find(name: str, root: str | os.PathLike | None = None) -> Path:
    """The ``.py`` source of notebook ``name``: its full name (``00_quickstart``), its name without
    the number (``quickstart``), its number (``00`` or ``0``), with or without a suffix."""
    valid = names(root)
    if not isinstance(name, str):
        raise TypeError(f"notebook name must be a string; got {type(name).__name__}. Valid: {', '.join(valid)}.")
    key = Path(name).name
    key = key[: -len(Path(key).suffix)] if Path(key).suffix in (".py", ".ipynb") else key
    hits = [n for n in valid if key in (n, n.split("_", 1)[1]) or (key.isdigit() and int(key) == int(n[:2]))]
    if len(hits) != 1:
        what = "matches several notebooks" if hits else "is not a notebook here"
        raise ValueError(f"{name!r} {what}; valid notebooks: {', '.join(valid)} (in {notebooks_dir(root)}); "
                         "give the full name, the name without its number, or the number.")
    return notebooks_dir(root) / f"{hits[0]}.py"


def _read(name: str, root: str | os.PathLike | None) -> Any:
    """The notebook read from its ``.py`` source (falling back to the ``.ipynb``)."""
    import jupytext

    path = find(name, root)
    return jupytext.read(path if path.exists() else path.with_suffix(".ipynb"))


def _parameters_cell(nb: Any, name: str) -> Any:
    code = [c for c in nb.cells if c.cell_type == "code"]
    if not code or "parameters" not in code[0].metadata.get("tags", []):
        raise ValueError(f"notebook {name}: the first code cell must be tagged 'parameters' (papermill's "
                         "convention); in the .py source write its header as: # %% tags=[\"parameters\"]")
    return code[0]


# -------------------------------------------------------------------------------------- parameters

_TYPES: dict[str, tuple[type, ...]] = {"bool": (bool,), "int": (int,), "float": (int, float), "str": (str,),
                                       "list": (list, tuple), "tuple": (list, tuple), "dict": (dict,)}


def _type_name(value: Any) -> str:
    if value is None:
        return "any"
    name = type(value).__name__
    return "list" if name == "tuple" else (name if name in _TYPES else "any")


def parameters(name: str, root: str | os.PathLike | None = None) -> dict[str, Parameter]:
    """The parameters of notebook ``name``, read from its ``parameters`` cell by papermill's
    inspector (names, defaults as written, help comments); types follow the literal defaults (an
    annotation such as ``EPOCHS: int = 3`` wins)."""
    from papermill.translators import PythonTranslator

    nb = _read(name, root)
    cell = _parameters_cell(nb, find(name, root).stem)
    out = {}
    for p in PythonTranslator.inspect(cell):
        try:
            default = ast.literal_eval(p.default)
            typ = _type_name(default)
        except (ValueError, SyntaxError):
            default, typ = None, "any"
        if p.inferred_type_name in _TYPES:
            typ = "list" if p.inferred_type_name == "tuple" else p.inferred_type_name
        out[p.name] = Parameter(p.name, default, p.default, typ, p.help or "")
    assigned = [t.id for node in ast.parse(cell.source).body if isinstance(node, (ast.Assign, ast.AnnAssign))
                for t in (node.targets if isinstance(node, ast.Assign) else [node.target]) if isinstance(t, ast.Name)]
    lost = [n for n in assigned if n not in out]
    if lost:   # papermill skips (with a log warning) a line holding a second "=", e.g. in its comment
        raise ValueError(f"notebook {name}: parameter(s) {lost} of the parameters cell cannot be read by papermill; "
                         "write one '=' per line (none in the help comment).")
    return out


def test_parameters(name: str, root: str | os.PathLike | None = None) -> dict[str, Any]:
    """The small settings the test suite runs notebook ``name`` with (its metadata
    ``workbench.test_parameters``; empty when it declares none)."""
    nb = _read(name, root)
    return dict((nb.metadata.get("workbench") or {}).get("test_parameters") or {})


def parse_param(text: str) -> tuple[str, Any]:
    """``"KEY=VALUE"`` -> ``(KEY, value)``: VALUE as a Python literal (``3``, ``0.5``, ``[1, 2]``,
    ``{"a": 1}``, ``None``, ``True``), else as the string itself."""
    if not isinstance(text, str) or "=" not in text:
        raise ValueError(f"a parameter is KEY=VALUE (e.g. EPOCHS=3 or SOURCE=phantom); got {text!r}.")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = ast.literal_eval(raw.strip())
    except (ValueError, SyntaxError):
        value = raw
    return key, _Raw(value, raw)


class _Raw:
    """A value parsed from the command line that remembers its text (``SOURCE=123`` is a str)."""

    def __init__(self, value: Any, text: str) -> None:
        self.value, self.text = value, text

    def __repr__(self) -> str:
        return repr(self.value)


def check_parameters(name: str, params: Mapping[str, Any], root: str | os.PathLike | None = None) -> dict[str, Any]:
    """Check ``params`` against notebook ``name``'s parameters cell and return them as plain values.

    Raises:
        ValueError: a name is not a parameter of the notebook (the valid ones are listed).
        TypeError: a value's type differs from its default's (ints are accepted for floats, lists
            for tuples; None only where the default is None).
    """
    spec = parameters(name, root)
    stem = find(name, root).stem
    unknown = [k for k in params if k not in spec]
    if unknown:
        listing = "; ".join(f"{p.name} = {p.source}" + (f"  ({p.help})" if p.help else "") for p in spec.values())
        raise ValueError(f"notebook {stem} has no parameter(s) {unknown}; its parameters are: {listing}.")
    out = {}
    for key, value in params.items():
        p = spec[key]
        text = value.text if isinstance(value, _Raw) else None
        value = value.value if isinstance(value, _Raw) else value
        if p.type == "str" and text is not None and not isinstance(value, str):
            value = text.strip()  # SOURCE=123 on the command line means the string "123"
        ok = p.type == "any" or (isinstance(value, _TYPES[p.type]) and not (
            isinstance(value, bool) and p.type in ("int", "float")))
        if not ok:
            raise TypeError(f"parameter {key} of notebook {stem} must be {p.type} (its default is {p.source}); "
                            f"got {value!r} ({type(value).__name__}). On the command line write e.g. "
                            f"--param {key}={p.source}.")
        out[key] = list(value) if isinstance(value, tuple) else value
    return out


# -------------------------------------------------------------------------------------------- run


def parameterize(name: str, params: Mapping[str, Any], path: str | os.PathLike,
                 root: str | os.PathLike | None = None) -> Path:
    """Write notebook ``name`` to ``path`` with ``params`` injected after its parameters cell, not
    executed (papermill's injection, the same as :func:`run` uses): for opening in JupyterLab.

    Returns:
        ``path``.
    """
    import nbformat
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    from workbench._io import atomic_write_text

    source = find(name, root)
    values = check_parameters(source.stem, dict(params), root)
    nb = parameterize_notebook(load_notebook_node(str(source.with_suffix(".ipynb"))), values)
    atomic_write_text(path, nbformat.writes(nb))
    return Path(path)


_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


@contextlib.contextmanager
def _kernel_env(threads: int | None) -> Iterator[None]:
    """The kernel imports this same ``workbench`` (its folder first on PYTHONPATH), draws figures
    inline (an MPLBACKEND=Agg set for tests would leave the executed copy without pictures) and,
    with ``threads``, runs torch on that many threads."""
    here = str(Path(__file__).resolve().parents[1])
    old = {k: os.environ.get(k) for k in ("PYTHONPATH", "MPLBACKEND", *_THREAD_VARS)}
    paths = [p for p in (old["PYTHONPATH"] or "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join([here] + [p for p in paths if p != here])
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    if threads is not None:
        for k in _THREAD_VARS:
            os.environ[k] = str(int(threads))
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _failure(nb_path: Path, stem: str, err: Exception) -> NotebookError:
    import nbformat

    cell, where = None, ""
    try:
        nb = nbformat.read(nb_path, as_version=4)
        cell = next((c for c in nb.cells if c.cell_type == "code" and any(
            o.get("output_type") == "error" for o in c.get("outputs", []))), None)
    except Exception:  # the copy may be missing when the kernel never started
        pass
    if cell is not None:
        first = next((line for line in cell.source.splitlines() if line.strip() and not line.startswith("#")), "")
        where = f" in the cell starting `{first.strip()[:80]}`"
    ename, evalue = getattr(err, "ename", type(err).__name__), getattr(err, "evalue", str(err))
    return NotebookError(f"notebook {stem} failed{where}: {ename}: {str(evalue).strip()[:500]}. "
                         f"The executed copy with the traceback is {nb_path}.")


def run(name: str, params: Mapping[str, Any] | None = None, *, out: str | os.PathLike,
        root: str | os.PathLike | None = None, kernel: str | None = None, timeout: int = CELL_TIMEOUT,
        threads: int | None = None, log_output: bool = False) -> NotebookRun:
    """Execute notebook ``name`` with ``params`` and write the executed copy to ``out``.

    Args:
        name: a notebook name (see :func:`find`).
        params: {parameter: value}, checked against the parameters cell (:func:`check_parameters`).
            When the notebook has an ``OUT`` parameter and ``params`` does not set it, ``OUT`` is
            ``out`` (the notebook's figures land beside the executed copy).
        out: folder for the executed copy ``<name>.ipynb`` (created).
        root: the notebooks folder (:func:`notebooks_dir`).
        kernel: Jupyter kernel name (default: the notebook's own, ``python3``).
        timeout: seconds each cell may run.
        threads: CPU threads for torch in the kernel (OMP_NUM_THREADS); None keeps the default (all
            cores). On a machine shared with other jobs 1 is often several times faster: the test
            suite uses 1.
        log_output: echo the cells' outputs to the log while running.

    Returns:
        A :class:`NotebookRun` (the executed copy's path and timings).

    Raises:
        ValueError, TypeError: unknown notebook or parameter, wrong type, out-of-sync pair.
        NotebookError: a cell raised (the message names it; the copy keeps the traceback).
    """
    import papermill

    source = find(name, root)
    problems = check(root, only=[source.stem])
    if problems:
        raise ValueError(" ".join(problems))
    values = check_parameters(source.stem, dict(params or {}), root)
    out = Path(out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    if "OUT" in parameters(source.stem, root) and "OUT" not in values:
        values["OUT"] = str(out)
    target = out / f"{source.stem}.ipynb"
    t0 = time.perf_counter()
    try:
        with _kernel_env(threads):
            nb = papermill.execute_notebook(str(source.with_suffix(".ipynb")), str(target), parameters=values,
                                            cwd=str(source.parent), kernel_name=kernel, progress_bar=False,
                                            log_output=log_output, execution_timeout=timeout,
                                            start_timeout=START_TIMEOUT, report_mode=False)
    except Exception as e:  # PapermillExecutionError, a kernel that died or timed out
        raise _failure(target, source.stem, e) from e
    seconds = time.perf_counter() - t0
    cells = tuple(float((c.metadata.get("papermill") or {}).get("duration") or 0.0)
                  for c in nb.cells if c.cell_type == "code")
    return NotebookRun(source.stem, target, values, seconds, cells)


# ---------------------------------------------------------------------------------------- pairing


def _cells(nb: Any) -> list[tuple[str, str, tuple[str, ...]]]:
    return [(c.cell_type, c.source.strip(), tuple(c.metadata.get("tags", []))) for c in nb.cells]


def check(root: str | os.PathLike | None = None, only: Sequence[str] | None = None) -> list[str]:
    """Problems with the notebook pairs (empty when all is well): a script without its ``.ipynb``
    or the reverse, cells that differ, outputs committed, a first code cell not tagged
    ``parameters``, test parameters that are not parameters."""
    import jupytext
    import nbformat

    folder = notebooks_dir(root)
    problems = []
    fix = f"run `workbench notebook --sync` (rewrites each .ipynb from its .py) in {folder.parent}"
    for stem in names(root) if only is None else only:
        py, ipynb = folder / f"{stem}.py", folder / f"{stem}.ipynb"
        if not py.exists() or not ipynb.exists():
            have, lack = (py, ipynb) if py.exists() else (ipynb, py)
            hint = fix if py.exists() else f"create it with `jupytext --to py:percent {ipynb}`"
            problems.append(f"{have.name} has no paired {lack.name}: {hint}.")
            continue
        text, paired = jupytext.read(py), nbformat.read(ipynb, as_version=4)
        a, b = _cells(text), _cells(paired)
        if a != b:
            i = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            problems.append(f"{py.name} and {ipynb.name} are out of sync (first difference at cell {i}; "
                            f"{len(a)} vs {len(b)} cells): edit the .py (the source) and {fix}.")
        if any(c.get("outputs") or c.get("execution_count") for c in paired.cells if c.cell_type == "code"):
            problems.append(f"{ipynb.name} is committed with outputs: {fix} (or clear them in JupyterLab).")
        try:
            _parameters_cell(text, stem)
        except ValueError as e:
            problems.append(str(e))
            continue
        declared = (text.metadata.get("workbench") or {}).get("test_parameters") or {}
        try:
            check_parameters(stem, declared, root)
        except (ValueError, TypeError) as e:
            problems.append(f"test_parameters in the header of {py.name}: {e}")
    return problems


def sync(root: str | os.PathLike | None = None) -> list[Path]:
    """Rewrite each ``.ipynb`` from its ``.py`` source, without outputs; returns the files written."""
    import jupytext
    import nbformat

    from workbench._io import atomic_write_text

    folder = notebooks_dir(root)
    written = []
    for stem in names(root):
        py, ipynb = folder / f"{stem}.py", folder / f"{stem}.ipynb"
        if not py.exists():
            continue
        nb = jupytext.read(py)
        for i, c in enumerate(nb.cells):
            c.id = f"c{i:02d}"  # stable ids: a re-sync of an unchanged script rewrites nothing
            if c.cell_type == "code":
                c.outputs, c.execution_count = [], None
        nb.metadata.setdefault("jupytext", {})["formats"] = "ipynb,py:percent"
        nb.metadata["jupytext"].pop("text_representation", None)
        text = nbformat.writes(nb)
        if not ipynb.exists() or ipynb.read_text(encoding="utf-8") != text:
            atomic_write_text(ipynb, text)
            written.append(ipynb)
    return written
