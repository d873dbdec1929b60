"""The built-in anatomical chest-radiograph phantom: images with full ground truth.

Every sample is drawn from scratch at the requested size (no template): a patient with random
anatomy (thorax width, apex and diaphragm level, i.e. inspiration, heart size and shape, rib
spacing, rotation, smooth random deformation), optional findings with exact masks, optional
distractors, and a site's acquisition style. Radiological convention: the patient's left is on
the image's right, so ``left_lung`` lies on the image's right and the heart bulges to the right.

Anatomy (``ANATOMY``): body (soft tissue), left_lung, right_lung (with vessel-like markings
radiating from the hila), heart, mediastinum (with spine and trachea), diaphragm (the abdomen
below the domes, gastric bubble included), bones (spine, ribs, clavicles; bones overlap other
structures, the rest are disjoint apart from body, which holds them all).

Findings (``FINDINGS``, the concepts, in this order), default prevalences in brackets:
    - nodule (0.20): a spherical opacity wholly inside one lung, radius 3-7 % of the image
      width (2-4.5 px at 64 px), moderate contrast (small ones need looking for);
    - effusion (0.12; 0.42 with cardiomegaly when ``cooccurrence=True``): fluid at one or both
      lung bases up to 10-30 % of the lung height, meniscus rising along the chest wall; its mask
      is the part of the lung below the meniscus;
    - cardiomegaly (0.15): cardiothoracic ratio drawn in 0.55-0.64 (normal hearts 0.39-0.46); the
      ratio measured on the masks (``meta["ctr"]``) is > 0.5 exactly when it is present; its mask
      is the heart mask;
    - pneumothorax (0.10): the lung collapsed by 15-35 % towards its medial base, leaving a dark
      apical/lateral rim without markings and a bright visceral pleural line;
    - consolidation (0.15): a patchy opacity confined to one lung zone ("upper", "middle",
      "lower"), markings partly hidden.
The default sizes and contrasts are calibrated so that a small ViT trained for a few CPU minutes
at 64 px reaches a test AUC of about 0.94 on "abnormal" (nodules about 0.93; see
benchmarks/README.md): learnable, not trivial. Make it harder with e.g. ``nodule_contrast``.
Findings are drawn independently, except effusion with cardiomegaly as stated (heart failure).

Distractors (``DISTRACTORS``): ``device`` (chest drain entering through the lateral chest wall,
central line from the neck, or ECG electrodes with leads; default probability 0.25) and
``marker`` (burnt-in "L"/"R", sometimes with "AP", "PORTABLE"...; probability 0.5), both
independent of the findings unless a ``shortcut`` ties one to a label.

Tasks (``TASKS``): "abnormal" (binary: any finding), "findings" (multilabel over FINDINGS) and
"diagnosis" (multiclass, ``diagnosis_from_concepts``: the first that applies of pneumothorax ->
"pneumothorax", cardiomegaly and effusion -> "heart_failure", consolidation -> "pneumonia",
nodule -> "nodule", any other finding -> "other", else "normal").
"""
from __future__ import annotations

import hashlib
import json
import re
import zlib
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ._base import ArrayDataset
from ._phantom_extras import DEVICE_TYPES
from ._phantom_render import render
from ._phantom_shapes import sample_anatomy

ANATOMY = ("body", "left_lung", "right_lung", "heart", "mediastinum", "diaphragm", "bones")
FINDINGS = ("nodule", "effusion", "cardiomegaly", "pneumothorax", "consolidation")
DISTRACTORS = ("device", "marker")
STRUCTURES = ANATOMY + FINDINGS + DISTRACTORS
TASKS = ("abnormal", "findings", "diagnosis")
DIAGNOSES = ("normal", "pneumothorax", "heart_failure", "pneumonia", "nodule", "other")
PREVALENCE = {"nodule": 0.20, "effusion": 0.12, "cardiomegaly": 0.15, "pneumothorax": 0.10,
              "consolidation": 0.15}

#: Acquisition styles. "A" reference PA, "B" portable AP (flat, noisy, wide field), "C" sharp
#: high-contrast digital with tight collimation, "D" old computed radiography (a strong shift, not
#: among the default sites).
SITES: dict[str, dict[str, float]] = {
    "A": {"contrast": 1.00, "gamma": 1.00, "noise": 0.015, "blur": 0.0, "fov": 1.00, "brightness": 0.00},
    "B": {"contrast": 0.85, "gamma": 0.85, "noise": 0.035, "blur": 0.8, "fov": 1.08, "brightness": 0.03},
    "C": {"contrast": 1.20, "gamma": 1.20, "noise": 0.010, "blur": 0.4, "fov": 0.94, "brightness": -0.02},
    "D": {"contrast": 0.70, "gamma": 1.40, "noise": 0.050, "blur": 1.2, "fov": 1.15, "brightness": 0.08},
}
DEFAULT_SITES = ("A", "B", "C")
DEFAULT_N = {"train": 1000, "val": 250, "test": 250}

