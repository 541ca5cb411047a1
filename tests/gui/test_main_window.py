"""Drive the real main window offscreen: open, scroll, window/level, panels, cancel."""

import numpy as np
from PySide6.QtCore import QMimeData, QPoint, Qt, QUrl
from PySide6.QtGui import QDropEvent

from medview.core.volume import WindowPreset
from medview.gui.main_window import RUO_NOTICE
from medview.imaging import render_slice
from tests.factory import make_dataset, write, write_series


def _open(qtbot, window, paths):
    with qtbot.waitSignal(window.load_finished, timeout=20000) as blocker:
        window.open_paths([str(p) for p in paths])
    return blocker.args[0]


def test_open_folder_scroll_and_window_level(qtbot, window, tmp_path):
    _, expected = write_series(tmp_path / "ct", n=10)
    result = _open(qtbot, window, [tmp_path / "ct"])
    assert len(result.volumes) == 1
    view = window.view
    assert view.volume is result.volumes[0]
    assert view.index == 5  # opens on the middle slice
    np.testing.assert_array_equal(view.displayed, render_slice(view.volume, 5, view.window))

    # scroll with the keyboard and the wheel handler
    qtbot.keyClick(view, Qt.Key.Key_Down)
    assert view.index == 6
    view.step_slice(-3)
    assert view.index == 3 and view.slider.value() == 3
    assert view.slice_label.text() == "4 / 10"

    # set a window: the displayed array is exactly the pure render
    w = WindowPreset("test", -1000 + 35, 20)
    view.set_window(w)
    np.testing.assert_array_equal(view.displayed, render_slice(view.volume, 3, w))
    hu = expected[3].astype(np.float32) - 1024
    assert np.array_equal(view.displayed == 255, hu > -1000 + 35 - 0.5 + 19 / 2)

    # right-drag window/level changes the window
    before = view.window
    view.drag_window(40, -20)
    assert view.window.width > before.width and view.window.center > before.center

    # invert
    window.act_invert.setChecked(True)
    np.testing.assert_array_equal(view.displayed,
                                  render_slice(view.volume, 3, view.window, user_invert=True))


