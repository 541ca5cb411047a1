"""A plain-language warning when a saliency map suggests a shortcut.

A documented, deliberately simple heuristic (not a proof either way):

- **Edges**: more than half of the map's mass lies outside the central region (the
  middle 70% of the width and 80% of the height, where the lungs of a frontal chest
  film are): the model may be looking at borders, collimation or labels.
- **Burned-in text and markers**: more than a quarter of the mass lies on (or within 2%
  of the image size of) near-white pixels (>= 250 of 255 as displayed) that cover less
  than 3% of the image - side markers such as "R", annotations, rulers.
"""

from __future__ import annotations

import numpy as np

CENTRAL = (0.70, 0.80)  # width, height fractions
EDGE_MASS = 0.5
MARKER_LEVEL = 250
MARKER_AREA = 0.03
MARKER_MASS = 0.25
#: both maps are looked at on a grid of at most this many pixels per side (strided)
GRID = 256


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    out = mask.copy()
    for axis in (0, 1):
        acc = out.copy()
        for k in range(1, r + 1):
            acc |= np.roll(out, k, axis) | np.roll(out, -k, axis)
        out = acc
    return out


def shortcut_note(shown: np.ndarray, saliency: np.ndarray) -> str:
    """The warning for a map over the slice as shown (grey uint8, same shape), or ""."""
    if np.shape(saliency) != shown.shape[:2]:
        return ""
    step = max(1, -(-max(shown.shape[:2]) // GRID))
    shown = shown[::step, ::step]
    sal = np.clip(np.asarray(saliency[::step, ::step], np.float64), 0, None)
    total = sal.sum()
    if total <= 0:
        return ""
    h, w = sal.shape
    cw, ch = CENTRAL
    y0, y1 = int(h * (1 - ch) / 2), int(h * (1 + ch) / 2)
    x0, x1 = int(w * (1 - cw) / 2), int(w * (1 + cw) / 2)
    inside = sal[y0:y1, x0:x1].sum() / total
    notes = []
    if 1 - inside > EDGE_MASS:
        notes.append(f"{100 * (1 - inside):.0f}% of this map lies outside the central region "
                     "of the image (borders, collimation, labels)")
    grey = shown if shown.ndim == 2 else shown[..., :3].mean(axis=2)
    bright = grey >= MARKER_LEVEL
    if 0 < bright.mean() < MARKER_AREA:
        near = _dilate(bright, max(1, int(0.02 * max(h, w))))
        on_markers = sal[near].sum() / total
        if on_markers > MARKER_MASS:
            notes.append(f"{100 * on_markers:.0f}% of it lies on burned-in text or markers")
    if not notes:
        return ""
    return ("Possible shortcut: " + "; ".join(notes) + ". The model may be using something "
            "other than the anatomy; check before trusting this result.")


def note_for_slice(volume, index: int, saliency: np.ndarray) -> str:
    """:func:`shortcut_note` for a map over slice ``index`` of ``volume`` as the viewer
    shows it (call it off the GUI thread: a film is rendered at full size)."""
    from medview.imaging import render_slice

    return shortcut_note(render_slice(volume, index, None), saliency)
