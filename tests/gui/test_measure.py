"""Measuring in the real window: drawn with the mouse through zoom, pan, flips and
rotations, the numbers checked against the pixels and the spacing."""

import csv
import math

import numpy as np
import pytest
from PySide6.QtCore import QEvent, QPoint, QPointF, Qt
from PySide6.QtGui import QMouseEvent
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication

from tests.factory import make_dataset, write, write_series

ROW_MM, COL_MM = 0.5, 0.8  # non-square pixels


@pytest.fixture(autouse=True)
def every_mouse_move():
    """pyqtgraph drops mouse moves closer than 10 ms apart (a real hand never makes
    them); the synthetic drags here come microseconds apart."""
    from medview.gui import import_pyqtgraph

    pg = import_pyqtgraph()
    before = pg.getConfigOption("mouseRateLimit")
    pg.setConfigOptions(mouseRateLimit=-1)
    yield
    pg.setConfigOptions(mouseRateLimit=before)


@pytest.fixture
def ct(tmp_path):
    """A 64 x 80 CT slice, rows 0.5 mm and columns 0.8 mm apart, slope 1 intercept
    -1024, random stored values."""
    stored = np.random.default_rng(5).integers(0, 2000, (64, 80)).astype(np.uint16)
    ds = make_dataset(stored, spacing=(ROW_MM, COL_MM), sop_uid="1.2.826.0.1.3680043.8.498.77")
    return write(ds, tmp_path / "ct.dcm"), stored.astype(np.float64) - 1024


def _open(qtbot, window, paths):
    with qtbot.waitSignal(window.load_finished, timeout=20000):
        window.open_paths([str(p) for p in paths])


def _screen(view, x, y) -> QPoint:
    """The viewport position showing image point (x, y) (the view's range applied, as
    its next paint does)."""
    view.viewbox.updateMatrix()
    scene = view.image_item.mapToScene(QPointF(x, y))
    return view.graphics.mapFromScene(scene)


