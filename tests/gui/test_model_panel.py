"""The AI side panel in the real window: pick, run, bars, overlay, switch image, worklist."""

import csv
import os

import numpy as np
import pytest
from PySide6.QtCore import QPoint, Qt
from PySide6.QtWidgets import QApplication

from tests.tiny import PATCH


@pytest.fixture
def ai_window(make_window, tiny_model, monkeypatch):
    monkeypatch.setenv("MEDVIEW_MODELS_DIR", os.path.dirname(tiny_model[0]))
    return make_window(), tiny_model[1]


def _open(qtbot, win, paths):
    with qtbot.waitSignal(win.load_finished, timeout=20000):
        win.open_paths([str(p) for p in paths])


def _files(data, cls, n=2):
    folder = os.path.join(data, cls)
    return [os.path.join(folder, f) for f in sorted(os.listdir(folder))[:n]]


def test_select_run_see_bars_and_overlay(qtbot, ai_window):
    win, data = ai_window
    panel = win.model_panel
    assert "tiny-patch" in [c.id for c in panel.cards]
    panel.model_box.setCurrentIndex([c.id for c in panel.cards].index("tiny-patch"))
    assert "Intended use" in panel.summary.text()
    _open(qtbot, win, _files(data, "patch", 1))
    with qtbot.waitSignal(panel.saliency_ready, timeout=60000), \
            qtbot.waitSignal(panel.prediction_ready, timeout=60000) as got:
        panel.run_button.click()
    p = got.args[0]
    assert p.label == "patch"
    assert panel.bars.classes == ["patch", "plain"]
    assert panel.bars.values == pytest.approx(p.probabilities)
    assert panel.decision.text() == p.decision
    assert panel.seen.pixmap() is not None and not panel.seen.pixmap().isNull()
    # the overlay is shown on the main view, aligned with the displayed image
    overlay = win.view.overlay_item
    assert overlay.isVisible()
    alpha = overlay.image[..., 3].astype(float)
    assert alpha[PATCH].mean() > 1.5 * alpha.mean()
    # the overlay covers exactly the displayed image, also when drawn from a smaller map
    for max_side in (1000, 20):
        panel.OVERLAY_MAX_SIDE = max_side
        panel._emit_overlay()
        rect = overlay.mapRectToItem(win.view.image_item, overlay.boundingRect())
        assert (rect.width(), rect.height()) == pytest.approx(win.view.displayed.shape[::-1])
    assert overlay.image.shape[:2] == (16, 16)
    # hide and show
    panel.show_overlay.setChecked(False)
    assert not overlay.isVisible()
    panel.show_overlay.setChecked(True)
    assert overlay.isVisible()


def test_switching_image_mid_run_shows_only_the_new_result(qtbot, ai_window):
    win, data = ai_window
    panel = win.model_panel
    panel.model_box.setCurrentIndex([c.id for c in panel.cards].index("tiny-patch"))
    panel.show_overlay.setChecked(False)
    _open(qtbot, win, [_files(data, "patch", 1)[0]])
    _open(qtbot, win, [_files(data, "plain", 1)[0]])
    panel.auto_run.setChecked(True)
    results = []
    panel.prediction_ready.connect(results.append)
    win.series.select_volume(0)  # the patch image
    panel.run_button.click()
    with qtbot.waitSignal(panel.prediction_ready, timeout=60000):
        win.series.select_volume(1)  # switch before the first result is shown
    qtbot.waitUntil(lambda: panel.jobs.current("predict") is None, timeout=60000)
    QApplication.processEvents()
    assert [r.label for r in results] == ["plain"]
    from medview.imaging.model_input import pixels_sha256

    assert results[0].input_sha256 == pixels_sha256(win.volumes[1], 0)


