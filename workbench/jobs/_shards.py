"""Numbered shards written through temporary folders, a spec that refuses mixing, a manifest written
last, resume, and rank 0's merge (see the package docstring for the layout and an example)."""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from workbench._checks import check_output_path
from workbench._io import atomic_path, atomic_write_text
from workbench.jobs._dist import Dist, broadcast, distributed

FORMAT = "workbench.jobs/1"
SPEC_FILE, MANIFEST_FILE, TABLE_FILE, SHARD_DIR = "job.json", "manifest.json", "table.parquet", "shards"
_SHARD_RE = re.compile(r"^\d{6}$")
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def _jsonable(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples become lists), so specs compare equal after a reload."""
    try:
        return json.loads(json.dumps(obj, sort_keys=True))
    except TypeError as e:
        raise TypeError(f"a job spec must be JSON-serialisable (str, numbers, lists, dicts); {e}. Put names, "
                        "configs and fingerprints in it (workbench.jobs.fingerprint), not objects.") from e


def _diff(a: Any, b: Any, path: str = "") -> list[str]:
    """Where two JSON values differ, as dotted paths (at most a few)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{path}.{k}" if path else str(k))
        return out
    return [] if a == b else [path or "(value)"]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"could not read {path} ({type(e).__name__}: {e}); the job folder is damaged. "
                         "Delete the folder (or that file) and run the job again.") from e


def _shard_name(k: int) -> str:
    return f"{k:06d}"


class Shard:
    """One numbered block of consecutive dataset indices, written once by one rank.

    Attributes:
        index: shard number k (the folder ``shards/<k:06d>``).
        indices: the dataset indices it covers, ``range(start, stop)``.
    """

    def __init__(self, job: "Job", index: int, indices: range) -> None:
        self.job, self.index, self.indices = job, index, indices
        self.written = False
        self._batches: Iterator[Any] | None = None

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[Any]:
        """The shard's batches, when the job was iterated with ``job.shards(data, ...)``."""
        if self._batches is None:
            raise TypeError("this shard has no batches: iterate job.shards(data, batch_size=...) to get them, "
                            "or read the dataset at shard.indices yourself.")
        return self._batches

    def __repr__(self) -> str:
        return f"Shard({self.index}, indices={self.indices.start}..{self.indices.stop - 1})"

    def write(self, arrays: Mapping[str, Any] | None = None, rows: Any = None) -> None:
        """Write this shard's results; the shard counts as finished only once this returns.

        Args:
            arrays: {name: (len(shard), ...) array or tensor}; floating arrays are stored in the
                job's dtype (float16 by default), others as they are.
            rows: per-image table rows: a pandas DataFrame, a list of dicts or a dict of columns,
                ``len(shard)`` rows; an ``index`` column (the dataset index) is added.

        Raises:
            ValueError: wrong lengths or names, values that overflow float16, or a shard that
                another process finished meanwhile.
        """
        if self.written:
            raise ValueError(f"shard {self.index} was already written; each shard is written once.")
        self.job._write_shard(self, dict(arrays or {}), rows)
        self.written = True


