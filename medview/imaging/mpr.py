"""Multiplanar reformats and slabs of a cross-sectional series.

A reformat is another :class:`ImageVolume` over the same pixels (a transposed view, no
copy): its slices are the series' rows (coronal of an axial series) or columns
(sagittal), with the geometry (spacing, direction, origin) carried over so that the
viewer's aspect, orientation letters, read-outs and measurements stay right. Coronal and
sagittal images are shown head up. A reformat is only as faithful as the series' slice
geometry: a tilt, gaps or irregular spacing are said on it, and a series whose slice
spacing is unknown, or whose rescale changes from slice to slice, is not reformatted.

A slab combines the slices within a thickness around the one in view: maximum (MIP),
minimum (MinIP) or mean intensity projection, computed from the stored values (the
modality LUT is linear, so the projection of the stored values is that of the modality
values; a negative slope swaps maximum and minimum).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from medview.core.volume import ImageVolume

PLANES = ("axial", "coronal", "sagittal")
SLAB_MODES = ("mip", "minip", "mean")
SLAB_NAMES = {"mip": "MIP", "minip": "MinIP", "mean": "Mean"}
#: series warnings that make a reformat unfaithful (their first words)
UNFAITHFUL = ("gantry/detector tilt", "gap at", "irregular", "slice spacing changes",
              "slices overlap", "duplicate")


class MprError(ValueError):
    """The series cannot be reformatted; the message says why, in plain words."""


def acquired_plane(volume: ImageVolume) -> str:
    """"axial", "coronal" or "sagittal": the patient plane closest to the slices (their
    normal's largest LPS component); "" when the orientation is unknown."""
    if volume.direction is None:
        return ""
    normal = np.cross(volume.direction[0], volume.direction[1])
    return ("sagittal", "coronal", "axial")[int(np.argmax(np.abs(normal)))]


def check_reformattable(volume: ImageVolume) -> None:
    """Raise :class:`MprError` when the series cannot be reformatted."""
    if volume.is_rgb:
        raise MprError("a colour series is not reformatted")
    if volume.multiframe and volume.direction is None:
        raise MprError("a cine or multi-frame image without slice positions is not a volume")
    if volume.n_slices < 3:
        raise MprError("a reformat needs at least 3 slices")
    if volume.direction is None:
        raise MprError("the series has no slice orientation (Image Orientation/Position)")
    if not all(math.isfinite(s) and s > 0 for s in volume.spacing):
        raise MprError("the slice or pixel spacing is unknown: a reformat would have the "
                       "wrong proportions")
    slopes = np.asarray(volume.rescale_slope, float)
    intercepts = np.asarray(volume.rescale_intercept, float)
    if np.ptp(slopes) > 0 or np.ptp(intercepts) > 0:
        raise MprError("the rescale (slope/intercept) changes from slice to slice")


def reformat(volume: ImageVolume, plane: str) -> ImageVolume:
    """The series resliced in ``plane`` (one of :data:`PLANES`; the acquired plane gives
    the series itself)."""
    if plane not in PLANES:
        raise ValueError(f"unknown plane {plane!r}")
    check_reformattable(volume)
    acquired = acquired_plane(volume)
    if plane == acquired:
        return volume
    d = np.asarray(volume.direction, float)  # rows: +col, +row, +slice directions (LPS)
    sz, sy, sx = volume.spacing
    # which stored axis becomes the new slice axis: the one closest to the plane's normal
    want = {"sagittal": 0, "coronal": 1, "axial": 2}[plane]
    stored_axes = {"col": d[0], "row": d[1], "slice": d[2]}
    through = max(stored_axes, key=lambda k: abs(stored_axes[k][want]))
    if through == "slice":
        return volume  # an oblique acquisition closest to this plane: as acquired
    pixels = volume.pixels  # (slice, row, col)
    if through == "row":  # new slices: rows; new image: (slice, col)
        arr = pixels.transpose(1, 0, 2)
        new_dir = [d[0], d[2], d[1]]
        new_sp = (sy, sz, sx)
    else:  # through columns: new image (slice, row)
        arr = pixels.transpose(2, 0, 1)
        new_dir = [d[1], d[2], d[0]]
        new_sp = (sx, sz, sy)
    origin = np.asarray(volume.origin if volume.origin is not None else (0, 0, 0), float)
    n_rows = arr.shape[1]
    if new_dir[1][2] > 0:  # image rows run towards the head: show head up
        arr = arr[:, ::-1, :]
        origin = origin + (n_rows - 1) * new_sp[1] * new_dir[1]
        new_dir[1] = -new_dir[1]
    n = arr.shape[0]
    warnings = []
    unfaithful = [w for w in volume.warnings if w.startswith(UNFAITHFUL)]
    if unfaithful or volume.tilt_deg:
        warnings.append("this reformat is not faithful to the anatomy: " + "; ".join(
            unfaithful or [f"gantry/detector tilt {volume.tilt_deg:.1f} degrees"]))
    slope, intercept = volume.rescale(0)
    return dataclasses.replace(
        volume,
        pixels=arr,
        spacing=new_sp,
        direction=np.stack(new_dir),
        origin=(float(origin[0]), float(origin[1]), float(origin[2])),
        rescale_slope=np.full(n, slope),
        rescale_intercept=np.full(n, intercept),
        description=f"{volume.description} ({plane})".strip(),
        series_uid=f"{volume.series_uid}#{plane}",
        warnings=warnings,
        multiframe=False,
        instance_uids=[],  # a reformatted image is no stored instance
        slice_thickness=None,
        localizer=False,
    )


def slab_indices(volume: ImageVolume, index: int, thickness_mm: float) -> range:
    """The slices within ``thickness_mm`` centred on ``index`` (at least the one)."""
    sz = volume.spacing[0]
    step = sz if math.isfinite(sz) and sz > 0 else 1.0
    n = max(1, round(thickness_mm / step))
    lo = max(0, index - (n - 1) // 2)
    hi = min(volume.n_slices, lo + n)
    lo = max(0, hi - n)
    return range(lo, hi)


def slab(volume: ImageVolume, index: int, mode: str, thickness_mm: float) -> ImageVolume:
    """A one-slice volume: the ``mode`` projection (:data:`SLAB_MODES`) of the slices
    within ``thickness_mm`` around ``index``."""
    if mode not in SLAB_MODES:
        raise ValueError(f"unknown slab mode {mode!r}")
    rows = slab_indices(volume, index, thickness_mm)
    stack = volume.pixels[rows.start:rows.stop]
    slope, intercept = volume.rescale(index)
    if mode == "mean":
        values = stack.mean(axis=0, dtype=np.float64).astype(np.float32)
    else:
        take_max = (mode == "mip") == (slope >= 0)
        values = stack.max(axis=0) if take_max else stack.min(axis=0)
    return dataclasses.replace(
        volume, pixels=values[np.newaxis], rescale_slope=np.array([slope]),
        rescale_intercept=np.array([intercept]), instance_uids=[], multiframe=False,
        voi_lut=None)
