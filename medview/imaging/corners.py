"""The text in the four corners of the image: who, what, where and how it is shown.

A layout says which fields go in which corner (:data:`DEFAULT_LAYOUT`; the user's own is
kept in the settings as ``corner: field, field`` lines, :func:`parse_layout`). Every
value is plain text from the file (never markup); an empty field is left out.
"""

from __future__ import annotations

import math

import numpy as np

from medview.core.volume import ImageVolume, WindowPreset

CORNERS = ("top_left", "top_right", "bottom_left", "bottom_right")
CORNER_NAMES = {"top_left": "Top left", "top_right": "Top right",
                "bottom_left": "Bottom left", "bottom_right": "Bottom right"}
FIELDS = {
    "patient_name": "Patient name",
    "patient_id": "Patient ID",
    "age_sex": "Age and sex",
    "study_date": "Study date",
    "study_description": "Study description",
    "series": "Series number and description",
    "modality": "Modality",
    "slice": "Slice (or frame) n / N",
    "position": "Slice position (mm along the slice normal)",
    "thickness": "Slice thickness",
    "window": "Window width / level",
    "zoom": "Zoom (screen pixels per image pixel)",
}
DEFAULT_LAYOUT: dict[str, list[str]] = {
    "top_left": ["patient_name", "patient_id", "age_sex"],
    "top_right": ["study_date", "study_description", "series"],
    "bottom_left": ["modality", "slice", "position", "thickness"],
    "bottom_right": ["window", "zoom"],
}


def parse_layout(text: str) -> dict[str, list[str]]:
    """A layout from ``corner: field, field`` lines (the settings' form); unknown corners
    or fields raise ValueError naming them. Corners not given are empty."""
    layout: dict[str, list[str]] = {c: [] for c in CORNERS}
    for line in text.splitlines():
        if not line.strip():
            continue
        corner, _, rest = line.partition(":")
        corner = corner.strip()
        if corner not in layout:
            raise ValueError(f"unknown corner {corner!r}; corners: {', '.join(CORNERS)}")
        names = [f.strip() for f in rest.split(",") if f.strip()]
        unknown = [f for f in names if f not in FIELDS]
        if unknown:
            raise ValueError(f"unknown field(s) {', '.join(unknown)}; fields: "
                             f"{', '.join(FIELDS)}")
        layout[corner] = names
    return layout


def layout_text(layout: dict[str, list[str]]) -> str:
    return "\n".join(f"{c}: {', '.join(layout.get(c, []))}" for c in CORNERS)


def slice_position(volume: ImageVolume, index: int) -> float | None:
    """Where slice ``index`` lies along the slice normal, in mm (as Slice Location), when
    the series has a position, orientation and slice spacing."""
    if volume.direction is None or volume.origin is None or volume.n_slices < 2:
        return None
    sz = volume.spacing[0]
    if not math.isfinite(sz):
        return None
    d = np.asarray(volume.direction, float)
    normal = np.cross(d[0], d[1])
    point = np.asarray(volume.origin, float) + index * sz * d[2]
    return float(point @ normal)


def field_text(name: str, volume: ImageVolume, index: int, window: WindowPreset | None,
               zoom: float | None, voi_lut: bool = False, inverted: bool = False,
               slab: str = "") -> str:
    st = volume.study
    if name == "patient_name":
        return st.patient_name
    if name == "patient_id":
        return f"ID {st.patient_id}" if st.patient_id else ""
    if name == "age_sex":
        age = volume.population.age_years
        parts = []
        if age is not None:
            parts.append(f"{age:.0f} y" if age >= 2 else f"{age * 12:.0f} mo")
        if st.patient_sex:
            parts.append(st.patient_sex)
        return " ".join(parts)
    if name == "study_date":
        return st.study_date
    if name == "study_description":
        return st.study_description
    if name == "series":
        number = f"Se {volume.series_number}" if volume.series_number is not None else ""
        return " ".join(p for p in (number, volume.description) if p)
    if name == "modality":
        return volume.modality
    if name == "slice":
        kind = "Frame" if volume.multiframe else "Im"
        return f"{kind} {index + 1} / {volume.n_slices}" + (f"  {slab}" if slab else "")
    if name == "position":
        z = slice_position(volume, index)
        return "" if z is None else f"Pos {z:.1f} mm"
    if name == "thickness":
        t = volume.slice_thickness
        return "" if t is None else f"Thk {t:g} mm"
    if name == "window":
        if window is None:
            return ""
        wl = "VOI LUT" if voi_lut and volume.voi_lut is not None else (
            f"W {window.width:.0f} L {window.center:.0f}")
        return wl + (" inverted" if inverted else "")
    if name == "zoom":
        return "" if zoom is None or not math.isfinite(zoom) else f"Zoom {zoom:.2f}x"
    raise ValueError(f"unknown field {name!r}")


def corner_lines(layout: dict[str, list[str]], volume: ImageVolume | None, index: int,
                 window: WindowPreset | None, zoom: float | None, voi_lut: bool = False,
                 inverted: bool = False, slab: str = "") -> dict[str, str]:
    """The text of each corner (lines joined by newlines; '' with no image); ``slab``
    describes a slab shown instead of the slice (after the slice number)."""
    out = {}
    for corner in CORNERS:
        if volume is None:
            out[corner] = ""
            continue
        lines = [field_text(f, volume, index, window, zoom, voi_lut, inverted, slab)
                 for f in layout.get(corner, [])]
        out[corner] = "\n".join(line for line in lines if line)
    return out