def test_drop_uses_the_same_path_and_reports_skipped(qtbot, window, tmp_path):
    write_series(tmp_path, n=3)
    (tmp_path / "broken.dcm").write_bytes(b"%PDF-1.5 not dicom")
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(tmp_path))])
    event = QDropEvent(QPoint(10, 10), Qt.DropAction.CopyAction, mime,
                       Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    with qtbot.waitSignal(window.load_finished, timeout=20000):
        window.dropEvent(event)
    assert window.series.volume_count() == 1
    assert window.skipped.rowCount() == 1
    assert "PDF" in window.skipped.item(0, 1).text()
    assert window.side_tabs.tabText(2) == "Skipped files (1)"
    assert window.recent()[0] == str(tmp_path)


def test_nothing_loadable_shows_nonmodal_error(qtbot, window, tmp_path):
    (tmp_path / "empty.dcm").write_bytes(b"")
    result = _open(qtbot, window, [tmp_path])
    assert result.volumes == []
    assert window._dialogs and not window._dialogs[-1].isModal()
    assert "empty file" in window._dialogs[-1].text()


def test_markup_in_description_is_shown_as_plain_text(qtbot, window, tmp_path):
    ds = make_dataset(np.zeros((8, 8), np.int16), description="<h1>BIG</h1><img src=x>")
    write(ds, tmp_path / "m.dcm")
    _open(qtbot, window, [tmp_path])
    assert "<h1>BIG</h1>" in window.series.volume_item(0).text()
    assert window.windowTitle().endswith("<h1>BIG</h1><img src=x>")
    texts = [window.tags.table.item(r, 3).text() for r in range(window.tags.table.rowCount())]
    assert "<h1>BIG</h1><img src=x>" in texts


def test_tag_browser_search_and_presets(qtbot, window):
    from medview.io.samples import sample_path

    _open(qtbot, window, [sample_path("ct")])
    items = [window.preset_box.itemText(i) for i in range(window.preset_box.count())]
    assert any(i.startswith("CT lung") for i in items)
    assert any(i.startswith("CT brain") for i in items)
    window.tags.filter.setText("Modality")
    visible = [r for r in range(window.tags.table.rowCount())
               if not window.tags.table.isRowHidden(r)]
    assert visible and all("modality" in " ".join(
        window.tags.table.item(r, c).text() for c in range(4)).lower() for r in visible)
    lung = next(i for i, t in enumerate(items) if t.startswith("CT lung"))
    window.preset_box.setCurrentIndex(lung)
    window._on_preset(lung)
    assert window.view.window.name == "CT lung"


def test_cursor_readout_gives_hu(qtbot, window, tmp_path):
    _, expected = write_series(tmp_path, n=3)
    _open(qtbot, window, [tmp_path])
    text = window.view.describe_pixel(2, 3)
    assert f"{int(expected[1, 2, 3]) - 1024} HU" in text and "x=3 y=2" in text


def test_cine_advances_frames(qtbot, window, tmp_path):
    write_series(tmp_path, n=4)
    _open(qtbot, window, [tmp_path])
    start = window.view.index
    window.fps_box.setValue(50)
    with qtbot.waitSignal(window.view.slice_changed, timeout=3000):
        window.act_cine.setChecked(True)
    window.act_cine.setChecked(False)
    assert window.view.index != start


def _blocking_first_load(monkeypatch):
    """Make the first load wait until it is cancelled (later loads are real), so tests do
    not depend on how fast a thread gets scheduled."""
    import threading

    import medview.gui.main_window as mw
    from medview.core.progress import Progress

    real = mw.iter_load
    calls = []
    waiting = threading.Event()

    def fake(paths, token):
        calls.append(paths)
        if len(calls) == 1:
            waiting.set()
            while not token.cancelled:
                yield Progress(0, 1, "waiting")
                token._event.wait(0.01)
            token.raise_if_cancelled()
        return (yield from real(paths, token))

    monkeypatch.setattr(mw, "iter_load", fake)
    return waiting


def test_cancel_loading_leaves_window_usable(qtbot, window, tmp_path, monkeypatch):
    waiting = _blocking_first_load(monkeypatch)
    write_series(tmp_path, n=4)
    with qtbot.waitSignal(window.load_failed, timeout=20000) as blocker:
        window.open_paths([str(tmp_path)])
        qtbot.waitUntil(waiting.is_set)
        assert window.cancel_button.isVisible()
        window.cancel_button.click()
    assert blocker.args[0] == "cancelled"
    assert window.series.volume_count() == 0 and not window.progress.isVisible()
    _open(qtbot, window, [tmp_path])
    assert window.series.volume_count() == 1


def test_newest_load_wins(qtbot, window, tmp_path, monkeypatch):
    waiting = _blocking_first_load(monkeypatch)
    write_series(tmp_path / "a", n=3, description="first")
    write_series(tmp_path / "b", n=2, description="second")
    window.open_paths([str(tmp_path / "a")])
    qtbot.waitUntil(waiting.is_set)
    with qtbot.waitSignal(window.load_finished, timeout=20000):
        window.open_paths([str(tmp_path / "b")])
    qtbot.waitUntil(lambda: window.jobs.current("load") is None, timeout=20000)
    assert [v.description for v in window.volumes] == ["second"]


def test_research_use_notice_is_always_visible(window):
    assert window.ruo_label.text() == RUO_NOTICE
    assert window.ruo_label.isVisible()


def test_orientation_labels_on_axial_ct(qtbot, window, tmp_path):
    write_series(tmp_path, n=2)
    _open(qtbot, window, [tmp_path])
    labels = {k: v.text() for k, v in window.view._labels.items()}
    assert labels == {"left": "R", "right": "L", "top": "A", "bottom": "P"}


def test_file_strings_in_tooltips_are_plain_text(qtbot, window, tmp_path):
    from medview.core.volume import SkippedFile
    from medview.gui.panels import plain_tooltip
    from tests.factory import make_dataset, write

    write(make_dataset(np.ones((8, 8), np.int16), description="<b>bold</b><img src='x'>"),
          tmp_path / "a.dcm")
    with qtbot.waitSignal(window.load_finished, timeout=20000):
        window.open_paths([str(tmp_path / "a.dcm")])
    tip = window.series.volume_item(0).toolTip()
    assert "&lt;b&gt;bold&lt;/b&gt;&lt;img" in tip and "<b>" not in tip
    window.skipped.add([SkippedFile("<i>x</i>.dcm", "r")])
    assert "&lt;i&gt;" in window.skipped.item(window.skipped.rowCount() - 1, 0).toolTip()
    assert plain_tooltip("a & b") == "<p style='white-space:pre'>a &amp; b</p>"


def test_clear_recent_studies(qtbot, window, tmp_path):
    from tests.factory import write_series

    write_series(tmp_path, n=2)
    with qtbot.waitSignal(window.load_finished, timeout=20000):
        window.open_paths([str(tmp_path)])
    assert window.recent() == [str(tmp_path)]
    window.settings.setValue("wizard/data", str(tmp_path))
    labels = [a.text() for a in window.recent_menu.actions()]
    assert "Clear recent studies" in labels
    window.act_clear_recent.trigger()
    assert window.recent() == [] and window.settings.value("recent") is None
    assert window.settings.value("wizard/data") is None
    assert not window.recent_menu.isEnabled()


def _hover(window, row, col):
    """Put the pointer over pixel (row, col) of the image in view."""
    from PySide6.QtCore import QPointF

    view = window.view
    view._on_mouse_moved(view.image_item.mapToScene(QPointF(col + 0.5, row + 0.5)))


def test_pixel_readout_follows_slice_series_and_window_changes(qtbot, window, tmp_path):
    _, expected = write_series(tmp_path / "a", n=6)
    _open(qtbot, window, [tmp_path / "a"])
    view = window.view
    _hover(window, 2, 3)
    hu = lambda k: f"{expected[k][2, 3] - 1024:.6g} HU"  # noqa: E731
    assert window.cursor_label.text().endswith(hu(view.index))
    qtbot.keyClick(view, Qt.Key.Key_Down)  # a key scroll, no mouse move
    assert f"slice {view.index + 1}" in window.cursor_label.text()
    assert window.cursor_label.text().endswith(hu(view.index))
    view.step_slice(-2)
    assert window.cursor_label.text().endswith(hu(view.index))
    # a temporary status message does not hide the read-out
    window.statusBar().showMessage("Loaded 1 series", 10000)
    assert window.cursor_label.isVisible()
    # another series: never the old series' value (the pointer's pixel of the new image,
    # or nothing if the relayout left the pointer outside it)
    stale = window.cursor_label.text()
    other = np.full((16, 16), 1024 + 128, np.int16)
    _open(qtbot, window, [write(make_dataset(other), tmp_path / "b.dcm")])
    assert window.cursor_label.text() in ("", stale.rsplit(":", 1)[0] + ": 128 HU") or \
        window.cursor_label.text().endswith("128 HU")
    assert window.cursor_label.text() != stale
    _hover(window, 2, 3)
    assert window.cursor_label.text().endswith("128 HU")
    window.view.set_window(WindowPreset("narrow", 100, 10))  # a W/L change: still current
    assert window.cursor_label.text().endswith("128 HU")


def test_window_box_always_names_the_window_in_use(qtbot, window, tmp_path):
    ds = make_dataset(np.arange(256, dtype=np.int16).reshape(16, 16) + 900)
    ds.WindowCenter, ds.WindowWidth = [40, 40, 400], [80, 80, 2000]  # a repeated window
    _open(qtbot, window, [write(ds, tmp_path / "ct.dcm")])
    box = window.preset_box
    items = [box.itemText(k) for k in range(box.count())]
    assert sum(t.startswith("File window") for t in items) == 2  # the duplicate merged
    assert box.currentText() == "File window 1  (W 80 / L 40)"
    window.view.drag_window(30, -10)
    w = window.view.window
    assert box.currentText() == f"Custom  (W {w.width:.0f} / L {w.center:.0f})"
    box.setCurrentIndex(items.index(next(t for t in items if t.startswith("CT lung"))))
    box.activated.emit(box.currentIndex())
    assert window.view.window.width == 1500 and box.currentText().startswith("CT lung")
    window.view.drag_window(5, 5)
    assert box.currentText().startswith("Custom")
    assert sum(box.itemText(k).startswith("Custom") for k in range(box.count())) == 1
    # a CT slice without file windows opens on the automatic window, and says so
    plain = make_dataset(np.arange(256, dtype=np.int16).reshape(16, 16))
    _open(qtbot, window, [write(plain, tmp_path / "plain.dcm")])
    w = window.view.window
    assert box.currentText().endswith(f"(W {w.width:.0f} / L {w.center:.0f})")
    assert not box.currentText().startswith("CT ")


def test_rgb_capture_gets_no_ct_presets(qtbot, window, tmp_path):
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[..., 0] = 200
    ds = make_dataset(rgb, photometric="RGB", slope=None, intercept=None)
    _open(qtbot, window, [write(ds, tmp_path / "rgb.dcm")])
    box = window.preset_box
    items = [box.itemText(k) for k in range(box.count())]
    assert not any(t.startswith("CT ") for t in items)
    w = window.view.window
    assert box.currentText().endswith(f"(W {w.width:.0f} / L {w.center:.0f})")


def test_projection_film_gets_letters_from_patient_orientation(qtbot, window):
    from tests.testdata import local_file

    _open(qtbot, window, [local_file("RG1_UNCR.dcm")])  # a CR chest film, (0020,0020) L\\F
    labels = {edge: lab.text() for edge, lab in window.view._labels.items()}
    assert labels == {"right": "L", "left": "R", "bottom": "F", "top": "H"}


def test_patient_orientation_letters():
    from medview.imaging.geometry import patient_orientation_labels

    assert patient_orientation_labels("A", "FL") == {"right": "A", "left": "P",
                                                      "bottom": "FL", "top": "HR"}
    assert patient_orientation_labels("X", "") == {"right": "", "left": "", "bottom": "",
                                                    "top": ""}


def test_series_are_grouped_by_patient_and_study_and_open_past_the_localizer(qtbot, window,
                                                                             tmp_path):
    def study(folder, patient, uid, date, series):
        for k, (desc, scout) in enumerate(series):
            ds = make_dataset(np.full((8, 8), k, np.int16), series_uid=f"{uid}.{k}",
                              description=desc)
            ds.PatientName, ds.PatientID = patient, patient.replace("^", "")
            ds.StudyInstanceUID, ds.StudyDate = uid, date
            ds.StudyDescription = "CT HEAD"
            if scout:
                ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
            write(ds, folder / f"{patient[:3]}{k}.dcm")

    study(tmp_path, "Doe^Jane", "1.2.3.1", "20240102", [("Scout", True), ("Axial", False)])
    study(tmp_path, "Roe^Rick", "1.2.3.2", "20231111", [("Axial", False)])
    _open(qtbot, window, [tmp_path])
    sb = window.series
    rows = [sb.item(r).text().splitlines()[0] for r in range(sb.count())]
    assert sb.volume_count() == 3 and len(rows) == 5  # two study headers
    jane = rows.index("Doe Jane")
    assert "2024-01-02 · CT HEAD" in sb.item(jane).text()
    assert rows[jane + 1:jane + 3] == ["Scout", "Axial"] or \
        sorted(rows[jane + 1:jane + 3]) == ["Axial", "Scout"]
    # opened on a diagnostic series of the first study, not its localizer
    assert window.view.volume.description == "Axial" and not window.view.volume.localizer
    # a study header collapses and expands its series
    header = sb.item(jane)
    sb.itemClicked.emit(header)
    assert all(sb.item(r).isHidden() for r in (jane + 1, jane + 2))
    sb.itemClicked.emit(header)
    assert not any(sb.item(r).isHidden() for r in (jane + 1, jane + 2))


def test_warnings_are_a_list_shown_first_and_the_toolbar_has_icons(qtbot, window, tmp_path):
    from PySide6.QtWidgets import QComboBox

    zs = [0.0, 2.5, 5.0, 12.5, 15.0]  # one gap
    uid = "1.2.826.0.1.3680043.8.498.77"
    for k, z in enumerate(zs):
        ds = make_dataset(np.full((8, 8), k, np.int16), series_uid=uid, position=(0, 0, z))
        ds.SliceThickness = 2.5
        write(ds, tmp_path / f"{k}.dcm")
    _open(qtbot, window, [tmp_path])
    lst = window.warnings_list
    texts = [lst.item(r).text() for r in range(lst.count())]
    assert texts == list(window.view.volume.warnings) and any(t.startswith("gap") for t in texts)
    assert window.side_tabs.currentWidget() is lst
    assert window.side_tabs.tabText(0) == f"Warnings ({len(texts)})"
    # and above the image, where they are seen even with the AI dock in front
    assert window.series_banner.isVisibleTo(window)
    assert window.series_banner.text().startswith("Warning: gap at slice 3")
    # a series without warnings takes the banner away
    _open(qtbot, window, [write(make_dataset(np.zeros((8, 8), np.int16)),
                                tmp_path / "one.dcm")])
    window.series.select_volume(len(window.volumes) - 1)
    assert not window.view.volume.warnings
    assert not window.series_banner.isVisibleTo(window)
    assert all(not a.icon().isNull() for a in (window.act_invert, window.act_fit,
                                                window.act_cine))
    assert window.preset_box.sizeAdjustPolicy() == \
        QComboBox.SizeAdjustPolicy.AdjustToContents


def test_close_all_leaves_nothing_of_the_closed_series(qtbot, window, tmp_path):
    """File > Close all series: no title, corner text, slice number, read-out, window
    presets or warnings of the series that was open."""
    write_series(tmp_path, n=4)
    _open(qtbot, window, [tmp_path])
    _hover(window, 2, 3)
    assert window.cursor_label.text() and window.view.info_label.text()
    assert window.windowTitle() != "medview" and window.preset_box.count()
    window.close_all()
    assert window.windowTitle() == "medview"
    assert window.view.info_label.text() == ""
    assert window.view.slice_label.text() == ""
    assert window.cursor_label.text() == ""
    assert window.preset_box.count() == 0
    assert window.warnings_list.count() == 0 and not window.series_banner.isVisibleTo(window)
    assert window.side_tabs.tabText(0) == "Warnings"
    assert all(lab.text() == "" for lab in window.view._labels.values())


def test_window_presets_on_number_keys_shortcut_help_and_view_export(qtbot, window, tmp_path):
    from PIL import Image

    write_series(tmp_path / "ct", n=4)
    _open(qtbot, window, [tmp_path / "ct"])
    presets = list(window._presets)
    assert len(presets) >= 2
    window.activateWindow()
    window.view.setFocus()
    qtbot.keyClick(window.view, Qt.Key.Key_2)
    assert window.view.window == presets[1] and window.preset_box.currentIndex() == 1
    qtbot.keyClick(window.view, Qt.Key.Key_1)
    assert window.view.window == presets[0]
    assert not window.apply_preset(len(presets) + 5)  # a key without a preset: nothing
    assert window.view.window == presets[0]
    # Help > Keyboard shortcuts (F1) lists them, from the actions themselves
    rows = dict(window.shortcut_rows())
    assert rows["Preset 2"] == "2" and rows["Invert"] == "I" and rows["Keyboard shortcuts"] == "F1"
    window.show_shortcuts()
    assert "F1" in window._shortcuts_box.text() and "Preset 9" in window._shortcuts_box.text()
    window._shortcuts_box.close()
    # File > Export view: what the view shows, as a PNG of its size
    out = tmp_path / "view.png"
    window.export_view(str(out))
    img = Image.open(out)
    assert img.size == (window.view.width(), window.view.height())
    assert len(np.unique(np.asarray(img.convert("L")))) > 2


def test_the_window_opens_maximised_then_as_it_was_left(qtbot, tmp_path):
    from PySide6.QtCore import QSettings

    from medview.gui.app import create_app
    from medview.gui.main_window import MainWindow

    create_app()
    settings = QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat)
    first = MainWindow(settings=settings)
    qtbot.addWidget(first)
    first.show_as_last_time()
    assert first.isMaximized()
    first.showNormal()
    first.resize(700, 500)
    qtbot.waitUntil(lambda: not first.isMaximized())
    left = (first.width(), first.height())
    first.close()
    assert settings.value("window/geometry") is not None
    again = MainWindow(settings=settings)
    qtbot.addWidget(again)
    again.show_as_last_time()
    assert not again.isMaximized() and (again.width(), again.height()) == left
    # the worklist's wide columns never push the AI dock over the image
    before = again.model_dock.width()
    again.model_panel.width_wanted.emit(5000)
    cap = again.width() * again.MODEL_DOCK_MAX_SHARE
    assert again.model_dock.width() <= max(before, cap + 20)
    assert MainWindow.model_dock_width(5000, 1400) == 560  # on a reading-room screen
    assert MainWindow.model_dock_width(300, 1400) == 300
    again.close()


