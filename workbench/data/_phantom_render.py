"""Rendering of one phantom chest radiograph (private; see :mod:`workbench.data.phantom`).

The image is an attenuation sum drawn directly at the target resolution on a coordinate grid
(no template, no resampling): soft tissue, dark lungs with vessel-like markings radiating from
the hila, the cardiomediastinal silhouette, spine, ribs and clavicles, the abdomen under the
diaphragm domes; then findings and devices; then the site's acquisition style (contrast, gamma,
blur, noise) and finally burnt-in markers. Every structure is the zero level set of a margin
function, so masks are exact and edges are anti-aliased over one pixel.
"""
from __future__ import annotations

import functools

import numpy as np
from . import _phantom_extras as ex
from . import _phantom_shapes as sh

F32 = np.float32


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    c = ((np.arange(size, dtype=F32) + F32(0.5)) / F32(size)) * F32(2) - F32(1)
    X, Y = np.meshgrid(c, c)
    X.flags.writeable = False
    Y.flags.writeable = False
    return X, Y


def _ramp(m: np.ndarray, e: float) -> np.ndarray:
    return np.clip(F32(0.5) + m * F32(0.5 / e), 0, 1)


def _pick_pixel(rng: np.random.Generator, mask: np.ndarray) -> tuple[int, int] | None:
    idx = np.flatnonzero(mask)
    if idx.size == 0:
        return None
    k = int(idx[rng.integers(idx.size)])
    return divmod(k, mask.shape[1])


def _nodule(rng, size, lungs, lung_of, opts):
    """Place a nodule wholly inside one lung: returns (opacity (H, W), mask, meta)."""
    r = float(rng.uniform(*opts["nodule_radius"])) * size
    r = max(r, 0.6)
    contrast = float(rng.uniform(*opts["nodule_contrast"]))
    rad = int(np.ceil(r)) + 1
    for _ in range(40):
        pix = _pick_pixel(rng, lungs)
        if pix is None:
            break
        ci, cj = pix[0] + rng.uniform(-0.5, 0.5), pix[1] + rng.uniform(-0.5, 0.5)
        i0, i1 = max(0, pix[0] - rad), min(size, pix[0] + rad + 1)
        j0, j1 = max(0, pix[1] - rad), min(size, pix[1] + rad + 1)
        ii = np.arange(i0, i1, dtype=F32)[:, None] + F32(0.5)
        jj = np.arange(j0, j1, dtype=F32)[None, :] + F32(0.5)
        d = np.sqrt((ii - F32(ci + 0.5)) ** 2 + (jj - F32(cj + 0.5)) ** 2)
        box = d < r
        win = (slice(i0, i1), slice(j0, j1))
        if box.any() and lungs[win][box].all() and len(np.unique(lung_of[win][box])) == 1:
            mask = np.zeros(lungs.shape, bool)
            mask[win] = box
            opa = np.zeros(lungs.shape, F32)
            opa[win] = F32(contrast) * np.sqrt(np.clip(1 - (d / F32(r + 0.5)) ** 2, 0, 1))
            side = "left" if lung_of[win][box][0] == 1 else "right"
            return opa, mask, {"nodule_radius_px": r, "nodule_contrast": contrast,
                               "nodule_center": (float(ci), float(cj)), "nodule_side": side}
    return None


