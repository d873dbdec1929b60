"""Attention capture, Chefer relevance and DCMM attention: cost ratios and phantom AUC.

Speed: ratios to a plain (fused) forward or forward+backward of the same model and batch, in the
same run; compared runs are interleaved and repeated, medians reported. Quality: test AUC of a
DCMM-ViT vs a plain ViT trained identically on the phantom.

    .venv/bin/python benchmarks/bench_attention.py            # speed + 64 px quality -> tables/attention.md
    .venv/bin/python benchmarks/bench_attention.py --quick    # fewer repeats, no quality
"""
from __future__ import annotations

import argparse
import copy
import json
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


def quality(size: int, n_train: int, n_test: int, epochs: int, depth: int, seeds: list[int],
            kinds: tuple[str, ...] = ("standard", "dcmm"), dcmm_kw: dict | None = None) -> list[str]:
    import workbench as wb

    train = wb.data.load("phantom", split="train", n=n_train, size=size, progress=False)
    val = wb.data.load("phantom", split="val", n=n_test, size=size, progress=False)
    test = wb.data.load("phantom", split="test", n=n_test, size=size, progress=False)
    rows = []
    patch = 8 if size <= 64 else 16
    for attention in kinds:
        aucs = []
        for seed in seeds:
            torch.manual_seed(seed)
            model = wb.models.create("vit_tiny", num_classes=2, img_size=size, in_chans=1, patch_size=patch,
                                     depth=depth, attention=attention, communities=4,
                                     dcmm=(dcmm_kw or None) if attention == "dcmm" else None)
            wb.fit(model, train, val, epochs=epochs, batch_size=32, lr=1e-3, device="cpu", seed=seed,
                   progress=False, early_stopping=None)
            aucs.append(wb.evaluate(model, test, device="cpu").auc)
            print(f"# {attention} seed {seed}: test AUC {aucs[-1]:.3f}", file=sys.stderr, flush=True)
        mean = statistics.mean(aucs)
        extra = f" {dcmm_kw}" if dcmm_kw and attention == "dcmm" else ""
        rows.append(f"| phantom {size}px test AUC, {attention} ViT{extra} | vit_tiny depth {depth} p{patch}, "
                    f"{n_train} train / {n_test} test, {epochs} epochs, seeds {seeds} | {mean:.3f} "
                    f"({', '.join(f'{a:.3f}' for a in aucs)}) | DCMM >= plain? |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="few repeats, no quality runs")
    ap.add_argument("--no-quality", action="store_true")
    ap.add_argument("--only-quality", action="store_true", help="skip the speed rows and append the quality "
                    "rows to the existing table (to run speed and quality as two processes)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadiest on a shared CPU)")
    ap.add_argument("--quality-size", type=int, nargs="+", default=[64])
    ap.add_argument("--quality", type=int, nargs=4, default=[400, 300, 6, 3], metavar=("N_TRAIN", "N_TEST", "EPOCHS", "DEPTH"),
                    help="phantom quality run: train/test sizes, epochs, ViT depth")
    ap.add_argument("--dcmm-kw", default="{}", help='JSON of enable_dcmm kwargs for the quality run, e.g. {"lam_init": 4}')
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--kinds", nargs="+", default=["standard", "dcmm"], choices=["standard", "dcmm"],
                    help="which ViTs the quality run trains (run one per process to use two cores)")
    ap.add_argument("--sections", nargs="+", default=["capture", "chefer", "dcmm"], choices=["capture", "chefer", "dcmm"],
                    help="speed sections to run")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved repeats (default 9; 3 with --quick)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "tables" / "attention.md"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    reps = args.repeats or (3 if args.quick else 9)
    rows = []
    if args.only_quality:
        for size in args.quality_size:
            rows += quality(size, *args.quality, seeds=args.seeds, kinds=tuple(args.kinds),
                                dcmm_kw=json.loads(args.dcmm_kw))
        text = Path(args.out).read_text() if Path(args.out).exists() else ""
        text = text + "\n".join(rows) + "\n"
        print(text)
        atomic_write_text(args.out, text)
        return
    if "capture" in args.sections:
        rows += bench_capture(224, 16, 8, reps)
        rows += bench_capture(64, 8, 16, reps)
    if "chefer" in args.sections:
        rows += bench_chefer(224, 16, 8, reps)
        rows += bench_chefer(64, 8, 16, reps)
    if "dcmm" in args.sections:
        rows += bench_dcmm_step(64, 8, 16, reps)
        rows += bench_dcmm_step(224, 16, 8, reps)
    if not (args.quick or args.no_quality):
        for size in args.quality_size:
            rows += quality(size, *args.quality, seeds=args.seeds, kinds=tuple(args.kinds),
                                dcmm_kw=json.loads(args.dcmm_kw))
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
