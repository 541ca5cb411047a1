"""Measuring on the slice view: the tools, the drawn measurements and their list.

Everything is drawn as a child of the view's image item, in image pixel coordinates
(:mod:`medview.imaging.measure`), so a measurement stays on its anatomy through zoom,
pan, flips and rotations; the numbers come from :func:`medview.imaging.measure.measure`,
never from screen distances. The measurements of the image in view (its SOP instance and
frame) are drawn; the others are kept in the store until their series is closed.
"""

from __future__ import annotations

import csv
import io
import math

from PySide6.QtCore import QObject, QPointF, Qt, Signal
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from medview.gui import import_pyqtgraph
from medview.imaging.measure import (
    CSV_COLUMNS,
    KIND_NAMES,
    POINTS,
    Measurement,
    MeasurementStore,
    Result,
    calibration_of,
    csv_rows,
    image_key,
    located,
    measure,
)

pg = import_pyqtgraph()

#: the tools, their menu names and keys (Esc goes back to navigating)
TOOLS = (("distance", "Distance", "D"), ("angle", "Angle", "A"), ("cobb", "Cobb angle", "C"),
         ("rect", "Rectangle ROI", "T"), ("ellipse", "Ellipse ROI", "E"),
         ("freehand", "Freehand ROI", "P"))
COLOUR = "#4dd0ff"
SELECTED = "#ffb000"
#: a freehand outline keeps a point at most every this many pixels, and at most this many
FREEHAND_STEP_PX = 1.0
FREEHAND_MAX_POINTS = 200


