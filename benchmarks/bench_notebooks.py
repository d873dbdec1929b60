"""Notebook and test-suite timings: the suite's notebook runs, the quickstart's first picture,
full-setting notebook runs, and ``make test`` on a fresh clone (idle and beside a busy process).

    flock /work/heavy.lock python benchmarks/bench_notebooks.py --parts suite,first,full
    flock /work/heavy.lock python benchmarks/bench_notebooks.py --parts maketest

Every notebook runs through ``workbench.notebook.run`` (the runner of the tests and of
``workbench notebook``). Each part stores its results in ``benchmarks/results/notebooks.json``
(git-ignored) and the table ``benchmarks/tables/notebooks.md`` is rebuilt from all stored parts,
so parts can be run separately. The machine is shared: each timing carries the 1-minute load
average measured when it ended (2 cores: a load of 2 means busy).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from workbench import notebook as nb  # noqa: E402

RESULTS = HERE / "results" / "notebooks.json"   # committed (the other results/ files are not): each part keeps the others' rows
TABLE = HERE / "tables" / "notebooks.md"
QUICKSTART = "00_quickstart"
OVERLAY_CELL = "wb.viz.draw(\"community_overlay\""


def _load() -> float:
    return round(os.getloadavg()[0], 1)


def _stamp() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _store(part: str, value: object) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    data[part] = value
    RESULTS.write_text(json.dumps(data, indent=2))


def _until_overlay(result: nb.NotebookRun) -> float:
    """Seconds from the start of the run (kernel start included) to the end of the overlay cell."""
    import nbformat

    cells = [c for c in nbformat.read(result.output, as_version=4).cells if c.cell_type == "code"]
    i = next(k for k, c in enumerate(cells) if OVERLAY_CELL in c.source)
    return result.seconds - sum(result.cell_seconds[i + 1:])


def part_suite(repeats: int, names: list[str]) -> None:
    """Each notebook with its test parameters, one thread (as the suite runs it), interleaved."""
    rows: dict[str, list] = {n: [] for n in names}
    for _ in range(repeats):
        for name in names:
            with tempfile.TemporaryDirectory() as out:
                r = nb.run(name, nb.test_parameters(name), out=out, threads=1)
            rows[name].append((round(r.seconds, 1), _load()))
            print(name, rows[name][-1], flush=True)
    _store("suite", {"when": _stamp(), "repeats": repeats, "rows": rows})


def _demo_checkpoint() -> Path:
    """The checkpoint ``workbench demo`` writes (cached under $WORKBENCH_DATA/bench_models/demo)."""
    cache = Path(os.environ.get("WORKBENCH_DATA", ROOT / "data")) / "bench_models" / "demo"
    if not (cache / "model.safetensors").exists():
        subprocess.run([sys.executable, "-m", "workbench.cli", "demo", "--out", str(cache), "--no-progress"],
                       check=True, cwd=ROOT)
    return cache / "model"


def part_first(repeats: int, cases: list[str] | None = None) -> None:
    """The quickstart at full settings, with and without the demo's checkpoint; cold phantom cache
    (a fresh data folder: what a class sees the first time) and warm (the second run)."""
    demo = str(_demo_checkpoint())
    rows = []
    for rep in range(repeats):
        for label, ck, threads in (("demo checkpoint present", demo, 0),
                                   ("no checkpoint (trains 2,000 images x 3 epochs)", "", 0),
                                   ("no checkpoint, THREADS=1", "", 1)):
            if cases and label not in cases:
                continue
            with tempfile.TemporaryDirectory() as data, tempfile.TemporaryDirectory() as out:
                for cache in ("cold", "warm"):
                    env_before = os.environ.get("WORKBENCH_DATA")
                    os.environ["WORKBENCH_DATA"] = data
                    try:
                        r = nb.run(QUICKSTART, {"CHECKPOINT": ck, "THREADS": threads}, out=out)
                    finally:
                        if env_before is None:
                            os.environ.pop("WORKBENCH_DATA", None)
                        else:
                            os.environ["WORKBENCH_DATA"] = env_before
                    rows.append({"case": label, "cache": cache, "first_overlay_s": round(_until_overlay(r), 1),
                                 "total_s": round(r.seconds, 1), "load": _load()})
                    print(rows[-1], flush=True)
    if cases and RESULTS.exists():   # keep the stored rows of the cases not run now
        old = json.loads(RESULTS.read_text()).get("first", {}).get("rows", [])
        rows = [r for r in old if r["case"] not in cases] + rows
    _store("first", {"when": _stamp(), "rows": rows})


def part_full(names: list[str]) -> None:
    """Each notebook at its default (full) settings, all cores."""
    rows = []
    for name in names:
        params = {"CHECKPOINT": ""} if name == QUICKSTART else {}
        with tempfile.TemporaryDirectory() as out:
            t0 = time.perf_counter()
            try:
                r = nb.run(name, params, out=out)
                rows.append({"notebook": name, "wall_s": round(r.seconds, 1), "load": _load(), "ok": True})
            except nb.NotebookError as e:
                rows.append({"notebook": name, "wall_s": round(time.perf_counter() - t0, 1), "load": _load(),
                             "ok": False, "error": str(e)[:300]})
        print(rows[-1], flush=True)
    note = ""
    if RESULTS.exists():   # keep the stored rows of the notebooks not run now (and the note about them)
        done = {r["notebook"] for r in rows}
        old = json.loads(RESULTS.read_text()).get("full", {})
        rows = [r for r in old.get("rows", []) if r["notebook"] not in done] + rows
        note = old.get("note", "")
    _store("full", {"when": _stamp(), "rows": rows, **({"note": note} if note else {})})


def _clean_env() -> dict:
    """This shell's environment without what would point a fresh clone at our checkout or caches."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "WORKBENCH_DATA", "VIRTUAL_ENV")}