class Job:
    """A dataset-wide job writing numbered shards into ``out``, safe to interrupt and rerun.

    Creating it checks (or, the first time, writes) ``out/job.json``: a folder written with
    another spec (model, method, data, shard size...) is refused rather than mixed. Every rank of
    a ``torchrun`` launch creates the same Job; finished shards are skipped and the unfinished
    ones are dealt out to the ranks in turn.

    Args:
        out: the job's folder (created).
        spec: JSON-serialisable description of what produces the shards (model fingerprint,
            method and its parameters, data fingerprint...): ``workbench.jobs.fingerprint``.
        n: number of dataset items.
        shard_size: items per shard (the last one may be shorter).
        dtype: storage type of floating arrays ("float16", or "float32" for values beyond
            float16's range of +-65504).
        progress: show a progress bar on rank 0.
        desc: the progress bar's label.
        overwrite: when ``out`` holds a job with another spec, delete its files (job.json,
            manifest.json, table.parquet, shards/) and start over instead of refusing.
    """

    def __init__(self, out: str | os.PathLike, spec: Mapping[str, Any], n: int, *, shard_size: int = 256,
                 dtype: str = "float16", progress: bool = True, desc: str = "job", overwrite: bool = False) -> None:
        if not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"a job needs at least one item; got n={n!r} (is the dataset empty?).")
        if not isinstance(shard_size, (int, np.integer)) or shard_size < 1:
            raise ValueError(f"shard_size must be a positive int; got {shard_size!r}.")
        if np.dtype(dtype).kind != "f":
            raise ValueError(f"dtype must be a floating type such as 'float16' or 'float32'; got {dtype!r}.")
        self.out = Path(out).expanduser()
        if self.out.exists() and not self.out.is_dir():
            raise NotADirectoryError(f"{self.out} is a file; a job writes a folder. Pass a folder path for out.")
        check_output_path(self.out, name="out", directory=True)  # writable, before any rank starts work
        self.n, self.shard_size, self.dtype = int(n), int(shard_size), np.dtype(dtype)
        self.num_shards = math.ceil(self.n / self.shard_size)
        self.header = _jsonable({"format": FORMAT, "spec": dict(spec), "n": self.n, "shard_size": self.shard_size,
                                 "dtype": self.dtype.name})
        self.dist: Dist = distributed()
        self.progress, self.desc = progress, desc
        error = None
        if self.dist.is_main:  # rank 0 alone judges and prepares the folder; every rank gets its verdict
            try:
                same = self._check_folder(refuse=not overwrite)
                self.replace = overwrite and not same
                self._prepare_folder()
            except ValueError as e:
                error = ("ValueError", str(e))
            except OSError as e:
                error = ("OSError", f"could not prepare {self.out} ({type(e).__name__}: {e})")
        error = broadcast(error)        # also the barrier: nobody lists shards before rank 0 cleaned up
        if error:
            raise (ValueError if error[0] == "ValueError" else OSError)(error[1])
        finished = broadcast(sorted(self._finished()) if self.dist.is_main else None)
        self.done = (self.out / MANIFEST_FILE).is_file() and len(finished) == self.num_shards
        pending = [k for k in range(self.num_shards) if k not in set(finished)]
        self.finished_before = len(finished)
        self.mine = [Shard(self, k, self._range(k)) for k in pending[self.dist.rank::self.dist.world_size]]
        self._bar = None

    # --- folder bookkeeping
    def _range(self, k: int) -> range:
        return range(k * self.shard_size, min(self.n, (k + 1) * self.shard_size))

    def _check_folder(self, refuse: bool = True) -> bool:
        """Whether ``out`` is empty of jobs or holds this one; another job's folder raises when ``refuse``."""
        spec_file = self.out / SPEC_FILE
        if spec_file.is_file():
            old = _read_json(spec_file)
            if old != self.header and refuse:
                where = ", ".join(_diff(old, self.header)[:6])
                raise ValueError(f"{self.out} holds the output of another job (they differ in: {where}); "
                                 "refusing to mix their shards. Use a new out folder, or overwrite=True "
                                 "(CLI: --overwrite) to delete it and start over.")
            return old == self.header
        clash = [name for name in (SHARD_DIR, MANIFEST_FILE, TABLE_FILE) if (self.out / name).exists()]
        if clash and refuse:
            raise ValueError(f"{self.out} already holds {clash} but no {SPEC_FILE}, so it cannot be checked against "
                             "this job; use a new out folder (or overwrite=True to delete them).")
        return not clash

    def _prepare_folder(self) -> None:
        if self.replace:  # overwrite=True and another job's files are there
            for name in (MANIFEST_FILE, TABLE_FILE, SPEC_FILE):
                (self.out / name).unlink(missing_ok=True)
            shutil.rmtree(self.out / SHARD_DIR, ignore_errors=True)
        shards = self.out / SHARD_DIR
        shards.mkdir(parents=True, exist_ok=True)
        for p in shards.iterdir():  # partly written shards of an interrupted run: never finished ones
            if p.name.startswith("."):
                shutil.rmtree(p, ignore_errors=True)
        if not (self.out / SPEC_FILE).is_file():
            atomic_write_text(self.out / SPEC_FILE, json.dumps(self.header, indent=2) + "\n")

    def _finished(self) -> list[int]:
        shards = self.out / SHARD_DIR
        return [int(p.name) for p in shards.iterdir()
                if _SHARD_RE.match(p.name) and int(p.name) < self.num_shards and (p / "shard.json").is_file()]

    # --- iteration
    def shards(self, data: Any = None, *, batch_size: int = 64, num_workers: int = 0,
               device: str | torch.device | None = None, collate_fn: Any = None) -> Iterator[Shard]:
        """This rank's unfinished shards, in order, with a progress bar on rank 0.

        With ``data`` each shard is iterable over its batches (``for batch in shard``), read by
        one DataLoader for the whole run (``num_workers`` worker processes, pinned memory when
        ``device`` is CUDA, ``collate_fn`` default ``workbench.data.collate``); a batch never
        spans two shards. Write each shard with ``shard.write(...)`` before taking the next.
        """
        from tqdm.auto import tqdm

        total = sum(len(s) for s in self.mine)
        label = self.desc if not self.dist.distributed else f"{self.desc} [rank 0 of {self.dist.world_size}]"
        self._bar = tqdm(total=total, desc=label, unit="img", disable=not (self.progress and self.dist.is_main))
        batches = self._loader(data, batch_size, num_workers, device, collate_fn) if data is not None else None
        try:
            for shard in self.mine:
                if batches is not None:
                    shard._batches = _take(batches, math.ceil(len(shard) / batch_size))
                yield shard
                if batches is not None:
                    for _ in shard._batches:  # drain what the caller did not read
                        pass
                if not shard.written:
                    raise ValueError(f"shard {shard.index} was not written; call shard.write(...) for every shard "
                                     "before taking the next one.")
        finally:
            self._bar.close()

    def _loader(self, data: Any, batch_size: int, num_workers: int, device: Any,
                collate_fn: Any) -> Iterator[Any]:
        from workbench.data._base import collate
        from workbench.data._info import Positions, dataset_info
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int; got {batch_size!r}.")
        if len(data) != self.n:
            raise ValueError(f"the job was created for n={self.n} items but the dataset has {len(data)}.")
        plan = [list(s.indices[i:i + batch_size]) for s in self.mine for i in range(0, len(s), batch_size)]
        if not plan:
            return iter(())
        if collate_fn is None:
            import functools
            collate_fn = functools.partial(collate, structures=dataset_info(data).structures)
        pin = device is not None and torch.device(device).type == "cuda"
        loader = torch.utils.data.DataLoader(Positions(data), batch_sampler=plan, num_workers=num_workers,
                                             pin_memory=pin, collate_fn=collate_fn)
        return iter(loader)

    # --- writing
    def _write_shard(self, shard: Shard, arrays: dict[str, Any], rows: Any) -> None:
        m = len(shard)
        prepared: dict[str, np.ndarray] = {}
        for name, a in arrays.items():
            if not isinstance(name, str) or not _NAME_RE.match(name) or name in ("rows", "shard"):
                raise ValueError(f"array name {name!r} is not allowed; use letters, digits and _ (not 'rows'/'shard').")
            x = a.detach().cpu().numpy() if torch.is_tensor(a) else np.asarray(a)
            if x.ndim == 0 or x.shape[0] != m:
                raise ValueError(f"array {name!r} has shape {x.shape} but shard {shard.index} covers {m} items; "
                                 f"pass one row per item ({m}, ...).")
            if x.dtype.kind == "f" and x.dtype != self.dtype:
                with np.errstate(over="ignore"):
                    y = x.astype(self.dtype)
                overflow = np.isfinite(x) & ~np.isfinite(y)
                if overflow.any():
                    raise ValueError(f"array {name!r} holds values up to {float(np.abs(x[overflow]).max()):.3g}, beyond "
                                     f"{self.dtype.name}'s range; create the job with dtype='float32' or rescale.")
                x = y
            prepared[name] = np.ascontiguousarray(x)
        table = _rows_frame(rows, shard) if rows is not None else None
        shards = self.out / SHARD_DIR
        tmp = Path(tempfile.mkdtemp(prefix=f".{_shard_name(shard.index)}.", dir=shards))
        try:
            for name, x in prepared.items():
                np.save(tmp / f"{name}.npy", x, allow_pickle=False)
            if table is not None:
                table.to_parquet(tmp / "rows.parquet", index=False)
            info = {"shard": shard.index, "start": shard.indices.start, "stop": shard.indices.stop,
                    "arrays": {k: {"shape": list(v.shape), "dtype": v.dtype.name} for k, v in prepared.items()},
                    "rows": table is not None}
            (tmp / "shard.json").write_text(json.dumps(info) + "\n")
            os.chmod(tmp, 0o777 & ~_umask())
            final = shards / _shard_name(shard.index)
            if final.exists():
                raise ValueError(f"shard {shard.index} in {self.out} was finished by another process meanwhile; two "
                                 "jobs are writing to the same folder. Run one at a time.")
            os.rename(tmp, final)   # atomic: a shard folder exists only complete
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        if self._bar is not None:
            self._bar.update(m)

    def finish(self) -> "Store":
        """Wait for every rank; rank 0 checks that all shards exist, merges the per-shard rows into
        ``table.parquet`` and writes ``manifest.json`` last. Returns the finished ``Store`` on every rank."""
        unwritten = [s.index for s in self.mine if not s.written]
        error = None if not unwritten else f"rank {self.dist.rank} did not write shard(s) {unwritten[:5]}"
        errors = [e for e in _gather(error) if e]
        if not errors and self.dist.is_main and not self.done:
            try:
                self._merge()
            except (OSError, ValueError) as e:
                errors.append(str(e))
        errors = broadcast(errors)
        if errors:
            raise ValueError(f"the job in {self.out} is not complete: {'; '.join(errors)}. Rerun the same command "
                             "to finish it (finished shards are kept).")
        return open_store(self.out)

    def _merge(self) -> None:
        finished = set(self._finished())
        missing = [k for k in range(self.num_shards) if k not in finished]
        if missing:
            raise ValueError(f"{len(missing)} shard(s) missing (e.g. {missing[:5]})")
        shards, frames = [], []
        for k in range(self.num_shards):
            info = _read_json(self.out / SHARD_DIR / _shard_name(k) / "shard.json")
            shards.append(info)
            if info.get("rows"):
                import pandas as pd
                frames.append(pd.read_parquet(self.out / SHARD_DIR / _shard_name(k) / "rows.parquet"))
        layout = {k: (v["dtype"], v["shape"][1:]) for k, v in shards[0]["arrays"].items()}
        for info in shards:
            if {k: (v["dtype"], v["shape"][1:]) for k, v in info["arrays"].items()} != layout:
                raise ValueError(f"shard {info['shard']} holds arrays {info['arrays']} but shard 0 holds "
                                 f"{shards[0]['arrays']}; every shard must write the same arrays")
        table = None
        if frames:
            import pandas as pd
            with atomic_path(self.out / TABLE_FILE) as tmp:
                pd.concat(frames, ignore_index=True).to_parquet(tmp, index=False)
            table = TABLE_FILE
        manifest = {**self.header, "num_shards": self.num_shards, "table": table,
                    "arrays": {k: {"shape": [self.n, *shape], "dtype": dtype} for k, (dtype, shape) in layout.items()},
                    "shards": [{k: s[k] for k in ("shard", "start", "stop")} for s in shards]}
        atomic_write_text(self.out / MANIFEST_FILE, json.dumps(manifest, indent=2) + "\n")


