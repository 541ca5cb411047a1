"""medview against a real PACS: Orthanc started on free localhost ports with a temporary
configuration and storage (tests/orthanc.py). Without Orthanc installed these tests skip
with the reason shown; in CI (CI=true) a missing Orthanc fails them instead."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from pydicom import dcmread

from medview.core.progress import drain
from medview.pacs import PacsError, connect
from tests.orthanc import Orthanc, write_study
from tests.pacs_fixtures import _patch_film, _settings, require_orthanc

# one of the slowest files: `pytest -m "not slow"` leaves it out
pytestmark = pytest.mark.slow


def medview(pacs_env, *args, timeout=300):
    return subprocess.run([sys.executable, "-m", "medview", *args], capture_output=True,
                          text=True, env=pacs_env, timeout=timeout)


def test_echo_over_dimse_and_dicomweb(pacs, pacs_env):
    for url, how in ((pacs.dimse_url, "C-ECHO"), (pacs.web_url, "QIDO-RS")):
        r = medview(pacs_env, "pacs", "echo", url)
        assert r.returncode == 0, r.stderr
        assert f"OK ({how}), round trip" in r.stdout and " ms" in r.stdout


def test_connection_problems_are_named_clearly(pacs, pacs_env):
    from tests.orthanc import free_port

    # (the rejection gets time: on a loaded machine Orthanc may take seconds to answer,
    # and a request that times out is said to be unanswered, not rejected)
    cases = [
        (f"dicom://ORTHANC@127.0.0.1:{free_port()}", "connection refused", "3"),
        (f"dicom://NOT_ORTHANC@127.0.0.1:{pacs.dicom_port}",
         "association rejected: the server's AE title is not 'NOT_ORTHANC'", "20"),
        (f"http://127.0.0.1:{pacs.http_port}/no-such-path", "HTTP 404", "3"),
        (f"https://127.0.0.1:{pacs.http_port}/dicom-web", "TLS handshake failed", "3"),
        (f"http://127.0.0.1:{free_port()}/dicom-web", "connection refused", "3"),
    ]
    for url, words, timeout in cases:
        r = medview(pacs_env, "pacs", "echo", url, "--timeout", timeout)
        assert r.returncode == 2, (url, r.stdout)
        assert words in r.stderr, (url, r.stderr)
        assert "Traceback" not in r.stderr
    # a PACS that does not know medview's AE title stays silent: a timeout that says why
    r = medview(pacs_env, "pacs", "find", pacs.dimse_url, "--ae-title", "STRANGER",
                "--timeout", "1")
    assert r.returncode == 2 and "medview's AE title 'STRANGER'" in r.stderr


def test_find_a_study_by_patient_id_and_list_its_series(pacs, pacs_env):
    import json

    for url in (pacs.dimse_url, pacs.web_url):
        r = medview(pacs_env, "pacs", "find", url, "--patient-id", "PAT001", "--json")
        assert r.returncode == 0, r.stderr
        studies = json.loads(r.stdout)["results"]
        assert [s["study_uid"] for s in studies] == [pacs.studies["cr"]]
        assert studies[0]["modalities"] == ["CR"] and studies[0]["n_instances"] == 1
        assert studies[0]["description"] == "Chest AP"
        r = medview(pacs_env, "pacs", "find", url, "--series", pacs.studies["ct"], "--json")
        series = json.loads(r.stdout)["results"]
        assert len(series) == 1 and series[0]["n_instances"] == 20
    r = medview(pacs_env, "pacs", "find", pacs.dimse_url, "--modality", "CT")
    assert "PAT002" in r.stdout and "PAT001" not in r.stdout


@pytest.mark.parametrize("kind", ["dimse", "dicomweb"])
def test_retrieve_lands_complete_files_and_resumes_only_what_is_missing(pacs, tmp_path, kind):
    client = connect(pacs.dimse_url if kind == "dimse" else pacs.web_url, _settings(pacs))
    out = str(tmp_path / "out")
    first = drain(client.iter_retrieve(pacs.studies["ct"], out))
    assert first.complete and first.received == 20
    assert first.method == ("C-GET" if kind == "dimse" else "WADO-RS")
    (folder,) = first.series_folders.values()
    files = sorted(os.listdir(folder))
    assert len(files) == 20
    ds = dcmread(os.path.join(folder, files[0]))
    assert ds.StudyInstanceUID == pacs.studies["ct"] and ds.pixel_array.shape == (64, 64)
    for name in files[:5]:
        os.remove(os.path.join(folder, name))
    again = drain(client.iter_retrieve(pacs.studies["ct"], out))
    assert (again.received, again.already_present) == (5, 15) and again.complete
    assert sorted(os.listdir(folder)) == files


def test_cli_get_into_the_cache_then_the_viewer_reads_it(pacs, pacs_env, tmp_path):
    r = medview(pacs_env, "pacs", "get", pacs.dimse_url, pacs.studies["cr"])
    assert r.returncode == 0, r.stderr
    assert "1 instance(s) received, 0 already present, of 1 (C-GET)" in r.stdout
    cache_dir = pacs_env["MEDVIEW_PACS_CACHE"]
    r = medview(pacs_env, "info", os.path.join(cache_dir, pacs.studies["cr"]), "--json")
    assert r.returncode == 0 and '"modality": "CR"' in r.stdout and "skipped\": []" in \
        r.stdout.replace("\n", "").replace("  ", "")


def test_c_move_is_used_when_the_server_refuses_c_get(tmp_path):
    require_orthanc()
    with Orthanc(str(tmp_path / "o"), allow_get=False) as server:
        uid, paths = write_study(str(tmp_path / "s"), modality="CR", n=3, size=32)
        server.upload(paths)
        client = connect(server.dimse_url, _settings(server))
        result = drain(client.iter_retrieve(uid, str(tmp_path / "out")))
        assert result.method == "C-MOVE" and result.complete and result.received == 3
        # without a free port for medview's C-MOVE listener the error says so
        with pytest.raises(PacsError, match="C-GET"):
            drain(client.iter_retrieve(uid, str(tmp_path / "out2"), method="get"))


def test_server_killed_mid_transfer_keeps_only_whole_files_and_resume_finishes(tmp_path):
    require_orthanc()
    server = Orthanc(str(tmp_path / "o")).start()
    try:
        uid, paths = write_study(str(tmp_path / "s"), modality="CT", n=60, size=512)
        server.upload(paths)
        client = connect(server.dimse_url, _settings(server, timeout_s=5))
        out = str(tmp_path / "out")
        killed = []

        def on_step(step):
            if step.done >= 3 and not killed:
                server.kill()
                killed.append(step.done)

        result = drain(client.iter_retrieve(uid, out), on_step)
        assert killed and not result.complete
        assert 0 < result.received < 60
        assert "INCOMPLETE" in result.summary() and "run the same retrieve again" in \
            result.summary()
        (folder,) = result.series_folders.values()
        names = os.listdir(folder)
        assert len(names) == result.received
        assert not [n for n in names if n.startswith(".")]  # no partial file left
        for name in names:  # every kept file is whole
            assert dcmread(os.path.join(folder, name)).pixel_array.shape == (512, 512)
        server.start()  # same storage, same ports
        rest = drain(client.iter_retrieve(uid, out))
        assert rest.complete and rest.already_present == result.received
        assert rest.received == 60 - result.received
    finally:
        server.stop()


def test_predict_sends_the_sr_and_heatmap_back_to_the_pacs(pacs, pacs_env, tiny_model, tmp_path):
    model, data = tiny_model
    study_uid, path = _patch_film(data, str(tmp_path / "film"))
    pacs.upload([path])
    r = medview(pacs_env, "pacs", "get", pacs.web_url, study_uid)  # through WADO-RS this time
    assert r.returncode == 0, r.stderr
    retrieved = os.path.join(pacs_env["MEDVIEW_PACS_CACHE"], study_uid)
    r = medview(pacs_env, "predict", retrieved, "--model", model, "--sr-dir", str(tmp_path / "sr"),
                "--sc", "--send", pacs.dimse_url, "--score-out-of-scope")
    assert r.returncode == 0, r.stderr
    assert "sent 2 of 2 result file(s)" in r.stderr
    client = connect(pacs.web_url, _settings(pacs))
    series = {s.modality: s for s in client.find_series(study_uid)}
    assert set(series) == {"CR", "SR", "OT"}, series
    assert "medview AI result" in series["SR"].description
    got = drain(client.iter_retrieve(study_uid, str(tmp_path / "back"),
                                     series["SR"].series_uid))
    sr_file = os.path.join(got.series_folders[series["SR"].series_uid],
                           os.listdir(got.series_folders[series["SR"].series_uid])[0])
    sr = dcmread(sr_file)
    assert sr.PatientID == "PAT900" and sr.StudyInstanceUID == study_uid
    if shutil.which("dsrdump"):
        d = subprocess.run(["dsrdump", sr_file], capture_output=True, text=True)
        assert d.returncode == 0 and not d.stderr.strip(), d.stderr
        assert "Probability of patch" in d.stdout and "tiny-patch" in d.stdout
    # STOW-RS works too
    r = medview(pacs_env, "pacs", "send", pacs.web_url, sr_file)
    assert r.returncode == 0 and "sent 1 of 1" in r.stdout


def test_compressed_studies_arrive_in_their_stored_syntax_over_c_get(pacs, tmp_path):
    """A PACS that cannot transcode (Orthanc, from lossy JPEG 2000) still sends them:
    medview offers each compressed syntax in a presentation context of its own."""
    from pydicom.data import get_testdata_file

    from medview.io import load

    names = ("JPEG2000.dcm", "US1_J2KR.dcm", "SC_rgb_jpeg_dcmtk.dcm")
    files = [get_testdata_file(n, download=False) for n in names]
    assert pacs.upload(files) == 3
    client = connect(pacs.dimse_url, _settings(pacs))
    syntaxes = set()
    for f in files:
        src = dcmread(f, stop_before_pixels=True)
        result = drain(client.iter_retrieve(src.StudyInstanceUID, str(tmp_path / "out"),
                                            src.SeriesInstanceUID))
        assert result.complete, result.summary()
        (folder,) = result.series_folders.values()
        (got,) = os.listdir(folder)
        kept = dcmread(os.path.join(folder, got), stop_before_pixels=True)
        assert kept.file_meta.TransferSyntaxUID == src.file_meta.TransferSyntaxUID
        syntaxes.add(kept.file_meta.TransferSyntaxUID)
        assert load([folder]).volumes  # and medview decodes it
    assert len(syntaxes) == 3
