"""Patient geometry: orientation letters and slice ordering (pure numpy)."""

from __future__ import annotations

import numpy as np

# Patient LPS axes: +x is patient Left, +y Posterior, +z Head (Superior).
_POS = ("L", "P", "H")
_NEG = ("R", "A", "F")


def direction_letters(vector: np.ndarray, threshold: float = 0.25) -> str:
    """Orientation letters for a unit vector in patient LPS coordinates, strongest first.

    Components smaller than ``threshold`` are ignored, so an oblique vector gets two or
    three letters (e.g. ``"LP"``), and a vector of NaNs gets ``""``.
    """
    v = np.asarray(vector, dtype=float)
    if v.shape != (3,) or not np.all(np.isfinite(v)):
        return ""
    order = np.argsort(-np.abs(v))
    letters = []
    for axis in order:
        if abs(v[axis]) >= threshold:
            letters.append(_POS[axis] if v[axis] > 0 else _NEG[axis])
    return "".join(letters)


def orientation_labels(direction: np.ndarray | None) -> dict[str, str]:
    """Letters for the four edges of the displayed slice.

    ``direction`` rows are the patient vectors of increasing column index (towards the
    right edge) and increasing row index (towards the bottom edge). Returns a dict with
    keys ``left``, ``right``, ``top``, ``bottom``; empty strings where unknown.
    """
    if direction is None:
        return {"left": "", "right": "", "top": "", "bottom": ""}
    d = np.asarray(direction, dtype=float)
    return {
        "right": direction_letters(d[0]),
        "left": direction_letters(-d[0]),
        "bottom": direction_letters(d[1]),
        "top": direction_letters(-d[1]),
    }


def slice_normal(row_cosines: np.ndarray, col_cosines: np.ndarray) -> np.ndarray:
    """The unit normal of an image plane from Image Orientation (Patient) (C.7.6.2.1.1)."""
    n = np.cross(np.asarray(row_cosines, float), np.asarray(col_cosines, float))
    norm = np.linalg.norm(n)
    if not np.isfinite(norm) or norm < 1e-6:
        raise ValueError("image orientation vectors are parallel or invalid")
    return n / norm


def spacing_report(positions: np.ndarray, tolerance: float = 0.1) -> tuple[float, list[str]]:
    """Slice spacing from sorted positions along the normal, and plain-text warnings.

    The spacing is the median step. A step larger than 1.5 times the median is reported as
    a gap, steps that differ from the median by more than ``tolerance`` (relative) as
    irregular spacing, and repeated positions as duplicates. Nothing is resampled.
    """
    positions = np.asarray(positions, dtype=float)
    if positions.size < 2:
        return float("nan"), []
    steps = np.diff(positions)
    warnings: list[str] = []
    dup = np.flatnonzero(np.abs(steps) < 1e-4)
    if dup.size:
        warnings.append(
            f"{dup.size} slice(s) share a position with their neighbour "
            f"(first at slice {int(dup[0]) + 1})"
        )
    positive = steps[np.abs(steps) >= 1e-4]
    if positive.size == 0:
        return float("nan"), warnings
    median = float(np.median(positive))
    gaps = np.flatnonzero(steps > 1.5 * median)
    for k in gaps[:10]:
        warnings.append(
            f"gap at slice {int(k) + 1}: {steps[k]:.3g} mm to the next slice "
            f"(usual spacing {median:.3g} mm)"
        )
    if gaps.size > 10:
        warnings.append(f"... and {gaps.size - 10} more gaps")
    regular = positive[positive <= 1.5 * median]
    if regular.size and np.max(np.abs(regular - median)) > tolerance * median:
        warnings.append(
            f"irregular slice spacing: steps from {positive.min():.3g} to "
            f"{positive.max():.3g} mm (not resampled)"
        )
    return median, warnings
