"""Geometry of the phantom chest: patient parameters and the implicit shapes of each structure.

Private machinery for :mod:`workbench.data.phantom`. Coordinates are "canonical": x in [-1, 1]
from the image's left to its right, y in [-1, 1] from top to bottom. Radiological convention:
the patient's left is on the image's right, so ``s = +1`` is the patient's left side (left lung,
heart apex, aortic knob, gastric bubble) and ``s = -1`` the patient's right.

Each shape is a *margin* function: positive inside, negative outside, roughly the distance to
the border in canonical units, so that ``margin > 0`` is the exact mask and a linear ramp of the
margin over about one pixel is the anti-aliased rendering.
"""
from __future__ import annotations

import functools

import numpy as np

F32 = np.float32
TAU = 2 * np.pi


def sample_anatomy(rng: np.random.Generator, *, ctr: float) -> dict:
    """Draw one patient's anatomy (scalars and small noise arrays).

    Args:
        rng: the sample's anatomy stream.
        ctr: target cardiothoracic ratio (heart width / inner thorax width).

    Returns:
        dict of parameters consumed by the margin functions and the renderer.
    """
    u = rng.uniform
    p = {
        "cx": rng.normal(0, 0.02), "rot": rng.normal(0, 0.035), "scale": u(0.96, 1.04),
        "ox": rng.normal(0, 0.02), "oy": rng.normal(0, 0.02),
        "wt": u(0.64, 0.74),            # lateral lung edge at the apex-to-base mid level
        "ytop": u(-0.76, -0.66),        # lung apex
        "yd": u(0.30, 0.46),            # left hemidiaphragm (inspiration: lower is deeper)
        "dyd": u(0.02, 0.07),           # the right hemidiaphragm sits higher
        "hd": u(0.08, 0.14),            # dome height
        "xa": u(0.25, 0.31),            # apex position from the midline
        "mw": u(0.10, 0.125),           # mediastinum half width
        "wall": u(0.14, 0.22),          # chest wall thickness
        "ctr": ctr,
        "hb": u(0.25, 0.30),            # heart half height
        "hk": u(0.25, 0.45),            # heart skew (long axis to the patient's left, down)
        "hsplit": u(0.60, 0.68),        # share of the heart width on the patient's left
        "def_a": rng.normal(0, 0.012, 4), "def_k": u(1.5, 3.5, 4), "def_p": u(0, TAU, 4),
        "rib_y0": u(-0.86, -0.80), "rib_sp": u(0.92, 1.08), "rib_w": u(0.38, 0.48),
        "clav_dy": u(0.0, 0.08), "clav_t": u(0.026, 0.034), "clav_s": u(0.25, 0.4),
        "ves1": rng.standard_normal((40, 7)).astype(F32),
        "ves2": rng.standard_normal((88, 12)).astype(F32),
        "tex": rng.standard_normal((9, 9)).astype(F32),
        "lung_dark": u(0.14, 0.20), "tissue": u(0.40, 0.48),
        "bubble": bool(rng.random() < 0.6), "bubble_r": u(0.04, 0.08), "bubble_dx": u(0.22, 0.36),
    }
    return p


def coordinates(X: np.ndarray, Y: np.ndarray, p: dict, fov: float) -> tuple[np.ndarray, np.ndarray]:
    """Map the image grid to canonical patient coordinates: field of view, rotation, shift and a
    smooth random deformation (a sum of low-frequency sines)."""
    a, k, ph = p["def_a"], p["def_k"], p["def_p"]
    xb, yb = X[0], Y[:, 0]  # the base grid is separable: deform with 1-D profiles
    Xd = X + (F32(a[0]) * np.sin(F32(k[0]) * yb + F32(ph[0])))[:, None] \
        + F32(a[1]) * np.sin(F32(k[1]) * xb + F32(ph[1]))
    Yd = Y + F32(a[2]) * np.sin(F32(k[2]) * xb + F32(ph[2])) \
        + (F32(a[3]) * np.sin(F32(k[3]) * yb + F32(ph[3])))[:, None]
    s = 0.9 * fov * p["scale"]  # 0.9: the thorax fills the frame as in a collimated PA film
    c, si = F32(s * np.cos(p["rot"])), F32(s * np.sin(p["rot"]))
    return c * Xd - si * Yd + F32(p["ox"]), si * Xd + c * Yd + F32(p["oy"])


def dome_level(p: dict, s: int) -> float:
    """y of the costophrenic angle on side s (the patient's right hemidiaphragm is higher)."""
    return p["yd"] - (p["dyd"] if s < 0 else 0.0)


def diaphragm_y(x: np.ndarray, p: dict) -> np.ndarray:
    """y of the diaphragm (top of the abdomen) at each x: two parabolic domes, blended at the
    midline."""
    xr = x - F32(p["cx"])
    xdc, wdc = 0.5 * (p["mw"] + p["wt"]), p["wt"] + 0.1 - 0.5 * (p["mw"] + p["wt"])
    out = []
    for s in (-1, 1):
        xs = s * xr
        out.append(F32(dome_level(p, s)) - F32(p["hd"]) * np.clip(1 - ((xs - F32(xdc)) / F32(wdc)) ** 2, 0, None))
    w = np.clip(0.5 + xr / F32(0.1), 0, 1)
    return out[0] * (1 - w) + out[1] * w


