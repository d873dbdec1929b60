"""Distractors of the phantom (private): tubes and lines (``device``) and burnt-in markers.

Devices are physical objects, drawn in canonical patient coordinates before the acquisition
(site) transform; markers are burnt in afterwards, in pixel space, at full white.
"""
from __future__ import annotations

import numpy as np

F32 = np.float32

# 5x7 bitmap glyphs for the marker texts ("L", "R", "AP", "PA", "PORTABLE", "ERECT", "SUPINE").
_FONT = {
    "A": ["01110", "10001", "10001", "11111", "10001", "10001", "10001"],
    "B": ["11110", "10001", "10001", "11110", "10001", "10001", "11110"],
    "C": ["01111", "10000", "10000", "10000", "10000", "10000", "01111"],
    "E": ["11111", "10000", "10000", "11110", "10000", "10000", "11111"],
    "I": ["11111", "00100", "00100", "00100", "00100", "00100", "11111"],
    "L": ["10000", "10000", "10000", "10000", "10000", "10000", "11111"],
    "N": ["10001", "11001", "10101", "10011", "10001", "10001", "10001"],
    "O": ["01110", "10001", "10001", "10001", "10001", "10001", "01110"],
    "P": ["11110", "10001", "10001", "11110", "10000", "10000", "10000"],
    "R": ["11110", "10001", "10001", "11110", "10100", "10010", "10001"],
    "S": ["01111", "10000", "10000", "01110", "00001", "00001", "11110"],
    "T": ["11111", "00100", "00100", "00100", "00100", "00100", "00100"],
    "U": ["10001", "10001", "10001", "10001", "10001", "10001", "01110"],
}
_GLYPHS = {k: np.array([[c == "1" for c in row] for row in v]) for k, v in _FONT.items()}
TEXTS = ("AP", "PA", "PORTABLE", "ERECT", "SUPINE")
DEVICE_TYPES = ("drain", "line", "electrodes")


def text_bitmap(text: str, scale: int) -> np.ndarray:
    """(7*scale, (6*len-1)*scale) bool bitmap of ``text`` in the 5x7 font."""
    cols = []
    for i, ch in enumerate(text):
        if i:
            cols.append(np.zeros((7, 1), bool))
        cols.append(_GLYPHS[ch])
    bm = np.concatenate(cols, axis=1)
    return np.kron(bm, np.ones((scale, scale), bool))


def draw_marker(rng: np.random.Generator, size: int) -> tuple[np.ndarray, str]:
    """A laterality letter in a top corner, sometimes with a word of text beside it.

    Returns:
        (size, size) bool mask of the burnt-in pixels, and the text drawn.
    """
    mask = np.zeros((size, size), bool)
    margin = max(1, round(0.03 * size))
    letter = "L" if rng.random() < 0.5 else "R"
    bm = text_bitmap(letter, max(1, round(size / 80)))
    right = rng.random() < 0.5
    top = margin + int(rng.integers(0, max(1, round(0.02 * size)) + 1))
    left = size - margin - bm.shape[1] if right else margin
    mask[top:top + bm.shape[0], left:left + bm.shape[1]] |= bm
    texts = [letter]
    if rng.random() < 0.4:
        word = TEXTS[int(rng.integers(len(TEXTS)))]
        wb = text_bitmap(word, max(1, round(size / 160)))
        if wb.shape[1] < size // 2 - 2 * margin:
            wl = margin if right else size - margin - wb.shape[1]
            mask[margin:margin + wb.shape[0], wl:wl + wb.shape[1]] |= wb
            texts.append(word)
    return mask, " ".join(texts)


