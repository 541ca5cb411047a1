"""A reader's measurements as a DICOM Structured Report, and back.

Written with highdicom, like the AI results (:mod:`medview.reports.dicom_results`): a
Comprehensive SR holding the TID 1500 Measurement Report, one group per measurement,
each in the source image's own coordinates (SCOORD: column, row with 0, 0 at the top-left
corner of the top-left pixel - medview's image coordinates) and referencing the image
(SOP instance, and frame of a multi-frame instance):

- distance, angle, Cobb angle: a TID 1501 group whose measurement (SCT Length, Angle,
  Cobb angle) carries its points (a 2- or 3-point polyline; Cobb: the 4 points);
- rectangle, ellipse, freehand: a TID 1410 planar ROI (closed polyline, or ellipse by its
  axes' end points) with area, mean, standard deviation, minimum and maximum.

The tracking identifier names the kind ("medview distance 3"), so that
:func:`read_measurements` gives back exactly what was drawn; the numbers are recomputed
from the pixels when the study is opened again. The report is a person's measurements
but medview signs nothing: it is marked unverified and partial.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from medview.core.volume import ImageVolume
from medview.imaging.measure import Measurement, measure
from medview.reports.dicom_results import MANUFACTURER, iod_source

SERIES_NUMBER = 9903
TRACKING_PREFIX = "medview "


def _unit(unit: str):
    from highdicom.sr import CodedConcept

    return {
        "mm": CodedConcept("mm", "UCUM", "millimeter"),
        "mm2": CodedConcept("mm2", "UCUM", "square millimeter"),
        "px": CodedConcept("{pixel}", "UCUM", "pixel"),
        "px2": CodedConcept("{square pixel}", "UCUM", "square pixel"),
        "deg": CodedConcept("deg", "UCUM", "degree"),
        "HU": CodedConcept("[hnsf'U]", "UCUM", "Hounsfield unit"),
    }.get(unit, CodedConcept("1", "UCUM", "no units"))


def _ellipse_axes(points) -> np.ndarray:
    """The four SCOORD points of an axis-aligned ellipse (PS3.3 C.18.6.1.2: the major
    axis end points, then the minor axis end points)."""
    (x0, y0), (x1, y1) = points
    cx, cy, a, b = (x0 + x1) / 2, (y0 + y1) / 2, abs(x1 - x0) / 2, abs(y1 - y0) / 2
    horizontal = [[cx - a, cy], [cx + a, cy]]
    vertical = [[cx, cy - b], [cx, cy + b]]
    return np.array(horizontal + vertical if a >= b else vertical + horizontal, float)


def _group(m: Measurement, source: Dataset, volume: ImageVolume, index: int):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    frames = [m.frame + 1] if int(source.get("NumberOfFrames", 1) or 1) > 1 else None
    # the frame is in the identifier too: highdicom references frames only in the
    # multi-frame IODs, not in a legacy image that has several frames
    identifier = f"{TRACKING_PREFIX}{m.kind} {m.number}" + (
        f" frame {m.frame + 1}" if frames else "")
    tracking = hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=identifier[:64])
    r = measure(m, volume, index)
    points = np.array(m.points, float)
    try:
        region_source = hd.sr.SourceImageForRegion.from_source_image(
            source, referenced_frame_numbers=frames)
    except TypeError:
        frames = None
        region_source = hd.sr.SourceImageForRegion.from_source_image(source)
    if m.kind in ("distance", "angle", "cobb"):
        name = {"distance": codes.SCT.Length, "angle": codes.SCT.Angle,
                "cobb": codes.SCT.CobbAngle}[m.kind]
        coords = hd.sr.CoordinatesForMeasurement(
            graphic_type=hd.sr.GraphicTypeValues.MULTIPOINT if m.kind == "cobb"
            else hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=points, source_image=region_source)
        measurement = hd.sr.Measurement(name=name, value=float(r.value), unit=_unit(r.unit),
                                        referenced_coordinates=[coords])
        return hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking, measurements=[measurement],
            source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(
                source, referenced_frame_numbers=frames)])
    if m.kind == "ellipse":
        graphic, data = hd.sr.GraphicTypeValues.ELLIPSE, _ellipse_axes(m.points)
    else:
        if m.kind == "rect":
            (x0, y0), (x1, y1) = m.points
            points = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], float)
        graphic, data = hd.sr.GraphicTypeValues.POLYLINE, np.vstack([points, points[:1]])
    region = hd.sr.ImageRegion(graphic_type=graphic, graphic_data=data,
                               source_image=region_source)
    values = [hd.sr.Measurement(name=codes.SCT.Area, value=float(r.value),
                                unit=_unit(r.unit))]
    unit = _unit(r.value_unit)
    for key, code in (("mean", codes.SCT.Mean), ("sd", codes.SCT.StandardDeviation),
                      ("min", codes.SCT.Minimum), ("max", codes.SCT.Maximum)):
        v = r.stats.get(key, math.nan)
        if math.isfinite(v):
            values.append(hd.sr.Measurement(name=code, value=float(v), unit=unit))
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking, referenced_region=region, measurements=values)


def measurement_report(items: list[tuple[Measurement, Dataset, ImageVolume, int]],
                       series_uid: str | None = None, instance_number: int = 1) -> Dataset:
    """A Comprehensive SR with every measurement of ``items`` (measurement, the header of
    its image's file, the volume and slice it is on); all of one study."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    if not items:
        raise ValueError("no measurements to report")
    studies = {str(src.StudyInstanceUID) for _m, src, _v, _k in items}
    if len(studies) != 1:
        raise ValueError("one report per study")
    groups = [_group(m, src, v, k) for m, src, v, k in items]
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(), name="medview viewer", manufacturer_name=MANUFACTURER))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_person_context=None,
                                                     observer_device_context=observer),
        procedure_reported=hd.sr.CodedConcept("363679005", "SCT", "Imaging"),
        imaging_measurements=groups)
    sources = {}
    for _m, src, _v, _k in items:
        sources.setdefault(str(src.SOPInstanceUID), iod_source(src))
    sr = hd.sr.ComprehensiveSR(
        evidence=list(sources.values()), content=report[0],
        series_instance_uid=series_uid or generate_uid(), series_number=SERIES_NUMBER,
        sop_instance_uid=generate_uid(), instance_number=instance_number,
        manufacturer=MANUFACTURER, is_complete=False, is_final=False, is_verified=False)
    sr.SeriesDescription = "medview measurements"
    return sr


