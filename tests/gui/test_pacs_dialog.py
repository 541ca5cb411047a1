"""Open from PACS and Send result to PACS in the real window, against a real Orthanc."""

from __future__ import annotations

import os

import numpy as np
import pytest

from medview.pacs import connect
from tests.pacs_fixtures import _patch_film, _settings

# one of the slowest files: `pytest -m "not slow"` leaves it out
pytestmark = pytest.mark.slow


def test_gui_open_from_pacs_retrieves_into_the_series_browser(qtbot, pacs, pacs_env, make_window):
    win = make_window()
    dlg = win.open_pacs_dialog()
    dlg.settings = _settings(pacs, cache_dir=pacs_env["MEDVIEW_PACS_CACHE"])
    dlg.server.setCurrentText(pacs.dimse_url)
    with qtbot.waitSignal(dlg.echoed, timeout=20000):
        dlg.echo_button.click()
    assert "answers (C-ECHO), round trip" in dlg.status.text()
    dlg.patient_id.setText("PAT002")
    with qtbot.waitSignal(dlg.studies_found, timeout=20000) as found:
        dlg.find_button.click()
    assert found.args == [1]
    study = dlg.tree.topLevelItem(0)
    assert study.text(1) == "PAT002" and study.text(5) == "20"
    with qtbot.waitSignal(dlg.series_listed, timeout=20000):
        study.setExpanded(True)
    assert study.childCount() == 1
    dlg.tree.setCurrentItem(study)
    assert dlg.retrieve_button.isEnabled()
    with qtbot.waitSignal(win.load_finished, timeout=30000), \
            qtbot.waitSignal(dlg.retrieve_finished, timeout=30000) as done:
        dlg.retrieve_button.click()
    assert done.args[0][0].complete
    assert dlg.retrieve_button.isEnabled()  # ready for another retrieve
    assert win.series.volume_count() == 1 and win.volumes[0].n_slices == 20
    assert win.current == 0
    # a dead server: a clear message in the dialog, the window goes on
    dlg.server.setCurrentText("dicom://ORTHANC@127.0.0.1:1")
    with qtbot.waitSignal(dlg.failed, timeout=20000) as failed:
        dlg.find_button.click()
    assert "connection refused" in failed.args[0] and dlg.find_button.isEnabled()
    dlg.close()


def test_gui_sends_the_result_in_view_to_the_pacs(qtbot, pacs, pacs_env, make_window, tiny_model,
                                                   monkeypatch, tmp_path):
    monkeypatch.setenv("MEDVIEW_MODELS_DIR", os.path.dirname(tiny_model[0]))
    win = make_window()
    study_uid, path = _patch_film(tiny_model[1], str(tmp_path / "film"))
    pacs.upload([path])
    with qtbot.waitSignal(win.load_finished, timeout=20000):
        win.open_paths([path])
    panel = win.model_panel
    panel.model_box.setCurrentIndex([c.id for c in panel.cards].index("tiny-patch"))
    assert not panel.send_button.isEnabled()
    with qtbot.waitSignal(panel.prediction_ready, timeout=60000):
        panel.run_button.click()
    with qtbot.waitSignal(panel.saliency_ready, timeout=60000):
        if panel.state.out_of_scope:  # the heat-map needs "show anyway" out of scope
            panel.show_anyway.click()
    assert panel.send_button.isEnabled()
    job = panel.send_result(pacs.dimse_url, _settings(pacs))
    with qtbot.waitSignal(job.succeeded, timeout=30000) as sent:
        pass
    assert sent.args[0].sent == 2
    assert "Sent the SR and the heat-map" in panel.status.text()
    kinds = {s.modality for s in connect(pacs.dimse_url, _settings(pacs)).find_series(
        study_uid)}
    assert kinds == {"CR", "SR", "OT"}