def _marker_side(window) -> tuple[str, str]:
    """Where the bright marker is on screen: ("left"|"right", "top"|"bottom") (the
    corner text, also bright, hidden for the grab)."""
    window.view.set_corners_visible(False)
    window.view.viewbox.update()
    img = window.view.graphics.grab().toImage()
    arr = np.array([[img.pixelColor(x, y).red() for x in range(0, img.width(), 2)]
                    for y in range(0, img.height(), 2)])
    ys, xs = np.nonzero(arr > 200)
    cy, cx = arr.shape[0] / 2, arr.shape[1] / 2
    return ("left" if xs.mean() < cx else "right"), ("top" if ys.mean() < cy else "bottom")


def test_flip_and_rotate_move_the_image_letters_and_readout_together(qtbot, window, tmp_path):
    """An axial slice with a bright marker in its top-left corner (patient right,
    anterior): after each flip or rotation the marker, the orientation letters and the
    pixel under the pointer agree; the pixels themselves never change."""
    img = np.full((32, 32), 1024, np.int16)
    img[2:8, 2:8] = 1024 + 3000
    _open(qtbot, window, [write(make_dataset(img), tmp_path / "m.dcm")])
    view = window.view
    window.preset_box.setCurrentIndex(0)
    labels = lambda: {e: lab.text() for e, lab in view._labels.items()}  # noqa: E731
    assert _marker_side(window) == ("left", "top")
    assert labels() == {"left": "R", "right": "L", "top": "A", "bottom": "P"}
    window.act_flip_h.trigger()
    assert _marker_side(window) == ("right", "top")
    assert labels() == {"left": "L", "right": "R", "top": "A", "bottom": "P"}
    window.act_flip_h.trigger()
    window.act_rotate_right.trigger()  # 90 degrees clockwise: top-left goes top-right
    assert _marker_side(window) == ("right", "top")
    assert labels() == {"left": "P", "right": "A", "top": "R", "bottom": "L"}
    window.act_flip_v.trigger()
    assert _marker_side(window) == ("right", "bottom")
    assert labels()["bottom"] == "R" and labels()["top"] == "L"
    # the read-out names the image pixel under the pointer, whatever the display
    from PySide6.QtCore import QPointF

    scene = view.image_item.mapToScene(QPointF(4.5, 4.5))
    view._on_mouse_moved(scene)
    assert window.cursor_label.text().endswith("3000 HU")
    assert int(view.volume.pixels[0, 4, 4]) == 1024 + 3000  # pixels untouched
    window.act_reset.trigger()
    assert _marker_side(window) == ("left", "top") and labels()["left"] == "R"
