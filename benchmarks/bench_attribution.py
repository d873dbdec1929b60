"""Attribution cost per method (as a ratio to forward+backward of the same model and batch, in
the same run) and agreement with peers (pytorch-grad-cam, captum). Prints a markdown table.

    .venv/bin/python benchmarks/bench_attribution.py [--batch 4] [--size 224] [--reps 3]
        [--out benchmarks/tables/attribution.md]

FB = forward + ``backward()`` of the summed target logits w.r.t. the parameters (a training
step without the optimiser); F = a ``no_grad`` forward. Each method is timed interleaved with
FB and F (medians over ``--reps``; expensive methods once, SHAP Partition and IG three times). Targets are given explicitly
(the predicted class), so no method spends a forward on finding them. Models are randomly
initialised (cost does not depend on the weights); 1-channel inputs, as for radiographs.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workbench.attribution import attribute  # noqa: E402

warnings.filterwarnings("ignore")


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, dev) -> float:
    _sync(dev)
    t0 = time.perf_counter()
    fn()
    _sync(dev)
    return time.perf_counter() - t0


def corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double().cpu(), b.flatten().double().cpu()
    a, b = a - a.mean(), b - b.mean()
    return float((a @ b) / (a.norm() * b.norm() + 1e-12))


class Bench:
    def __init__(self, model, x, t, reps):
        self.m, self.x, self.t, self.reps = model, x, t, reps
        self.dev = x.device
        self.fb_times, self.f_times = [], []

    def fb(self):
        out = self.m(self.x)
        out.gather(1, self.t[:, None]).sum().backward()
        self.m.zero_grad(set_to_none=True)

    def f(self):
        with torch.no_grad():
            self.m(self.x)

    def run(self, fn, reps=None):
        """Median time of ``fn``; ``self.local_fb`` / ``self.local_f`` are the medians of the FB and
        F runs interleaved with it (ratios use those, robust to load changing over a run). Each
        round times FB and F three times: a single 0.1 s forward is too noisy a yardstick."""
        ts, fbs, fs = [], [], []
        for _ in range(reps or self.reps):
            for _ in range(3):
                fbs.append(timed(self.fb, self.dev))
                fs.append(timed(self.f, self.dev))
            ts.append(timed(fn, self.dev))
        self.fb_times += fbs
        self.f_times += fs
        self.local_fb, self.local_f = statistics.median(fbs), statistics.median(fs)
        return statistics.median(ts)

    @property
    def FB(self):
        return statistics.median(self.fb_times)

    @property
    def F(self):
        return statistics.median(self.f_times)


def pgc_gradcam(model, layer_fn, x, t, reshape=None):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    peer = model  # a deep copy made by the caller
    with GradCAM(model=peer, target_layers=[layer_fn(peer)], reshape_transform=reshape) as cam:
        return torch.from_numpy(cam(input_tensor=x, targets=[ClassifierOutputTarget(int(k)) for k in t]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--ig", default="16,32,64")
    ap.add_argument("--max-evals", type=int, default=64)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default=None)
    ap.add_argument("--methods", default=None, help="comma-separated subset (default: all)")
    args = ap.parse_args()

    import timm
    from captum.attr import LayerGradCam

    from workbench._device import resolve_device

    dev = resolve_device(args.device)
    torch.manual_seed(0)
    s, b = args.size, args.batch
    x = torch.rand(b, 1, s, s, device=dev)
    models = {
        "vit_tiny/16": timm.create_model("vit_tiny_patch16_224", num_classes=2, in_chans=1, img_size=s,
                                         pretrained=False),
        "resnet18": timm.create_model("resnet18", num_classes=2, in_chans=1, pretrained=False),
    }
    ig_steps = [int(v) for v in args.ig.split(",")]
    rows, agree = [], []
    # warm shap's numba JIT (tens of seconds, once per process) and build the image masker for this
    # size (about a second at 224 px; workbench keeps it for later calls) outside the timings
    if args.methods is None or "shap_partition" in args.methods:
        attribute(models["resnet18"].to(dev).eval(), torch.rand(1, 1, args.size, args.size, device=dev), target=0,
                  method="shap_partition", max_evals=20)
    for name, m in models.items():
        m = m.to(dev).eval()
        with torch.no_grad():
            t = m(x).argmax(1)
        bench = Bench(m, x, t, args.reps)
        bench.run(lambda: None, 1)  # warm-up
        vit = name.startswith("vit")

        def want(method):
            return args.methods is None or method in args.methods.split(",")

        def add(method, label, fn, reps=None, budget=None, unit="FB", extra=""):
            if not want(method):
                return
            sec = bench.run(fn, reps)
            ref = bench.local_fb if unit == "FB" else bench.local_f
            ratio = sec / ref
            ok = "" if budget is None else ("yes" if ratio <= budget else "NO")
            print(f"{name} {method} {label}: {ratio:.2f}x {unit}", file=sys.stderr, flush=True)
            rows.append((name, method, label, f"{1000 * sec / b:.0f}", f"{ratio:.2f}x {unit}",
                         "" if budget is None else f"<= {budget:g}x {unit}", ok, extra))

        # Grad-CAM: ours, pytorch-grad-cam, captum LayerGradCam (same layer, same targets)
        ours = attribute(m, x, target=t, method="gradcam")
        layer_name = ours.params["layer"]  # peers get the same layer

        def layer_fn(p, name=layer_name):
            return dict(p.named_modules())[name]

        add("gradcam", f"workbench ({ours.params['layer']}, {ours.params['cam_size'][0]}x{ours.params['cam_size'][1]})",
            lambda: attribute(m, x, target=t, method="gradcam"), budget=0.6 if vit else None)
        grid = ours.params["cam_size"]

        def reshape(tk, h=grid[0], w=grid[1]):
            return tk[:, 1:].reshape(tk.shape[0], h, w, tk.shape[2]).permute(0, 3, 1, 2)

        peer = copy.deepcopy(m)
        theirs = pgc_gradcam(peer, layer_fn, x, t.tolist(), reshape if vit else None)
        cs = [corr(ours.maps[i], theirs[i]) for i in range(b)
              if ours.maps[i].abs().max() > 0 and theirs[i].abs().max() > 0]
        agree.append((name, "gradcam vs pytorch-grad-cam GradCAM",
                      f"{min(cs):.4f} (min over {len(cs)} images)" if cs else "n/a (all maps zero)",
                      ">= 0.99", ("yes" if min(cs) >= 0.99 else "NO") if cs else ""))
        add("gradcam", "pytorch-grad-cam GradCAM", lambda: pgc_gradcam(peer, layer_fn, x, t.tolist(),
                                                                        reshape if vit else None))
        lgc = LayerGradCam(m, layer_fn(m))
        add("gradcam", "captum LayerGradCam", lambda: lgc.attribute(x, target=t))

        add("saliency", "", lambda: attribute(m, x, target=t, method="saliency"))
        add("input_x_gradient", "", lambda: attribute(m, x, target=t, method="input_x_gradient"))
        steps = ig_steps if vit else ig_steps[:1]
        for n in steps if want("integrated_gradients") else []:
            a = attribute(m, x, target=t, method="integrated_gradients", n_steps=n)
            with torch.no_grad():
                gap = (m(x) - m(torch.zeros_like(x))).gather(1, t[:, None])[:, 0]
            err = float(a.params["delta"].abs().mean() / gap.abs().mean().clamp_min(1e-12))
            sec = bench.run(lambda: attribute(m, x, target=t, method="integrated_gradients", n_steps=n))
            ratio = sec / bench.local_fb
            rows.append((name, "integrated_gradients", f"n_steps={n}", f"{1000 * sec / b:.0f}",
                         f"{ratio:.2f}x FB = {ratio / n:.3f} n x FB", "<= 1.05 n x FB",
                         "yes" if ratio / n <= 1.05 else "NO", f"completeness err {err:.2e}"))
        add("smoothgrad", "nt_samples=8", lambda: attribute(m, x, target=t, method="smoothgrad", nt_samples=8), 1)
        add("gradient_shap", "n_samples=8", lambda: attribute(m, x, target=t, method="gradient_shap", n_samples=8), 1)
        add("shap_gradient", "n_samples=8", lambda: attribute(m, x, target=t, method="shap_gradient", n_samples=8), 1)
        if not vit:
            add("deeplift", "", lambda: attribute(m, x, target=t, method="deeplift"), 1)
        else:
            add("attention_rollout", "", lambda: attribute(m, x, target=t, method="attention_rollout"), 1)
            add("chefer", "", lambda: attribute(m, x, target=t, method="chefer"), 1)
        w = s // 8
        add("occlusion", f"window {w}, stride {w} (64 windows)",
            lambda: attribute(m, x, target=t, method="occlusion", window=w, stride=w), 1, unit="F")
        add("feature_ablation", "SLIC, n_segments=64",
            lambda: attribute(m, x, target=t, method="feature_ablation", n_segments=64), 1, unit="F")
        me = args.max_evals
        res = {}
        if not want("shap_partition"):
            rows.append((name, "(reference)", "forward+backward FB / forward F", f"{1000 * bench.FB / b:.0f} / "
                         f"{1000 * bench.F / b:.0f}", "1x FB", "", "", ""))
            continue

        # time spent inside the model during shap's run: the rest is shap's own masking and
        # bookkeeping, a share that host noise in the separate F runs does not blur
        in_model, plain_forward = [], m.forward

        def timed_forward(inp):
            _sync(dev)
            t0 = time.perf_counter()
            out = plain_forward(inp)
            _sync(dev)
            in_model[-1] += time.perf_counter() - t0
            return out

        def sp():
            in_model.append(0.0)
            m.forward = timed_forward
            try:
                res["a"] = attribute(m, x, target=t, method="shap_partition", max_evals=me)
            finally:
                del m.forward  # back to the class's forward

        sec = bench.run(sp, 3)
        ratio = sec / bench.local_f
        share = statistics.median(in_model) / sec
        rows.append((name, "shap_partition", f"max_evals={me}, blur", f"{1000 * sec / b:.0f}",
                     f"{ratio:.1f}x F = {ratio / me:.2f} max_evals x F", "<= 1.0 max_evals x F",
                     "yes" if ratio / me <= 1.0 else "NO",
                     f"{res['a'].params['model_evals'] // b} model evals/image; {100 * share:.0f} % of its time in the model"))
        rows.append((name, "(reference)", "forward+backward FB / forward F", f"{1000 * bench.FB / b:.0f} / "
                     f"{1000 * bench.F / b:.0f}", "1x FB", "", "", ""))

    dev_name = f"{dev} ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else str(dev)
    lines = [f"Attribution cost, batch {b} x 1 x {s} x {s}, device {dev_name}, torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads; medians over {args.reps} interleaved runs (expensive methods: 1, SHAP Partition and IG: 3); "
             "each ratio uses the FB/F runs interleaved with that method (3 of each per round); ms/image is that method's own time.",
             "", "| model | method | settings | ms/image | cost | target | met | notes |",
             "|---|---|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += ["", "Agreement with peers (Pearson correlation of maps, same inputs and targets)", "",
              "| model | comparison | correlation | target | met |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in agree]
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    if args.out:
        from workbench._io import atomic_write_text

        atomic_write_text(args.out, text)


if __name__ == "__main__":
    main()
