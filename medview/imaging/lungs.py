"""Where the lungs of a frontal chest film are, and regions to mask for a shortcut audit.

The lung-field estimate is a documented heuristic, not a segmentation model:

1. the film (grey, as displayed: air dark) is smoothed with a box filter of 1/40 of
   its size;
2. inside the central chest box (:data:`CENTRAL_BOX`: 20-85% of the height, 15-85% of
   the width, where the lungs of a frontal chest film lie), pixels darker than the
   box's Otsu threshold are "air";
3. the two largest connected air regions, one in each half of the width, each at least
   2% of the film, are the lungs; holes are filled, each is replaced by its convex hull
   (so that consolidation, which is bright, stays inside) and the union is dilated by
   3% of the film's size;
4. when that does not look like two lungs (a region missing, the union under 8% or over
   60% of the film) the estimate falls back to the central chest box itself.

How good it is (docs/models.md, measured on the development films): it falls back on a
few percent of films, and follows the lungs more tightly than the box elsewhere. Used
to mask the lungs in the shortcut audit and in training's counterfactual films.
"""

from __future__ import annotations

import numpy as np

#: (top, bottom, left, right) fractions of the film: the central chest region
CENTRAL_BOX = (0.20, 0.85, 0.15, 0.85)
#: the outer band masked by the periphery test (fraction of each side)
PERIPHERY = 0.15
MIN_LUNG = 0.02
MIN_UNION, MAX_UNION = 0.08, 0.60
#: near-white (as displayed) marks covering less than this share of the film are
#: treated as burned-in text or markers
MARKER_LEVEL = 245
MARKER_AREA = 0.03


def box_mask(shape: tuple[int, int], box: tuple[float, float, float, float] = CENTRAL_BOX
             ) -> np.ndarray:
    h, w = shape
    top, bottom, left, right = box
    m = np.zeros((h, w), bool)
    m[round(h * top):round(h * bottom), round(w * left):round(w * right)] = True
    return m


def periphery_mask(shape: tuple[int, int], frac: float = PERIPHERY) -> np.ndarray:
    return ~box_mask(shape, (frac, 1 - frac, frac, 1 - frac))