def reports_for(items: list[tuple[Measurement, ImageVolume, int]]
                ) -> tuple[list[Dataset], int]:
    """One report per study for ``items`` (measurements located on their images); reads
    each image's header from its file (call it off the GUI thread). Returns the reports
    and how many measurements could not go in one (an image without a DICOM file)."""
    from medview.reports.dicom_results import NoDicomSource, read_source

    by_study: dict[str, list] = {}
    headers: dict[str, Dataset] = {}
    left_out = 0
    for m, v, k in items:
        path = v.source_of(k)
        if not v.instance_uids or not path:
            left_out += 1
            continue
        try:
            src = headers[path] if path in headers else read_source(path)
        except NoDicomSource:
            left_out += 1
            continue
        headers[path] = src
        by_study.setdefault(str(src.StudyInstanceUID), []).append((m, src, v, k))
    return [measurement_report(group) for group in by_study.values()], left_out


def _walk(items, parents=()):
    for item in items or []:
        yield item, parents
        yield from _walk(item.get("ContentSequence"), (*parents, item))


def read_measurements(ds: Dataset) -> list[Measurement]:
    """The measurements of an SR written by :func:`measurement_report` (or any TID 1500
    report whose groups have medview tracking identifiers); others are ignored."""
    out: list[Measurement] = []
    for group, _parents in _walk(ds.get("ContentSequence")):
        if group.get("ValueType") != "CONTAINER":
            continue
        identifier = ""
        for child in group.get("ContentSequence", []):
            name = child.get("ConceptNameCodeSequence")
            if (child.get("ValueType") == "TEXT" and name
                    and str(name[0].CodeValue) == "112039"):  # Tracking Identifier
                identifier = str(child.get("TextValue", ""))
        if not identifier.startswith(TRACKING_PREFIX):
            continue
        words = identifier[len(TRACKING_PREFIX):].split()
        kind = words[0] if words else ""
        named_frame = int(words[-1]) - 1 if len(words) >= 4 and words[-2] == "frame" \
            and words[-1].isdigit() else 0
        for item, _p in _walk(group.get("ContentSequence")):
            if item.get("ValueType") != "SCOORD":
                continue
            data = np.asarray(item.GraphicData, float).reshape(-1, 2)
            image = next((c for c in item.get("ContentSequence", [])
                          if c.get("ValueType") == "IMAGE"), None)
            if image is None:
                continue
            ref = image.ReferencedSOPSequence[0]
            frames = ref.get("ReferencedFrameNumber")
            if frames is None or frames == "":
                frame = named_frame
            else:
                first = frames[0] if isinstance(frames, Sequence) else frames
                frame = int(first) - 1
            out.append(_from_graphic(kind, str(item.GraphicType), data,
                                     str(ref.ReferencedSOPInstanceUID), frame))
            break
    return [m for m in out if m is not None]


def _from_graphic(kind: str, graphic: str, data: np.ndarray, instance: str,
                  frame: int) -> Measurement | None:
    try:
        if kind == "ellipse" and graphic == "ELLIPSE":
            xs, ys = data[:, 0], data[:, 1]
            points = [(float(xs.min()), float(ys.min())), (float(xs.max()), float(ys.max()))]
        elif kind == "rect":
            points = [(float(data[:, 0].min()), float(data[:, 1].min())),
                      (float(data[:, 0].max()), float(data[:, 1].max()))]
        elif kind == "freehand":
            points = [tuple(p) for p in data[:-1].tolist()]
        else:
            points = [tuple(p) for p in data.tolist()]
        return Measurement(kind, points, instance, frame)
    except ValueError:
        return None  # not a shape medview draws


#: a measurement report larger than this is not read (it would not be one of medview's)
MAX_REPORT_BYTES = 16 * 1024**2


def read_report_file(path: str) -> list[Measurement]:
    """The medview measurements in an SR file (none for any other file), read like any
    untrusted file: a regular file, bounded in size, never followed outside."""
    import warnings

    from pydicom import dcmread

    from medview.core.safeio import open_regular

    try:
        with open_regular(path, max_bytes=MAX_REPORT_BYTES) as f, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = dcmread(f)
        if str(ds.get("Modality", "")) != "SR":
            return []
        return read_measurements(ds)
    except Exception:  # a broken or hostile file restores nothing
        return []
