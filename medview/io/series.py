"""Group DICOM headers into series, order slices, and read them into volumes."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Generator
from dataclasses import dataclass, field

import numpy as np

from medview.core.errors import failure_reason, must_propagate
from medview.core.limits import COPIES_NATIVE_DICOM, check_budget
from medview.core.progress import CancelToken, Progress
from medview.core.volume import ImageVolume, SkippedFile
from medview.imaging.geometry import slice_normal, spacing_report, tilt_degrees
from medview.io.dicom import DicomHeader, read_pixels, read_pixels_into


@dataclass
class SeriesPlan:
    """The files of one displayable volume, in display order, with geometry worked out."""

    headers: list[DicomHeader]
    series_uid: str
    description: str
    modality: str
    positions: np.ndarray | None = None
    direction: np.ndarray | None = None
    spacing: tuple[float, float, float] = (math.nan, math.nan, math.nan)
    warnings: list[str] = field(default_factory=list)
    #: degrees between the slice normal and the slice positions' line (0: no tilt)
    tilt_deg: float = 0.0

    @property
    def n_images(self) -> int:
        return sum(h.frames for h in self.headers)

    @property
    def multiframe(self) -> bool:
        return len(self.headers) == 1 and self.headers[0].frames > 1


def plan_series(headers: list[DicomHeader]) -> tuple[list[SeriesPlan], list[SkippedFile]]:
    """Split headers into series by SeriesInstanceUID, then by size and orientation.

    Duplicate SOP Instance UIDs keep the first file and list the others as skipped.
    Multi-frame files form a volume of their own.
    """
    skipped: list[SkippedFile] = []
    by_series: dict[str, list[DicomHeader]] = defaultdict(list)
    for h in headers:
        by_series[h.series_uid or f"no-uid:{h.path}"].append(h)
    plans: list[SeriesPlan] = []
    for uid, group in by_series.items():
        try:
            group_plans, group_skipped = _plan_group(uid, group)
        except BaseException as exc:  # one series that cannot be planned costs only itself
            if must_propagate(exc):
                raise
            reason = failure_reason(exc)
            skipped.extend(SkippedFile(h.path, reason) for h in group)
            continue
        plans.extend(group_plans)
        skipped.extend(group_skipped)
    return plans, skipped


def _plan_group(uid: str, group: list[DicomHeader]) -> tuple[list[SeriesPlan],
                                                                list[SkippedFile]]:
    skipped: list[SkippedFile] = []
    plans: list[SeriesPlan] = []
    seen: dict[str, DicomHeader] = {}
    unique: list[DicomHeader] = []
    for h in sorted(group, key=lambda x: x.path):
        if h.sop_uid and h.sop_uid in seen:
            skipped.append(
                SkippedFile(h.path, "duplicate SOP Instance UID: same image as another file")
            )
            continue
        seen[h.sop_uid] = h
        unique.append(h)
    dup_warning = (
        [f"{len(group) - len(unique)} duplicate file(s) skipped"]
        if len(unique) < len(group)
        else []
    )
    single = [h for h in unique if h.frames == 1]
    multi = [h for h in unique if h.frames > 1]
    parts: dict[tuple, list[DicomHeader]] = defaultdict(list)
    for h in single:
        key = (h.rows, h.cols, h.samples, h.out_photometric, h.orientation_key)
        parts[key].append(h)
    n_parts = len(parts) + len(multi)
    k = 0
    for part in parts.values():
        k += 1
        plan = _plan_single_frames(uid, part)
        if n_parts > 1:
            plan.description = f"{plan.description} (part {k} of {n_parts})".strip()
            plan.warnings.insert(
                0, "series split: its images differ in size, colour or orientation"
            )
        plan.warnings[:0] = dup_warning
        plans.append(plan)
    for h in multi:
        k += 1
        plan = _plan_multiframe(uid, h)
        if n_parts > 1:
            plan.description = f"{plan.description} (part {k} of {n_parts})".strip()
        plans.append(plan)
    return plans, skipped


def _series_number(h: DicomHeader) -> int | None:
    try:
        value = h.ds.get("SeriesNumber")
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _first(headers: list[DicomHeader]) -> DicomHeader:
    return headers[0]


def _plan_single_frames(uid: str, headers: list[DicomHeader]) -> SeriesPlan:
    h0 = _first(headers)
    plan = SeriesPlan(headers, uid, h0.description, h0.modality)
    plan.warnings.extend(_merged_warnings(headers))
    row_sp, col_sp = h0.pixel_spacing or (math.nan, math.nan)
    have_geometry = h0.orientation is not None and all(h.position is not None for h in headers)
    if have_geometry:
        normal = slice_normal(h0.orientation[:3], h0.orientation[3:])
        dist = np.array([float(np.dot(h.position, normal)) for h in headers])
        order = np.argsort(dist, kind="stable")
        plan.headers = [headers[i] for i in order]
        plan.positions = dist[order]
        plan.direction = np.stack([h0.orientation[:3], h0.orientation[3:], normal])
        z, warns = spacing_report(plan.positions, [h.slice_thickness for h in plan.headers])
        plan.warnings.extend(warns)
        plan.tilt_deg = tilt_degrees(np.stack([h.position for h in plan.headers]), normal)
    else:
        plan.headers = sorted(
            headers,
            key=lambda h: (h.instance_number is None, h.instance_number or 0, h.path),
        )
        z = math.nan
        if len(headers) > 1:
            plan.warnings.append(
                "no slice positions: ordered by Instance Number; slice spacing unknown"
            )
        if h0.orientation is not None:
            normal = slice_normal(h0.orientation[:3], h0.orientation[3:])
            plan.direction = np.stack([h0.orientation[:3], h0.orientation[3:], normal])
    if len(headers) == 1 and h0.slice_thickness:
        z = h0.slice_thickness
    plan.spacing = (z, row_sp, col_sp)
    if h0.pixel_spacing is None:
        plan.warnings.append("no pixel spacing in the file: distances are in pixels")
    return plan


def _plan_multiframe(uid: str, h: DicomHeader) -> SeriesPlan:
    plan = SeriesPlan([h], uid, h.description, h.modality)
    plan.warnings.extend(h.warnings)
    row_sp, col_sp = h.pixel_spacing or (math.nan, math.nan)
    z = math.nan
    if h.orientation is not None:
        normal = slice_normal(h.orientation[:3], h.orientation[3:])
        plan.direction = np.stack([h.orientation[:3], h.orientation[3:], normal])
        if h.frame_positions is not None:
            plan.positions = h.frame_positions @ normal
            if np.all(np.diff(plan.positions) > 0):
                z, warns = spacing_report(plan.positions)
                plan.warnings.extend(warns)
    plan.spacing = (z, row_sp, col_sp)
    return plan


def _tilt(plan: SeriesPlan, h0: DicomHeader) -> float:
    """The acquisition tilt in degrees (0 when none): from the geometry when the slices
    have positions, else from Gantry/Detector Tilt (0018,1120)."""
    if len(plan.headers) > 1 and plan.positions is not None:
        return round(plan.tilt_deg, 1) if plan.tilt_deg >= 0.5 else 0.0
    try:
        tag = float(h0.ds.get("GantryDetectorTilt", 0) or 0)
    except (TypeError, ValueError):
        return 0.0
    return round(abs(tag), 1) if math.isfinite(tag) and 0.5 <= abs(tag) <= 89 else 0.0


def _merged_warnings(headers: list[DicomHeader]) -> list[str]:
    out: list[str] = []
    for h in headers:
        for w in h.warnings:
            if w not in out:
                out.append(w)
    return out


def iter_build_volume(
    plan: SeriesPlan, cancel: CancelToken | None = None
) -> Generator[Progress, None, tuple[ImageVolume | None, list[SkippedFile]]]:
    """Read the pixels of a planned series into one preallocated array.

    Yields a :class:`Progress` per file and returns ``(volume, skipped)``. A file whose
    pixels fail to read is listed in ``skipped``, the rest still load, and the volume is
    marked incomplete. Returns ``(None, skipped)`` when no file could be read.
    """
    h0 = plan.headers[0]
    n = plan.n_images
    dtype = np.result_type(*{h.out_dtype for h in plan.headers})
    shape = (n, h0.rows, h0.cols) + ((3,) if h0.out_photometric == "RGB" else ())
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    # the series array plus one file's decoding on the way
    largest = max(h.expected_bytes for h in plan.headers)
    check_budget(h0.path, nbytes + largest * (COPIES_NATIVE_DICOM - 1), 1, "the series",
                 h0.rows * h0.cols * (3 if h0.out_photometric == "RGB" else 1))
    pixels = np.empty(shape, dtype=dtype)
    keep = np.ones(n, dtype=bool)
    skipped: list[SkippedFile] = []
    slopes = np.ones(n)
    intercepts = np.zeros(n)
    paths: list[str] = []
    i = 0
    for k, h in enumerate(plan.headers):
        if cancel is not None:
            cancel.raise_if_cancelled()
        try:
            if not read_pixels_into(h, pixels[i : i + h.frames]):
                arr = read_pixels(h)
                pixels[i : i + h.frames] = arr
                del arr
        except BaseException as exc:  # one bad file: the rest of the series still loads
            if must_propagate(exc):
                raise
            keep[i : i + h.frames] = False
            skipped.append(SkippedFile(h.path, failure_reason(exc)))
        slopes[i : i + h.frames] = h.slopes
        intercepts[i : i + h.frames] = h.intercepts
        paths.extend([h.path] * h.frames)
        i += h.frames
        yield Progress(k + 1, len(plan.headers), "reading images")
    if not keep.any():
        return None, skipped
    warnings = list(plan.warnings)
    positions = plan.positions
    spacing = plan.spacing
    incomplete = False
    if not keep.all():
        incomplete = True
        pixels = pixels[keep]
        slopes, intercepts = slopes[keep], intercepts[keep]
        paths = [p for p, ok in zip(paths, keep, strict=True) if ok]
        warnings.insert(0, f"incomplete: {int((~keep).sum())} image(s) could not be read")
        if positions is not None:
            positions = positions[keep]
            thick = [h.slice_thickness for h in plan.headers for _ in range(h.frames)]
            z, gap_warnings = spacing_report(
                positions, [t for t, ok in zip(thick, keep, strict=True) if ok])
            spacing = (z, spacing[1], spacing[2])
            warnings = [w for w in warnings if not w.startswith(
                ("gap at", "irregular", "slice spacing changes", "... and"))]
            warnings.extend(gap_warnings)
    tilt = _tilt(plan, h0)
    if tilt:
        warnings.append(f"gantry/detector tilt {tilt:.1f} degrees: the slices are sheared; "
                        "distances across slices and any 3-D reformat would be wrong "
                        "(not corrected)")
    patient_key = ""
    patient_id = str(h0.ds.get("PatientID", "") or "").strip()
    if patient_id:
        import hashlib

        patient_key = "dicom-" + hashlib.sha256(patient_id.encode("utf-8")).hexdigest()[:16]
    origin = None
    if h0.position is not None:
        origin = tuple(float(v) for v in plan.headers[0].position)
    volume = ImageVolume(
        pixels=pixels,
        modality=plan.modality,
        photometric=h0.out_photometric,
        spacing=spacing,
        origin=origin,
        direction=plan.direction,
        rescale_slope=slopes,
        rescale_intercept=intercepts,
        rescale_type=h0.rescale_type or ("HU" if plan.modality == "CT" else ""),
        windows=list(h0.windows),
        voi_lut=h0.voi_lut,
        frame_time_ms=h0.frame_time_ms,
        description=plan.description,
        series_uid=plan.series_uid,
        source_format="dicom",
        source_paths=paths,
        warnings=warnings,
        multiframe=plan.multiframe,
        incomplete=incomplete,
        patient_key=patient_key,
        tilt_deg=tilt,
        localizer=h0.localizer,
        patient_orientation=h0.patient_orientation if plan.direction is None else None,
        population=h0.population,
        study=h0.study,
        spacing_kind=h0.spacing_kind,
        magnification=h0.magnification,
        instance_uids=[h.sop_uid for h in plan.headers],
        series_number=_series_number(h0),
        frame_of_reference=str(h0.ds.get("FrameOfReferenceUID", "") or "")[:64],
        slice_thickness=h0.slice_thickness,
    )
    return volume, skipped