def _take(it: Iterator[Any], k: int) -> Iterator[Any]:
    for _ in range(k):
        yield next(it)


def _gather(obj: Any) -> list[Any]:
    from workbench.jobs._dist import all_gather
    return all_gather(obj)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _rows_frame(rows: Any, shard: Shard) -> Any:
    import pandas as pd
    if isinstance(rows, pd.DataFrame):
        df = rows.reset_index(drop=True).copy()
    elif isinstance(rows, Mapping):
        df = pd.DataFrame(dict(rows))
    elif isinstance(rows, Sequence):
        df = pd.DataFrame(list(rows))
    else:
        raise TypeError(f"rows must be a DataFrame, a list of dicts or a dict of columns; got {type(rows).__name__}.")
    if len(df) != len(shard):
        raise ValueError(f"rows has {len(df)} rows but shard {shard.index} covers {len(shard)} items; one row per item.")
    if "index" in df.columns:
        if not np.array_equal(df["index"].to_numpy(), np.asarray(shard.indices)):
            raise ValueError(f"rows' 'index' column does not match shard {shard.index}'s dataset indices "
                             f"{shard.indices.start}..{shard.indices.stop - 1}; leave it out (it is added).")
    else:
        df.insert(0, "index", np.asarray(shard.indices, dtype=np.int64))
    return df


