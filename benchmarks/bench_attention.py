"""Attention capture, Chefer relevance and DCMM attention: cost ratios.

Ratios to a plain (fused) forward or forward+backward of the same model and batch, in the same
run; compared runs are interleaved and repeated, medians reported. The quality of DCMM-ViT vs a
plain ViT (test AUC, anatomy alignment) is measured by bench_communities.py.

    .venv/bin/python benchmarks/bench_attention.py            # -> tables/attention.md
    .venv/bin/python benchmarks/bench_attention.py --quick    # fewer repeats
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import timm  # noqa: E402

from workbench._io import atomic_write_text  # noqa: E402
from workbench.attention import attention_maps, chefer_relevance  # noqa: E402
from workbench.models.dcmm import enable_dcmm  # noqa: E402


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def interleave(fns: dict, repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds per call of each function, calls interleaved round-robin."""
    for _ in range(warmup):
        for f in fns.values():
            f()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            times[k].append(timed(f))
    return {k: statistics.median(v) for k, v in times.items()}


def vit(img: int, patch: int, chans: int = 3, classes: int = 2, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=classes, img_size=img,
                             patch_size=patch, in_chans=chans, **kw)


def bench_capture(img: int, patch: int, batch: int, repeats: int) -> list[str]:
    from timm.utils import AttentionExtract

    model = vit(img, patch).eval()
    x = torch.rand(batch, 3, img, img)
    unfused = copy.deepcopy(model)
    for m in unfused.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = False  # AttentionExtract needs the non-fused path (TIMM_FUSED_ATTN=0)
    extract_fx = AttentionExtract(copy.deepcopy(unfused), method="fx")
    extract_hook = AttentionExtract(unfused, method="hook")

    def forward():
        with torch.no_grad():
            model(x)

    def extract(e):
        def run():
            with torch.no_grad():
                e(x)
        return run

    t = interleave({"forward": forward, "capture": lambda: attention_maps(model, x),
                    "capture_last": lambda: attention_maps(model, x, layers=[-1]),
                    "timm_fx": extract(extract_fx), "timm_hook": extract(extract_hook)}, repeats)
    f = t["forward"]
    n = (img // patch) ** 2 + 1
    return [f"| capture, all 12 layers (ours) | vit_tiny {img}px p{patch} (N={n}), B={batch} | {t['capture'] / f:.2f}x | <= 1.1x |",
            f"| capture, last layer only (ours) | same | {t['capture_last'] / f:.2f}x | |",
            f"| timm AttentionExtract (fx) | same | {t['timm_fx'] / f:.2f}x | reference |",
            f"| timm AttentionExtract (hook) | same | {t['timm_hook'] / f:.2f}x | reference |",
            f"| (plain fused forward) | same | 1.00x = {f * 1000:.0f} ms | |"]


def bench_chefer(img: int, patch: int, batch: int, repeats: int) -> list[str]:
    model = vit(img, patch).eval()
    x = torch.rand(batch, 3, img, img)

    def fwd_bwd():
        logits = model(x)
        logits.gather(1, logits.argmax(1, keepdim=True)).sum().backward()
        model.zero_grad(set_to_none=True)

    t = interleave({"fb": fwd_bwd, "chefer": lambda: chefer_relevance(model, x)}, repeats)
    return [f"| Chefer relevance | vit_tiny {img}px p{patch}, B={batch} | {t['chefer'] / t['fb']:.2f}x of fwd+bwd "
            f"({t['fb'] * 1000:.0f} ms) | <= 1.1x |"]


def bench_dcmm_step(img: int, patch: int, batch: int, repeats: int) -> list[str]:
    x = torch.rand(batch, 1, img, img)
    y = torch.randint(0, 2, (batch,))
    steps = {}
    for name in ("plain", "dcmm"):
        model = vit(img, patch, chans=1).train()
        if name == "dcmm":
            enable_dcmm(model, communities=4)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step(model=model, opt=opt):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        steps[name] = step
    t = interleave(steps, repeats)
    n = (img // patch) ** 2 + 1
    return [f"| DCMM-ViT training step (K=4, per head) | vit_tiny {img}px p{patch} (N={n}), B={batch} | "
            f"{t['dcmm'] / t['plain']:.2f}x of plain ViT step ({t['plain'] * 1000:.0f} ms) | <= 1.3x |"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="few repeats")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadiest on a shared CPU)")
    ap.add_argument("--sections", nargs="+", default=["capture", "chefer", "dcmm"], choices=["capture", "chefer", "dcmm"],
                    help="speed sections to run")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved repeats (default 9; 3 with --quick)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "tables" / "attention.md"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    reps = args.repeats or (3 if args.quick else 9)
    rows = []
    if "capture" in args.sections:
        rows += bench_capture(224, 16, 8, reps)
        rows += bench_capture(64, 8, 16, reps)
    if "chefer" in args.sections:
        rows += bench_chefer(224, 16, 8, reps)
        rows += bench_chefer(64, 8, 16, reps)
    if "dcmm" in args.sections:
        rows += bench_dcmm_step(64, 8, 16, reps)
        rows += bench_dcmm_step(224, 16, 8, reps)
    header = ["# Attention capture, Chefer relevance, DCMM attention", "",
              f"CPU, {args.threads} torch thread(s), torch {torch.__version__}, timm {timm.__version__}; "
              f"medians of {reps} interleaved repeats (after 2 warm-ups). The machine is shared, so "
              "absolute times are noisy; ratios are taken within one run.", "",
              "| measure | setting | result | target |", "|---|---|---|---|"]
    text = "\n".join(header + rows) + "\n"
    print(text)
    atomic_write_text(args.out, text)


if __name__ == "__main__":
    main()
