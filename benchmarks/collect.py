"""Rebuild benchmarks/README.md from the latest tables in benchmarks/tables/*.md.

Run each ``bench_*.py`` (it writes its table under tables/), then ``python benchmarks/collect.py``.
"""
from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = ["setup", "train", "train_gpu", "phantom", "attention", "communities", "communities_gpu", "attribution",
         "attribution_gpu", "evaluation", "lesions", "lesions_pooling", "sae_models", "sae_caching", "sae_memory", "sae_speed", "sae_frontier", "sae_quality",
         "sae_atlas", "sae_atlas_sweep", "sae_shortcut", "sae_interventions", "concepts", "pruning", "pruning_speed", "pruning_quality", "pruning_quality_b", "pruning_shortcut", "pruning_distill", "scale", "validation",
         "notebooks"]

HEADER = """# Benchmarks

Each capability has a script here that prints a markdown table and writes it to `tables/`;
`python benchmarks/collect.py` gathers the latest tables into this file. Speed is reported as
ratios to a plain forward (or forward+backward) pass of the same model and batch measured in the
same run, with compared runs interleaved and repeated, medians reported; quality uses the metric
each issue names. The development machine is a shared 2-core CPU without a GPU, so absolute
times are noisy and slow; ratios are the figures to compare. Tables whose name ends in `_gpu` were
run on a lent NVIDIA H100 machine with `--device cuda`.

| script | what it measures |
|---|---|
| `bench_setup.sh` | fresh clone -> `make test` set-up time |
| `bench_train.py` | training throughput vs bare forward+backward; MedMNIST test AUC; demo wall time |
| `bench_phantom.py` | phantom generation speed, realism vs real radiographs, difficulty, shortcut gap |
| `bench_attention.py` | capture / Chefer cost ratios vs timm AttentionExtract; DCMM step cost |
| `bench_communities.py` | DCMM-ViT vs plain ViT AUC at 64 and 128 px; anatomy alignment of communities (phantom, real CXR); widget redraw latency |
| `bench_attribution.py` | cost per attribution method vs forward+backward; agreement with pytorch-grad-cam |
| `bench_evaluation.py` | method x metric table on the phantom; shortcut exposure; real-CXR budgets |
| `bench_lesions.py` | every attribution method on real lesions (BUSI ultrasound) and the phantom's nodules; baselines; mask-guided training; cost of the new methods; burnt-in marks audit; the head's global pooling |
| `bench_sae.py` | SAE activation caching vs the truncated-forward floor; memory while training from a store; training tokens/s vs the GEMM floor and saev / Overcomplete / SAELens; ReLU SAEs at equal L0; FVU, L0, dead latents, spliced AUC; latent atlas (phantom, real CXR); confounder search and Mammo-SAE interventions |
| `bench_concepts.py` | CBM vs black box, concept AUCs, intervention curves; TCAV significance with/without a shortcut (checked against the causal effect of adding the concept; which null), agreement and cost vs captum; site repair without training (concept layer, normalisation, input alignment, style-undo oracle); CBM training throughput; explorer redraw |
| `bench_pruning.py` | pruned size/speed; AUC vs ratio per criterion (peers: Torch-Pruning magnitude/Taylor); explanations after pruning; shortcut removal; scoring cost |
| `bench_scale.py` | lazy 20,000-PNG folder: memory while iterating, fit throughput lazy vs in memory; `workbench explain` under torchrun vs one process; CheXmask decoding speed |
| `bench_notebooks.py` | each notebook's time in the suite, the quickstart's first overlay with and without the demo's checkpoint, full-setting runs, fresh-clone `make test` |
| `bench_validation.py` | bad inputs over the public API (clear / unclear / silently wrong, before and after the checks); cost of the checks vs a batch-1 forward |
"""


def demote(markdown: str) -> str:
    """Push every heading one level down so each table sits under this file's title."""
    return "\n".join("#" + line if line.startswith("#") else line for line in markdown.strip().splitlines())


def main() -> None:
    tables = {p.stem: p for p in (HERE / "tables").glob("*.md")}
    names = [n for n in ORDER if n in tables] + sorted(set(tables) - set(ORDER))
    parts = [demote(tables[n].read_text()) for n in names]
    (HERE / "README.md").write_text(HEADER + "\n" + "\n\n".join(parts) + "\n")


if __name__ == "__main__":
    main()