_DEFAULT_OPTIONS: dict[str, Any] = {
    "prevalence": PREVALENCE,
    "cooccurrence": True,
    "nodule_radius": (0.03, 0.07),       # fraction of the image width
    "nodule_contrast": (0.15, 0.30),      # added attenuation at the centre
    "effusion_level": (0.10, 0.30),       # fraction of the lung height
    "pneumothorax_fraction": (0.15, 0.35),
    "consolidation_radius": (0.18, 0.30),  # canonical units (the image is 2 wide)
    "consolidation_contrast": 0.30,
    "device_p": 0.25,
    "marker_p": 0.5,
    "device_types": DEVICE_TYPES,
}
_VERSION = 5  # bump whenever the generator changes: it invalidates cached datasets
_SPLIT_RE = re.compile(r"^[A-Za-z0-9_\-]+$")


def diagnosis_from_concepts(concepts: torch.Tensor | np.ndarray) -> torch.Tensor:
    """The diagnosis rule: concepts (N, 5) in FINDINGS order -> (N,) index into DIAGNOSES.

    Priority: pneumothorax, heart failure (cardiomegaly and effusion), pneumonia (consolidation),
    nodule, other (cardiomegaly or effusion alone), normal.
    """
    c = torch.as_tensor(np.asarray(concepts)) > 0.5
    nod, eff, cm, ptx, cons = (c[:, i] for i in range(5))
    out = torch.zeros(c.shape[0], dtype=torch.long)
    out[(eff | cm) & (out == 0)] = 5
    for k, cond in ((4, nod), (3, cons), (2, cm & eff), (1, ptx)):
        out[cond] = k
    return out


def _check_p(name: str, v: Any) -> float:
    try:
        v = float(v)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a probability (a number in [0, 1]); got {v!r}.") from None
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1]; got {v}.")
    return v


def _check_range(name: str, v: Any, lo: float, hi: float) -> tuple[float, float]:
    try:
        a, b = (float(t) for t in v)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a (low, high) pair of numbers; got {v!r}.") from None
    if not lo <= a <= b <= hi:
        raise ValueError(f"{name} must satisfy {lo} <= low <= high <= {hi}; got ({a}, {b}).")
    return a, b


def resolve_options(**options: Any) -> dict[str, Any]:
    """Validate generator options and fill in defaults (see ``_DEFAULT_OPTIONS``)."""
    bad = sorted(set(options) - set(_DEFAULT_OPTIONS))
    if bad:
        raise TypeError(f"unknown phantom option(s) {bad}; valid options are {sorted(_DEFAULT_OPTIONS)}.")
    o = {**_DEFAULT_OPTIONS, **options}
    prev = dict(PREVALENCE)
    user = o["prevalence"]
    if not isinstance(user, Mapping):
        raise TypeError(f"prevalence must be a dict {{finding: probability}}; got {type(user).__name__}.")
    for k, v in user.items():
        if k not in FINDINGS:
            raise ValueError(f"unknown finding {k!r} in prevalence; valid findings are {list(FINDINGS)}.")
        prev[k] = _check_p(f"prevalence[{k!r}]", v)
    o["prevalence"] = prev
    o["cooccurrence"] = bool(o["cooccurrence"])
    o["nodule_radius"] = _check_range("nodule_radius", o["nodule_radius"], 0.0, 0.2)
    o["nodule_contrast"] = _check_range("nodule_contrast", o["nodule_contrast"], 0.0, 1.0)
    o["effusion_level"] = _check_range("effusion_level", o["effusion_level"], 0.01, 0.9)
    o["pneumothorax_fraction"] = _check_range("pneumothorax_fraction", o["pneumothorax_fraction"], 0.01, 0.8)
    o["consolidation_radius"] = _check_range("consolidation_radius", o["consolidation_radius"], 0.01, 0.6)
    o["consolidation_contrast"] = float(o["consolidation_contrast"])
    o["device_p"] = _check_p("device_p", o["device_p"])
    o["marker_p"] = _check_p("marker_p", o["marker_p"])
    types = o["device_types"]
    types = (types,) if isinstance(types, str) else tuple(types)
    if not types or any(t not in DEVICE_TYPES for t in types):
        raise ValueError(f"device_types must be a non-empty subset of {list(DEVICE_TYPES)}; got {list(types)}.")
    o["device_types"] = types
    return o