def lung_field(grey: np.ndarray) -> tuple[np.ndarray, bool]:
    """(mask, estimated): the lung-field estimate of a grey film, and False when it fell
    back to the central chest box."""
    from scipy import ndimage

    a = np.asarray(grey, np.float32)
    if a.ndim != 2 or min(a.shape) < 16:
        return box_mask(a.shape[:2]), False
    h, w = a.shape
    smooth = ndimage.uniform_filter(a, size=max(3, max(h, w) // 40))
    box = box_mask((h, w))
    inside = smooth[box]
    if float(inside.max()) - float(inside.min()) < 1.0:
        return box, False
    air = (smooth < threshold_otsu(inside)) & box
    labels, n = ndimage.label(air)
    if n == 0:
        return box, False
    sizes = ndimage.sum_labels(air, labels, index=np.arange(1, n + 1))
    centres = ndimage.center_of_mass(air, labels, index=np.arange(1, n + 1))
    lungs = []
    for side in (0, 1):  # the image's left half, then its right half
        best, best_size = None, MIN_LUNG * h * w
        for k in range(n):
            cx = centres[k][1]
            if (cx < w / 2) == (side == 0) and sizes[k] >= best_size:
                best, best_size = k + 1, sizes[k]
        if best is None:
            return box, False
        lungs.append(best)
    mask = np.zeros((h, w), bool)
    for k in lungs:
        mask |= convex_hull_mask(ndimage.binary_fill_holes(labels == k))
    mask |= mask[:, ::-1]  # a consolidated (bright) lung is found by its twin's mirror
    r = max(1, round(0.03 * max(h, w)))
    mask = ndimage.binary_dilation(mask, iterations=r)
    if not MIN_UNION <= mask.mean() <= MAX_UNION:
        return box, False
    return mask, True


def threshold_otsu(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of ``values`` from a ``bins``-bin histogram over their range (the
    centre of the bin that best splits them into two classes), as scikit-image's
    ``threshold_otsu`` computes it for float images."""
    v = np.asarray(values).ravel()
    if not np.issubdtype(v.dtype, np.floating):
        v = v.astype(np.float64)
    lo, hi = v.min(), v.max()
    if lo == hi:
        return float(lo)
    counts, edges = np.histogram(v, bins=bins, range=(lo, hi))
    centres = (edges[:-1] + edges[1:]) / 2
    counts = counts.astype(np.float32)
    w1 = np.cumsum(counts)
    w2 = np.cumsum(counts[::-1])[::-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        m1 = np.cumsum(counts * centres) / w1
        m2 = (np.cumsum((counts * centres)[::-1]) / w2[::-1])[::-1]
    between = w1[:-1] * w2[1:] * (m1[:-1] - m2[1:]) ** 2
    return float(centres[int(np.nanargmax(between))])


def convex_hull_mask(mask: np.ndarray) -> np.ndarray:
    """The pixels inside or on the convex hull of ``mask``'s pixels, each pixel taken as
    the diamond of its edge midpoints (scikit-image's ``convex_hull_image`` with its
    defaults: offset coordinates, borders included)."""
    m = np.asarray(mask, bool)
    if not m.any():
        return np.zeros(m.shape, bool)
    # every pixel of a row lies between the row's first and last: only those, with their
    # diamonds' outer corners, can be on the hull
    w = m.shape[1]
    rows = np.flatnonzero(m.any(axis=1)).astype(np.float64)
    first = m[rows.astype(int)].argmax(axis=1).astype(np.float64)
    last = w - 1 - m[rows.astype(int), ::-1].argmax(axis=1).astype(np.float64)
    cand = np.unique(np.concatenate([
        np.stack([rows, first - 0.5], 1), np.stack([rows, last + 0.5], 1),
        np.stack([rows - 0.5, first], 1), np.stack([rows + 0.5, first], 1),
        np.stack([rows - 0.5, last], 1), np.stack([rows + 0.5, last], 1)]), axis=0)
    hull = _monotone_chain(cand)
    r0, c0 = np.floor(hull.min(axis=0)).astype(int)
    r1, c1 = np.ceil(hull.max(axis=0)).astype(int)
    r0, c0 = max(r0, 0), max(c0, 0)
    r1, c1 = min(r1, m.shape[0] - 1), min(c1, m.shape[1] - 1)
    gr, gc = np.mgrid[r0:r1 + 1, c0:c1 + 1]
    inside = np.ones(gr.shape, bool)
    if len(hull) >= 3:
        for (ar, ac), (br, bc) in zip(hull, np.roll(hull, -1, axis=0), strict=True):
            inside &= (br - ar) * (gc - ac) - (bc - ac) * (gr - ar) >= -1e-9
    out = np.zeros(m.shape, bool)
    out[r0:r1 + 1, c0:c1 + 1] = inside
    return out | m


def _monotone_chain(p: np.ndarray) -> np.ndarray:
    """The convex hull of points ``p`` (sorted, unique; (row, col)), counter-clockwise in
    (row, col) coordinates, collinear points dropped (Andrew's algorithm)."""
    pts = p.tolist()  # Python floats: numpy scalars would make the loop 5x slower

    def cross(o, a, b) -> float:
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: list = []
    for q in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], q) <= 0:
            lower.pop()
        lower.append(q)
    upper: list = []
    for q in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], q) <= 0:
            upper.pop()
        upper.append(q)
    return np.array(lower[:-1] + upper[:-1], np.float64)


def fill_median(grey: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The film with ``mask`` replaced by the film's median grey."""
    out = np.array(grey, copy=True)
    out[mask] = np.median(grey)
    return out


def remove_markers(grey: np.ndarray) -> np.ndarray:
    """The film with near-white burned-in marks (side markers, text, rulers: small areas
    at or above :data:`MARKER_LEVEL`) filled with the median of the band around them."""
    from scipy import ndimage

    a = np.asarray(grey)
    bright = a >= MARKER_LEVEL
    if not bright.any() or bright.mean() >= MARKER_AREA:
        return np.array(a, copy=True)
    grown = ndimage.binary_dilation(bright, iterations=max(1, max(a.shape) // 100))
    ring = ndimage.binary_dilation(grown, iterations=max(1, max(a.shape) // 50)) & ~grown
    out = np.array(a, copy=True)
    out[grown] = np.median(a[ring]) if ring.any() else np.median(a)
    return out