def test_gui_retrieve_can_be_cancelled_and_resumed(qtbot, pacs, pacs_env, make_window,
                                                   tmp_path):
    from tests.orthanc import write_study

    uid, paths = write_study(str(tmp_path / "big"), modality="CT", n=60, size=512,
                             patient_id="PAT777")
    pacs.upload(paths)
    win = make_window()
    dlg = win.open_pacs_dialog()
    dlg.settings = _settings(pacs, cache_dir=pacs_env["MEDVIEW_PACS_CACHE"])
    dlg.server.setCurrentText(pacs.dimse_url)
    dlg.patient_id.setText("PAT777")
    with qtbot.waitSignal(dlg.studies_found, timeout=20000):
        dlg.find_button.click()
    dlg.tree.setCurrentItem(dlg.tree.topLevelItem(0))
    job_started = qtbot.waitSignal(dlg.progress.valueChanged, timeout=30000)
    with job_started:
        dlg.retrieve_button.click()
    assert dlg.cancel_button.isVisible()
    job = dlg.jobs.current("retrieve")
    with qtbot.waitSignal(job.cancelled, timeout=30000):
        dlg.cancel_button.click()
    assert "Cancelled" in dlg.status.text() and dlg.retrieve_button.isEnabled()
    study_dir = os.path.join(pacs_env["MEDVIEW_PACS_CACHE"], uid)
    kept = [f for _d, _s, fs in os.walk(study_dir) for f in fs]
    assert len(kept) < 60 and not [f for f in kept if f.startswith(".")]
    with qtbot.waitSignal(dlg.retrieve_finished, timeout=60000) as done:
        dlg.retrieve_button.click()
    (result,) = done.args[0]
    assert result.complete and result.already_present == len(kept)


def test_pacs_settings_dialog_saves_valid_settings_only(qtbot, tmp_path):
    from medview.gui.pacs_dialog import PacsSettingsDialog
    from medview.pacs import load_settings

    path = str(tmp_path / "pacs.json")
    dlg = PacsSettingsDialog(path=path)
    qtbot.addWidget(dlg)
    dlg.ae.setText("READROOM2")
    dlg.port.setValue(11999)
    dlg._add_row("hospital", "dicom://PACS@10.1.2.3:104")
    dlg.save()
    saved = load_settings(path)
    assert (saved.ae_title, saved.port) == ("READROOM2", 11999)
    assert saved.servers == {"hospital": "dicom://PACS@10.1.2.3:104"}
    dlg._add_row("broken", "dicom://no-title-here:104")
    dlg.save()
    assert "AE title" in dlg.error.text()
    assert load_settings(path).servers == {"hospital": "dicom://PACS@10.1.2.3:104"}


def test_export_study_deidentified_from_the_window(qtbot, make_window, tmp_path):
    from pydicom import dcmread

    from tests.orthanc import write_study

    _uid, _paths = write_study(str(tmp_path / "study"), modality="CT", n=4, size=16,
                              patient_id="MRN-5555", patient_name="Private^Person")
    win = make_window()
    with qtbot.waitSignal(win.load_finished, timeout=20000):
        win.open_paths([str(tmp_path / "study")])
    assert len(win.study_files()) == 4
    job = win.export_deidentified(str(tmp_path / "out"))
    with qtbot.waitSignal(job.succeeded, timeout=30000) as done:
        pass
    written = done.args[0].written
    assert len(written) == 4
    for f in written:
        ds = dcmread(f)
        assert "Private" not in str(ds.PatientName) and ds.PatientID != "MRN-5555"
    assert "Wrote 4 de-identified file(s)" in win.statusBar().currentMessage()


