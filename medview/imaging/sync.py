"""Geometry shared by viewports: slice positions in the patient, the slice of another
series nearest a position, and where one slice's plane cuts another image (the
reference line on a localizer).

Positions are patient coordinates (LPS, mm) from the series' origin, direction and
spacing (:class:`~medview.core.volume.ImageVolume`). Two series are only compared
through positions when they share a Frame of Reference; otherwise the viewer keeps the
offset the reader set by hand (:func:`nearest_slice` with ``offset_mm``).
"""

from __future__ import annotations

import math

import numpy as np

from medview.core.volume import ImageVolume


def has_geometry(volume: ImageVolume) -> bool:
    return (volume.direction is not None and volume.origin is not None
            and all(math.isfinite(s) and s > 0 for s in volume.spacing[1:]))


def normal(volume: ImageVolume) -> np.ndarray | None:
    if volume.direction is None:
        return None
    d = np.asarray(volume.direction, float)
    n = np.cross(d[0], d[1])
    return n / np.linalg.norm(n)


def slice_point(volume: ImageVolume, index: int) -> np.ndarray | None:
    """The patient position of pixel (0, 0) of slice ``index`` (None without geometry or
    a slice spacing)."""
    if not has_geometry(volume):
        return None
    sz = volume.spacing[0]
    if volume.n_slices > 1 and not math.isfinite(sz):
        return None
    d = np.asarray(volume.direction, float)
    return np.asarray(volume.origin, float) + index * (sz if volume.n_slices > 1 else 0) * d[2]


def parallel(a: ImageVolume, b: ImageVolume, tolerance_deg: float = 5.0) -> bool:
    na, nb = normal(a), normal(b)
    if na is None or nb is None:
        return False
    return abs(float(na @ nb)) >= math.cos(math.radians(tolerance_deg))


def same_frame(a: ImageVolume, b: ImageVolume) -> bool:
    return bool(a.frame_of_reference) and a.frame_of_reference == b.frame_of_reference


def position_along(volume: ImageVolume, index: int, along: np.ndarray) -> float | None:
    p = slice_point(volume, index)
    return None if p is None else float(p @ along)


def nearest_slice(target: ImageVolume, source: ImageVolume, index: int,
                  offset_mm: float = 0.0) -> int | None:
    """The slice of ``target`` nearest the position of slice ``index`` of ``source``
    along ``target``'s normal, after subtracting ``offset_mm`` (a hand-set offset
    between series without a common Frame of Reference). None when either series has
    no geometry or the slices are not parallel."""
    if not parallel(target, source) or target.n_slices < 2:
        return None
    n = normal(target)
    assert n is not None
    here = position_along(source, index, n)
    first, second = position_along(target, 0, n), position_along(target, 1, n)
    if here is None or first is None or second is None or second == first:
        return None
    k = round((here - offset_mm - first) / (second - first))
    return int(min(max(k, 0), target.n_slices - 1))


def offset_between(target: ImageVolume, t_index: int, source: ImageVolume,
                   s_index: int) -> float:
    """The offset (mm along ``target``'s normal) that keeps the two slices now shown
    together as the reader scrolls (0 when it cannot be measured)."""
    n = normal(target)
    if n is None:
        return 0.0
    a, b = position_along(source, s_index, n), position_along(target, t_index, n)
    return 0.0 if a is None or b is None else a - b


def reference_line(source: ImageVolume, s_index: int, target: ImageVolume,
                   t_index: int) -> tuple[tuple[float, float], tuple[float, float]] | None:
    """Where the plane of slice ``s_index`` of ``source`` cuts slice ``t_index`` of
    ``target``, as two points in ``target``'s image coordinates (x = column, y = row,
    pixel edges; the segment clipped to the image), or None (parallel planes, no common
    Frame of Reference, no geometry, or outside the image)."""
    if not same_frame(source, target) or parallel(source, target, 10.0):
        return None
    p0, n = slice_point(source, s_index), normal(source)
    o = slice_point(target, t_index)
    if p0 is None or n is None or o is None:
        return None
    d = np.asarray(target.direction, float)
    _, sy, sx = target.spacing
    # pixel centre (x, y) of the target lies at o + (x - 0.5) sx d0 + (y - 0.5) sy d1
    a, b = sx * float(d[0] @ n), sy * float(d[1] @ n)
    c = float((p0 - o) @ n) + 0.5 * (a + b)  # a x + b y = c
    w, h = target.cols, target.rows
    points = []
    if abs(b) > 1e-12:
        for x in (0.0, float(w)):
            y = (c - a * x) / b
            if 0 <= y <= h:
                points.append((x, y))
    if abs(a) > 1e-12:
        for y in (0.0, float(h)):
            x = (c - b * y) / a
            if 0 <= x <= w:
                points.append((x, y))
    unique: list[tuple[float, float]] = []
    for p in points:
        if all(math.dist(p, q) > 1e-6 for q in unique):
            unique.append(p)
    if len(unique) < 2:
        return None
    return unique[0], unique[1]