def _make_test(repo: Path, log: Path) -> dict:
    t0 = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run(["make", "test", "PYTEST_ARGS=-q -p no:cacheprovider --durations=40"], cwd=repo,
                            stdout=f, stderr=subprocess.STDOUT, env=_clean_env()).returncode
    lines = [ln for ln in log.read_text().splitlines() if ln.strip()]
    summary = next((ln for ln in reversed(lines) if " passed" in ln or " failed" in ln), lines[-1] if lines else "")
    return {"wall_s": round(time.perf_counter() - t0), "rc": rc, "summary": summary.strip("= "), "load": _load()}


def part_maketest(clone: Path, source: str) -> None:
    """``make test`` on a fresh clone of main: environment created once (``make env``), the suite
    twice (fresh caches, then warm), and the suite beside one busy process (a Python loop on one core)."""
    if clone.exists():
        shutil.rmtree(clone)
    clone.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "clone", "-q", source, str(clone)], check=True)
    shared = clone.parent / "shared"
    if not shared.exists() and (ROOT.parent / "shared").exists():
        shared.symlink_to((ROOT.parent / "shared").resolve())
    t0 = time.perf_counter()
    subprocess.run(["make", "env"], cwd=clone, check=True, stdout=subprocess.DEVNULL, env=_clean_env())
    env_s = round(time.perf_counter() - t0)
    rows = {"make env": {"wall_s": env_s, "load": _load()}}
    rows["make test (1st, fresh caches)"] = _make_test(clone, clone.parent / "maketest1.log")
    rows["make test (2nd)"] = _make_test(clone, clone.parent / "maketest2.log")
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        rows["make test beside one busy process"] = _make_test(clone, clone.parent / "maketest3.log")
    finally:
        busy.terminate()
        busy.wait()
    _store("maketest", {"when": _stamp(), "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=clone,
                        capture_output=True, text=True).stdout.strip(), "rows": rows,
                        "durations": _durations(clone.parent / "maketest2.log")})


def _durations(log: Path) -> list[list]:
    """The slowest tests of a ``--durations`` report: [[seconds, test id], ...]."""
    out = []
    for ln in log.read_text().splitlines():
        bits = ln.split()
        if len(bits) >= 3 and bits[0].endswith("s") and bits[1] in ("call", "setup", "teardown"):
            try:
                out.append([float(bits[0][:-1]), f"{bits[2]} ({bits[1]})"])
            except ValueError:
                pass
    return out