def lung_margin(x: np.ndarray, y: np.ndarray, p: dict, s: int, dia: np.ndarray) -> np.ndarray:
    """Margin of the lung on side s, before the heart and mediastinum are cut out."""
    xs = s * (x - F32(p["cx"]))
    ytop, xa, wt, mw = F32(p["ytop"]), F32(p["xa"]), F32(p["wt"]), F32(p["mw"])
    h = F32(dome_level(p, s) - p["ytop"])
    tc = np.clip((y - ytop) / h, 0, 1)
    u = np.minimum(tc / F32(0.5), 1)
    xl = xa + (wt - xa) * np.sqrt(1 - (1 - u) ** 2) + F32(0.08) * tc
    v = np.minimum(tc / F32(0.2), 1)
    xm = xa - (xa - mw) * np.sqrt(1 - (1 - v) ** 2)
    m = np.minimum(xs - xm, xl - xs)
    m = np.minimum(m, dia - y)
    return np.minimum(m, y - ytop)


def heart_geometry(p: dict) -> dict:
    """Centre, half axes and skew of the heart such that its width is ``ctr`` times the inner
    thorax width (the widest lung-to-lung distance)."""
    thorax = 2 * (p["wt"] + 0.08)
    hw = p["ctr"] * thorax
    wr = p["hsplit"] * hw
    hb = p["hb"] * (1 + 0.8 * max(0.0, p["ctr"] - 0.45))
    k = p["hk"]
    ha = np.sqrt(max((hw / 2) ** 2 - (k * hb) ** 2, (0.3 * hw) ** 2))
    hcx = p["cx"] + wr - hw / 2
    hcy = p["yd"] - 0.08 - 0.45 * hb
    return {"hcx": hcx, "hcy": hcy, "ha": ha, "hb": hb, "k": k}


def heart_margin(x: np.ndarray, y: np.ndarray, p: dict, dia: np.ndarray) -> np.ndarray:
    """Margin of the heart: a skewed ellipse sitting on the diaphragm."""
    g = heart_geometry(p)
    dy = y - F32(g["hcy"])
    xh = x - F32(g["hcx"]) - F32(g["k"]) * dy
    r = np.sqrt((xh / F32(g["ha"])) ** 2 + (dy / F32(g["hb"])) ** 2)
    m = (1 - r) * F32(min(g["ha"], g["hb"]))
    return np.minimum(m, np.maximum(dia, F32(p["yd"] - p["hd"] * 0.5)) + F32(0.02) - y)


def mediastinum_margin(x: np.ndarray, y: np.ndarray, p: dict, dia: np.ndarray) -> np.ndarray:
    """Margin of the mediastinum (with the spine behind it and the aortic knob on the patient's
    left), from the thoracic inlet down to the diaphragm; the heart is cut out by the caller."""
    xr = x - F32(p["cx"])
    yak = F32(p["ytop"] + 0.36)
    knob = F32(0.05) * np.exp(-(((y - yak) / F32(0.07)) ** 2)) * (xr > 0)
    wid = F32(p["mw"]) + F32(0.015) * np.clip((y - F32(p["ytop"])) / F32(0.6), 0, 1) + knob
    m = wid - np.abs(xr)
    m = np.minimum(m, dia - y)
    return np.minimum(m, y - F32(p["ytop"] - 0.2))


def body_margin(x: np.ndarray, y: np.ndarray, p: dict) -> tuple[np.ndarray, np.ndarray]:
    """Margin of the body outline (neck, shoulders, chest wall, abdomen) and its half width."""
    xr = np.abs(x - F32(p["cx"]))
    bmax = (F32(p["wt"] + 0.08 + p["wall"]) + F32(0.04) * np.clip(y - F32(p["ytop"]), 0, None)
            + F32(0.22) * np.exp(-(((y - F32(p["ytop"] + 0.05)) / F32(0.3)) ** 2)))
    neck = F32(0.28) + F32(2.5) * np.clip(y - F32(p["ytop"] - 0.36), 0, None)
    bw = np.minimum(bmax, neck)
    return bw - xr, bw


@functools.lru_cache(maxsize=16)
def _interp(size: int, coarse: int) -> tuple[np.ndarray, np.ndarray]:
    pos = ((np.arange(size) + 0.5) / size) * coarse - 0.5
    pos = np.clip(pos, 0, coarse - 1)
    i0 = np.minimum(np.floor(pos).astype(np.intp), coarse - 2)
    return i0, (pos - i0).astype(F32)


def upsample(fields: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling of (K, c, c) fields sampled at pixel centres to (K, size, size)
    (separable gathers; no BLAS, so no thread contention)."""
    i0, f = _interp(size, fields.shape[-1])
    g = fields[:, i0] * (1 - f)[None, :, None] + fields[:, i0 + 1] * f[None, :, None]
    return g[:, :, i0] * (1 - f) + g[:, :, i0 + 1] * f


def value_noise(grid: np.ndarray, u: np.ndarray, v: np.ndarray, wrap_u: bool = True) -> np.ndarray:
    """Smooth (C1) interpolation of a small random ``grid`` at fractional indices (u, v);
    u wraps around (an angle), v is clamped."""
    nu, nv = grid.shape
    i0 = np.floor(u)
    fu = u - i0
    i0 = i0.astype(np.int64)
    if wrap_u:
        i0 %= nu
        i1 = (i0 + 1) % nu
    else:
        i0 = np.clip(i0, 0, nu - 1)
        i1 = np.minimum(i0 + 1, nu - 1)
        fu = np.clip(fu, 0, 1)
    vc = np.clip(v, 0, nv - 1.001)
    j0 = np.floor(vc)
    fv = (vc - j0).astype(F32)
    j0 = j0.astype(np.int64)
    fu = fu * fu * (3 - 2 * fu)
    fv = fv * fv * (3 - 2 * fv)
    g = grid.ravel()
    a = g[i0 * nv + j0] * (1 - fv) + g[i0 * nv + j0 + 1] * fv
    b = g[i1 * nv + j0] * (1 - fv) + g[i1 * nv + j0 + 1] * fv
    return (a * (1 - fu) + b * fu).astype(F32)