def _polyline_distance(x: np.ndarray, y: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Distance (canonical units) from each (x, y) to the polyline through ``pts`` (K, 2)."""
    d = np.full(x.shape, np.inf, dtype=F32)
    for (ax, ay), (bx, by) in zip(pts[:-1], pts[1:]):
        vx, vy = F32(bx - ax), F32(by - ay)
        ll = float(vx * vx + vy * vy) or 1e-9
        t = np.clip(((x - F32(ax)) * vx + (y - F32(ay)) * vy) / F32(ll), 0, 1)
        dx, dy = x - F32(ax) - t * vx, y - F32(ay) - t * vy
        np.minimum(d, dx * dx + dy * dy, out=d)
    return np.sqrt(d)


def _smooth_path(pts: np.ndarray, n: int = 5) -> np.ndarray:
    """Chaikin corner cutting: a smooth curve through the control polygon ``pts``."""
    for _ in range(2):
        q = 0.75 * pts[:-1] + 0.25 * pts[1:]
        r = 0.25 * pts[:-1] + 0.75 * pts[1:]
        pts = np.concatenate([pts[:1], np.stack([q, r], 1).reshape(-1, 2), pts[-1:]])
    return pts


def device_paths(rng: np.random.Generator, p: dict, kind: str) -> tuple[list[np.ndarray], float, list]:
    """Control polygons of a device in canonical coordinates.

    Returns:
        (paths, half width of the tube, electrode centres [(x, y, r)]).
    """
    cx, wt, yd, ytop = p["cx"], p["wt"], p["yd"], p["ytop"]
    s = 1 if rng.random() < 0.5 else -1
    j = lambda a: rng.normal(0, a)  # noqa: E731
    if kind == "drain":
        edge = wt + 0.08 + p["wall"]
        pts = np.array([[cx + s * 1.4, yd + 0.15 + j(0.05)], [cx + s * (edge + 0.05), yd - 0.05 + j(0.03)],
                        [cx + s * (wt - 0.02), yd - 0.25 + j(0.04)], [cx + s * (wt - 0.12 + j(0.03)), ytop + 0.35],
                        [cx + s * (p["xa"] + 0.06 + j(0.03)), ytop + 0.12 + j(0.03)]])
        return [_smooth_path(pts)], 0.011, []
    if kind == "line":
        pts = np.array([[cx + s * 0.45, -1.3], [cx + s * (0.2 + j(0.03)), ytop - 0.05],
                        [cx + s * 0.06, ytop + 0.22 + j(0.03)], [cx + 0.03, ytop + 0.42 + j(0.04)]])
        return [_smooth_path(pts)], 0.007, []
    centres = [(cx - 0.62 + j(0.04), ytop - 0.12 + j(0.03)), (cx + 0.62 + j(0.04), ytop - 0.12 + j(0.03)),
               (cx + s * (0.45 + j(0.05)), yd + 0.32 + j(0.04))]
    out = lambda ex: 1.0 if ex > cx else -1.0  # noqa: E731  (leads run outwards, off the image)
    paths = [_smooth_path(np.array([[ex, ey], [ex + out(ex) * 0.2, ey + 0.1 + j(0.05)], [ex + out(ex) * 0.8, ey + 0.3]]))
             for ex, ey in centres]
    return paths, 0.005, [(ex, ey, 0.035) for ex, ey in centres]


def draw_device(x: np.ndarray, y: np.ndarray, xc: np.ndarray, yc: np.ndarray, rng: np.random.Generator,
                p: dict, px: float, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Render a device: (soft opacity in [0, 1], exact bool mask), both (H, W).

    ``xc, yc`` are canonical coordinates on a coarse grid (or x, y themselves): the distance to
    the tube is first found there, then computed exactly only for pixels near the tube.
    """
    from ._phantom_shapes import upsample

    paths, hw, elec = device_paths(rng, p, kind)
    hw = max(hw, 0.75 * px)
    size, c = x.shape[0], xc.shape[0]
    dc = np.minimum.reduce([_polyline_distance(xc, yc, q) for q in paths])
    if c < size:
        dc = upsample(dc[None], size)[0]
    near = np.flatnonzero(dc < F32(hw + 2.0 * px * size / c + px))
    xs, ys = x.ravel()[near], y.ravel()[near]
    d = np.minimum.reduce([_polyline_distance(xs, ys, q) for q in paths])
    soft = np.zeros(x.size, F32)
    soft[near] = np.clip((hw + 0.5 * px - d) / px, 0, 1)
    mask = np.zeros(x.size, bool)
    mask[near] = d < hw
    soft, mask = soft.reshape(x.shape), mask.reshape(x.shape)
    for ex, ey, r in elec:
        de = np.sqrt((x - F32(ex)) ** 2 + (y - F32(ey)) ** 2)
        mask |= de < r
        soft = np.maximum(soft, np.clip((r + 0.5 * px - de) / px, 0, 1) * (F32(0.55) + F32(0.45) * (de < 0.45 * r)))
    return soft.astype(F32), mask
