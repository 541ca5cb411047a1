"""Results as DICOM, for the PACS: a Structured Report per scored image and the heat-map
as a Secondary Capture image, both built with highdicom.

The SR is a Comprehensive SR holding the TID 1500 Measurement Report pattern: one
measurement group (TID 1501) whose algorithm identification is the model id, version and
weights sha256; it references the scored image (SOP instance, and frame when
multi-frame); it holds the probability of every class, the threshold, the decision as a
coded finding, whether the image was within the model's scope (trust gate) and the
out-of-distribution score. The report is marked unverified and partial: it is a machine
result, not a signed report. Patient and study identity are copied from the source image
(highdicom does this from the evidence); each result goes to a new series.

Class names and medview's own concepts have no standard codes, so they use the private
coding scheme ``99MEDVIEW`` (PS3.16 8.2: coding scheme designators starting with "99"
are for local use), declared in the Coding Scheme Identification Sequence.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass

import numpy as np
from pydicom import dcmread, dcmwrite
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from medview.core.modeling import Prediction
from medview.core.presentation import present
from medview.core.safeio import atomic_write_bytes, open_regular

SCHEME = "99MEDVIEW"
MANUFACTURER = "medview"
SR_SERIES_NUMBER = 9901
SC_SERIES_NUMBER = 9902
_HEADER_MAX_BYTES = 64 * 1024**2
#: keep these text elements of the source image out of what medview reads (bulk data)
_SKIP_LARGE = 64 * 1024


class NoDicomSource(ValueError):
    """The scored image did not come from a DICOM file: nothing to reference."""


def _concept(value: str, meaning: str):
    from highdicom.sr import CodedConcept

    return CodedConcept(value=value[:64], scheme_designator=SCHEME, meaning=meaning[:64])


def read_source(path: str) -> Dataset:
    """The scored image's header (no pixels), read like any untrusted file."""
    if not path:
        raise NoDicomSource("the image has no source file")
    with open_regular(path, max_bytes=None) as f, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = dcmread(f, stop_before_pixels=True, defer_size=_SKIP_LARGE)
        except Exception as exc:
            raise NoDicomSource(f"not a DICOM file ({type(exc).__name__})") from None
    for key in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID"):
        if not str(ds.get(key, "")):
            raise NoDicomSource(f"the source image has no {key}")
    return ds


#: The source attributes a result object may copy: what the SR and SC IODs need to sit in
#: the source's patient and study and to reference the image (Patient and General Study
#: modules, Type 1 and 2), nothing else - no comments, no descriptions.
IDENTITY_TYPE1 = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
IDENTITY_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
                  "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber")


def iod_source(source: Dataset, with_frame_of_reference: bool = False) -> Dataset:
    """The part of ``source`` a result may copy (:data:`IDENTITY_TYPE1`,
    :data:`IDENTITY_TYPE2`; a Type 2 attribute the file omits is present and empty, as
    the IODs require). The Frame of Reference only with ``with_frame_of_reference`` (a
    result in the patient coordinate system)."""
    out = Dataset()
    for key in IDENTITY_TYPE1:
        if key in source:
            setattr(out, key, source[key].value)
    out.Modality = str(source.get("Modality", "") or "OT")
    for key in IDENTITY_TYPE2:
        value = source.get(key)
        setattr(out, key, value if value is not None else "")
    if with_frame_of_reference and source.get("FrameOfReferenceUID"):
        out.FrameOfReferenceUID = source.FrameOfReferenceUID
    return out


@dataclass
class ResultSeries:
    """The series (one for SRs, one for heat-maps) results of one study go into."""

    sr_series_uid: str = ""
    sc_series_uid: str = ""
    next_instance: int = 1

    def __post_init__(self) -> None:
        self.sr_series_uid = self.sr_series_uid or generate_uid()
        self.sc_series_uid = self.sc_series_uid or generate_uid()

    def take(self) -> int:
        n = self.next_instance
        self.next_instance += 1
        return n