def test_worklist_runs_on_all_series_and_exports_csv(qtbot, ai_window, tmp_path):
    win, data = ai_window
    panel = win.model_panel
    panel.model_box.setCurrentIndex([c.id for c in panel.cards].index("tiny-patch"))
    _open(qtbot, win, _files(data, "patch", 2) + _files(data, "plain", 2))
    assert len(win.volumes) == 4
    with qtbot.waitSignal(panel.batch_finished, timeout=60000):
        panel.batch_button.click()
    assert panel.worklist.rowCount() == 4
    t = panel.worklist
    col = [t.horizontalHeaderItem(c).text() for c in range(t.columnCount())].index("p(patch)")
    t.sortItems(col)  # by p(patch), ascending, as numbers
    texts = [t.item(r, col).text() for r in range(4)]
    assert all(len(x.split(".")[1]) == 3 for x in texts)  # one number format
    ps = [float(x) for x in texts]
    assert ps == sorted(ps)
    out = tmp_path / "worklist.csv"
    panel.export_csv(str(out))
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["path", "series", "study", "model_id", "predicted", "p_patch",
                       "p_plain", "in_scope", "ood_score", "warnings", "model_file",
                       "model_sha256"]
    # the series column is the table's; the study has no patient name in the file
    shown = {t.item(r, 0).text() for r in range(4)}
    assert {r[1] for r in rows[1:]} == shown
    assert sorted(r[4] for r in rows[1:]) == ["patch", "patch", "plain", "plain"]
    assert [r[7] for r in rows[1:]] == ["true"] * 4
    assert all(np.isclose(float(r[5]) + float(r[6]), 1.0) for r in rows[1:])


def test_choosing_a_model_loads_it_in_the_background(qtbot, ai_window):
    win, data = ai_window
    panel = win.model_panel
    ids = [c.id for c in panel.cards]
    panel.model_box.setCurrentIndex(ids.index("tiny-patch"))
    assert panel.session.loaded() == []  # a programmatic change loads nothing
    panel.model_box.activated.emit(ids.index("tiny-patch"))  # as when a user picks it
    job = win.jobs.current("warm-up")
    assert job is not None
    with qtbot.waitSignal(job.succeeded, timeout=60000):
        pass
    (loaded,) = panel.session.loaded()
    assert loaded.card.id == "tiny-patch"
    # the first run on an image uses the loaded model
    _open(qtbot, win, _files(data, "patch", 1))
    with qtbot.waitSignal(panel.prediction_ready, timeout=60000):
        panel.run_button.click()
    assert panel.session.loaded() == [loaded]


def test_the_panel_runs_through_the_shared_session(qtbot, ai_window, monkeypatch):
    from medview.inference.session import InferenceSession

    win, data = ai_window
    panel = win.model_panel
    assert isinstance(panel.session, InferenceSession)
    calls = []
    real = InferenceSession.predict

    def predict(self, *args, **kwargs):
        calls.append(self)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(InferenceSession, "predict", predict)
    panel.model_box.setCurrentIndex([c.id for c in panel.cards].index("tiny-patch"))
    _open(qtbot, win, _files(data, "patch", 1))
    with qtbot.waitSignal(panel.prediction_ready, timeout=60000):
        panel.run_button.click()
    assert calls == [panel.session]


def _gradient(tmp_path) -> str:
    from PIL import Image

    yy, xx = np.mgrid[:64, :64]
    path = str(tmp_path / "gradient.png")
    Image.fromarray(((xx + yy) * 2).astype(np.uint8)).save(path)
    return path