def _npy_header(path: Path) -> tuple[int, np.dtype, tuple[int, ...]]:
    """(data offset, dtype, shape) of a C-ordered ``.npy`` file."""
    with open(path, "rb") as f:
        major, _ = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f)
        if fortran:
            raise ValueError(f"{path} is Fortran-ordered; workbench shards are C-ordered.")
        return f.tell(), np.dtype(dtype), tuple(shape)


def read_npy_rows(path: Path, rows: Any, unit: int = 1) -> np.ndarray:
    """Rows of the ``.npy`` file at ``path`` (its first axis, each item cut into ``unit`` equal rows)
    read with ``os.preadv``, without a memory map: ``(len(rows), *row_shape)``. See ``ShardedArray.read``."""
    offset, dtype, shape = _npy_header(path)
    item = shape[1:]
    if unit == 1:
        row_shape = item
    else:
        if not item or item[0] % unit:
            raise ValueError(f"cannot cut the items {item} of {path} into {unit} rows.")
        row_shape = (item[0] // unit, *item[1:])
    row_bytes = int(np.prod(row_shape, dtype=np.int64)) * dtype.itemsize
    if isinstance(rows, range):
        runs, n = [(rows.start, len(rows))] if len(rows) else [], len(rows)
    else:
        idx = np.asarray(rows, dtype=np.int64)
        n = len(idx)
        cut = np.flatnonzero(np.diff(idx) != 1) + 1   # where a run of consecutive rows ends
        runs = [(int(idx[a]), int(b - a)) for a, b in zip(np.r_[0, cut], np.r_[cut, n])] if n else []
    out = np.empty((n, *row_shape), dtype)
    view = memoryview(out.reshape(-1).view(np.uint8))
    fd = os.open(path, os.O_RDONLY)
    try:
        pos = 0
        for first, count in runs:
            want, done = count * row_bytes, 0
            while done < want:   # a regular file may still return less than asked
                got = os.preadv(fd, [view[pos + done:pos + want]], offset + first * row_bytes + done)
                if got <= 0:
                    raise OSError(f"{path} ended early (rows {first}..{first + count - 1} asked); the shard is "
                                  "damaged: delete its folder and run the job again to rewrite it.")
                done += got
            pos += want
    finally:
        os.close(fd)
    return out


class ShardedArray:
    """One array of a finished job, across its shards, memory-mapped (never read whole).

    ``len``, ``shape`` and ``dtype`` like the concatenated array; ``arr[i]``, ``arr[a:b]`` and
    ``arr[[i, j, ...]]`` read only those rows; ``arr.blocks()`` yields ``(range, memmap)`` per shard.
    """

    def __init__(self, store: "Store", name: str) -> None:
        self.store, self.name = store, name
        info = store.manifest["arrays"][name]
        self.shape, self.dtype = tuple(info["shape"]), np.dtype(info["dtype"])
        self._starts = np.array([s["start"] for s in store.shards], dtype=np.int64)
        self._maps: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self.shape[0]

    def path(self, k: int) -> Path:
        """The ``.npy`` file of shard k's rows of this array."""
        return self.store.out / SHARD_DIR / _shard_name(k) / f"{self.name}.npy"

    def block(self, k: int) -> np.ndarray:
        """Shard k's rows of this array (a read-only memory map)."""
        if k not in self._maps:
            self._maps[k] = np.load(self.path(k), mmap_mode="r")
        return self._maps[k]

    def read(self, k: int, rows: Any, *, unit: int = 1) -> np.ndarray:
        """Rows of shard k read with positioned file reads (``os.preadv``) into a new array.

        ``rows``: sorted indices (an int array) or a ``range``, counted in units of ``unit``
        consecutive elements of the first axis's items flattened, so ``unit=per_image`` reads whole
        items and ``unit=1`` with a per-token item size reads single tokens (see ``row_shape``).
        Unlike a memory map this keeps no page of the file in this process: touching rows scattered
        over a memory-mapped 2 GB store pulled all of it (the kernel reads ahead around each
        touched page) into the process's resident memory, 2,020 MB for 65,536 random tokens.
        Consecutive rows are read in one call.
        """
        return read_npy_rows(self.path(k), rows, unit)

    def blocks(self) -> Iterator[tuple[range, np.ndarray]]:
        for s in self.store.shards:
            yield range(s["start"], s["stop"]), self.block(s["shard"])

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, tuple):  # arr[rows, ...]: rows first, the rest on what they return
            rows = self[key[0]]
            return rows[key[1:]] if isinstance(key[0], (int, np.integer)) else rows[(slice(None), *key[1:])]
        if isinstance(key, (int, np.integer)):
            i = int(key) + (self.shape[0] if key < 0 else 0)
            if not 0 <= i < self.shape[0]:
                raise IndexError(f"index {key} is out of range for {self.shape[0]} items.")
            k = int(np.searchsorted(self._starts, i, side="right") - 1)
            return np.asarray(self.block(k)[i - self._starts[k]])
        idx = np.arange(self.shape[0])[key] if isinstance(key, slice) else np.asarray(key, dtype=np.int64)
        if idx.ndim != 1:
            raise IndexError("index a ShardedArray with an int, a slice or a 1-D list of indices.")
        out = np.empty((len(idx), *self.shape[1:]), dtype=self.dtype)
        for j, i in enumerate(idx):
            out[j] = self[int(i)]
        return out

    def __repr__(self) -> str:
        return f"ShardedArray({self.name!r}, shape={self.shape}, dtype={self.dtype.name}, shards={len(self._starts)})"