def structured_report(source: Dataset, p: Prediction, *, frame: int | None = None,
                      series: ResultSeries | None = None, reveal: bool = False) -> Dataset:
    """A Comprehensive SR (TID 1500) with the model's answer for ``source``. For an image
    outside the model's scope the probabilities are left out (as in the CSV) unless
    ``reveal``; the decision is "withheld" either way."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    series = series or ResultSeries()
    algorithm = hd.sr.AlgorithmIdentification(
        name=p.model_id[:64], version=p.model_version[:64] or "unknown",
        parameters=[f"weights sha256 {p.weights_sha256} (verified)",
                    *([f"computed by {p.computed_by['file']} sha256 "
                       f"{p.computed_by['sha256']} (verified)"] if p.computed_by else []),
                    f"input sha256 {p.input_sha256}", f"device {p.device}",
                    f"backend {p.backend}"],
        manufacturer=MANUFACTURER)
    source_image = hd.sr.SourceImageForMeasurementGroup.from_source_image(
        source, referenced_frame_numbers=[frame] if frame else None)
    unit = codes.UCUM.NoUnits
    shown = present(p, reveal=reveal)
    measurements = [
        hd.sr.Measurement(name=_concept(f"P-{cls}", f"Probability of {cls}"),
                          value=float(prob), unit=unit)
        for cls, prob in (shown.probabilities or {}).items()]
    if p.threshold is not None:
        measurements.append(hd.sr.Measurement(
            name=_concept("THRESHOLD", "Decision threshold"), value=float(p.threshold),
            unit=unit))
    if p.ood_score is not None:
        measurements.append(hd.sr.Measurement(
            name=_concept("OOD-SCORE", "Out-of-distribution score"),
            value=float(p.ood_score), unit=unit))
    if p.ood_limit is not None:
        measurements.append(hd.sr.Measurement(
            name=_concept("OOD-LIMIT", "Out-of-distribution limit"),
            value=float(p.ood_limit), unit=unit))
    evaluations = []
    if p.in_scope is not None:
        evaluations.append(hd.sr.QualitativeEvaluation(
            name=_concept("IN-SCOPE", "Image within the model's scope"),
            value=codes.SCT.Yes if p.in_scope else codes.SCT.No))
    if shown.out_of_scope:
        decision = _concept("WITHHELD", "Withheld: image out of the model's scope")
    else:
        decision = _concept(f"C-{shown.label}", shown.label or "no decision")
    evaluations.append(hd.sr.QualitativeEvaluation(
        name=_concept("DECISION", "Model decision"), value=decision))
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=generate_uid(), identifier=f"medview {p.model_id}"[:64]),
        finding_type=_concept("AI-CLASSIFICATION", "Image classification"),
        algorithm_id=algorithm, measurements=measurements,
        qualitative_evaluations=evaluations, source_images=[source_image])
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(), name=f"medview {p.model_id}"[:64],
            manufacturer_name=MANUFACTURER, model_name=p.model_id[:64]))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_person_context=None,
                                                     observer_device_context=observer),
        procedure_reported=hd.sr.CodedConcept("363679005", "SCT", "Imaging"),
        imaging_measurements=[group])
    sr = hd.sr.ComprehensiveSR(
        evidence=[iod_source(source)], content=report[0], series_instance_uid=series.sr_series_uid,
        series_number=SR_SERIES_NUMBER, sop_instance_uid=generate_uid(),
        instance_number=series.take(), manufacturer=MANUFACTURER, is_complete=False,
        is_final=False, is_verified=False)
    sr.SeriesDescription = f"medview AI result ({p.model_id})"[:64]
    _declare_scheme(sr)
    return sr


def _declare_scheme(ds: Dataset) -> None:
    item = Dataset()
    item.CodingSchemeDesignator = SCHEME
    item.CodingSchemeName = "medview local codes"
    item.CodingSchemeResponsibleOrganization = "medview"
    existing = list(ds.get("CodingSchemeIdentificationSequence", []))
    ds.CodingSchemeIdentificationSequence = [*existing, item]


def heatmap_capture(source: Dataset, rgb: np.ndarray, caption: str, *,
                    series: ResultSeries | None = None) -> Dataset:
    """The heat-map overlay (RGB, caption burned in) as a Secondary Capture image in the
    source's study."""
    import highdicom as hd

    series = series or ResultSeries()
    rgb = np.ascontiguousarray(np.asarray(rgb)[..., :3], dtype=np.uint8)
    orientation = source.get("PatientOrientation")
    orientation = tuple(str(v) for v in orientation) if orientation and len(
        orientation) == 2 else ("", "")
    # highdicom asks for a coordinate system and a valid orientation: the film's when it
    # has one; else a placeholder that is then emptied (Patient Orientation is Type 2C:
    # present and empty when unknown)
    patient = all(orientation)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=iod_source(source, with_frame_of_reference=patient), pixel_array=rgb,
        photometric_interpretation="RGB", bits_allocated=8, coordinate_system="PATIENT",
        series_instance_uid=series.sc_series_uid, series_number=SC_SERIES_NUMBER,
        sop_instance_uid=generate_uid(), instance_number=series.take(),
        manufacturer=MANUFACTURER,
        patient_orientation=orientation if patient else ("L", "F"))
    if not patient:
        sc.PatientOrientation = ""
    sc.BurnedInAnnotation = "YES"
    sc.ImageComments = caption[:10240]
    sc.DerivationDescription = caption[:1024]
    sc.SeriesDescription = "medview AI heat-map"
    return sc


def dataset_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def write_dataset(folder: str, ds: Dataset, prefix: str) -> str:
    """Write atomically as ``PREFIX_<SOPInstanceUID>.dcm`` (no patient data in the name)."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{prefix}_{ds.SOPInstanceUID}.dcm")
    atomic_write_bytes(path, dataset_bytes(ds))
    return path


def write_result(folder: str, source_path: str, p: Prediction, *, frame: int | None = None,
                 figure: tuple[np.ndarray, list[str]] | None = None,
                 series_by_study: dict[str, ResultSeries] | None = None,
                 reveal: bool = False) -> list[str]:
    """Write the SR (and the heat-map SC when ``figure`` is given) for one scored image;
    results of one study share one SR series and one SC series. Returns the files."""
    source = read_source(source_path)
    series_by_study = {} if series_by_study is None else series_by_study
    series = series_by_study.setdefault(str(source.StudyInstanceUID), ResultSeries())
    written = [write_dataset(folder, structured_report(source, p, frame=frame, series=series,
                                                        reveal=reveal),
                             "SR")]
    if figure is not None:
        rgb, lines = figure
        written.append(write_dataset(folder, heatmap_capture(source, rgb, " ".join(lines),
                                                             series=series), "SC"))
    return written