def resolve_sites(sites: str | Sequence[str] | Mapping[str, float] | None) -> dict[str, float]:
    """Site weights (normalised) from a name, a list of names or a {name: weight} dict."""
    if sites is None:
        sites = DEFAULT_SITES
    if isinstance(sites, str):
        sites = [sites]
    w = dict(sites) if isinstance(sites, Mapping) else {s: 1.0 for s in sites}
    if not w:
        raise ValueError(f"sites is empty; pass site names from {list(SITES)}.")
    for k, v in w.items():
        if k not in SITES:
            raise ValueError(f"unknown site {k!r}; valid sites are {list(SITES)}.")
        if not float(v) >= 0:
            raise ValueError(f"site weights must be >= 0; got {k!r}: {v}.")
    tot = sum(float(v) for v in w.values())
    if tot <= 0:
        raise ValueError(f"site weights must not all be zero; got {w}.")
    return {k: float(v) / tot for k, v in sorted(w.items())}


def resolve_shortcut(shortcut: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Validate ``{"feature": "device"|"marker", "with": finding|"abnormal", "p_pos", "p_neg"}``."""
    if shortcut is None:
        return None
    if not isinstance(shortcut, Mapping):
        raise TypeError(f"shortcut must be a dict like {{'feature': 'device', 'with': 'pneumothorax', "
                        f"'p_pos': 0.9, 'p_neg': 0.1}}; got {type(shortcut).__name__}.")
    bad = sorted(set(shortcut) - {"feature", "with", "p_pos", "p_neg"})
    if bad:
        raise ValueError(f"unknown shortcut key(s) {bad}; expected 'feature', 'with', 'p_pos', 'p_neg'.")
    feat = shortcut.get("feature", "device")
    if feat not in DISTRACTORS:
        raise ValueError(f"shortcut feature must be one of {list(DISTRACTORS)}; got {feat!r}.")
    target = shortcut.get("with", "abnormal")
    if target not in FINDINGS + ("abnormal",):
        raise ValueError(f"shortcut 'with' must be 'abnormal' or a finding in {list(FINDINGS)}; got {target!r}.")
    return {"feature": feat, "with": target, "p_pos": _check_p("shortcut p_pos", shortcut.get("p_pos", 0.9)),
            "p_neg": _check_p("shortcut p_neg", shortcut.get("p_neg", 0.1))}


def _check_size(size: Any) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise TypeError(f"size must be an int number of pixels; got {size!r}.")
    if not 32 <= int(size) <= 512:
        raise ValueError(f"size must be between 32 and 512 pixels (64-256 recommended); got {size}.")
    return int(size)


def _split_code(split: str) -> int:
    if not isinstance(split, str) or not _SPLIT_RE.match(split):
        raise ValueError(f"split must be a name such as 'train', 'val' or 'test'; got {split!r}.")
    return zlib.crc32(split.encode())


def generate_sample(index: int, *, size: int = 128, seed: int = 0, split: str = "train",
                    sites: Mapping[str, float] | None = None, shortcut: Mapping | None = None,
                    options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Draw one phantom sample; deterministic in (seed, split, index) and the other arguments.

    Args:
        index: sample number within the split.
        size: side in pixels.
        seed: dataset seed.
        split: split name (each split has its own sample streams, so splits never share a sample).
        sites: normalised site weights (``resolve_sites``).
        shortcut: validated shortcut (``resolve_shortcut``) or None.
        options: validated options (``resolve_options``).

    Returns:
        dict with image (H, W) uint8, masks {name: (H, W) bool} for STRUCTURES, concepts (5,)
        float32, meta dict.
    """
    opts = dict(options) if options is not None else resolve_options()
    sites = dict(sites) if sites is not None else resolve_sites(None)
    ss = np.random.SeedSequence([int(seed), _split_code(split), int(index)])
    r_find, r_anat, r_site, r_dev, r_mk, r_place, r_noise, r_devg = (np.random.default_rng(s) for s in ss.spawn(8))
    prev = opts["prevalence"]
    u = r_find.random(len(FINDINGS))
    has = {f: bool(u[i] < prev[f]) for i, f in enumerate(FINDINGS)}
    if opts["cooccurrence"] and has["cardiomegaly"]:
        has["effusion"] = bool(u[1] < min(1.0, 3.5 * prev["effusion"]))
    ctr = float(r_find.uniform(0.55, 0.64) if has["cardiomegaly"] else r_find.uniform(0.39, 0.46))
    names = list(sites)
    site = names[int(r_site.choice(len(names), p=[sites[k] for k in names]))]
    abnormal = any(has.values())
    probs = {"device": opts["device_p"], "marker": opts["marker_p"]}
    if shortcut is not None:
        pos = abnormal if shortcut["with"] == "abnormal" else has[shortcut["with"]]
        probs[shortcut["feature"]] = shortcut["p_pos"] if pos else shortcut["p_neg"]
    has_dev = bool(r_dev.random() < probs["device"])
    dev_type = opts["device_types"][int(r_dev.integers(len(opts["device_types"])))]
    has_mk = bool(r_mk.random() < probs["marker"])
    p = sample_anatomy(r_anat, ctr=ctr)
    img, masks, meta = render(p, {"find": r_place, "device": r_devg, "marker": r_mk, "noise": r_noise},
                              size=size, findings=has, site=SITES[site],
                              device=dev_type if has_dev else None, marker=has_mk, opts=opts)
    meta = {"site": site, "device": has_dev, "marker": has_mk, "abnormal": abnormal,
            "findings": [f for f in FINDINGS if has[f]], **meta,
            "rotation_deg": float(np.degrees(p["rot"])), "inspiration": float(p["yd"]),
            "thorax_width": float(p["wt"]), "ctr_target": ctr, "split": split, "index": int(index)}
    meta = json.loads(json.dumps(meta))  # plain JSON types: identical whether fresh or cached
    concepts = np.array([float(has[f]) for f in FINDINGS], dtype=np.float32)
    return {"image": img, "masks": masks, "concepts": concepts, "meta": meta}


def generate(n: int, size: int = 128, seed: int = 0, *, split: str = "train",
             sites: str | Sequence[str] | Mapping[str, float] | None = None,
             shortcut: Mapping[str, Any] | None = None, progress: bool = False,
             **options: Any) -> dict[str, Any]:
    """Generate ``n`` samples as stacked numpy arrays (no caching; see ``load_phantom``).

    Returns:
        dict with images (N, H, W) uint8, masks {name: (N, H, W) bool} for STRUCTURES,
        concepts (N, 5) float32, meta (list of N dicts).
    """
    size = _check_size(size)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative int number of samples; got {n!r}.")
    _split_code(split)
    opts = resolve_options(**options)
    w = resolve_sites(sites)
    sc = resolve_shortcut(shortcut)
    images = np.empty((n, size, size), np.uint8)
    masks = {k: np.empty((n, size, size), bool) for k in STRUCTURES}
    concepts = np.empty((n, len(FINDINGS)), np.float32)
    meta = []
    from tqdm.auto import tqdm

    for i in tqdm(range(n), desc=f"phantom {split}", disable=not progress or n < 64, leave=False):
        s = generate_sample(i, size=size, seed=seed, split=split, sites=w, shortcut=sc, options=opts)
        images[i] = s["image"]
        for k in STRUCTURES:
            masks[k][i] = s["masks"][k]
        concepts[i] = s["concepts"]
        meta.append(s["meta"])
    return {"images": images, "masks": masks, "concepts": concepts, "meta": meta}


def _cache_path(data_dir: Path, key: dict) -> Path:
    h = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return data_dir / "phantom" / f"{key['split']}_{key['size']}px_{key['n']}_{h}.npz"


def _save(path: Path, arrays: dict) -> None:
    from .._io import atomic_path

    packed = np.stack([arrays["masks"][k] for k in STRUCTURES])
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, images=arrays["images"], masks=np.packbits(packed, axis=-1),
                     concepts=arrays["concepts"], meta=np.array(json.dumps(arrays["meta"])),
                     structures=np.array(STRUCTURES))