class Store:
    """A finished job's folder: its manifest, merged table and sharded arrays.

    Attributes:
        out: the folder.
        manifest: the parsed ``manifest.json`` (``spec``, ``n``, ``shard_size``, ``arrays``, ``shards``).
    """

    def __init__(self, out: Path, manifest: dict[str, Any]) -> None:
        self.out, self.manifest = out, manifest
        self._table = None

    @property
    def spec(self) -> dict[str, Any]:
        return self.manifest["spec"]

    @property
    def n(self) -> int:
        return int(self.manifest["n"])

    @property
    def shards(self) -> list[dict[str, int]]:
        return self.manifest["shards"]

    @property
    def arrays(self) -> tuple[str, ...]:
        return tuple(self.manifest.get("arrays") or {})

    def array(self, name: str) -> ShardedArray:
        """One stored array over all shards, memory-mapped."""
        if name not in (self.manifest.get("arrays") or {}):
            raise KeyError(f"the job in {self.out} has no array {name!r}; it has {list(self.arrays)}.")
        return ShardedArray(self, name)

    @property
    def table(self) -> Any:
        """The merged per-item table (pandas DataFrame in dataset order), or None without rows."""
        if self._table is None and self.manifest.get("table"):
            import pandas as pd
            self._table = pd.read_parquet(self.out / self.manifest["table"])
        return self._table

    def __repr__(self) -> str:
        return f"Store({str(self.out)!r}, n={self.n}, shards={len(self.shards)}, arrays={list(self.arrays)})"