def table() -> str:
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    lines = ["# Notebooks and the test suite (`benchmarks/bench_notebooks.py`)", "",
             "2-core CPU shared with other engineers' jobs, no GPU: every time comes with the 1-minute load "
             "average when it ended (2 = both cores busy; above that, jobs queue).", ""]
    if "maketest" in data:
        m = data["maketest"]
        lines += [f"## `make test` on a fresh clone ({m['when']}, commit {m['commit']})", "",
                  "| step | wall | load | result |", "|---|---|---|---|"]
        for step, r in m["rows"].items():
            lines.append(f"| {step} | {r['wall_s'] / 60:.1f} min | {r['load']} | {r.get('summary', '')} |")
        lines += ["", "Slowest tests of the 2nd run (`--durations`):", "", "| s | test |", "|---|---|"]
        lines += [f"| {s:.0f} | `{t}` |" for s, t in m.get("durations", [])[:30]]
        lines.append("")
    if "suite" in data:
        s = data["suite"]
        lines += [f"## Each notebook in the suite (small test parameters, one thread; {s['when']})", "",
                  "| notebook | median s | runs (s @ load) |", "|---|---|---|"]
        for name, runs in s["rows"].items():
            med = statistics.median(r[0] for r in runs)
            lines.append(f"| {name} | **{med:.0f}** | {', '.join(f'{a:.0f} @ {b}' for a, b in runs)} |")
        lines.append("")
    if "first" in data:
        f = data["first"]
        lines += [f"## Quickstart: time to the first anatomy-grouped overlay ({f['when']})", "",
                  "From the start of the run (kernel start and imports included) to the saved overlay; full "
                  "settings, all cores. Cold: an empty phantom cache (the first run on a machine); warm: "
                  "the run after it.", "",
                  "| case | cache | first overlay s | whole notebook s | load |", "|---|---|---|---|---|"]
        for r in f["rows"]:
            lines.append(f"| {r['case']} | {r['cache']} | **{r['first_overlay_s']:.0f}** | {r['total_s']:.0f} | "
                         f"{r['load']} |")
        lines.append("")
    if "full" in data:
        f = data["full"]
        lines += [f"## Full-setting notebook runs ({f['when']})", "",
                  "Default parameters, all cores (the quickstart trains its own model: `CHECKPOINT=\"\"`)."
                  + (f" {f['note']}" if f.get("note") else ""), "",
                  "| notebook | wall s | load | ok |", "|---|---|---|---|"]
        for r in f["rows"]:
            lines.append(f"| {r['notebook']} | {r['wall_s']:.0f} | {r['load']} | "
                         f"{'yes' if r['ok'] else 'no: ' + r.get('error', '')[:120]} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", default="suite,first,full", help="comma-separated: suite, first, full, maketest")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--first-cases", default=None, help="first: ';'-separated case labels to run (default: all)")
    p.add_argument("--names", default=None, help="comma-separated notebooks (default: all)")
    p.add_argument("--clone", default="/tmp/fresh/repo", help="where maketest clones main")
    p.add_argument("--source", default="/work/main" if Path("/work/main").is_dir() else str(ROOT),
                   help="the repository maketest clones")
    a = p.parse_args()
    names = a.names.split(",") if a.names else nb.names()
    for part in a.parts.split(","):
        if part == "suite":
            part_suite(a.repeats, names)
        elif part == "first":
            part_first(a.repeats, a.first_cases.split(";") if a.first_cases else None)
        elif part == "full":
            part_full(names)
        elif part == "maketest":
            part_maketest(Path(a.clone), a.source)
        elif part != "table":
            raise SystemExit(f"unknown part {part!r}; use suite, first, full, maketest, table")
    TABLE.parent.mkdir(parents=True, exist_ok=True)
    TABLE.write_text(table() + "\n")
    print(TABLE.read_text())


if __name__ == "__main__":
    main()