def test_cancel_ends_a_retrieve_from_a_trickling_server_at_once(qtbot, make_window,
                                                                tmp_path):
    """The server lists a study, then sends its instance one byte at a time (never
    silent long enough for the timeout): Cancel in the dialog ends the retrieve within a
    second or two, long before the deadline, and the window goes on."""
    import json
    import time

    from tests.test_hostile_dicomweb import Hostile, _send, trickle

    study, series, sop = "1.2.826.0.1.3680043.8.498.71", "1.2.826.0.1.3680043.8.498.72", \
        "1.2.826.0.1.3680043.8.498.73"

    def play(h):
        path = h.path.split("?")[0]
        if path.endswith("/studies"):
            _send(h, json.dumps([{"0020000D": {"vr": "UI", "Value": [study]},
                                  "00100020": {"vr": "LO", "Value": ["TRICKLE"]}}]).encode())
        elif path.endswith("/series"):
            _send(h, json.dumps([{"0020000E": {"vr": "UI", "Value": [series]},
                                  "00080060": {"vr": "CS", "Value": ["CR"]}}]).encode())
        elif path.endswith("/instances"):
            _send(h, json.dumps([{"0020000E": {"vr": "UI", "Value": [series]},
                                  "00080018": {"vr": "UI", "Value": [sop]}}]).encode())
        else:
            trickle(h, 'multipart/related; type="application/dicom"; boundary=b', b"-", 600,
                    0.1)

    server = Hostile(play)
    win = make_window()
    dlg = win.open_pacs_dialog()
    try:
        from medview.pacs import PacsSettings

        dlg.settings = PacsSettings(timeout_s=5, cache_dir=str(tmp_path / "cache"))
        dlg.server.setCurrentText(server.url)
        with qtbot.waitSignal(dlg.studies_found, timeout=20000):
            dlg.find_button.click()
        dlg.tree.setCurrentItem(dlg.tree.topLevelItem(0))
        dlg.retrieve_button.click()
        job = dlg.jobs.current("retrieve")
        qtbot.waitUntil(lambda: any("/instances/" in p for p in server.requests),
                        timeout=20000)  # the instance is trickling in now
        t = time.monotonic()
        with qtbot.waitSignal(job.cancelled, timeout=10000):
            dlg.cancel_button.click()
        assert time.monotonic() - t < 5  # the deadline here is 30 s
        assert dlg.retrieve_button.isEnabled()
    finally:
        dlg.close()
        server.close()


def test_measurements_go_to_the_pacs_as_an_sr_and_come_back_with_the_study(
        qtbot, pacs, pacs_env, make_window, tmp_path):
    """Drawn on a CT, sent as a TID 1500 SR to a real Orthanc, the study retrieved again
    (images and report) and opened: the measurements are back on their images."""
    from medview.core.progress import drain
    from medview.imaging.measure import measure
    from tests.orthanc import write_study

    study_uid, paths = write_study(str(tmp_path / "ct"), modality="CT", n=4, size=64,
                                   patient_id="PAT-M", patient_name="Measured^Pat")
    pacs.upload(paths)
    win = make_window()
    with qtbot.waitSignal(win.load_finished, timeout=20000):
        win.open_paths([str(tmp_path / "ct")])
    layer = win.view.measure
    win.view.set_slice(1)
    line = layer.add("distance", [(5.0, 6.0), (40.0, 30.0)])
    win.view.set_slice(2)
    roi = layer.add("ellipse", [(10.0, 10.0), (30.0, 25.0)])
    before = {m.kind: (m.instance, measure(m, win.view.volume, 0).value)
              for m in (line, roi)}
    job = win.send_measurements(pacs.dimse_url, _settings(pacs))
    with qtbot.waitSignal(job.succeeded, timeout=30000) as sent:
        pass
    assert sent.args[0].sent == 1
    kinds = {s.modality for s in connect(pacs.dimse_url, _settings(pacs)).find_series(
        study_uid)}
    assert kinds == {"CT", "SR"}
    # the study again, as another reader gets it: retrieved with its report, opened
    win.close_all()
    out = str(tmp_path / "retrieved")
    got = drain(connect(pacs.dimse_url, _settings(pacs)).iter_retrieve(study_uid, out))
    assert got.complete and got.received == 5
    with qtbot.waitSignal(win.load_finished, timeout=20000):
        win.open_paths([out])
    qtbot.waitUntil(lambda: len(layer.store.all()) == 2, timeout=20000)
    back = {m.kind: m for m in layer.store.all()}
    for kind, (instance, value) in before.items():
        assert back[kind].instance == instance
        vol = win.view.volume
        index = vol.instance_uids.index(instance)
        assert measure(back[kind], vol, index).value == pytest.approx(value, rel=1e-6)
    win.view.set_slice(vol.instance_uids.index(before["distance"][0]))
    assert [m.kind for m in layer.current()] == ["distance"]