def open_store(out: str | os.PathLike, expect: Mapping[str, Any] | None = None) -> Store:
    """Open a finished job folder.

    Args:
        out: the folder a ``Job`` wrote.
        expect: a spec (or part of one) the job must have been written with; a difference raises,
            e.g. an activation store written for another model or layer.

    Raises:
        FileNotFoundError: no job in the folder.
        ValueError: the job is unfinished (rerun it to resume) or was written with another spec.
    """
    out = Path(out).expanduser()
    manifest_file = out / MANIFEST_FILE
    if not manifest_file.is_file():
        if (out / SPEC_FILE).is_file():
            head = _read_json(out / SPEC_FILE)
            total = math.ceil(head["n"] / head["shard_size"])
            done = sum(1 for p in (out / SHARD_DIR).iterdir() if _SHARD_RE.match(p.name)) \
                if (out / SHARD_DIR).is_dir() else 0
            raise ValueError(f"the job in {out} is unfinished ({done} of {total} shards written, no {MANIFEST_FILE}); "
                             "rerun the same command to resume it.")
        raise FileNotFoundError(f"{out} holds no finished job (no {MANIFEST_FILE}); pass the out folder of a job.")
    manifest = _read_json(manifest_file)
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{manifest_file} has format {manifest.get('format')!r}; this workbench reads {FORMAT!r}.")
    if expect is not None:
        want = _jsonable(dict(expect))
        have = {k: manifest["spec"].get(k) for k in want}
        if have != want:
            where = ", ".join(_diff(have, want)[:6])
            raise ValueError(f"the job in {out} was written with another spec (differs in: {where}); recompute it "
                             "for this model/data into a new folder.")
    return Store(out, manifest)