class MeasureLayer(QObject):
    """The measurements of a :class:`~medview.gui.viewer.SliceView`: the active tool,
    drawing new ones from the view's mouse (image coordinates), editing by handles,
    selection and deletion. ``changed`` is emitted whenever the measurements of the
    image in view change (made, moved, deleted, another image shown)."""

    changed = Signal()
    tool_changed = Signal(str)

    def __init__(self, view) -> None:
        super().__init__(view)
        self.view = view
        self.store = MeasurementStore()
        self.tool = ""  # "" navigates
        self.selected: Measurement | None = None
        self._items: dict[int, list] = {}  # id(measurement) -> graphics items
        #: what each drawn measurement measures, worked out once per drawing or move
        #: (the labels and the list both show it)
        self._results: dict[int, Result] = {}
        self._draft: list[tuple[float, float]] = []
        self._preview = None

    # ------------------------------------------------------------------ state
    def image(self) -> tuple[str, int] | None:
        v = self.view.volume
        return None if v is None else image_key(v, self.view.index)

    def current(self) -> list[Measurement]:
        key = self.image()
        return [] if key is None else self.store.on(*key)

    def set_tool(self, tool: str) -> None:
        if tool and tool not in POINTS:
            raise ValueError(f"unknown tool {tool!r}")
        self._cancel_draft()
        self.tool = tool
        self.view.graphics.setCursor(Qt.CursorShape.CrossCursor if tool
                                     else Qt.CursorShape.ArrowCursor)
        self.tool_changed.emit(tool)

    def refresh(self) -> None:
        """Redraw the measurements of the image in view (another slice or series, a new
        window: the text is recomputed from the pixels)."""
        self._cancel_draft()
        for items in self._items.values():
            for it in items:
                self._remove_item(it)
        self._items.clear()
        self._results.clear()
        if self.selected is not None and self.selected not in self.current():
            self.selected = None
        for m in self.current():
            self._draw(m)
        self.changed.emit()

    # ------------------------------------------------------------------ making
    def add(self, kind: str, points) -> Measurement | None:
        """A measurement of ``kind`` through ``points`` (image x, y) on the image in view;
        None when there is no image or the points make nothing (a click, not a drag)."""
        key = self.image()
        if key is None:
            return None
        pts = [(float(x), float(y)) for x, y in points]
        if kind in ("distance", "rect", "ellipse") and math.dist(pts[0], pts[1]) < 1e-6:
            return None
        try:
            m = self.store.add(Measurement(kind, pts, *key))
        except ValueError:
            return None
        self._draw(m)
        self.select(m)
        return m

    def delete(self, m: Measurement | None = None) -> bool:
        """Delete ``m`` (default: the selected measurement)."""
        m = m or self.selected
        if m is None:
            return False
        self.store.remove(m)
        self._results.pop(id(m), None)
        for it in self._items.pop(id(m), []):
            self._remove_item(it)
        if self.selected is m:
            self.selected = None
        self.changed.emit()
        return True

    def delete_all_on_image(self) -> None:
        for m in self.current():
            self.delete(m)

    def select(self, m: Measurement | None) -> None:
        self.selected = m
        for mm in self.current():
            for it in self._items.get(id(mm), []):
                pen = pg.mkPen(SELECTED if mm is m else COLOUR, width=2)
                if isinstance(it, pg.ROI):
                    it.setPen(pen)
        self.changed.emit()

    # ------------------------------------------------------------------ mouse (image x, y)
    def press(self, p: tuple[float, float]) -> None:
        """A left-button drag begins at ``p`` with a tool active."""
        if self.tool in ("distance", "rect", "ellipse", "freehand"):
            self._draft = [p, p]
        elif self.tool == "cobb":
            if len(self._draft) == 2:  # the first line is drawn: the second begins
                self._draft += [p, p]
            else:
                self._draft = [p, p]
        self._update_preview()

    def move(self, p: tuple[float, float]) -> None:
        if not self._draft:
            return
        if self.tool == "freehand":
            if math.dist(self._draft[-1], p) >= FREEHAND_STEP_PX:
                self._draft.append(p)
        else:
            self._draft[-1] = p
        self._update_preview()

    def release(self, p: tuple[float, float]) -> Measurement | None:
        if not self._draft:
            return None
        self.move(p)
        if self.tool == "cobb" and len(self._draft) == 2:
            return None  # the second line comes next
        points, kind = self._draft, self.tool
        if kind == "freehand":
            points = _thin(points[1:], FREEHAND_MAX_POINTS)
        self._cancel_draft()
        return self.add(kind, points)

    def click(self, p: tuple[float, float]) -> Measurement | None:
        """A click with a tool active: the angle tool takes three (end, vertex, end)."""
        if self.tool != "angle":
            return None
        self._draft.append(p)
        if len(self._draft) < 3:
            self._update_preview()
            return None
        points = self._draft
        self._cancel_draft()
        return self.add("angle", points)

    def _cancel_draft(self) -> None:
        self._draft = []
        if self._preview is not None:
            self._remove_item(self._preview)
            self._preview = None

    def _update_preview(self) -> None:
        if self._preview is None:
            self._preview = pg.PlotCurveItem(pen=pg.mkPen(COLOUR, width=1,
                                                          style=Qt.PenStyle.DashLine))
            self._preview.setParentItem(self.view.image_item)
        pts = list(self._draft)
        if self.tool in ("rect", "ellipse") and len(pts) == 2:
            (x0, y0), (x1, y1) = pts
            pts = [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]
        xs = [x for x, _ in pts]
        ys = [y for _, y in pts]
        self._preview.setData(xs, ys, connect="all" if self.tool != "cobb" else "pairs")

    # ------------------------------------------------------------------ drawing
    def _remove_item(self, it) -> None:
        scene = it.scene()
        it.setParentItem(None)
        if scene is not None:
            scene.removeItem(it)

    def _draw(self, m: Measurement) -> None:
        parent = self.view.image_item
        pen = pg.mkPen(SELECTED if m is self.selected else COLOUR, width=2)
        hover = pg.mkPen(SELECTED, width=2)
        rois = []
        if m.kind == "distance":
            rois.append(pg.LineSegmentROI(m.points, pen=pen, hoverPen=hover))
        elif m.kind == "cobb":
            rois.append(pg.LineSegmentROI(m.points[:2], pen=pen, hoverPen=hover))
            rois.append(pg.LineSegmentROI(m.points[2:], pen=pen, hoverPen=hover))
        elif m.kind == "angle":
            rois.append(pg.PolyLineROI(m.points, closed=False, pen=pen, hoverPen=hover))
        elif m.kind == "freehand":
            rois.append(pg.PolyLineROI(m.points, closed=True, pen=pen, hoverPen=hover))
        else:
            (x0, y0), (x1, y1) = m.points
            pos, size = (min(x0, x1), min(y0, y1)), (abs(x1 - x0), abs(y1 - y0))
            if m.kind == "rect":
                roi = pg.RectROI(pos, size, pen=pen, hoverPen=hover)
            else:
                roi = pg.EllipseROI(pos, size, pen=pen, hoverPen=hover)
                for h in list(roi.getHandles()):  # axis-aligned: no rotation handle
                    if h.typ == "r":
                        roi.removeHandle(h)
            rois.append(roi)
        text = pg.TextItem(color=COLOUR, anchor=(0, 1), fill=pg.mkBrush(0, 0, 0, 150))
        for roi in rois:
            roi.setParentItem(parent)
            roi.setAcceptedMouseButtons(Qt.MouseButton.LeftButton)
            roi.sigClicked.connect(lambda _r, _ev, mm=m: self.select(mm))
            roi.sigRegionChangeFinished.connect(lambda _r, mm=m: self._moved(mm))
        text.setParentItem(parent)
        self._items[id(m)] = [*rois, text]
        self._label(m)

    def _label(self, m: Measurement) -> None:
        items = self._items.get(id(m))
        v = self.view.volume
        if not items or v is None:
            return
        text = items[-1]
        result = self._results[id(m)] = measure(m, v, self.view.index)
        label = f"{m.number}: {result.text().split(';')[0]}"
        s = result.stats
        if s and s["n"] > 0:
            unit = f" {result.value_unit}" if result.value_unit else ""
            label += f"\n{s['mean']:.1f} \u00b1 {s['sd']:.1f}{unit}"
        text.setText(label)
        x, y = max(m.points, key=lambda p: (-p[1], p[0]))  # the top point
        text.setPos(QPointF(x, y))

    def _moved(self, m: Measurement) -> None:
        """Its handles were dragged: read the points back in image coordinates."""
        rois = [it for it in self._items.get(id(m), []) if isinstance(it, pg.ROI)]
        if not rois:
            return
        points = []
        for roi in rois:
            if isinstance(roi, (pg.RectROI, pg.EllipseROI)):
                pos, size = roi.pos(), roi.size()
                points = [(pos.x(), pos.y()), (pos.x() + size.x(), pos.y() + size.y())]
            else:
                points += [(q.x(), q.y()) for q in (roi.mapToParent(h.pos())
                                                    for h in roi.getHandles())]
        try:
            self.store.replace_points(m, points)
        except ValueError:
            return
        self._label(m)
        self.changed.emit()

    def result(self, m: Measurement) -> Result:
        """What ``m`` (on the image in view) measures."""
        r = self._results.get(id(m))
        if r is None:
            r = self._results[id(m)] = measure(m, self.view.volume, self.view.index)
        return r

    # ------------------------------------------------------------------ export
    def rows_for(self, volumes) -> list[dict[str, str]]:
        """The CSV rows of every measurement on the open ``volumes``, in the order made."""
        return csv_rows(located(self.store.all(), volumes))


