"""Measurements on one image: distance, angle, Cobb angle and region statistics.

Points are in the image's own pixel coordinates, ``(x, y)`` = (column, row), continuous:
pixel ``(r, c)`` covers ``[c, c+1) x [r, r+1)`` and its centre is ``(c + 0.5, r + 0.5)``.
A measurement is therefore the same whatever the zoom, pan, flip or rotation of the
display. Lengths, angles and areas are worked out in millimetres with the row and the
column spacing each applied to its own axis (non-square pixels), and say what the
millimetres are (:class:`Calibration`): at the patient, at the detector of a projection
film (the anatomy is smaller by the geometric magnification), from a non-DICOM header,
or not known at all (then in pixels, never a guessed 1 mm).

Region statistics are in the modality's units (Hounsfield units for CT) over the pixels
whose centres lie inside the region - of the slice the region was drawn on, also while
the viewer shows a slab (MIP/MinIP) around it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from medview.core.volume import ImageVolume

#: the kinds of measurement and the number of points each is drawn with (None: any >= 3)
POINTS: dict[str, int | None] = {
    "distance": 2, "angle": 3, "cobb": 4, "rect": 2, "ellipse": 2, "freehand": None,
}
REGIONS = ("rect", "ellipse", "freehand")
KIND_NAMES = {"distance": "Distance", "angle": "Angle", "cobb": "Cobb angle",
              "rect": "Rectangle", "ellipse": "Ellipse", "freehand": "Freehand"}

#: what the millimetres of a volume mean (``ImageVolume.spacing_kind``)
PATIENT, DETECTOR, HEADER, UNKNOWN = "patient", "detector", "header", ""


@dataclass(frozen=True)
class Calibration:
    """Millimetres per pixel along the rows (``dy``) and the columns (``dx``) and what
    they are (``kind``: :data:`PATIENT`, :data:`DETECTOR`, :data:`HEADER` or
    :data:`UNKNOWN`); ``magnification``: the file's estimated radiographic
    magnification factor of a projection film (None when not given)."""

    dy: float
    dx: float
    kind: str = UNKNOWN
    magnification: float | None = None

    @property
    def known(self) -> bool:
        return (self.kind != UNKNOWN and math.isfinite(self.dx) and math.isfinite(self.dy)
                and self.dx > 0 and self.dy > 0)

    @property
    def caveat(self) -> str:
        """What a user must know to read the millimetres ('' when nothing)."""
        if not self.known:
            return "no pixel spacing in the file: lengths and areas are in pixels"
        if self.kind == DETECTOR:
            note = ("measured at the detector (Imager Pixel Spacing): the anatomy is smaller "
                    "by the geometric magnification")
            if self.magnification:
                note += f" (estimated {self.magnification:.3g}x in the file)"
            return note + "; the film is not calibrated"
        if self.kind == HEADER:
            return "spacing from the file's header (not DICOM)"
        return ""


def calibration_of(volume: ImageVolume) -> Calibration:
    _, dy, dx = volume.spacing
    return Calibration(float(dy), float(dx), volume.spacing_kind if volume.spacing_kind
                       else UNKNOWN, volume.magnification)


@dataclass
class Measurement:
    """One measurement drawn on one image: ``kind`` (:data:`POINTS`), its ``points``
    (image coordinates, see the module), and the image it belongs to: ``instance`` (the
    DICOM SOP Instance UID, or for other files the file and slice) and ``frame`` (the
    frame of a multi-frame instance, 0-based; 0 otherwise)."""

    kind: str
    points: list[tuple[float, float]]
    instance: str
    frame: int = 0
    #: a number for the list and the CSV, given by the store (1, 2, ...)
    number: int = 0
    label: str = ""

    def __post_init__(self) -> None:
        if self.kind not in POINTS:
            raise ValueError(f"unknown measurement kind {self.kind!r}")
        self.points = [(float(x), float(y)) for x, y in self.points]
        need = POINTS[self.kind]
        if (need is None and len(self.points) < 3) or (need is not None and len(
                self.points) != need):
            raise ValueError(f"a {self.kind} needs {need or 'at least 3'} points, "
                             f"got {len(self.points)}")
        if not all(math.isfinite(v) for p in self.points for v in p):
            raise ValueError("measurement points must be finite")


@dataclass(frozen=True)
class Result:
    """What a measurement measures. ``value`` and ``unit``: the length (mm or px), the
    angle (degrees) or the area (mm2 or px2); a region also has its pixel statistics in
    ``stats`` (n, mean, sd, min, max) and their ``value_unit``."""

    value: float
    unit: str
    stats: dict[str, float] = field(default_factory=dict)
    value_unit: str = ""
    caveat: str = ""

    def text(self) -> str:
        main = f"{self.value:.1f} {self.unit}" if self.unit != "deg" else f"{self.value:.1f}\u00b0"
        if not self.stats:
            return main
        s = self.stats
        u = f" {self.value_unit}" if self.value_unit else ""
        if s["n"] == 0:
            return f"{main}; no pixel centre inside"
        return (f"{main}; mean {s['mean']:.1f}{u}, SD {s['sd']:.1f}, min {s['min']:.6g}, "
                f"max {s['max']:.6g}, n={int(s['n'])}")


def _scaled(points, cal: Calibration) -> np.ndarray:
    """Points in mm (or px when the spacing is unknown), (x, y) rows."""
    p = np.asarray(points, dtype=np.float64)
    if cal.known:
        p = p * np.array([cal.dx, cal.dy])
    return p


def _length_unit(cal: Calibration) -> str:
    return "mm" if cal.known else "px"


def _angle_between(u: np.ndarray, v: np.ndarray) -> float:
    nu, nv = float(np.hypot(*u)), float(np.hypot(*v))
    if nu == 0 or nv == 0:
        return float("nan")
    c = float(np.clip(np.dot(u, v) / (nu * nv), -1.0, 1.0))
    return math.degrees(math.acos(c))


def polygon_area(points: np.ndarray) -> float:
    """Area of a simple polygon (shoelace)."""
    x, y = points[:, 0], points[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def ellipse_points(points, n: int = 64) -> list[tuple[float, float]]:
    """The outline of the ellipse inscribed in the box of two opposite corners."""
    (x0, y0), (x1, y1) = points
    cx, cy, a, b = (x0 + x1) / 2, (y0 + y1) / 2, abs(x1 - x0) / 2, abs(y1 - y0) / 2
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return list(zip((cx + a * np.cos(t)).tolist(), (cy + b * np.sin(t)).tolist(), strict=True))


def region_mask(kind: str, points, rows: int, cols: int
                ) -> tuple[np.ndarray, tuple[int, int]]:
    """The pixels of a region whose centres lie inside it, as a boolean mask of its
    bounding box clipped to the image, and the box's (row, col) origin."""
    p = np.asarray(points, dtype=np.float64)
    c0 = max(0, math.floor(p[:, 0].min()))
    c1 = min(cols, math.ceil(p[:, 0].max()))
    r0 = max(0, math.floor(p[:, 1].min()))
    r1 = min(rows, math.ceil(p[:, 1].max()))
    if c1 <= c0 or r1 <= r0:
        return np.zeros((0, 0), bool), (r0, c0)
    yy, xx = np.mgrid[r0:r1, c0:c1].astype(np.float64) + 0.5
    if kind == "rect":
        (xa, ya), (xb, yb) = p
        mask = ((xx >= min(xa, xb)) & (xx <= max(xa, xb))
                & (yy >= min(ya, yb)) & (yy <= max(ya, yb)))
    elif kind == "ellipse":
        (xa, ya), (xb, yb) = p
        cx, cy, a, b = (xa + xb) / 2, (ya + yb) / 2, abs(xb - xa) / 2, abs(yb - ya) / 2
        if a == 0 or b == 0:
            mask = np.zeros(xx.shape, bool)
        else:
            mask = ((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2 <= 1.0
    elif kind == "freehand":
        mask = _inside_polygon(xx, yy, p)
    else:
        raise ValueError(f"{kind} is not a region")
    return mask, (r0, c0)


def _inside_polygon(xx: np.ndarray, yy: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Even-odd rule, vectorised over the grid."""
    inside = np.zeros(xx.shape, bool)
    x, y = poly[:, 0], poly[:, 1]
    xj, yj = np.roll(x, 1), np.roll(y, 1)
    for xi, yi, xk, yk in zip(x, y, xj, yj, strict=True):
        if yi == yk:
            continue
        crosses = (yi > yy) != (yk > yy)
        at = (xk - xi) * (yy - yi) / (yk - yi) + xi
        inside ^= crosses & (xx < at)
    return inside


def measure(m: Measurement, volume: ImageVolume, index: int) -> Result:
    """What ``m`` measures on slice ``index`` of ``volume`` (the slice it was drawn on)."""
    cal = calibration_of(volume)
    caveat = cal.caveat
    if m.kind == "distance":
        a, b = _scaled(m.points, cal)
        return Result(float(np.hypot(*(b - a))), _length_unit(cal), caveat=caveat)
    if m.kind == "angle":
        a, vertex, b = _scaled(m.points, cal)
        # an angle needs square units: unknown spacing is taken as square pixels (said)
        return Result(_angle_between(a - vertex, b - vertex), "deg",
                      caveat="" if cal.known else "pixel spacing unknown: angle assumes "
                                                  "square pixels")
    if m.kind == "cobb":
        a0, a1, b0, b1 = _scaled(m.points, cal)
        theta = _angle_between(a1 - a0, b1 - b0)
        theta = min(theta, 180.0 - theta)  # between the lines, whichever way drawn
        return Result(theta, "deg", caveat="" if cal.known else "pixel spacing unknown: "
                                                              "angle assumes square pixels")
    # regions
    scaled = _scaled(m.points, cal)
    if m.kind == "rect":
        (xa, ya), (xb, yb) = scaled
        area = abs(xb - xa) * abs(yb - ya)
    elif m.kind == "ellipse":
        (xa, ya), (xb, yb) = scaled
        area = math.pi * abs(xb - xa) / 2 * abs(yb - ya) / 2
    else:
        area = polygon_area(scaled)
    unit = "mm2" if cal.known else "px2"
    return Result(area, unit, region_stats(m, volume, index), value_unit(volume), caveat)


def value_unit(volume: ImageVolume) -> str:
    if volume.is_rgb:
        return "luminance"
    if volume.modality == "CT" and volume.rescale_type in ("HU", ""):
        return "HU"
    return volume.rescale_type if volume.rescale_type not in ("US", "") else ""


def region_stats(m: Measurement, volume: ImageVolume, index: int) -> dict[str, float]:
    """n, mean, sd (population), min, max of the modality values of the pixels whose
    centres lie in the region (a colour image: Rec. 601 luminance)."""
    from medview.imaging.lut import apply_modality_lut

    mask, (r0, c0) = region_mask(m.kind, m.points, volume.rows, volume.cols)
    box = volume.pixels[index, r0:r0 + mask.shape[0], c0:c0 + mask.shape[1]]
    if volume.is_rgb:
        values = box.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    else:  # the modality LUT of the region's box only, not of the whole slice
        values = apply_modality_lut(box, *volume.rescale(index))
    inside = np.asarray(values, np.float64)[mask] if mask.size else np.zeros(0)
    if inside.size == 0:
        return {"n": 0.0, "mean": math.nan, "sd": math.nan, "min": math.nan, "max": math.nan}
    return {"n": float(inside.size), "mean": float(inside.mean()), "sd": float(inside.std()),
            "min": float(inside.min()), "max": float(inside.max())}


def image_key(volume: ImageVolume, index: int) -> tuple[str, int]:
    """(instance, frame) of slice ``index``: the SOP Instance UID and frame of a DICOM
    image; otherwise the series and slice (for files without instance identity)."""
    uids = volume.instance_uids
    if uids and len(uids) == volume.n_slices:
        return uids[index], 0
    if uids and len(uids) == 1:
        return uids[0], index  # a multi-frame instance
    return f"{volume.series_uid or volume.description or 'image'}#{index}", 0


def located(measurements: list[Measurement], volumes: list[ImageVolume]
            ) -> list[tuple[Measurement, ImageVolume, int]]:
    """Each measurement with the open volume and slice of its image (in the order
    given); those whose image is not open are left out."""
    where: dict[tuple[str, int], tuple[ImageVolume, int]] = {}
    for v in volumes:
        for k in range(v.n_slices):
            where.setdefault(image_key(v, k), (v, k))
    return [(m, *where[(m.instance, m.frame)]) for m in measurements
            if (m.instance, m.frame) in where]


class MeasurementStore:
    """The measurements of the open studies, kept per image (instance and frame) while
    they are open; numbered in the order they were made."""

    def __init__(self) -> None:
        self._items: list[Measurement] = []
        self._next = 1

    def add(self, m: Measurement) -> Measurement:
        m.number = self._next
        self._next += 1
        self._items.append(m)
        return m

    def remove(self, m: Measurement) -> None:
        self._items = [x for x in self._items if x is not m]

    def replace_points(self, m: Measurement, points) -> None:
        """Move a measurement's points (its handles were dragged)."""
        Measurement(m.kind, list(points), m.instance, m.frame)  # validates
        m.points = [(float(x), float(y)) for x, y in points]

    def on(self, instance: str, frame: int) -> list[Measurement]:
        return [m for m in self._items if m.instance == instance and m.frame == frame]

    def all(self) -> list[Measurement]:
        return list(self._items)

    def clear(self, instances: set[str] | None = None) -> None:
        """Forget every measurement, or those of ``instances`` (a closed series)."""
        if instances is None:
            self._items = []
        else:
            self._items = [m for m in self._items if m.instance not in instances]


CSV_COLUMNS = ("number", "kind", "instance", "frame", "slice", "value", "unit", "mean",
               "sd", "min", "max", "n", "value_unit", "points", "caveat")


def csv_rows(items: list[tuple[Measurement, ImageVolume, int]]) -> list[dict[str, str]]:
    """One row per measurement (``CSV_COLUMNS``), each measured on its own image. The
    instance is a UID (never a patient name or a path); points are image x/y pairs."""
    rows = []
    for m, volume, index in items:
        r = measure(m, volume, index)
        s = r.stats
        rows.append({
            "number": str(m.number), "kind": m.kind, "instance": _safe_instance(m.instance),
            "frame": str(m.frame + 1), "slice": str(index + 1), "value": f"{r.value:.3f}",
            "unit": r.unit,
            **{k: ("" if not s or not math.isfinite(s[k]) else f"{s[k]:.3f}")
               for k in ("mean", "sd", "min", "max")},
            "n": str(int(s["n"])) if s else "", "value_unit": r.value_unit,
            "points": " ".join(f"{x:.2f},{y:.2f}" for x, y in m.points),
            "caveat": r.caveat,
        })
    return rows


def _safe_instance(instance: str) -> str:
    """A DICOM UID as is; a file-based key reduced to its slice number (a series or file
    name can name the patient)."""
    if instance and all(c.isdigit() or c == "." for c in instance):
        return instance
    return "#" + instance.rsplit("#", 1)[-1] if "#" in instance else ""
