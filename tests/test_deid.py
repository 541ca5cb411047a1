"""De-identification as a privacy officer checks it: PHI planted in every place a real
modality puts it (the preamble, the file meta group, names, IDs, dates, descriptions,
comments, sequences two levels deep, overlays, curves, private tags, device serials) and
then the output *bytes* searched for every planted string."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from medview.core.progress import drain
from medview.reports.deid import Deidentifier, burned_in_reason, iter_export
from tests.factory import make_dataset, write

CR = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage

#: every planted value: each must be absent from every output byte
PLANTED = {
    "PatientName": "Doe^Johnathan",
    "PatientID": "MRN-4471-PHI",
    "OtherPatientIDs": "OTHERID-9921",
    "PatientBirthDate": "19610203",
    "PatientAddress": "12 Elm Street Springfield",
    "AccessionNumber": "ACC-55321",
    "StudyID": "STUDYID-7781",
    "ReferringPhysicianName": "Rfrzq^Rachelq",
    "PerformingPhysicianName": "Pfmzq^Paulqz",
    "OperatorsName": "Opzqx^Olgaqz",
    "InstitutionName": "Saint Phi Hospital",
    "InstitutionAddress": "1 Hospital Road Phiville",
    "StationName": "STATION-PHI-01",
    "DeviceSerialNumber": "SN-PHI-887766",
    "PatientComments": "patient Johnathan prefers mornings",
    "AdditionalPatientHistory": "history told by Mrs Doe-Secret",
    "ImageComments": "call Dr Secretary at 555-0199",
    "StudyDescription": "CHEST for Johnathan Doe",
    "SeriesDescription": "PA Doe-series-secret",
    "ProtocolName": "Protocol-of-Doe-Secret",
    "RequestedProcedureDescription": "requested for DoeRPD-secret",
    "PerformedProcedureStepDescription": "performed PPS-Doe-secret",
    "DerivationDescription": "derived DerivDoe-secret",
    "StudyDate": "20240311",
    "SeriesDate": "20240311",
    "AcquisitionDate": "20240311",
    "ContentDate": "20240311",
}
#: planted where no keyword reaches: the preamble, file meta, sequences, overlays, curves,
#: private elements
HIDDEN = {
    "preamble": "PREAMBLE-PHI-Doe",
    "source_ae": "AE-PHI-DOE",
    "rq_description": "NestedRPD-Doe-Secret",
    "sps_description": "TwoDeep-SPS-Doe-Secret",
    "procedure_meaning": "ProcMeaning-Doe-Secret",
    "overlay_description": "Overlay-Doe-Secret",
    "overlay_label": "OvLabel-Doe",
    "overlay_data": "OVERLAY-BYTES-DOE",
    "curve": "CURVE-DOE-SECRET",
    "private": "Private-Doe-Secret",
    "text_value": "TextValue-Doe-Secret",
    "nested_name": "Nested^Doe^Secret",
    "deep_comment": "DeepComment-Doe-Secret",
    "deep_creator": "Deepcreator^Doezq",
}


def _item(**kw) -> Dataset:
    d = Dataset()
    for k, v in kw.items():
        setattr(d, k, v)
    return d


def planted_film(folder) -> str:
    ds = make_dataset(np.arange(64, dtype=np.uint16).reshape(8, 8), modality="CR",
                      position=None, orientation=None)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = CR
    for key, value in PLANTED.items():
        setattr(ds, key, value)
    ds.StudyTime = "101112"
    ds.BurnedInAnnotation = "NO"
    ds.preamble = HIDDEN["preamble"].encode().ljust(128, b"\0")
    ds.file_meta.SourceApplicationEntityTitle = HIDDEN["source_ae"]
    # descriptions inside sequences, two levels deep
    ds.RequestAttributesSequence = Sequence([_item(
        RequestedProcedureDescription=HIDDEN["rq_description"],
        ScheduledProtocolCodeSequence=Sequence([_item(
            CodeValue="X1", CodingSchemeDesignator="99LOCAL",
            CodeMeaning="fine", ScheduledProcedureStepDescription=HIDDEN["sps_description"])]),
    )])
    ds.ProcedureCodeSequence = Sequence([_item(
        CodeValue="P1", CodingSchemeDesignator="99LOCAL",
        CodeMeaning=HIDDEN["procedure_meaning"])])
    ds.ReferencedPerformedProcedureStepSequence = Sequence([_item(
        ReferencedSOPClassUID="1.2.840.10008.3.1.2.3.3",
        ReferencedSOPInstanceUID="1.2.3.4.5.6",
        ContentSequence=Sequence([_item(TextValue=HIDDEN["text_value"],
                                        PersonName=HIDDEN["nested_name"])]))])
    # attributes of the table two levels down a sequence the table keeps
    ds.AnatomicRegionSequence = Sequence([_item(
        CodeValue="T-D3000", CodingSchemeDesignator="SRT", CodeMeaning="Chest",
        AnatomicRegionModifierSequence=Sequence([_item(
            CodeValue="G-A101", CodingSchemeDesignator="SRT", CodeMeaning="Left",
            PatientComments=HIDDEN["deep_comment"],
            ContentCreatorName=HIDDEN["deep_creator"])]))])
    # an overlay plane with its text and bits, a curve, a private element
    ds.add_new(0x60000010, "US", 8)
    ds.add_new(0x60000011, "US", 8)
    ds.add_new(0x60000022, "LO", HIDDEN["overlay_description"])
    ds.add_new(0x60001500, "LO", HIDDEN["overlay_label"])
    ds.add_new(0x60003000, "OW", HIDDEN["overlay_data"].encode().ljust(18, b"\0"))
    ds.add_new(0x50003000, "OB", HIDDEN["curve"].encode().ljust(18, b"\0"))
    ds.add_new(0x00990010, "LO", "PHI CREATOR")
    ds.add_new(0x00991001, "LO", HIDDEN["private"])
    os.makedirs(folder, exist_ok=True)
    return write(ds, os.path.join(folder, "film.dcm"))


def _strings() -> list[str]:
    out = list(HIDDEN.values())
    for v in PLANTED.values():
        out.append(v)
        if "^" in v:  # a person name: each part too
            out.extend(p for p in v.split("^") if len(p) >= 5)
    return sorted(set(out))


def _found(data: bytes, needles: list[str]) -> list[str]:
    low = data.lower()
    return [n for n in needles if n.lower().encode() in low]


@pytest.mark.parametrize("options", [{}, {"retain_modified_dates": True},
                                     {"clean_descriptors": True}])
def test_no_planted_string_survives_in_any_output_byte(tmp_path, options):
    src = planted_film(str(tmp_path / "src"))
    needles = _strings()
    assert len(_found(Path(src).read_bytes(), needles)) == len(needles)  # all planted
    out = tmp_path / "out"
    r = drain(iter_export([src], str(out), **options))
    assert len(r.written) == 1
    for root, _dirs, files in os.walk(out):
        for name in files:
            data = Path(root, name).read_bytes()
            assert _found(data, needles) == [], name
    ds = dcmread(r.written[0])
    assert ds.preamble == b"\0" * 128
    assert "SourceApplicationEntityTitle" not in ds.file_meta
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.PatientIdentityRemoved == "YES"
    codes = [c.CodeValue for c in ds.DeidentificationMethodCodeSequence]
    assert codes[0] == "113100"
    assert ("113107" in codes) == bool(options.get("retain_modified_dates"))
    assert ("113105" in codes) == bool(options.get("clean_descriptors"))
    assert not any(0x6000 <= e.tag.group <= 0x60FF or 0x5000 <= e.tag.group <= 0x50FF
                   for e in ds.iterall())
    assert not any(e.tag.is_private for e in ds.iterall())
    report = json.loads((out / "deidentification-report.json").read_text())
    entry = report["files"][0]
    assert "PatientComments" in entry["removed"] or "PatientComments" in entry["cleaned"]
    assert "6000xxxx" in entry["groups_removed"] and entry["private_removed"] >= 2
    assert _found(json.dumps(report).encode(), needles) == []  # the report names no one


def test_options_do_what_they_say(tmp_path):
    src = planted_film(str(tmp_path / "src"))
    shifted = dcmread(drain(iter_export([src], str(tmp_path / "a"),
                                        retain_modified_dates=True)).written[0])
    assert shifted.StudyDate and shifted.StudyDate != PLANTED["StudyDate"]
    assert shifted.LongitudinalTemporalInformationModified == "MODIFIED"
    plain = dcmread(drain(iter_export([src], str(tmp_path / "b"))).written[0])
    assert not plain.get("StudyDate") and "StudyDescription" not in plain
    assert plain.LongitudinalTemporalInformationModified == "REMOVED"
    cleaned = dcmread(drain(iter_export([src], str(tmp_path / "c"),
                                        clean_descriptors=True)).written[0])
    assert cleaned.StudyDescription == "CHEST for"  # kept, names cut out


def test_consistent_within_an_export_and_different_across_exports(tmp_path):
    deid = Deidentifier(date_offset_days=400)
    a, b = Dataset(), Dataset()
    for ds in (a, b):
        ds.PatientID, ds.StudyInstanceUID, ds.StudyDate = "MRN1", "1.2.3", "20240102"
    deid.apply(a)
    deid.apply(b)
    assert a.PatientID == b.PatientID != "MRN1" and a.StudyInstanceUID == b.StudyInstanceUID
    other = Dataset()
    other.PatientID, other.StudyInstanceUID = "MRN1", "1.2.3"
    Deidentifier().apply(other)
    assert other.StudyInstanceUID != a.StudyInstanceUID


def test_likely_burned_in_text_is_left_out_unless_asked(tmp_path):
    ds = make_dataset(np.zeros((8, 8), np.uint16), modality="US", position=None,
                      orientation=None)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.6.1"
    assert "ultrasound" in burned_in_reason(ds)
    path = write(ds, tmp_path / "us.dcm")
    r = drain(iter_export([path], str(tmp_path / "out")))
    assert r.written == [] and "ultrasound" in r.skipped[0][1]
    kept = drain(iter_export([path], str(tmp_path / "out2"), keep_burned_in=True))
    assert len(kept.written) == 1
    ds.BurnedInAnnotation = "NO"
    assert burned_in_reason(ds) == ""
