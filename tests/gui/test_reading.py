"""The reading room: corner text with its toggle and layout, dark and light themes."""

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtGui import QPalette
from PySide6.QtTest import QTest

from tests.factory import make_dataset, write


def _open_ct(qtbot, window, tmp_path):
    ds = make_dataset(np.zeros((32, 32), np.uint16))
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "MRN-77"
    path = write(ds, tmp_path / "ct.dcm")
    with qtbot.waitSignal(window.load_finished, timeout=20000):
        window.open_paths([path])


def test_corner_text_shows_who_and_how_and_hides_with_one_key(qtbot, window, tmp_path):
    _open_ct(qtbot, window, tmp_path)
    labels = window.view.corner_labels
    assert labels["top_left"].text().startswith("Doe Jane\nID MRN-77")
    assert "W " in labels["bottom_right"].text()
    before = labels["bottom_right"].text()
    window.view.zoom(2.0)
    assert labels["bottom_right"].text() != before  # the zoom follows
    z = window.view.zoom_factor()
    assert f"Zoom {z:.2f}x" in labels["bottom_right"].text()
    window.view.setFocus()
    QTest.keyClick(window, Qt.Key.Key_O)  # teaching / screen sharing
    assert not any(lab.isVisible() for lab in labels.values())
    assert all(lab.isVisible() for lab in window.view._labels.values())  # letters stay
    assert window.settings.value("view/corner_text") in (False, "false")
    QTest.keyClick(window, Qt.Key.Key_O)
    assert labels["top_left"].isVisible()


def test_a_corner_layout_is_kept_for_the_next_window(qtbot, make_window, tmp_path):
    first = make_window()
    first.set_corner_layout("top_right: patient_id\nbottom_left: modality")
    _open_ct(qtbot, first, tmp_path)
    assert first.view.corner_labels["top_right"].text() == "ID MRN-77"
    assert first.view.corner_labels["top_left"].text() == ""
    second = make_window()
    second.settings = first.settings  # the same user settings
    second._restore_corner_text()
    assert second.view.corner_layout["top_right"] == ["patient_id"]


def test_dark_by_default_and_light_on_request(qtbot, window):
    from PySide6.QtWidgets import QApplication

    def lightness():
        return QApplication.instance().palette().color(QPalette.ColorRole.Window).lightness()

    assert lightness() < 80 and window.theme_actions["dark"].isChecked()
    window.set_theme("light")
    assert lightness() > 180 and window.settings.value("view/theme") == "light"
    window.set_theme("dark")
    assert lightness() < 80


def test_coronal_and_sagittal_reformats_and_a_mip_slab(qtbot, window, tmp_path):
    from medview.imaging import render_slice
    from medview.imaging.mpr import reformat, slab
    from tests.factory import write_series

    write_series(tmp_path / "ct", n=8, size=16, spacing_z=2.5)
    with qtbot.waitSignal(window.load_finished, timeout=20000):
        window.open_paths([str(tmp_path / "ct")])
    series = window.view.volume
    assert window.plane_box.isEnabled() and "axial" in window.plane_box.itemText(0)
    assert window.show_plane("coronal")
    view = window.view
    assert view.volume is not series and view.volume.n_slices == 16
    assert view.volume.pixels.shape == (16, 8, 16)  # rows are the 8 slices
    assert view._labels["top"].text() == "H" and view._labels["bottom"].text() == "F"
    np.testing.assert_array_equal(
        view.displayed, render_slice(reformat(series, "coronal"), view.index, view.window))
    assert not window.series_banner.isVisible()  # a faithful reformat: nothing to warn
    assert "(coronal)" in view.corner_labels["top_right"].text()
    assert window.show_plane("sagittal") and view.volume.pixels.shape == (16, 8, 16)
    # a 5 mm MIP of the sagittal images: their slices are columns 0.5 mm apart
    window.set_slab("mip", 5.0)
    expect = render_slice(slab(view.volume, view.index, "mip", 5.0), 0, view.window)
    np.testing.assert_array_equal(view.displayed, expect)
    assert "MIP 5 mm (10 slices)" in view.corner_labels["bottom_left"].text()
    window.set_slab("")
    assert window.show_plane("acquired") and view.volume is series
    # a single image cannot be reformatted: the control says why
    ds = make_dataset(np.zeros((8, 8), np.uint16))
    with qtbot.waitSignal(window.load_finished, timeout=20000):
        window.open_paths([write(ds, tmp_path / "one.dcm")])
    assert not window.plane_box.isEnabled() and "3 slices" in window.plane_box.toolTip()
    assert not window.show_plane("coronal")
    assert "No coronal reformat" in window.statusBar().currentMessage()
