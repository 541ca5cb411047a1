"""Viewports side by side: layouts, the active viewport, series dropped on a viewport,
scrolling synchronised by patient position, linked window and zoom, reference lines."""

import numpy as np
import pytest
from PySide6.QtCore import QEvent, QPointF, Qt
from PySide6.QtGui import QDropEvent, QMouseEvent
from PySide6.QtWidgets import QApplication

from medview.core.volume import WindowPreset
from tests.factory import make_dataset, write

FOR = "1.2.826.0.1.3680043.8.498.900"


def _series(folder, n, dz, z0=0.0, frame=FOR, orientation=(1, 0, 0, 0, 1, 0),
            size=16, description="axial", value=0):
    """A series of ``n`` slices ``dz`` mm apart from z0 (or, for a coronal orientation,
    along y), in Frame of Reference ``frame``."""
    from pydicom.uid import generate_uid

    uid = generate_uid()
    folder.mkdir()
    normal = np.cross(orientation[:3], orientation[3:])
    for k in range(n):
        ds = make_dataset(np.full((size, size), value + k, np.uint16), series_uid=uid,
                          position=tuple(np.array([-8.0, -8.0, z0]) + k * dz * normal),
                          orientation=orientation, instance=k + 1, description=description)
        if frame:
            ds.FrameOfReferenceUID = frame
        write(ds, folder / f"{k:03d}.dcm")
    return str(folder)


def _layout(qtbot, window, name):
    """Switch layouts and wait until every new viewport shows its series (they are filled
    one per event-loop turn)."""
    with qtbot.waitSignal(window.layout_filled, timeout=10000):
        window.set_layout(name)


def _open(qtbot, window, paths):
    with qtbot.waitSignal(window.load_finished, timeout=20000):
        window.open_paths(paths)


def _z(volume, k):
    from medview.imaging.sync import slice_point

    return float(slice_point(volume, k)[2])


def test_layouts_fill_viewports_and_the_active_one_drives_the_panels(qtbot, window, tmp_path):
    a = _series(tmp_path / "a", 10, 2.5, description="thin")
    b = _series(tmp_path / "b", 5, 5.0, description="thick")
    _open(qtbot, window, [a, b])
    assert window.grid.visible_count() == 1
    _layout(qtbot, window, "1x2")
    v0, v1 = window.grid.shown_views()
    assert v0.volume is not None and v1.volume is not None and v0.volume is not v1.volume
    assert window.grid.active == 0 and window.view is v0
    # a click in the second viewport makes it the active one: title and panels follow
    port = v1.graphics.viewport()
    centre = QPointF(port.width() / 2, port.height() / 2)
    QApplication.sendEvent(port, QMouseEvent(
        QEvent.Type.MouseButtonPress, centre, QPointF(port.mapToGlobal(centre.toPoint())),
        Qt.MouseButton.LeftButton, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier))
    assert window.grid.active == 1 and window.view is v1
    assert v1.volume.description in window.windowTitle()
    assert window.model_panel.volume is v1.volume
    assert window.measurements.layer is v1.measure
    _layout(qtbot, window, "2x2")
    assert window.grid.visible_count() == 4
    assert all(v.volume is not None for v in window.grid.shown_views())
    _layout(qtbot, window, "1x1")
    assert window.grid.visible_count() == 1 and window.grid.active == 0


