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
    from skimage.filters import threshold_otsu
    from skimage.morphology import convex_hull_image

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
        mask |= convex_hull_image(ndimage.binary_fill_holes(labels == k))
    mask |= mask[:, ::-1]  # a consolidated (bright) lung is found by its twin's mirror
    r = max(1, round(0.03 * max(h, w)))
    mask = ndimage.binary_dilation(mask, iterations=r)
    if not MIN_UNION <= mask.mean() <= MAX_UNION:
        return box, False
    return mask, True


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