def render(p: dict, rngs: dict, *, size: int, findings: dict, site: dict,
           device: str | None, marker: bool, opts: dict) -> tuple[np.ndarray, dict, dict]:
    """Draw one radiograph.

    Args:
        p: anatomy from ``sample_anatomy``.
        rngs: independent streams "find" (finding placement), "device", "marker", "noise", so
            that switching a distractor on or off changes nothing else in the image.
        size: output side in pixels.
        findings: {name: bool} for the five findings.
        site: acquisition style (contrast, gamma, noise, blur, fov, brightness).
        device: None or one of ``DEVICE_TYPES``.
        marker: whether to burn in a marker.
        opts: generator options (nodule radius and contrast ranges...).

    Returns:
        image (H, W) uint8, masks {name: (H, W) bool}, meta dict.
    """
    rng = rngs["find"]
    X, Y = _grid(size)
    fov = site["fov"]
    x, y = sh.coordinates(X, Y, p, fov)
    px = 2.0 * 0.9 * fov * p["scale"] / size
    e = 0.6 * px
    cx = F32(p["cx"])
    xr = x - cx
    dia = sh.diaphragm_y(x, p)
    body_m, bw = sh.body_margin(x, y, p)
    med_m = sh.mediastinum_margin(x, y, p, dia)
    heart_m = sh.heart_margin(x, y, p, dia)
    cut = -np.maximum(heart_m, med_m)
    lung_m = {}
    for s in (-1, 1):  # each lung only on the columns of its side of the midline (half the work)
        cols = np.flatnonzero((s * xr > F32(0.5 * p["mw"])).any(0))
        m = np.full(x.shape, F32(-1))
        if cols.size:
            sl = (slice(None), slice(int(cols[0]), int(cols[-1]) + 1))
            m[sl] = np.minimum(sh.lung_margin(x[sl], y[sl], p, s, dia[sl]), cut[sl])
        lung_m[s] = m
    body = body_m > 0
    heart = (heart_m > 0) & body
    medi = (med_m > 0) & ~heart & body
    lungs_lr = {"left_lung": lung_m[1] > 0, "right_lung": lung_m[-1] > 0}
    lungs = lungs_lr["left_lung"] | lungs_lr["right_lung"]
    abd_m = np.minimum(body_m, y - dia)
    abdomen = (abd_m > 0) & ~heart

    body_s = _ramp(body_m, e)
    lung_s = _ramp(np.maximum(lung_m[1], lung_m[-1]), e)
    cm_s = _ramp(np.maximum(heart_m, med_m), e) * body_s
    abd_s = _ramp(abd_m, 2 * e)

    # soft tissue: thicker (brighter) in the middle of the body
    thick = np.sqrt(np.clip(1 - (xr / (bw + F32(0.05))) ** 2, 0, 1))
    A = body_s * (F32(p["tissue"] - 0.08) + F32(0.30) * thick)
    A += F32(0.10) * abd_s + F32(0.09) * cm_s

    # lungs: dark, a little brighter at the apex and base (overlying soft tissue)
    h = F32(p["yd"] - p["ytop"])
    tl = (y - F32(p["ytop"])) / h
    lung_dark = F32(p["lung_dark"]) * (F32(1.0) - F32(0.35) * (2 * tl - 1) ** 2)

    # vessel-like markings: ridges of value noise in polar coordinates around each hilum; the
    # noise is smooth, so it is computed on a coarse grid and upsampled (the ridges stay sharp)
    hy = F32(p["ytop"] + 0.45 * (p["yd"] - p["ytop"]))
    hx = F32(p["mw"] + 0.06)
    side = (xr > 0).astype(F32) * 2 - 1
    dxh, dyh = xr - side * hx, y - hy
    r = np.sqrt(dxh * dxh + dyh * dyh)
    c = min(size, 96)
    if c < size:
        xc, yc = sh.coordinates(*_grid(c), p, fov)
        xcr = xc - cx
    else:
        xc, yc, xcr = x, y, xr
    sc_ = (xcr > 0).astype(F32) * 2 - 1
    dxc, dyc = xcr - sc_ * hx, yc - hy
    rc = np.sqrt(dxc * dxc + dyc * dyc)
    ang = (np.arctan2(dyc, sc_ * dxc) + F32(np.pi)) * F32(1 / (2 * np.pi))
    fields = np.stack([sh.value_noise(p["ves1"], ang * 40, rc * F32(3.5)),
                       sh.value_noise(p["ves2"], ang * 88, rc * F32(7.0)),
                       sh.value_noise(p["tex"], (xc + 1.2) * F32(3.2), (yc + 1.2) * F32(3.2), wrap_u=False)])
    if c < size:
        fields = sh.upsample(fields, size)
    n1, n2, tex = fields
    taper = np.clip(F32(1.15) - r * F32(1.25), 0, 1)
    w1 = F32(0.22) + F32(0.3) * np.exp(-r * F32(5.0))
    v1 = np.clip(1 - np.abs(n1) / w1, 0, 1)
    v2 = np.clip(1 - np.abs(n2) / (w1 * F32(0.75)), 0, 1)
    vessels = (v1 + F32(0.5) * v2) * taper
    hilum = np.exp(-(r * r) * F32(1 / 0.008))

    # findings
    masks_f: dict[str, np.ndarray] = {}
    meta: dict = {}
    ves_keep = np.ones_like(A)
    extra = np.zeros_like(A)
    if findings.get("pneumothorax"):
        s = 1 if rng.random() < 0.5 else -1
        f = float(rng.uniform(*opts["pneumothorax_fraction"]))
        ox_, oy_ = p["cx"] + s * (p["mw"] + 0.12), sh.dome_level(p, s)
        xq = F32(ox_) + (x - F32(ox_)) / F32(1 - f)
        yq = F32(oy_) + (y - F32(oy_)) / F32(1 - f)
        shrunk = sh.lung_margin(xq, yq, p, s, sh.diaphragm_y(xq, p)) * F32(1 - f)
        region = (s * xr > F32(p["mw"] + 0.12)) | (y < hy)
        lung_side = lung_m[s] > 0
        ptx = lung_side & (shrunk <= 0) & region
        if not ptx.any():  # tiny images: keep at least the apex rim
            ptx = lung_side & (y < np.quantile(y[lung_side], 0.1))
        masks_f["pneumothorax"] = ptx
        ptx_s = ptx.astype(F32)
        ves_keep *= 1 - ptx_s
        line = np.clip(1 - np.abs(shrunk) / F32(0.9 * px), 0, 1) * region * _ramp(lung_m[s], e)
        extra += F32(0.08) * line - F32(0.07) * ptx_s
        meta.update(pneumothorax_side="left" if s > 0 else "right", pneumothorax_fraction=f)
    if findings.get("effusion"):
        u = rng.random()
        sides = (-1,) if u < 0.4 else (1,) if u < 0.8 else (-1, 1)
        eff = np.zeros_like(body)
        levels = []
        for s in sides:
            lev = float(rng.uniform(*opts["effusion_level"]))
            base = sh.dome_level(p, s)
            ylev = F32(base - lev * (base - p["ytop"]))
            lat = np.clip((s * xr - F32(p["mw"])) / F32(p["wt"]), 0, 1)
            ym = ylev - F32(0.10) * lat * lat
            m = np.minimum(lung_m[s], y - ym)
            eff |= m > 0
            extra += F32(0.20) * _ramp(m, 1.5 * e) * (F32(0.8) + F32(0.4) * np.clip((y - ym) / F32(0.2), 0, 1))
            ves_keep *= 1 - F32(0.8) * _ramp(m, 2 * e)
            levels.append(lev)
        masks_f["effusion"] = eff
        meta.update(effusion_side="both" if len(sides) == 2 else ("left" if sides[0] > 0 else "right"),
                    effusion_level=float(np.mean(levels)))
    if findings.get("consolidation"):
        s = 1 if rng.random() < 0.5 else -1
        lobe = ("upper", "middle", "lower")[int(rng.integers(3))]
        bounds = {"upper": (-9.0, hy - 0.05), "middle": (hy - 0.05, hy + 0.15), "lower": (hy + 0.15, 9.0)}[lobe]
        zone = (lung_m[s] > 0) & (y > F32(bounds[0])) & (y < F32(bounds[1]))
        if not zone.any():
            zone = lung_m[s] > 0
        ci, cj = _pick_pixel(rng, zone)
        R = F32(rng.uniform(*opts["consolidation_radius"]))
        d2 = ((x - x[ci, cj]) ** 2 + (y - y[ci, cj]) ** 2) / (R * R)
        g = rng.standard_normal((8, 8)).astype(F32)
        nz = sh.value_noise(g, (xc + 1.2) * F32(2.8), (yc + 1.2) * F32(2.8), wrap_u=False)
        nz = np.clip(sh.upsample(nz[None], size)[0] if c < size else nz, -1, 1)
        field = 1 - d2 + F32(0.55) * nz
        field[ci, cj] = max(field[ci, cj], F32(0.5))
        cons = (field > F32(0.3)) & zone
        masks_f["consolidation"] = cons
        extra += F32(opts["consolidation_contrast"]) * np.clip((field - F32(0.3)) / F32(0.35), 0, 1) * zone
        ves_keep *= 1 - F32(0.5) * cons
        meta.update(consolidation_side="left" if s > 0 else "right", consolidation_lobe=lobe,
                    consolidation_area_px=int(cons.sum()))
    if findings.get("nodule"):
        lung_of = lungs_lr["left_lung"].astype(np.int8) - lungs_lr["right_lung"]
        res = _nodule(rng, size, lungs, lung_of, opts)
        if res is None:
            raise RuntimeError("could not place a nodule inside a lung; please report this seed.")
        opa, nmask, nmeta = res
        extra += opa
        masks_f["nodule"] = nmask
        meta.update(nmeta)

    A -= lung_s * lung_dark
    A += lung_s * (F32(0.09) * vessels * ves_keep * (F32(0.35) + F32(0.6) * hilum + F32(0.5) * taper)
                   + F32(0.015) * tex)
    A += F32(0.09) * hilum * np.maximum(lung_s, cm_s)

    # bones: spine, posterior and anterior ribs, clavicles
    ax = np.abs(xr)
    spine_band = np.clip((F32(0.06) - ax) / F32(1.5 * px), 0, 1)
    sp = F32(0.10 * p["rib_sp"] * (p["yd"] - p["ytop"] + 0.5) / 1.1)
    vert = (y - F32(p["rib_y0"])) / sp
    vert = np.abs(vert - np.floor(vert) - F32(0.45))
    spine = spine_band * (F32(0.75) + F32(0.25) * (vert < F32(0.4))) * body_s * (F32(0.4) + F32(0.6) * cm_s)
    trachea = np.clip((F32(0.03) - ax) / F32(px), 0, 1) * _ramp(F32(p["ytop"] + 0.3) - y, 0.05) * body_s
    ph = (y - F32(p["rib_y0"]) + F32(0.10) * ax - F32(0.85) * ax * ax) / sp
    k = np.floor(ph)
    fr = ph - k
    wf = F32(p["rib_w"])
    rib_prof = np.clip(1 - np.abs(fr - wf / 2) / (wf / 2), 0, 1)
    rib_prof = np.sqrt(rib_prof) * (F32(1.0) - F32(0.3) * (rib_prof > F32(0.5)))
    lat_lim = F32(p["wt"] + 0.08 + 0.4 * p["wall"])
    rib_ok = (k >= 0) & (k < 10) & (ax > F32(0.06)) & (ax < lat_lim)
    ribs = rib_prof * rib_ok * np.clip((dia + F32(0.15) - y) / F32(0.15), 0, 1)
    ph2 = (y - F32(p["ytop"] - 0.05) - F32(0.5) * ax) / (sp * F32(1.3))
    fr2 = ph2 - np.floor(ph2)
    aribs = (np.clip(1 - np.abs(fr2 - F32(0.15)) / F32(0.15), 0, 1) * (ph2 > 0) * (ph2 < 5)
             * np.clip((ax - F32(0.2)) / F32(0.15), 0, 1) * (ax < lat_lim))
    cy = (F32(p["ytop"] + p["clav_dy"]) - F32(p["clav_s"]) * (ax - F32(0.08))
          + F32(0.3) * (ax - F32(0.4)) ** 2)
    clav = np.clip(1 - np.abs(y - cy) / F32(p["clav_t"]), 0, 1) * (ax > F32(0.07)) * (ax < F32(0.72))
    A += body_s * (F32(0.06) * spine + F32(0.05) * ribs * (1 - F32(0.7) * cm_s) + F32(0.025) * aribs + F32(0.11) * np.sqrt(clav))
    A -= F32(0.06) * trachea
    if p["bubble"]:
        bx, by = cx + F32(p["bubble_dx"]), F32(p["yd"] + 0.1)
        db = ((x - bx) / F32(1.4 * p["bubble_r"])) ** 2 + ((y - by) / F32(p["bubble_r"])) ** 2
        A -= F32(0.16) * np.clip((1 - db) / F32(0.3), 0, 1) * abd_s
    bones = ((spine_band > 0.5) | (ribs > 0.3) | (clav > 0.3)) & body & (y > F32(p["ytop"] - 0.3))
    A += extra

    dev_mask = None
    if device is not None:
        cd = min(size, 32)
        soft, dev_mask = ex.draw_device(x, y, *sh.coordinates(*_grid(cd), p, fov), rngs["device"], p, px, device)
        dev_mask &= (X > -1) & (X < 1)
        A = A * (1 - soft) + (A + F32(0.32)) * soft
        meta["device_type"] = device

    # acquisition: contrast, brightness, gamma, blur, noise
    img = np.clip(F32(site["brightness"]) + F32(site["contrast"]) * (A - F32(0.45)) + F32(0.45), 0, 1)
    img = img ** F32(site["gamma"])
    if site["blur"] > 0:
        img = _blur(img, site["blur"] * size / 256.0)
    if site["noise"] > 0:
        # uniform noise of the site's standard deviation (cheaper than normal, same spectrum)
        img = img + F32(site["noise"] * 12 ** 0.5) * (rngs["noise"].random(img.shape, dtype=F32) - F32(0.5))
    img = np.clip(img, 0, 1)
    mk = None
    if marker:
        mk, text = ex.draw_marker(rngs["marker"], size)
        img[mk] = 1.0
        meta["marker_text"] = text
    out = (img * 255 + 0.5).astype(np.uint8)

    zeros = np.zeros((size, size), bool)
    masks = {"body": body, "left_lung": lungs_lr["left_lung"], "right_lung": lungs_lr["right_lung"],
             "heart": heart, "mediastinum": medi, "diaphragm": abdomen, "bones": bones}
    masks["nodule"] = masks_f.get("nodule", zeros)
    masks["effusion"] = masks_f.get("effusion", zeros)
    masks["cardiomegaly"] = heart if findings.get("cardiomegaly") else zeros
    masks["pneumothorax"] = masks_f.get("pneumothorax", zeros)
    masks["consolidation"] = masks_f.get("consolidation", zeros)
    masks["device"] = dev_mask if dev_mask is not None else zeros
    masks["marker"] = mk if mk is not None else zeros
    meta["ctr"] = measure_ctr(heart, lungs)
    return out, masks, meta


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur with edge padding (explicit taps: faster than scipy here)."""
    if sigma < 0.2:
        return img
    rad = max(1, int(np.ceil(2.5 * sigma)))
    t = np.arange(-rad, rad + 1, dtype=F32)
    k = np.exp(-0.5 * (t / F32(sigma)) ** 2)
    k /= k.sum()
    n = img.shape[0]
    pad = np.pad(img, rad, mode="edge")
    rows = sum(F32(w) * pad[i:i + n, :] for i, w in enumerate(k))
    return sum(F32(w) * rows[:, i:i + n] for i, w in enumerate(k))


def measure_ctr(heart: np.ndarray, lungs: np.ndarray) -> float:
    """Cardiothoracic ratio measured on masks: widest heart extent over the lung-to-lung extent."""
    hc = np.flatnonzero(heart.any(0))
    lc = np.flatnonzero(lungs.any(0))
    if hc.size == 0 or lc.size == 0:
        return float("nan")
    return float((hc[-1] - hc[0] + 1) / (lc[-1] - lc[0] + 1))