def test_a_server_that_stops_mid_retrieve_is_told_series_by_series(qtbot, make_window,
                                                                   tmp_path, monkeypatch):
    """Series 1 arrives whole, series 2 with 2 of its 5 images (the server stopped
    answering inside it), series 3 never: the dialog says which, n of m, and the half
    series opens marked incomplete with a warning."""
    from pydicom.uid import generate_uid

    from medview.core.progress import Progress
    from medview.pacs import PacsError
    from medview.pacs.records import RetrieveResult
    from tests.factory import make_dataset, write

    monkeypatch.setenv("MEDVIEW_PACS_CACHE", str(tmp_path / "cache"))
    study = generate_uid()
    series = [generate_uid() for _ in range(3)]

    class Series:
        def __init__(self, uid):
            self.series_uid = uid

    class StoppingServer:
        server = "dicom://STOPPING@127.0.0.1:104"

        def find_series(self, study_uid):
            return [Series(u) for u in series]

        def iter_retrieve(self, study_uid, dest, series_uid, cancel=None, method="auto"):
            k = series.index(series_uid)
            yield Progress(0, 1, f"series {k + 1}")
            if k == 2:
                raise PacsError("the server stopped answering (association aborted)")
            folder = os.path.join(dest, study_uid, series_uid)
            os.makedirs(folder, exist_ok=True)
            n = 3 if k == 0 else 2
            for i in range(n):
                ds = make_dataset(np.zeros((8, 8), np.uint16), series_uid=series_uid,
                                  position=(0.0, 0.0, 2.0 * i), instance=i + 1,
                                  description=f"series {k + 1}")
                ds.StudyInstanceUID = study_uid
                write(ds, os.path.join(folder, f"{i}.dcm"))
            return RetrieveResult(study_uid, os.path.join(dest, study_uid),
                                  expected=3 if k == 0 else 5, received=n,
                                  series_folders={series_uid: folder})

    win = make_window()
    dlg = win.open_pacs_dialog()
    dlg.settings = dlg.settings.__class__(cache_dir=str(tmp_path / "cache"))
    monkeypatch.setattr(dlg, "_client", lambda: StoppingServer())
    monkeypatch.setattr(dlg, "_selection", lambda: [(study, None)])
    opened = []
    win.load_finished.connect(lambda r: opened.extend(r.volumes))
    with qtbot.waitSignal(dlg.failed, timeout=30000) as failed:
        dlg.retrieve()
    text = failed.args[0]
    assert "stopped answering" in text
    assert "1 of 3 series complete" in text
    assert "series 2 of 3 incomplete (2 of 5 images" in text
    assert "series 3 of 3 did not arrive" in text
    assert "Retrieve again fetches only the rest" in dlg.status.text()
    qtbot.waitUntil(lambda: len(opened) == 2, timeout=20000)
    half = next(v for v in opened if v.description == "series 2")
    whole = next(v for v in opened if v.description == "series 1")
    assert half.incomplete and half.warnings[0].startswith("only 2 of 5 images")
    assert not whole.incomplete
    row = win.series.volume_item(next(k for k, v in enumerate(win.volumes)
                                      if v is half)).text()
    assert "[incomplete]" in row
    dlg.close()