def test_a_series_dropped_on_a_viewport_is_shown_there(qtbot, window, tmp_path):
    from medview.gui.layout import series_mime

    a = _series(tmp_path / "a", 4, 2.5, description="first")
    b = _series(tmp_path / "b", 4, 2.5, description="second")
    _open(qtbot, window, [a, b])
    _layout(qtbot, window, "1x2")
    port = window.grid.ports[1]
    target = window.volumes[0]  # the first series, onto the second viewport
    mime = window.series.mimeData([window.series.volume_item(0)])
    assert bytes(mime.data("application/x-medview-series").data()) == b"0"
    dragged = series_mime(0)  # kept alive: the event holds a pointer to it
    drop = QDropEvent(QPointF(10, 10), Qt.DropAction.CopyAction, dragged,
                      Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    port.dropEvent(drop)  # what Qt calls when a drag from the series list ends here
    assert window.grid.views[1].volume is target and window.grid.active == 1


def test_scrolling_is_synchronised_by_patient_position(qtbot, window, tmp_path):
    thin = _series(tmp_path / "thin", 20, 2.5, z0=0.0, description="thin")
    thick = _series(tmp_path / "thick", 8, 5.0, z0=10.0, description="thick")
    _open(qtbot, window, [thin, thick])
    _layout(qtbot, window, "1x2")
    v0, v1 = window.grid.shown_views()
    for k in (0, 5, 9, 13, 19):
        v0.set_slice(k)
        z = _z(v0.volume, k)
        expect = min(range(8), key=lambda j: abs(_z(v1.volume, j) - z))
        assert v1.index == expect, (k, z, v1.index)
    window.act_sync.setChecked(False)
    before = v1.index
    v0.set_slice(2)
    assert v1.index == before  # unlinked


def test_without_a_common_frame_the_hand_set_offset_is_kept(qtbot, window, tmp_path):
    a = _series(tmp_path / "a", 20, 2.0, z0=0.0, frame="1.2.3.1", description="prior")
    b = _series(tmp_path / "b", 20, 2.0, z0=100.0, frame="1.2.3.2", description="current")
    _open(qtbot, window, [a, b])
    _layout(qtbot, window, "1x2")
    v0, v1 = window.grid.shown_views()
    window.act_sync.setChecked(False)
    v0.set_slice(4)
    v1.set_slice(7)  # the reader lines the two up by hand
    window.act_sync.setChecked(True)  # linked here: 3 slices apart
    for k in (5, 10, 12):
        v0.set_slice(k)
        assert v1.index == k + 3


def test_window_and_zoom_can_be_linked(qtbot, window, tmp_path):
    a = _series(tmp_path / "a", 4, 2.5, description="a")
    b = _series(tmp_path / "b", 4, 2.5, description="b")
    _open(qtbot, window, [a, b])
    _layout(qtbot, window, "1x2")
    v0, v1 = window.grid.shown_views()
    v0.set_window(WindowPreset("x", 40, 80))
    assert (v1.window.center, v1.window.width) != (40, 80)
    window.act_link_wl.setChecked(True)
    v0.set_window(WindowPreset("x", 50, 350))
    assert (v1.window.center, v1.window.width) == (50, 350)
    window.act_link_zoom.setChecked(True)
    v0.zoom(2.0)
    assert v1.zoom_factor() == pytest.approx(v0.zoom_factor(), rel=1e-3)


def test_a_localizer_shows_where_the_active_slice_cuts_it(qtbot, window, tmp_path):
    axial = _series(tmp_path / "ax", 10, 3.0, z0=-12.0, description="axial")
    # one coronal image (rows run head to feet), same Frame of Reference: a localizer
    coronal = _series(tmp_path / "cor", 1, 1.0, z0=0.0, orientation=(1, 0, 0, 0, 0, -1),
                      size=32, description="localizer")
    _open(qtbot, window, [axial, coronal])
    _layout(qtbot, window, "1x2")
    v0, v1 = window.grid.shown_views()
    names = [v.description for v in window.volumes]
    window.show_volume_in(1, names.index("localizer"))
    window.show_volume_in(0, names.index("axial"))
    assert window.grid.active == 0
    loc = v1.volume
    for k in (0, 2, 4):  # z -12, -6, 0 mm: on the localizer (it spans z 0 to -16)
        v0.set_slice(k)
        line = v1._ref_line
        assert line.isVisible()
        xs, ys = line.getData()
        # the coronal image's row y (pixel edges) sits at z = z0 - (y - 0.5) * 0.5 mm
        z = _z(v0.volume, k)
        row = (float(loc.origin[2]) - z) / loc.spacing[1] + 0.5
        assert ys[0] == pytest.approx(row) and ys[1] == pytest.approx(row)
        assert sorted(xs) == pytest.approx([0.0, 32.0])
    v0.set_slice(9)  # z 15 mm: above the localizer's top edge, no line
    assert not v1._ref_line.isVisible()
    v0.set_slice(3)
    assert v1._ref_line.isVisible()
    window.act_ref_lines.setChecked(False)
    assert not v1._ref_line.isVisible()