def test_out_of_scope_image_is_withheld_until_show_anyway(qtbot, ai_window, tmp_path):
    win, _data = ai_window
    panel = win.model_panel
    panel.model_box.setCurrentIndex([c.id for c in panel.cards].index("tiny-patch"))
    _open(qtbot, win, [_gradient(tmp_path)])
    saliency = []
    panel.saliency_ready.connect(saliency.append)
    with qtbot.waitSignal(panel.prediction_ready, timeout=60000) as got:
        panel.run_button.click()
    p = got.args[0]
    assert p.withheld and p.label == ""
    # no decision, no bars, no saliency: a banner with the reasons and a deliberate choice
    assert panel.scope_banner.isVisible() and "OUT OF SCOPE" in panel.scope_banner.text()
    assert "looks unlike this model's training images" in panel.scope_banner.text()
    assert panel.bars.values == [] and panel.show_anyway.isVisible()
    assert panel.decision.text().startswith("Withheld")
    panel.explain_button.click()  # refused before "Show anyway"
    assert panel.jobs.current("saliency") is None and not saliency
    assert not win.view.overlay_item.isVisible()
    # Show anyway: greyed, stamped bars; the saliency map is drawn and stamped too
    with qtbot.waitSignal(panel.saliency_ready, timeout=60000):
        panel.show_anyway.click()
    assert panel.bars.out_of_scope and panel.bars.values == pytest.approx(p.probabilities)
    assert panel.decision.text().startswith("OUT OF SCOPE")
    assert not panel.show_anyway.isVisible()
    overlay = win.view.overlay_item.image
    top = overlay[: max(2, overlay.shape[0] // 24)].reshape(-1, 4)
    assert top[:, 3].min() == 255 and top[:, 0].mean() > 150  # the red stamp band
    # the banner now says the result is shown on request, not that none is shown
    assert "shown on request" in panel.scope_banner.text()
    assert "no result is shown" not in panel.scope_banner.text()


def test_results_shown_are_in_the_audit_log(qtbot, ai_window, tmp_path, monkeypatch):
    import json

    from medview.core import audit

    monkeypatch.setenv(audit.ENV_DIR, str(tmp_path / "audit"))
    win, _data = ai_window
    panel = win.model_panel
    panel.model_box.setCurrentIndex([c.id for c in panel.cards].index("tiny-patch"))
    panel.show_overlay.setChecked(False)
    _open(qtbot, win, [_gradient(tmp_path)])
    with qtbot.waitSignal(panel.prediction_ready, timeout=60000):
        panel.run_button.click()
    panel.show_anyway.click()
    log = tmp_path / "audit" / audit.LOG_FILE

    def entries():
        return [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []

    qtbot.waitUntil(lambda: len(entries()) == 2, timeout=10000)
    first, second = entries()
    assert first["event"] == second["event"] == "result_shown"
    assert first["in_scope"] is False and first["shown_anyway"] is False
    assert second["shown_anyway"] is True and first["input_sha256"] == second["input_sha256"]
    with qtbot.waitSignal(win.audit_log_shown, timeout=10000) as shown:
        win.show_audit_log()
    assert shown.args[0] is True  # the chain holds
    _dlg, status, text = win.audit_dialog
    assert "Intact: 2 entries" in status.text() and "result_shown" in text.toPlainText()


def test_auto_run_never_shows_a_decision_out_of_scope(qtbot, ai_window, tmp_path):
    win, data = ai_window
    panel = win.model_panel
    panel.model_box.setCurrentIndex([c.id for c in panel.cards].index("tiny-patch"))
    _open(qtbot, win, [_files(data, "patch", 1)[0]])
    _open(qtbot, win, [_gradient(tmp_path)])
    win.series.select_volume(0)
    panel.auto_run.setChecked(True)
    with qtbot.waitSignal(panel.prediction_ready, timeout=60000) as got:
        win.series.select_volume(1)  # the gradient
    assert got.args[0].withheld and panel.bars.values == []
    with qtbot.waitSignal(panel.prediction_ready, timeout=60000) as got:
        win.series.select_volume(0)  # back to the film: answered, banner gone
    assert got.args[0].in_scope and not panel.scope_banner.isVisible()
    assert panel.bars.values and not panel.bars.out_of_scope


def test_worklist_shows_out_of_scope_rows_apart(qtbot, ai_window, tmp_path):
    win, data = ai_window
    panel = win.model_panel
    panel.model_box.setCurrentIndex([c.id for c in panel.cards].index("tiny-patch"))
    _open(qtbot, win, [_gradient(tmp_path), *_files(data, "plain", 2)])
    with qtbot.waitSignal(panel.batch_finished, timeout=60000) as got:
        panel.batch_button.click()
    rows = got.args[0]
    assert [r.prediction.withheld for r in rows] == [False, False, True]  # sorted apart
    t = panel.worklist
    headers = [t.horizontalHeaderItem(c).text() for c in range(t.columnCount())]
    last = t.rowCount() - 1
    assert t.item(last, headers.index("Predicted")).text() == "out of scope"
    assert t.item(last, headers.index("p(patch)")).text() == ""
    assert t.item(last, headers.index("In scope")).text() == "no"
    assert "out of scope: looks unlike" in t.item(last, headers.index("Warnings")).text()
    assert t.item(0, headers.index("Predicted")).text() == "plain"
    # a first click on a column never puts the withheld row first: probabilities sort
    # highest first, text ascending, the row without an answer last either way
    header = t.horizontalHeader()

    def click(name):
        col = headers.index(name)
        x = header.sectionViewportPosition(col) + header.sectionSize(col) // 2
        qtbot.mouseClick(header.viewport(), Qt.MouseButton.LeftButton,
                         pos=QPoint(x, header.height() // 2))
        return col

    col = click("p(patch)")
    qtbot.waitUntil(lambda: header.sortIndicatorOrder() == Qt.SortOrder.DescendingOrder
                    and t.item(last, col).text() == "", timeout=5000)
    texts = [t.item(r, col).text() for r in range(t.rowCount())]
    assert texts[-1] == "" and texts[:-1] == sorted(texts[:-1], reverse=True)
    for name in ("Predicted", "Series", "In scope", "Warnings"):
        click(name)
        assert t.item(last, headers.index("Predicted")).text() == "out of scope", name
    click("Warnings")  # a second click reverses
    assert t.item(0, headers.index("Predicted")).text() == "out of scope"


def test_model_card_dialog_leads_with_where_the_model_was_checked(qtbot, ai_window):
    win, _data = ai_window
    panel = win.model_panel
    panel.model_box.setCurrentIndex([c.id for c in panel.cards].index("tiny-patch"))
    panel.show_card()
    table = panel._card_dialog.table
    where = [table.item(r, 0).text() for r in range(table.rowCount())]
    assert where[0].startswith("internal test split")
    assert any("inverted" in w for w in where)
    # the shortcut audit, in words, with the model's own numbers
    rel = panel._card_dialog.reliance.text()
    card = panel.current_card().card
    assert rel.startswith("What the model relies on (shortcut audit)")
    assert f"central chest (where the lungs are) replaced by grey: " \
           f"{card.reliance.masked_auc['lungs hidden (central chest box)']}" in rel
    panel._card_dialog.close()


def test_worklist_fills_as_it_scores_can_be_cancelled_and_opens_rows(qtbot, ai_window,
                                                                     tmp_path, monkeypatch):
    from medview.core.volume import StudyInfo

    win, data = ai_window
    panel = win.model_panel
    panel.model_box.setCurrentIndex([c.id for c in panel.cards].index("tiny-patch"))
    _open(qtbot, win, _files(data, "patch", 3) + _files(data, "plain", 3))
    win.volumes[0].study = StudyInfo(patient_name="Doe Jane", study_date="2024-01-02")
    seen = []
    panel.batch_progress.valueChanged.connect(
        lambda _v: seen.append(panel.worklist.rowCount()))
    with qtbot.waitSignal(panel.batch_finished, timeout=60000):
        panel.batch_button.click()
        assert not panel.batch_progress.isHidden() and not panel.batch_cancel.isHidden()
    assert [n for n in seen if n][:3] == [1, 2, 3]  # rows appeared one by one
    assert panel.batch_progress.isHidden()
    t = panel.worklist
    headers = [t.horizontalHeaderItem(c).text() for c in range(t.columnCount())]
    studies = [t.item(r, headers.index("Patient / study")).text() for r in range(6)]
    assert "Doe Jane  2024-01-02" in studies
    # double-click opens that image in the viewer
    row = next(r for r in range(6) if t.item(r, 0).text() == win.volumes[4].description)
    with qtbot.waitSignal(win.volume_shown, timeout=10000):
        t.cellDoubleClicked.emit(row, 0)
    assert win.view.volume is win.volumes[4]
    # the export starts in the study's folder and confirms with the path
    assert panel.export_folder() == os.path.join(data, "patch")
    out = tmp_path / "w.csv"
    monkeypatch.setattr("medview.gui.model_panel.QFileDialog.getSaveFileName",
                        lambda *a, **k: (str(out), "CSV (*.csv)"))
    panel.export_button.click()
    assert out.exists() and panel.batch_status.text() == f"Exported 6 rows to {out}"
    # Cancel stops the run and keeps what was scored
    real = panel.session.batch

    def slow(*a, **k):
        gen = real(*a, **k)
        step = next(gen)
        yield step
        panel.jobs.cancel("batch")  # as if Cancel was clicked mid-run
        yield from gen

    monkeypatch.setattr(panel.session, "batch", slow)
    panel.batch_button.click()
    job = panel.jobs.current("batch")
    with qtbot.waitSignal(job.cancelled, timeout=60000):
        pass
    assert panel.batch_status.text().startswith("Cancelled after")
    assert panel.batch_cancel.isHidden()


def test_long_saliency_shows_progress_and_can_be_cancelled(qtbot, ai_window):
    win, data = ai_window
    panel = win.model_panel
    panel.model_box.setCurrentIndex([c.id for c in panel.cards].index("tiny-patch"))
    panel.show_overlay.setChecked(False)
    _open(qtbot, win, _files(data, "patch", 1))
    with qtbot.waitSignal(panel.prediction_ready, timeout=60000):
        panel.run_button.click()
    panel.method_box.setCurrentIndex(panel.method_box.findData("occlusion"))
    steps = []
    with qtbot.waitSignal(panel.saliency_ready, timeout=60000):
        panel.explain_button.click()
        job = panel.jobs.current("saliency")
        job.progress.connect(steps.append)
        assert not panel.sal_progress.isHidden() and not panel.sal_cancel.isHidden()
    assert steps and steps[-1].done == steps[-1].total > 1  # one step per forward pass
    qtbot.waitUntil(lambda: panel.sal_progress.isHidden(), timeout=10000)
    # Cancel: the job stops at its next forward pass, and says so
    panel.explain_button.click()
    job = panel.jobs.current("saliency")
    with qtbot.waitSignal(job.cancelled, timeout=60000):
        panel.sal_cancel.click()
    qtbot.waitUntil(lambda: panel.sal_cancel.isHidden(), timeout=10000)
    assert "cancelled" in panel.status.text()


def test_small_n_models_look_different_from_well_checked_ones(qtbot, ai_window):
    win, _data = ai_window
    panel = win.model_panel
    ids = [c.id for c in panel.cards]
    panel.model_box.setCurrentIndex(ids.index("tiny-patch"))
    assert not panel.evidence.isHidden() and "SMALL TEST SET" in panel.evidence.text()


def test_saved_overlay_carries_its_caption_and_metadata(qtbot, ai_window, tmp_path):
    from PIL import Image

    win, data = ai_window
    panel = win.model_panel
    panel.model_box.setCurrentIndex([c.id for c in panel.cards].index("tiny-patch"))
    _open(qtbot, win, _files(data, "patch", 1))
    assert not panel.save_overlay_button.isEnabled()
    with qtbot.waitSignal(panel.saliency_ready, timeout=60000):
        panel.run_button.click()
    assert panel.save_overlay_button.isEnabled()
    out = tmp_path / "overlay.png"
    panel.save_overlay(str(out))
    im = Image.open(out)
    assert im.size[1] > 64 and im.text["medview:model"] == "tiny-patch 1.0.0"
    assert im.text["medview:out_of_scope"] == "false"


def test_card_readme_is_rendered_markdown_and_loads_nothing(qtbot, ai_window, tmp_path):
    win, _data = ai_window
    panel = win.model_panel
    panel.model_box.setCurrentIndex([c.id for c in panel.cards].index("tiny-patch"))
    panel.show_card()
    view = panel._card_dialog.readme
    assert "# " not in view.toPlainText().splitlines()[0]  # a heading, not raw Markdown
    assert view.document().toMarkdown().startswith("#")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    view.setMarkdown(f"![x]({fifo})\n\n[link](file://{fifo})")  # would block if read
    assert view.loadResource(2, fifo.as_uri()) is None
    panel._card_dialog.close()


def test_safe_markdown_drops_images_links_and_references():
    from medview.gui.model_card import safe_markdown

    md = "# T\n![chart](/dev/zero) see [the site](http://x.test) <http://y.test>\n[r]: /etc/x\n"
    out = safe_markdown(md)
    assert "/dev/zero" not in out and "http" not in out and "/etc/x" not in out
    assert "chart" in out and "the site" in out and out.startswith("# T")


def test_the_engine_box_chooses_the_backend(qtbot, ai_window):
    """Auto runs the exported graph on the CPU (the details line says ONNX Runtime);
    choosing PyTorch in the Engine box runs torch, with the same result."""
    win, data = ai_window
    panel = win.model_panel
    panel.model_box.setCurrentIndex([c.id for c in panel.cards].index("tiny-patch"))
    panel.device_box.setCurrentText("cpu")
    panel.show_overlay.setChecked(False)
    _open(qtbot, win, _files(data, "patch", 1))
    results, details = {}, {}
    for key in ("auto", "torch"):
        panel.backend_box.setCurrentIndex(panel.backend_box.findData(key))
        with qtbot.waitSignal(panel.prediction_ready, timeout=60000) as got:
            panel.run_button.click()
        results[key], details[key] = got.args[0], panel.details.text()
    assert results["auto"].backend == "onnx" and "(ONNX Runtime)" in details["auto"]
    assert results["torch"].backend == "torch" and "(PyTorch)" in details["torch"]
    assert results["auto"].probabilities == pytest.approx(results["torch"].probabilities,
                                                          abs=1e-4)
