"""Bad inputs over the public API (issue 17): how each is answered, and what the checks cost.

Two parts, each writing its raw results under ``tables/`` and rebuilding ``tables/validation.md``
from whatever results exist:

- ``--sweep LABEL`` runs every case of ``tests/bad_inputs.py`` (the same table the test suite
  asserts on) and classifies it as clear error / unclear error / silently wrong / fine / false
  alarm by the rules written in that file's docstring; per-case results go to
  ``tables/validation_<LABEL>.csv``. ``before`` ran the same table against main before the checks
  existed (commit fba8f10: ``git archive fba8f10 workbench | tar -x -C /tmp/before`` and
  ``PYTHONPATH=/tmp/before``).
- ``--cost`` times a batch-1 forward pass with and without ``workbench._checks.check_images``
  (interleaved, repeated, medians) for a small ViT and ResNet-18 at 64 and 224 px.

    python benchmarks/bench_validation.py --sweep after
    flock /work/heavy.lock python benchmarks/bench_validation.py --cost
"""
from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TABLES = HERE / "tables"
sys.path.insert(0, str(ROOT / "tests"))  # the case table; workbench itself comes from PYTHONPATH

OUTCOMES = ("clear", "unclear", "silent", "fine", "false alarm")  # "absent": the verb did not exist
LABELS = {"clear": "clear error", "unclear": "unclear error", "silent": "silently wrong", "fine": "fine (valid input ran)",
          "false alarm": "false alarm (valid input rejected)"}


def sweep(label: str) -> None:
    import bad_inputs

    t0 = time.perf_counter()
    rows = bad_inputs.run_all()
    path = TABLES / f"validation_{label}.csv"
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"{len(rows)} cases in {time.perf_counter() - t0:.0f} s -> {path}")
    for r in rows:
        if r["outcome"] not in ("clear", "fine"):
            print(f"  {r['outcome']:12s} {r['verb']:34s} {r['name']:44s} {r['detail'][:120]}")


def _read(label: str) -> list[dict[str, str]] | None:
    path = TABLES / f"validation_{label}.csv"
    if not path.exists():
        return None
    with path.open() as f:
        return list(csv.DictReader(f))


def _time(fn, n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n


def cost(repeats: int, n: int) -> None:
    import workbench as wb
    from workbench._checks import check_images

    torch.set_num_threads(1)
    rows = []
    for name, size, kw in (("ViT (depth 4, width 96, patch 8)", 64, dict(depth=4, embed_dim=96, num_heads=3, patch_size=8)),
                           ("ResNet-18", 64, {}),
                           ("ViT-tiny (patch 16)", 224, dict(patch_size=16)),
                           ("ResNet-18", 224, {})):
        arch = "vit_tiny" if name.startswith("ViT") else "resnet18"
        model = wb.models.create(arch, num_classes=2, img_size=size, in_chans=1, **kw).eval()
        x = torch.rand(1, 1, size, size)

        @torch.no_grad()
        def plain() -> None:
            model(x)

        @torch.no_grad()
        def checked() -> None:
            model(check_images(x, model))

        def check_only() -> None:
            check_images(x, model)

        for f in (plain, checked, check_only):
            _time(f, 3)  # warm up
        ratios, checks_us, fwd_ms = [], [], []
        for _ in range(repeats):  # interleaved
            a = _time(plain, n)
            b = _time(checked, n)
            c = _time(check_only, n)
            ratios.append(b / a)
            checks_us.append(c * 1e6)
            fwd_ms.append(a * 1e3)
        rows.append({"model": name, "size": size, "forward_ms": statistics.median(fwd_ms),
                     "check_us": statistics.median(checks_us), "ratio": statistics.median(ratios),
                     "ratio_lo": min(ratios), "ratio_hi": max(ratios)})
        print(rows[-1])
    with (TABLES / "validation_cost.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _counts(rows: list[dict[str, str]]) -> list[str]:
    return [str(sum(r["outcome"] == o for r in rows)) for o in OUTCOMES]


def table() -> str:
    out = ["# Validation (issue 17): bad inputs over the public API", ""]
    before, after = _read("before"), _read("after")
    if before or after:
        out += ["Every case of `tests/bad_inputs.py` (the table `tests/test_bad_inputs.py` asserts on: one bad or "
                "borderline input to one public verb), classified by the rules in its docstring: **clear** = a "
                "ValueError/TypeError/LookupError or file-system error raised by an explicit `raise` in workbench's "
                "own code whose message names the problem (CLI: one line and a non-zero exit); **unclear** = any other "
                "exception (torch/timm internals, raw OS errors, tracebacks); **silently wrong** = a bad input "
                "accepted; **fine** = a borderline input that is valid as documented ran; **false alarm** = such a "
                "valid input was rejected. `before` ran the same table on main before `workbench/_checks.py` (commit "
                "fba8f10), on the verbs that existed then; `after` is this checkout.", ""]
        cols: list[tuple[str, list[dict[str, str]]]] = []
        if before:
            old = [r for r in before if r["outcome"] != "absent"]
            keys = {(r["verb"], r["name"]) for r in old}
            cols.append((f"before ({len(old)} cases)", old))
            if after:
                cols.append((f"after, same cases ({len(keys)})", [r for r in after if (r["verb"], r["name"]) in keys]))
        if after:
            cols.append((f"after, all cases ({len(after)})", after))
        out.append("| outcome | " + " | ".join(c for c, _ in cols) + " |")
        out.append("|---|" + "---:|" * len(cols))
        counts = [_counts(rows) for _, rows in cols]
        for i, o in enumerate(OUTCOMES):
            out.append(f"| {LABELS[o]} | " + " | ".join(c[i] for c in counts) + " |")
        out.append("| cases named in the issue, not clear | " + " | ".join(
            f"{sum(r['outcome'] not in ('clear', 'fine') for r in rows if r['issue'] == 'True')} of "
            f"{sum(r['issue'] == 'True' for r in rows)}" for _, rows in cols) + " |")
        last = cols[-1][1]
        bad = [r for r in last if r["outcome"] not in ("clear", "fine")]
        if bad:
            out += ["", "Not clear yet:", ""]
            out += [f"- {r['verb']} / {r['name']}: {r['outcome']} ({r['detail'][:140]})" for r in bad]
    cost_path = TABLES / "validation_cost.csv"
    if cost_path.exists():
        with cost_path.open() as f:
            rows = list(csv.DictReader(f))
        out += ["", "Cost of `check_images(x, model)` (what every verb runs on its images) before a batch-1 forward in "
                "eval mode without gradients: CPU, 1 thread, plain and checked forwards interleaved, 20 forwards per "
                "timing, medians of the repeats (min-max in brackets); ratio = checked forward / plain forward.", "",
                "| model | px | forward ms | check µs | ratio (min-max) |", "|---|---:|---:|---:|---|"]
        for r in rows:
            out.append(f"| {r['model']} | {r['size']} | {float(r['forward_ms']):.2f} | {float(r['check_us']):.0f} | "
                       f"{float(r['ratio']):.3f} ({float(r['ratio_lo']):.3f}-{float(r['ratio_hi']):.3f}) |")
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sweep", metavar="LABEL", help="run the bad-input sweep and save it as LABEL (before/after)")
    ap.add_argument("--cost", action="store_true", help="time the checks against a batch-1 forward")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--n", type=int, default=20, help="forwards per timing")
    a = ap.parse_args()
    torch.set_num_threads(1)
    if a.sweep:
        sweep(a.sweep)
    if a.cost:
        cost(a.repeats, a.n)
    md = table()
    (TABLES / "validation.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
