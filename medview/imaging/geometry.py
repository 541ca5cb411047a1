"""Patient geometry: orientation letters and slice ordering (pure numpy)."""

from __future__ import annotations

import itertools

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


_OPPOSITE = {"L": "R", "R": "L", "A": "P", "P": "A", "H": "F", "F": "H"}


def patient_orientation_labels(row: str, col: str) -> dict[str, str]:
    """Edge letters of a projection image from Patient Orientation (0020,0020): ``row``
    is the direction of increasing column index (towards the right edge), ``col`` of
    increasing row index (towards the bottom); e.g. ``L`` and ``F``. Letters outside
    L/R/A/P/H/F (or empty) leave that axis unlabelled."""

    def clean(text: str) -> str:
        text = (text or "").strip().upper()
        return text if text and all(c in _OPPOSITE for c in text) and len(text) <= 3 else ""

    r, c = clean(row), clean(col)
    return {"right": r, "left": "".join(_OPPOSITE[x] for x in r),
            "bottom": c, "top": "".join(_OPPOSITE[x] for x in c)}


def slice_normal(row_cosines: np.ndarray, col_cosines: np.ndarray) -> np.ndarray:
    """The unit normal of an image plane from Image Orientation (Patient) (C.7.6.2.1.1)."""
    n = np.cross(np.asarray(row_cosines, float), np.asarray(col_cosines, float))
    norm = np.linalg.norm(n)
    if not np.isfinite(norm) or norm < 1e-6:
        raise ValueError("image orientation vectors are parallel or invalid")
    return n / norm


def spacing_report(positions: np.ndarray, thicknesses=None, tolerance: float = 0.1
                   ) -> tuple[float, list[str]]:
    """Slice spacing from sorted positions along the normal, and plain-text warnings.

    The spacing is the median step. With the slices' thicknesses, a step larger than the
    thickness is a **gap** (tissue not imaged); a step that changes but matches the new
    thickness is a **protocol change** (contiguous slices, thicker or thinner), reported
    once per change, not per slice. Without thicknesses, a step over 1.5 times the median
    is a gap. Repeated positions are duplicates. Nothing is resampled.
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
    thick = None
    if thicknesses is not None and len(thicknesses) == len(positions):
        t = np.array([np.nan if v is None else float(v) for v in thicknesses])
        if np.all(np.isfinite(t)) and np.all(t > 0):
            thick = np.maximum(t[:-1], t[1:])  # per step: the thicker of its two slices
    # a gap leaves tissue between slices unimaged: a step beyond the slice thickness
    limit = thick * (1 + tolerance) + 0.01 if thick is not None else 1.5 * median
    is_gap = steps > limit
    gaps = np.flatnonzero(is_gap)
    for k in gaps[:10]:
        missing = (f", slice thickness {thick[k]:.3g} mm: {steps[k] - thick[k]:.3g} mm not "
                   "imaged" if thick is not None else f" (usual spacing {median:.3g} mm)")
        warnings.append(f"gap at slice {int(k) + 1}: {steps[k]:.3g} mm to the next slice"
                        + missing)
    if gaps.size > 10:
        warnings.append(f"... and {gaps.size - 10} more gaps")
    # a change of slice thickness between neighbours is a protocol change, said as such;
    # its step (centre to centre: half of each thickness when contiguous) is no spacing
    changes: list[int] = []
    transition: set[int] = set()
    if thick is not None:
        t = np.array([float(v) for v in thicknesses])
        for k in range(len(t) - 1):
            if abs(t[k + 1] - t[k]) > tolerance * max(t[k], t[k + 1]):
                changes.append(k)
                if not is_gap[k] and any(abs(steps[k] - v) <= tolerance * v for v in
                                         ((t[k] + t[k + 1]) / 2, t[k], t[k + 1])):
                    transition.add(k)
        for k in changes[:10]:
            warnings.append(f"slice thickness changes from {t[k]:.3g} to {t[k + 1]:.3g} mm "
                            f"at slice {k + 2}: a protocol change, not a gap (shown with the "
                            f"median spacing {median:.3g} mm)")
        if len(changes) > 10:
            warnings.append(f"... and {len(changes) - 10} more thickness changes")
    # runs of one contiguous spacing: a lasting change between runs is a protocol change
    # (one message per change); steps that jump about are irregular spacing
    runs: list[list] = []  # [first step index, step, length, last step index]
    for k, step in enumerate(steps):
        if is_gap[k] or abs(step) < 1e-4 or k in transition:
            continue
        if runs and abs(step - runs[-1][1]) <= tolerance * runs[-1][1]:
            runs[-1][2] += 1
            runs[-1][3] = k
        else:
            runs.append([k, float(step), 1, k])
    if len(runs) > 1:
        if any(r[2] == 1 for r in runs) or len(runs) > 6:
            regular = steps[~is_gap & (np.abs(steps) >= 1e-4)]
            warnings.append(f"irregular slice spacing: steps from {regular.min():.3g} to "
                            f"{regular.max():.3g} mm (not resampled)")
        else:
            for prev, cur in itertools.pairwise(runs):
                if any(prev[3] <= k <= cur[0] for k in changes):
                    continue  # said as a thickness change
                warnings.append(f"slice spacing changes at slice {cur[0] + 1}: "
                                f"{prev[1]:.3g} mm -> {cur[1]:.3g} mm (shown with the "
                                f"median spacing {median:.3g} mm)")
    return median, warnings


def tilt_degrees(positions: np.ndarray, normal: np.ndarray) -> float:
    """The angle between the slice normal and the line through the first and last slice
    positions (3-D): non-zero for a gantry- or detector-tilted acquisition."""
    p = np.asarray(positions, dtype=float)
    if p.ndim != 2 or len(p) < 2:
        return 0.0
    d = p[-1] - p[0]
    n = np.linalg.norm(d)
    if n < 1e-6:
        return 0.0
    cos = abs(float(np.dot(d / n, np.asarray(normal, float))))
    return float(np.degrees(np.arccos(min(1.0, cos))))
