"""PACS pieces that need no server: URLs, settings, the cache, DICOM results, de-identified
export. (Against a real PACS: tests/test_pacs_orthanc.py.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import pytest
from pydicom import dcmread

from medview.core.modeling import Prediction
from medview.pacs import PacsError, PacsSettings, cache, load_settings, parse_server, save_settings
from tests.orthanc import write_study


def test_server_urls_parse_and_bad_ones_say_why():
    s = parse_server("dicom://ORTHANC@pacs.example.org:4242")
    assert (s.kind, s.ae_title, s.host, s.port) == ("dimse", "ORTHANC", "pacs.example.org", 4242)
    w = parse_server("https://pacs.example.org/dicom-web/")
    assert (w.kind, w.url, w.port) == ("dicomweb", "https://pacs.example.org/dicom-web", 443)
    for bad, words in [("dicom://pacs:104", "AE title"), ("dicom://A@pacs", "port"),
                       ("dicom://A@pacs:99999", "port"),
                       ("dicom://THIS_AE_TITLE_IS_TOO_LONG@h:1", "not valid"),
                       ("dicom://A@bad host!:104", "host"), ("ftp://x", "not a server URL"),
                       ("http://h/dicom-web?x=1", "'?'")]:
        with pytest.raises(PacsError, match=words):
            parse_server(bad)


def test_settings_round_trip_and_a_bad_file_gives_defaults(tmp_path):
    path = str(tmp_path / "pacs.json")
    s = PacsSettings(ae_title="READROOM1", port=11113,
                     servers={"main": "dicom://PACS@10.0.0.5:104"}, timeout_s=3)
    save_settings(s, path)
    back = load_settings(path)
    assert back == s
    assert back.resolve("main").ae_title == "PACS"
    with open(path, "w") as f:
        json.dump({"ae_title": "X\\Y", "port": "eleven", "servers": ["no"]}, f)
    assert load_settings(path) == PacsSettings()
    with open(path, "w") as f:
        f.write("{not json")
    assert load_settings(path) == PacsSettings()
    with pytest.raises(PacsError):
        save_settings(PacsSettings(port=0), path)


def test_uids_from_the_network_cannot_name_paths_outside_the_cache(tmp_path):
    root = str(tmp_path)
    assert cache.instance_path(root, "1.2.3", "1.2.3.4", "1.2.3.4.5").startswith(root)
    for evil in ("../../etc", "1.2/../../x", "/abs", "1.2.\x003", "a.b", "1" * 65, ""):
        with pytest.raises(PacsError):
            cache.instance_path(root, "1.2.3", "1.2.3.4", evil)
        with pytest.raises(PacsError):
            cache.series_folder(root, evil, "1.2")


def test_cache_keeps_complete_files_only_and_evicts_least_recently_used(tmp_path):
    root = str(tmp_path / "cache")
    for k, study in enumerate(("1.1", "1.2", "1.3")):
        folder = cache.series_folder(root, study, "9.9")
        os.makedirs(folder)
        with open(os.path.join(folder, "5.5.dcm"), "wb") as f:
            f.write(b"x" * 1000)
        with open(os.path.join(folder, ".partial-5.6.dcm"), "wb") as f:
            f.write(b"half")
        os.utime(os.path.join(root, study), (1000 + k, 1000 + k))
    folder = cache.series_folder(root, "1.1", "9.9")
    assert cache.present_instances(folder) == {"5.5"}  # the partial one does not count
    cache.remove_partials([folder])
    assert not any(n.startswith(".partial") for n in os.listdir(folder))
    os.makedirs(os.path.join(root, "not-a-study"))  # never touched: not a UID
    removed = cache.enforce_limit(root, 2100, keep=["1.1"])
    assert removed == ["1.2"]  # 1.1 is oldest but kept; 1.2 is the next oldest
    assert sorted(os.listdir(root)) == ["1.1", "1.3", "not-a-study"]


def _prediction(withheld: bool = False) -> Prediction:
    return Prediction("tiny-patch", "0.1.0", "ab" * 32, ["patch", "plain"], [0.83, 0.17],
                      "" if withheld else "patch", "Withheld" if withheld else "patch (p=0.83)",
                      0.5, "cd" * 32, "cpu", in_scope=not withheld, ood_score=0.7,
                      ood_limit=1.5, withheld_label="patch" if withheld else "")


def _content(ds, out=None, depth=0):
    """Every (concept meaning, value) of an SR content tree, flattened."""
    out = [] if out is None else out
    for item in ds.get("ContentSequence", []):
        name = item.ConceptNameCodeSequence[0].CodeMeaning
        if "MeasuredValueSequence" in item:
            value = float(item.MeasuredValueSequence[0].NumericValue)
        elif "ConceptCodeSequence" in item:
            value = item.ConceptCodeSequence[0].CodeMeaning
        else:
            value = str(item.get("TextValue", item.get("UID", "")))
        out.append((name, value))
        _content(item, out, depth + 1)
    return out


def test_structured_report_holds_the_answer_and_references_the_image(tmp_path):
    from medview.io.dicom import tag_rows
    from medview.reports.dicom_results import heatmap_capture, read_source, write_result

    _uid, paths = write_study(str(tmp_path / "src"), modality="CR", n=1, size=64)
    src = dcmread(paths[0])
    files = write_result(str(tmp_path / "out"), paths[0], _prediction(),
                         figure=(np.zeros((80, 64, 3), np.uint8), ["caption line"]))
    sr, sc = (dcmread(f) for f in files)
    assert sr.Modality == "SR" and sr.VerificationFlag == "UNVERIFIED"
    # identity and study from the source; a new series
    assert (sr.PatientID, sr.StudyInstanceUID) == (src.PatientID, src.StudyInstanceUID)
    assert sr.SeriesInstanceUID != src.SeriesInstanceUID
    content = dict(_content(sr))
    assert content["Probability of patch"] == pytest.approx(0.83)
    assert content["Decision threshold"] == pytest.approx(0.5)
    assert content["Model decision"] == "patch"
    assert content["Image within the model's scope"] == "Yes"
    assert content["Algorithm Name"] == "tiny-patch"
    params = [v for k, v in _content(sr) if k == "Algorithm Parameters"]
    assert f"weights sha256 {'ab' * 32} (verified)" in params
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    refs = evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert refs.ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert sc.BurnedInAnnotation == "YES" and sc.StudyInstanceUID == src.StudyInstanceUID
    assert sc.ImageComments == "caption line"
    # medview's own tag browser reads the SR back
    rows = tag_rows(files[0])
    assert any(name.strip() == "Content Sequence" for _t, name, _vr, _v in rows)
    # out of scope: decision withheld, no probabilities unless revealed
    withheld = dict(_content(read_back := dcmread(write_result(
        str(tmp_path / "w"), paths[0], _prediction(withheld=True))[0])))
    assert withheld["Model decision"].startswith("Withheld")
    assert "Probability of patch" not in withheld
    assert withheld["Image within the model's scope"] == "No"
    assert read_back.CompletionFlag == "PARTIAL"
    assert heatmap_capture(read_source(paths[0]), np.zeros((8, 8, 3), np.uint8), "x")


def test_results_copy_only_the_identity_their_iods_need(tmp_path):
    """No comments, no descriptions, nothing the SR or SC IOD does not ask for: a film's
    PatientComments and a StudyDescription carrying a name stay out of both objects."""
    from pydicom.uid import generate_uid

    from medview.reports.dicom_results import write_result

    _uid, paths = write_study(str(tmp_path / "src"), modality="CR", n=1, size=32)
    ds = dcmread(paths[0])
    ds.PatientComments = "Comment-Secret-Doe"
    ds.StudyDescription = "Chest for Desc-Secret-Doe"
    ds.AdditionalPatientHistory = "History-Secret-Doe"
    ds.InstitutionName = "Inst-Secret-Doe"
    ds.FrameOfReferenceUID = generate_uid()  # a projection film with a frame of reference
    for key in ("StudyTime", "PatientBirthDate", "ImageOrientationPatient",
                "PatientOrientation"):
        if key in ds:
            delattr(ds, key)  # Type 2 attributes real films omit
    ds.save_as(paths[0])
    files = write_result(str(tmp_path / "out"), paths[0], _prediction(),
                         figure=(np.zeros((16, 16, 3), np.uint8), ["caption"]))
    for f in files:
        with open(f, "rb") as fh:
            data = fh.read()
        for secret in (b"Comment-Secret", b"Desc-Secret", b"History-Secret", b"Inst-Secret"):
            assert secret not in data, (os.path.basename(f), secret)
        out = dcmread(f)
        assert out.PatientID == ds.PatientID and out.StudyInstanceUID == ds.StudyInstanceUID
        assert "StudyTime" in out and "PatientBirthDate" in out  # present, empty


def test_one_failing_result_never_aborts_the_batch(tiny_model, tmp_path, monkeypatch):
    """predict --sr-dir --sc: a result that cannot be written is one line on stderr; the
    other images still get theirs."""
    from medview.cli import main
    from medview.reports import dicom_results

    folder, _data = tiny_model
    paths = [write_study(str(tmp_path / f"src{k}"), modality="CR", n=1, size=64)[1][0]
             for k in range(3)]  # three films, three series
    real = dicom_results.write_result

    def flaky(out, source, *a, **k):
        if source == paths[1]:
            raise AttributeError("a Type 2 attribute is missing")
        return real(out, source, *a, **k)

    monkeypatch.setattr(dicom_results, "write_result", flaky)
    rc = main(["predict", *paths, "--model", folder, "--sr-dir", str(tmp_path / "sr"),
               "--score-out-of-scope", "--csv", str(tmp_path / "p.csv")])
    assert rc == 1  # something was not written
    assert len([f for f in os.listdir(tmp_path / "sr") if f.startswith("SR_")]) == 2
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 4  # every row scored


@pytest.mark.skipif(shutil.which("dsrdump") is None,
                    reason="dcmtk's dsrdump is not installed (.ci/run installs dcmtk)")
def test_dcmtk_reads_the_structured_report_without_errors(tmp_path):
    from medview.reports.dicom_results import write_result

    _uid, paths = write_study(str(tmp_path / "src"), modality="CR", n=1, size=64)
    sr = write_result(str(tmp_path / "out"), paths[0], _prediction())[0]
    r = subprocess.run(["dsrdump", "-Ee", "-Ec", sr], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "Error" not in r.stderr and "Warning" not in r.stderr, r.stderr
    assert "Probability of patch" in r.stdout and "Imaging Measurement Report" in r.stdout


def test_no_structured_report_without_a_dicom_source(tmp_path):
    from medview.reports.dicom_results import NoDicomSource, write_result

    png = tmp_path / "x.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 64)
    with pytest.raises(NoDicomSource):
        write_result(str(tmp_path / "out"), str(png), _prediction())


def test_deidentified_export_remaps_identity_consistently(tmp_path):
    from medview.core.progress import drain
    from medview.reports.deid import iter_export

    study_uid, paths = write_study(str(tmp_path / "src"), modality="CT", n=3, size=16,
                                   patient_id="MRN-778899", patient_name="Smith^John",
                                   accession="ACC123")
    src = dcmread(paths[0])
    src.add_new(0x00091010, "LO", "private note with Smith")
    src.save_as(paths[0])
    _u, burned = write_study(str(tmp_path / "burn"), modality="CR", n=1, size=16)
    ds = dcmread(burned[0])
    ds.BurnedInAnnotation = "YES"
    ds.save_as(burned[0])
    r = drain(iter_export([str(tmp_path / "src"), burned[0]], str(tmp_path / "out")))
    assert len(r.written) == 3 and r.burned_in == 1
    assert any("burned-in" in why for _p, why in r.skipped)
    out = [dcmread(f) for f in r.written]
    for ds in out:
        blob = " ".join(str(e.value) for e in ds.iterall() if e.VR not in ("OB", "OW"))
        assert "Smith" not in blob and "MRN-778899" not in blob and "ACC123" not in blob
        assert "Basic Application Confidentiality Profile" in ds.DeidentificationMethod
        assert ds.StudyInstanceUID != study_uid
        assert study_uid not in " ".join(r.written)  # no old UID in a file name
        assert 0x00091010 not in ds
    assert len({ds.StudyInstanceUID for ds in out}) == 1  # remapped consistently
    assert len({ds.SeriesInstanceUID for ds in out}) == 1
    assert len({ds.PatientID for ds in out}) == 1


def test_received_instances_that_lie_about_themselves_are_refused(tmp_path):
    """The C-STORE handler of a retrieve, fed as pynetdicom would: a file in a temporary
    place and the UID the server announced."""
    from types import SimpleNamespace

    from medview.pacs.dimse import _Receiver
    from medview.pacs.records import RetrieveResult

    study_uid, paths = write_study(str(tmp_path / "src"), modality="CR", n=2, size=16)
    dest = str(tmp_path / "cache")
    result = RetrieveResult(study_uid, os.path.join(dest, study_uid))
    receiver = _Receiver(dest, study_uid, None, None, result)
    receiver.start()

    def arrive(path, announced):
        tmp = str(tmp_path / f"incoming-{len(os.listdir(tmp_path))}")
        shutil.copyfile(path, tmp)
        event = SimpleNamespace(request=SimpleNamespace(AffectedSOPInstanceUID=announced),
                                dataset_path=tmp)
        return receiver.handle(event)

    good = dcmread(paths[0]).SOPInstanceUID
    assert arrive(paths[0], good) == 0x0000
    assert arrive(paths[1], "../../../etc/passwd") != 0x0000  # names no file
    # not UIDs, and nothing in them a path would trip on: refused by the UID check,
    # with a refusal status the server sees (never Success)
    assert arrive(paths[1], "1.2.840.evil") == 0xC211
    assert arrive(paths[1], "1." + "2" * 70) == 0xC211
    assert arrive(paths[1], good) == 0x0000  # accepted, then its header says otherwise
    receiver.finish()
    assert (receiver.received, receiver.failed) == (1, 4)
    kept = [os.path.join(d, f) for d, _s, fs in os.walk(dest) for f in fs]
    assert [os.path.basename(k) for k in kept] == [f"{good}.dcm"]
    assert dcmread(kept[0]).SOPInstanceUID == good