def fingerprint(obj: Any) -> dict[str, Any]:
    """A JSON description identifying a model or a dataset, for a job's spec.

    A model: its ``workbench_config`` (or class name) and a SHA-256 of its parameters and buffers.
    A dataset: its name, length, classes, image shape and a SHA-256 of its ids (images are not
    read). Anything else: ``repr`` is refused (ambiguous); pass a dict.
    """
    import hashlib
    if isinstance(obj, torch.nn.Module):
        h = hashlib.sha256()
        for name, t in sorted(obj.state_dict().items()):
            h.update(name.encode())
            t = t.detach().cpu().contiguous()
            h.update(str(t.dtype).encode())
            h.update(str(tuple(t.shape)).encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")  # 0-d too (BatchNorm counters)
        return _jsonable({"model": getattr(obj, "workbench_config", None) or type(obj).__name__,
                          "weights_sha256": h.hexdigest()[:32]})
    if hasattr(obj, "__len__") and hasattr(obj, "__getitem__") and not isinstance(obj, (str, bytes)):
        from workbench.data._info import dataset_info, dataset_ids
        info = dataset_info(obj)
        ids = dataset_ids(obj)
        return _jsonable({"data": info.name, "n": len(obj), "classes": list(info.classes), "task": info.task,
                          "image_shape": list(info.image_shape) if info.image_shape else None,
                          "ids_sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest()[:32]})
    raise TypeError(f"fingerprint takes a model or a dataset; got {type(obj).__name__}. Describe other inputs "
                    "in the spec yourself (JSON values).")