def _read(path: Path, size: int) -> dict:
    with np.load(path, allow_pickle=False) as z:
        packed = np.unpackbits(z["masks"], axis=-1, count=size).astype(bool)
        return {"images": z["images"], "masks": dict(zip(z["structures"].tolist(), packed)),
                "concepts": z["concepts"], "meta": json.loads(str(z["meta"]))}


def load_phantom(split: str = "train", n: int | None = None, size: int = 128, seed: int = 0, *,
                 task: str = "abnormal", sites: str | Sequence[str] | Mapping[str, float] | None = None,
                 shortcut: Mapping[str, Any] | None = None, cache: bool = True,
                 data_dir: str | Path | None = None, progress: bool = True,
                 **options: Any) -> ArrayDataset:
    """Load (generate or read from the cache) a split of the anatomical chest phantom.

    Args:
        split: split name; each split draws its own samples, so splits never share one.
        n: number of samples (default 1000 for "train", 250 otherwise).
        size: image side in pixels (32-512; 64-256 recommended).
        seed: dataset seed; the same arguments give the same bytes.
        task: "abnormal" (binary), "findings" (multilabel) or "diagnosis" (multiclass).
        sites: site name(s) from SITES or {name: weight}; default A, B and C equally.
        shortcut: e.g. ``{"feature": "device", "with": "pneumothorax", "p_pos": 0.9, "p_neg": 0.1}``
            ties a distractor to a label in this split only (pass it for "train", not for "test").
        cache: read/write ``<data_dir>/phantom/<split>_<size>px_<n>_<hash>.npz``.
        data_dir: cache root (default ``workbench.data._paths.default_data_dir()``).
        progress: show a progress bar while generating.
        **options: generator options: prevalence ({finding: p}), cooccurrence, nodule_radius,
            nodule_contrast, effusion_level, pneumothorax_fraction, consolidation_radius,
            consolidation_contrast, device_p, marker_p, device_types.

    Returns:
        ArrayDataset: images (N, 1, H, W) uint8; masks for STRUCTURES (all present: an absent
        finding or distractor is an all-False mask); concepts (N, 5) findings presence; meta per
        sample (site, device, marker, finding sizes and sides, measured ctr, patient parameters).

    Examples:
        >>> ds = load_phantom("train", n=4, size=64, cache=False, progress=False)
        >>> tuple(ds.images.shape), ds.classes
        ((4, 1, 64, 64), ('normal', 'abnormal'))
    """
    if task not in TASKS:
        raise ValueError(f"unknown phantom task {task!r}; valid tasks are {list(TASKS)}.")
    size = _check_size(size)
    _split_code(split)
    if n is None:
        n = DEFAULT_N.get(split, 250)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive int number of samples; got {n!r}.")
    opts = resolve_options(**options)
    w = resolve_sites(sites)
    sc = resolve_shortcut(shortcut)
    key = {"version": _VERSION, "split": split, "n": int(n), "size": size, "seed": int(seed), "sites": w,
           "shortcut": sc, "options": {k: list(v) if isinstance(v, tuple) else v for k, v in opts.items()}}
    arrays = None
    path = None
    if cache:
        if data_dir is None:
            from ._paths import default_data_dir

            data_dir = default_data_dir()
        path = _cache_path(Path(data_dir), key)
        if path.is_file():
            try:
                arrays = _read(path, size)
            except Exception:  # a damaged cache file is regenerated
                arrays = None
    if arrays is None:
        arrays = generate(int(n), size, seed, split=split, sites=w, shortcut=sc, progress=progress, **opts)
        if path is not None:
            _save(path, arrays)
    concepts = torch.from_numpy(np.ascontiguousarray(arrays["concepts"]))
    if task == "abnormal":
        labels, classes, kind = (concepts.sum(1) > 0).long(), ("normal", "abnormal"), "binary"
    elif task == "findings":
        labels, classes, kind = concepts.clone(), FINDINGS, "multilabel"
    else:
        labels, classes, kind = diagnosis_from_concepts(concepts), DIAGNOSES, "multiclass"
    images = torch.from_numpy(np.ascontiguousarray(arrays["images"]))[:, None]
    masks = {k: torch.from_numpy(np.ascontiguousarray(arrays["masks"][k])) for k in _MASK_ORDER}
    ids = [f"phantom-s{seed}-{split}-{i:06d}" for i in range(int(n))]
    return ArrayDataset(images, labels, classes=classes, task=kind, masks=masks, concepts=concepts,
                        concept_names=FINDINGS, meta=arrays["meta"], ids=ids, name="phantom")


#: Order of ``dataset.masks`` (and so of ``dataset.structures``): ``label_map`` lets later names
#: win, so organs overwrite the bones that overlap them and findings overwrite organs.
_MASK_ORDER = ("body", "bones", "diaphragm", "mediastinum", "heart", "right_lung", "left_lung") + FINDINGS + DISTRACTORS