def csv_text(rows: list[dict[str, str]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _thin(points: list[tuple[float, float]], most: int) -> list[tuple[float, float]]:
    if len(points) <= most:
        return points
    step = len(points) / most
    return [points[int(k * step)] for k in range(most)]


class MeasurementPanel(QWidget):
    """The list of the measurements on the image in view, with their numbers, what the
    millimetres mean, and Delete / Delete all / Export CSV."""

    export_requested = Signal()

    def __init__(self, layer: MeasureLayer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.layer = layer
        self.caveat = QLabel("")
        self.caveat.setWordWrap(True)
        self.caveat.setTextFormat(Qt.TextFormat.PlainText)
        self.caveat.setStyleSheet("color: #d08a2a;")
        self.list = QListWidget()
        self.list.setWordWrap(True)
        self.list.itemSelectionChanged.connect(self._on_pick)
        self.delete_button = QPushButton("Delete")
        self.delete_button.clicked.connect(lambda: self.layer.delete())
        self.clear_button = QPushButton("Delete all on image")
        self.clear_button.clicked.connect(self.layer.delete_all_on_image)
        self.export_button = QPushButton("Export CSV...")
        self.export_button.clicked.connect(self.export_requested)
        buttons = QHBoxLayout()
        for b in (self.delete_button, self.clear_button, self.export_button):
            buttons.addWidget(b)
        box = QVBoxLayout(self)
        box.addWidget(self.caveat)
        box.addWidget(self.list, 1)
        box.addLayout(buttons)
        hint = QLabel("Tools: D distance, A angle (3 clicks), C Cobb angle (2 lines), "
                      "T rectangle, E ellipse, P freehand; Esc to navigate, Delete removes "
                      "the selected one. Drag the handles to edit.")
        hint.setWordWrap(True)
        hint.setStyleSheet("color: #808080;")
        box.addWidget(hint)
        layer.changed.connect(self.refresh)
        self.refresh()

    def set_layer(self, layer: MeasureLayer) -> None:
        """List another viewport's measurements (the active one)."""
        if layer is self.layer:
            return
        self.layer.changed.disconnect(self.refresh)
        self.layer = layer
        layer.changed.connect(self.refresh)
        self.refresh()

    def refresh(self) -> None:
        v = self.layer.view.volume
        self.list.blockSignals(True)
        self.list.clear()
        ms = self.layer.current()
        for m in ms:
            r = self.layer.result(m)
            item = QListWidgetItem(f"{m.number}. {KIND_NAMES[m.kind]}: {r.text()}")
            self.list.addItem(item)
            if m is self.layer.selected:
                item.setSelected(True)
        self.list.blockSignals(False)
        self.caveat.setText("" if v is None else calibration_of(v).caveat)
        self.caveat.setVisible(bool(self.caveat.text()))
        self.delete_button.setEnabled(self.layer.selected is not None)
        self.clear_button.setEnabled(bool(ms))
        self.export_button.setEnabled(bool(self.layer.store.all()))

    def _on_pick(self) -> None:
        rows = [self.list.row(i) for i in self.list.selectedItems()]
        ms = self.layer.current()
        self.layer.select(ms[rows[0]] if rows and rows[0] < len(ms) else None)