def _send(port, kind, p, button, buttons) -> None:
    """A mouse event straight to the viewport (not through the platform queue, which
    would turn a second press soon after a first into a double click)."""
    ev = QMouseEvent(kind, QPointF(p), QPointF(port.mapToGlobal(p)), button, buttons,
                     Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(port, ev)


def _drag(view, a, b, steps=6) -> None:
    """A left-button drag on the viewport from image point a to b."""
    port = view.graphics.viewport()
    pa, pb = _screen(view, *a), _screen(view, *b)
    left, none = Qt.MouseButton.LeftButton, Qt.MouseButton.NoButton
    _send(port, QEvent.Type.MouseButtonPress, pa, left, left)
    for k in range(1, steps + 1):
        _send(port, QEvent.Type.MouseMove, pa + (pb - pa) * (k / steps), none, left)
    _send(port, QEvent.Type.MouseButtonRelease, pb, left, none)


def _click(view, a) -> None:
    port = view.graphics.viewport()
    p = _screen(view, *a)
    left, none = Qt.MouseButton.LeftButton, Qt.MouseButton.NoButton
    _send(port, QEvent.Type.MouseButtonPress, p, left, left)
    _send(port, QEvent.Type.MouseButtonRelease, p, left, none)


def _tolerance(view) -> float:
    """One screen pixel in image units (the mouse lands on whole screen pixels)."""
    a = view.image_item.mapFromScene(view.graphics.mapToScene(QPoint(0, 0)))
    b = view.image_item.mapFromScene(view.graphics.mapToScene(QPoint(1, 1)))
    return 1.5 * max(abs(b.x() - a.x()), abs(b.y() - a.y()), 1e-3)


GEOMETRIES = {
    "as opened": {},
    "zoomed and panned": {"zoom": 2.0, "pan": (3, -2)},
    "flipped left-right": {"flip_h": True},
    "rotated 90": {"rotation": 90},
    "flipped top-bottom, rotated 270, zoomed": {"flip_v": True, "rotation": 270, "zoom": 1.7},
}


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_a_distance_drawn_with_the_mouse_is_measured_in_mm_in_every_display(
        qtbot, window, ct, geometry):
    path, _hu = ct
    _open(qtbot, window, [path])
    view = window.view
    g = GEOMETRIES[geometry]
    view.set_orientation(flip_h=g.get("flip_h"), flip_v=g.get("flip_v"),
                         rotation=g.get("rotation"))
    if "zoom" in g:
        view.zoom(g["zoom"])
    if "pan" in g:
        view.viewbox.translateBy(x=g["pan"][0], y=g["pan"][1])
    window.measure_actions["distance"].trigger()
    assert view.measure.tool == "distance"
    a, b = (34.0, 30.0), (46.0, 38.0)
    port = view.graphics.viewport().rect()
    assert port.contains(_screen(view, *a)) and port.contains(_screen(view, *b))
    _drag(view, a, b)
    (m,) = view.measure.current()
    tol = _tolerance(view)
    assert np.allclose(m.points, [a, b], atol=tol), (m.points, tol)
    from medview.imaging.measure import measure

    r = measure(m, view.volume, view.index)
    (x0, y0), (x1, y1) = m.points
    assert r.unit == "mm"
    assert r.value == pytest.approx(math.hypot((x1 - x0) * COL_MM, (y1 - y0) * ROW_MM))
    assert r.value == pytest.approx(math.hypot(12 * COL_MM, 8 * ROW_MM), abs=2 * tol)
    assert window.measurements.list.count() == 1
    assert f"{r.value:.1f} mm" in window.measurements.list.item(0).text()


def test_an_ellipse_roi_reports_the_hounsfield_statistics_of_its_pixels(qtbot, window, ct):
    path, hu = ct
    _open(qtbot, window, [path])
    view = window.view
    window.measure_actions["ellipse"].trigger()
    _drag(view, (10.0, 12.0), (42.0, 40.0))
    (m,) = view.measure.current()
    (xa, ya), (xb, yb) = m.points
    cx, cy, ra, rb = (xa + xb) / 2, (ya + yb) / 2, abs(xb - xa) / 2, abs(yb - ya) / 2
    yy, xx = np.mgrid[0:64, 0:80] + 0.5
    inside = ((xx - cx) / ra) ** 2 + ((yy - cy) / rb) ** 2 <= 1
    text = window.measurements.list.item(0).text()
    assert f"mean {hu[inside].mean():.1f} HU" in text
    assert f"SD {hu[inside].std():.1f}" in text and f"n={inside.sum()}" in text
    area = math.pi * ra * COL_MM * rb * ROW_MM
    assert f"{area:.1f} mm2" in text


def test_angle_by_three_clicks_and_cobb_by_two_lines(qtbot, window, ct):
    path, _ = ct
    _open(qtbot, window, [path])
    view = window.view
    window.measure_actions["angle"].trigger()
    for p in ((10.0, 10.0), (30.0, 30.0), (50.0, 10.0)):
        _click(view, p)
    window.measure_actions["cobb"].trigger()
    _drag(view, (10.0, 50.0), (30.0, 50.0))
    assert len(view.measure.current()) == 1  # the first line alone is not a measurement
    _drag(view, (40.0, 45.0), (60.0, 55.0))
    from medview.imaging.measure import measure

    angle, cobb = view.measure.current()
    assert (angle.kind, cobb.kind) == ("angle", "cobb")
    (ax, ay), (vx, vy), (bx, by) = angle.points
    u = np.array([(ax - vx) * COL_MM, (ay - vy) * ROW_MM])
    w = np.array([(bx - vx) * COL_MM, (by - vy) * ROW_MM])
    expect = math.degrees(math.acos(u @ w / np.linalg.norm(u) / np.linalg.norm(w)))
    assert measure(angle, view.volume, 0).value == pytest.approx(expect)
    (p0, p1, q0, q1) = [np.array(p) * (COL_MM, ROW_MM) for p in cobb.points]
    d1, d2 = p1 - p0, q1 - q0
    t = math.degrees(math.acos(abs(d1 @ d2) / np.linalg.norm(d1) / np.linalg.norm(d2)))
    assert measure(cobb, view.volume, 0).value == pytest.approx(t)


def test_measurements_stay_with_their_slice_edit_delete_and_export(qtbot, window, tmp_path):
    write_series(tmp_path / "s", n=4, size=32)
    _open(qtbot, window, [tmp_path / "s"])
    view, layer = window.view, window.view.measure
    start = view.index
    window.measure_actions["rect"].trigger()
    _drag(view, (4.0, 4.0), (20.0, 16.0))
    (roi_m,) = layer.current()
    view.set_slice(start + 1)
    assert layer.current() == [] and window.measurements.list.count() == 0
    window.measure_actions["distance"].trigger()
    _drag(view, (2.0, 2.0), (12.0, 2.0))
    view.set_slice(start)
    assert layer.current() == [roi_m] and window.measurements.list.count() == 1
    # editing: a handle dragged moves the measurement and its numbers
    roi = next(it for it in layer._items[id(roi_m)] if hasattr(it, "getHandles"))
    before = window.measurements.list.item(0).text()
    roi.setSize((24.0, 20.0))  # as the scale handle does
    roi.sigRegionChangeFinished.emit(roi)
    (x0, y0), (x1, y1) = roi_m.points
    assert (x1 - x0, y1 - y0) == pytest.approx((24.0, 20.0))
    assert window.measurements.list.item(0).text() != before
    # CSV: every measurement of the open series, numbers and UIDs only
    out = tmp_path / "m.csv"
    assert window.export_measurements(str(out)) == 2
    rows = list(csv.DictReader(out.open()))
    assert [r["kind"] for r in rows] == ["rect", "distance"]
    assert rows[0]["instance"] == view.volume.instance_uids[start]
    assert rows[0]["slice"] == str(start + 1) and rows[0]["value_unit"] == "HU"
    assert "Test" not in out.read_text() and str(tmp_path) not in out.read_text()
    # Delete removes the selected one
    layer.select(roi_m)
    view.setFocus()
    QTest.keyClick(view, Qt.Key.Key_Delete)
    assert layer.current() == [] and len(layer.store.all()) == 1
    # Esc goes back to navigating; closing the study forgets its measurements
    window.measure_actions["distance"].trigger()
    QTest.keyClick(view, Qt.Key.Key_Escape)
    assert layer.tool == "" and not window.measure_actions["distance"].isChecked()
    window.close_all()
    assert layer.store.all() == []


def test_a_film_without_spacing_measures_in_pixels_and_says_so(qtbot, window, tmp_path):
    from PIL import Image

    path = tmp_path / "film.png"
    Image.fromarray(np.full((40, 60), 100, np.uint8)).save(path)
    _open(qtbot, window, [path])
    window.measure_actions["distance"].trigger()
    _drag(window.view, (5.0, 5.0), (35.0, 45.0))
    text = window.measurements.list.item(0).text()
    assert " px" in text and "mm" not in text
    assert "in pixels" in window.measurements.caveat.text()


def test_measurements_saved_as_an_sr_beside_the_study_come_back_when_it_is_opened(
        qtbot, window, tmp_path):
    write_series(tmp_path / "s", n=3, size=32)
    _open(qtbot, window, [tmp_path / "s"])
    layer = window.view.measure
    m = layer.add("rect", [(2.0, 3.0), (20.0, 18.0)])
    files, left_out = window.save_measurements_sr(str(tmp_path / "s"))
    assert len(files) == 1 and left_out == 0
    (tmp_path / "s" / "junk.dcm").write_bytes(b"DICM" * 100)  # a broken file: ignored
    window.close_all()
    assert layer.store.all() == []
    _open(qtbot, window, [tmp_path / "s"])
    qtbot.waitUntil(lambda: len(layer.store.all()) == 1, timeout=20000)
    (back,) = layer.store.all()
    assert (back.kind, back.instance, back.points) == ("rect", m.instance, m.points)
    assert "restored" in window.statusBar().currentMessage()
    # opening it once more does not double it
    _open(qtbot, window, [tmp_path / "s"])  # the report is read again, in a worker
    qtbot.waitUntil(lambda: not any(k.startswith("reports:") for k in window.jobs._current),
                    timeout=20000)
    assert len(layer.store.all()) == 1
