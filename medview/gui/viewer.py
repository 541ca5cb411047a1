"""The central slice view: pyqtgraph image, window/level, zoom/pan, cine, read-outs."""

from __future__ import annotations

import math

import numpy as np
from PySide6.QtCore import QPointF, Qt, QTimer, Signal
from PySide6.QtGui import QKeyEvent
from PySide6.QtWidgets import QHBoxLayout, QLabel, QSlider, QVBoxLayout, QWidget

from medview.core.volume import ImageVolume, WindowPreset
from medview.gui import import_pyqtgraph
from medview.imaging import modality_slice, orientation_labels, render_slice, value_at
from medview.imaging.geometry import patient_orientation_labels
from medview.imaging.window import default_window

pg = import_pyqtgraph()  # without its CUDA probe


class _ViewBox(pg.ViewBox):
    """Left-drag pans (or draws with a measuring tool), right-drag sets window/level,
    wheel scrolls slices (Ctrl+wheel zooms)."""

    def __init__(self, view: SliceView) -> None:
        super().__init__(lockAspect=True, invertY=True, enableMenu=False)
        self._view = view

    def mouseClickEvent(self, ev):
        layer = self._view.measure
        if ev.button() == Qt.MouseButton.LeftButton and layer.tool:
            ev.accept()
            layer.click(self._view.image_point(ev.scenePos()))
            return
        super().mouseClickEvent(ev)

    def mouseDragEvent(self, ev, axis=None):
        layer = self._view.measure
        if ev.button() == Qt.MouseButton.LeftButton and layer.tool:
            ev.accept()
            if ev.isStart():
                layer.press(self._view.image_point(ev.buttonDownScenePos()))
                layer.move(self._view.image_point(ev.scenePos()))
            elif ev.isFinish():
                layer.release(self._view.image_point(ev.scenePos()))
            else:
                layer.move(self._view.image_point(ev.scenePos()))
            return
        if ev.button() == Qt.MouseButton.RightButton:
            ev.accept()
            delta = ev.screenPos() - ev.lastScreenPos()
            self._view.drag_window(delta.x(), delta.y())
            return
        super().mouseDragEvent(ev, axis)

    def wheelEvent(self, ev, axis=None):
        if ev.modifiers() & Qt.KeyboardModifier.ControlModifier:
            super().wheelEvent(ev, axis)
            return
        ev.accept()
        delta = ev.delta() if hasattr(ev, "delta") else ev.angleDelta().y()
        self._view.step_slice(-1 if delta > 0 else 1)


class SliceView(QWidget):
    """Shows one slice of an :class:`ImageVolume` with the current window and invert."""

    slice_changed = Signal(int)
    window_changed = Signal(object)
    cursor_info = Signal(str)
    image_updated = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.volume: ImageVolume | None = None
        self.index = 0
        self.window: WindowPreset | None = None
        self.user_invert = False
        self.use_voi_lut = False
        self.displayed: np.ndarray | None = None
        self.opening_values: np.ndarray | None = None
        #: a slab through the slices around the one in view: (mode, thickness in mm);
        #: mode "" shows the slice itself (see medview.imaging.mpr)
        self.slab: tuple[str, float] = ("", 0.0)
        #: display orientation (the image's pixels are never changed)
        self.flip_h = self.flip_v = False
        self.rotation = 0
        self._overlay_stretch = pg.QtGui.QTransform()

        self.graphics = pg.GraphicsView()
        self.graphics.setBackground("k")
        self.viewbox = _ViewBox(self)
        self.graphics.setCentralItem(self.viewbox)
        self.image_item = pg.ImageItem(axisOrder="row-major")
        self.viewbox.addItem(self.image_item)
        self.overlay_item = pg.ImageItem(axisOrder="row-major")
        self.overlay_item.setZValue(10)
        self.overlay_item.setVisible(False)
        self.viewbox.addItem(self.overlay_item)
        self.graphics.scene().sigMouseMoved.connect(self._on_mouse_moved)
        from medview.gui.measure_tools import MeasureLayer

        #: measurements, drawn over the image in image coordinates
        self.measure = MeasureLayer(self)

        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setMinimum(0)
        self.slider.valueChanged.connect(self.set_slice)
        self.slice_label = QLabel("")
        self.slice_label.setTextFormat(Qt.TextFormat.PlainText)
        self.slice_label.setMinimumWidth(90)

        self._labels = {}
        for edge in ("left", "right", "top", "bottom"):
            lab = QLabel("", self.graphics)
            lab.setTextFormat(Qt.TextFormat.PlainText)
            lab.setStyleSheet("color: #ffd24d; font-weight: bold; background: transparent;")
            lab.setAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents)
            self._labels[edge] = lab
        # the corner text (who, what, where, how it is shown): plain text, a layout the
        # user can change (View > Corner text layout), hidden with one key (O)
        from medview.imaging.corners import CORNERS, DEFAULT_LAYOUT

        self.corner_layout = {c: list(f) for c, f in DEFAULT_LAYOUT.items()}
        self.corners_visible = True
        self.corner_labels: dict[str, QLabel] = {}
        for corner in CORNERS:
            lab = QLabel("", self.graphics)
            lab.setTextFormat(Qt.TextFormat.PlainText)
            lab.setStyleSheet("color: #e0e0e0; background: transparent;")
            lab.setAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents)
            if corner.endswith("right"):
                lab.setAlignment(Qt.AlignmentFlag.AlignRight)
            self.corner_labels[corner] = lab
        self.info_label = self.corner_labels["top_left"]
        self.viewbox.sigRangeChanged.connect(lambda *_a: self._update_info())

        bottom = QHBoxLayout()
        bottom.addWidget(self.slider, 1)
        bottom.addWidget(self.slice_label)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.graphics, 1)
        layout.addLayout(bottom)

        self.cine_timer = QTimer(self)
        self.cine_timer.timeout.connect(self._cine_step)
        self.cine_fps = 10.0
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)

    # ----------------------------------------------------------------- volume
    def set_volume(self, volume: ImageVolume | None) -> None:
        self.stop_cine()
        self.volume = volume
        self.user_invert = False
        self.use_voi_lut = False
        if volume is None:  # nothing of the closed series stays on screen
            self.image_item.clear()
            self.displayed = None
            self.opening_values = None
            self.window = None
            self.slider.setMaximum(0)
            self.slice_label.setText("")
            self._update_labels()
            self._update_info()
            self.cursor_info.emit("")
            self.measure.refresh()
            return
        middle = volume.default_index
        self.index = middle
        #: modality values of the opening slice (reused for the window presets)
        self.opening_values = modality_slice(volume, middle)
        self.window = default_window(volume, self.opening_values)
        if volume.frame_time_ms:
            self.cine_fps = 1000.0 / volume.frame_time_ms
        self.slider.blockSignals(True)
        self.slider.setMaximum(max(volume.n_slices - 1, 0))
        self.slider.setValue(middle)
        self.slider.blockSignals(False)
        self.slider.setEnabled(volume.n_slices > 1)
        self.flip_h = self.flip_v = False
        self.rotation = 0
        self._apply_orientation()
        self.overlay_item.setVisible(False)
        self._render()
        self.fit()
        self._update_labels()
        self.measure.refresh()
        self.window_changed.emit(self.window)
        self.slice_changed.emit(self.index)

    def set_slab(self, mode: str, thickness_mm: float) -> None:
        """Show a MIP / MinIP / mean slab of ``thickness_mm`` around the slice in view
        (mode "" for the slice itself)."""
        self.slab = (mode, float(thickness_mm))
        self._render()

    def shown_image(self) -> tuple[ImageVolume, int]:
        """The (volume, index) whose pixels are on screen: the slab when one is shown."""
        v = self.volume
        assert v is not None
        mode, thickness = self.slab
        if mode and v.n_slices > 1 and not v.is_rgb:
            from medview.imaging.mpr import slab

            return slab(v, self.index, mode, thickness), 0
        return v, self.index

    def _render(self) -> None:
        if self.volume is None:
            return
        shown, k = self.shown_image()
        self.displayed = render_slice(
            shown, k, self.window, self.user_invert, self.use_voi_lut
        )
        self.image_item.setImage(self.displayed, levels=(0, 255), autoLevels=False)
        n = self.volume.n_slices
        self.slice_label.setText(f"{self.index + 1} / {n}")
        self._update_info()
        self._refresh_cursor()  # the read-out follows every slice, series and window change
        self.image_updated.emit()

    # ----------------------------------------------------------------- slices
    def set_slice(self, index: int) -> None:
        if self.volume is None:
            return
        index = int(np.clip(index, 0, self.volume.n_slices - 1))
        if index == self.index and self.displayed is not None:
            return
        self.index = index
        if self.slider.value() != index:
            self.slider.blockSignals(True)
            self.slider.setValue(index)
            self.slider.blockSignals(False)
        self._render()
        self.measure.refresh()
        self.slice_changed.emit(index)

    def step_slice(self, step: int) -> None:
        self.set_slice(self.index + step)

    # ----------------------------------------------------------------- window
    def set_window(self, window: WindowPreset, use_voi_lut: bool = False) -> None:
        self.window = window
        self.use_voi_lut = use_voi_lut
        self._render()
        self.window_changed.emit(window)

    def drag_window(self, dx: float, dy: float) -> None:
        """Right-drag: horizontal changes width, vertical changes level (center)."""
        if self.volume is None or self.window is None:
            return
        w = self.window
        scale = max(w.width, 2.0) / 256.0
        width = max(1.0, w.width + dx * scale * 2)
        center = w.center - dy * scale
        self.set_window(WindowPreset("Custom", center, width))

    # ----------------------------------------------------------------- orientation
    def _item_transform(self):
        """Image pixels to view units: the pixel aspect (non-square pixels), then the
        display rotation (clockwise on screen)."""
        v = self.volume
        aspect = 1.0
        if v is not None:
            sy, sx = v.spacing[1], v.spacing[2]
            if math.isfinite(sy) and math.isfinite(sx) and sx > 0:
                aspect = sy / sx
        tr = pg.QtGui.QTransform.fromScale(1.0, aspect)
        return tr * pg.QtGui.QTransform().rotate(self.rotation)

    def _apply_orientation(self) -> None:
        self.viewbox.invertX(self.flip_h)
        self.viewbox.invertY(not self.flip_v)  # row 0 at the top unless flipped
        tr = self._item_transform()
        self.image_item.setTransform(tr)
        self.overlay_item.setTransform(self._overlay_stretch * tr)

    def set_orientation(self, flip_h: bool | None = None, flip_v: bool | None = None,
                        rotation: int | None = None) -> None:
        """Flip the displayed image left-right / top-bottom and rotate it (degrees
        clockwise, a multiple of 90); the orientation letters, the overlay and the pixel
        read-out follow. The pixels and every measurement stay in image coordinates."""
        if self.volume is None:
            return
        if flip_h is not None:
            self.flip_h = bool(flip_h)
        if flip_v is not None:
            self.flip_v = bool(flip_v)
        if rotation is not None:
            self.rotation = int(rotation) % 360 // 90 * 90
        self._apply_orientation()
        self.fit()
        self._update_labels()

    def rotate(self, degrees: int) -> None:
        self.set_orientation(rotation=self.rotation + degrees)

    def screen_edges(self) -> dict[str, str]:
        """Which edge of the image is at each edge of the screen ({screen: image})."""
        outward = {"top": (0, -1), "bottom": (0, 1), "left": (-1, 0), "right": (1, 0)}
        k = self.rotation // 90
        out = {}
        for edge, (x, y) in outward.items():
            for _ in range(k):  # 90 degrees clockwise on a y-down screen
                x, y = -y, x
            if self.flip_h:
                x = -x
            if self.flip_v:
                y = -y
            screen = ("right" if x > 0 else "left") if x else ("bottom" if y > 0 else "top")
            out[screen] = edge
        return out

    def set_invert(self, on: bool) -> None:
        self.user_invert = bool(on)
        self._render()

    # ----------------------------------------------------------------- zoom
    def fit(self) -> None:
        self.viewbox.autoRange(padding=0.0)

    def reset(self) -> None:
        if self.volume is None:
            return
        self.user_invert = False
        self.use_voi_lut = False
        self.window = default_window(self.volume, modality_slice(self.volume, self.index))
        self._render()
        self.set_orientation(False, False, 0)
        self.window_changed.emit(self.window)

    def zoom(self, factor: float) -> None:
        self.viewbox.scaleBy((1 / factor, 1 / factor))

    # ----------------------------------------------------------------- cine
    def start_cine(self) -> None:
        if self.volume is None or self.volume.n_slices < 2:
            return
        self.cine_timer.start(max(10, int(1000 / max(self.cine_fps, 0.5))))

    def stop_cine(self) -> None:
        self.cine_timer.stop()

    def toggle_cine(self) -> None:
        if self.cine_timer.isActive():
            self.stop_cine()
        else:
            self.start_cine()

    def _cine_step(self) -> None:
        if self.volume is None:
            return
        self.set_slice((self.index + 1) % self.volume.n_slices)

    # ----------------------------------------------------------------- overlay
    def set_overlay(self, rgba: np.ndarray | None) -> None:
        """Show an RGBA uint8 overlay over the whole slice (or hide it). A smaller overlay
        is stretched to cover the slice exactly, so it stays aligned with the image."""
        if rgba is None or self.volume is None:
            self.overlay_item.setVisible(False)
            return
        self.overlay_item.setImage(rgba, autoLevels=False, levels=(0, 255))
        self._overlay_stretch = pg.QtGui.QTransform.fromScale(
            self.volume.cols / rgba.shape[1], self.volume.rows / rgba.shape[0])
        self.overlay_item.setTransform(self._overlay_stretch * self.image_item.transform())
        self.overlay_item.setVisible(True)

    def image_point(self, scene_pos: QPointF) -> tuple[float, float]:
        """Image coordinates (x = column, y = row, continuous) of a scene position,
        through the display's zoom, pan, pixel aspect, flips and rotation."""
        p = self.image_item.mapFromScene(scene_pos)
        return p.x(), p.y()

    # ----------------------------------------------------------------- read-outs
    def _on_mouse_moved(self, scene_pos: QPointF) -> None:
        self._cursor_scene = QPointF(scene_pos)
        self._refresh_cursor()

    def _refresh_cursor(self) -> None:
        """The read-out for the pixel under the pointer, of the slice shown now."""
        scene_pos = getattr(self, "_cursor_scene", None)
        if self.volume is None or scene_pos is None:
            return
        p = self.image_item.mapFromScene(scene_pos)
        col, row = math.floor(p.x()), math.floor(p.y())
        if not (0 <= row < self.volume.rows and 0 <= col < self.volume.cols):
            self.cursor_info.emit("")
            return
        self.cursor_info.emit(self.describe_pixel(row, col))

    def describe_pixel(self, row: int, col: int) -> str:
        v = self.volume
        assert v is not None
        val = value_at(v, self.index, row, col)
        if isinstance(val, tuple):
            text = "RGB " + ",".join(str(x) for x in val)
        else:
            unit = " HU" if v.modality == "CT" and v.rescale_type in ("HU", "") else ""
            text = f"{val:.6g}{unit}"
        pos = f"x={col} y={row} slice {self.index + 1}"
        sy, sx = v.spacing[1], v.spacing[2]
        if math.isfinite(sx) and math.isfinite(sy):
            pos += f" ({col * sx:.1f}, {row * sy:.1f} mm)"
        return f"{pos}: {text}"

    def zoom_factor(self) -> float | None:
        """Screen pixels per image pixel (along the image rows)."""
        if self.volume is None:
            return None
        self.viewbox.updateMatrix()  # a range just set takes effect at the next paint
        a = self.image_item.mapToScene(QPointF(0, 0))
        b = self.image_item.mapToScene(QPointF(1, 0))
        return math.hypot(b.x() - a.x(), b.y() - a.y())

    def set_zoom_factor(self, zoom: float) -> None:
        """Zoom about the centre of the view to ``zoom`` screen pixels per image pixel
        (linked zoom)."""
        now = self.zoom_factor()
        if now and zoom > 0 and abs(now / zoom - 1) > 1e-3:
            self.viewbox.scaleBy((now / zoom, now / zoom))

    def set_reference_line(self, line) -> None:
        """Draw (or clear, with None) where another viewport's slice cuts this image:
        two (x, y) points in image coordinates."""
        item = getattr(self, "_ref_line", None)
        if line is None:
            if item is not None:
                item.setVisible(False)
            return
        if item is None:
            item = self._ref_line = pg.PlotCurveItem(pen=pg.mkPen(
                "#ffd24d", width=1, style=Qt.PenStyle.DashLine))
            item.setParentItem(self.image_item)
            item.setZValue(20)
        (x0, y0), (x1, y1) = line
        item.setData([x0, x1], [y0, y1])
        item.setVisible(True)

    def set_corner_layout(self, layout: dict[str, list[str]]) -> None:
        self.corner_layout = {c: list(f) for c, f in layout.items()}
        self._update_info()

    def set_corners_visible(self, on: bool) -> None:
        """Show or hide the corner text (teaching, screen sharing); the orientation
        letters stay."""
        self.corners_visible = bool(on)
        for lab in self.corner_labels.values():
            lab.setVisible(self.corners_visible)

    def _update_info(self) -> None:
        from medview.imaging.corners import corner_lines

        v = self.volume
        if not hasattr(self, "corner_labels"):
            return
        mode, thickness = self.slab
        slab_text = ""
        if mode and v is not None and v.n_slices > 1 and not v.is_rgb:
            from medview.imaging.mpr import SLAB_NAMES, slab_indices

            n = len(slab_indices(v, self.index, thickness))
            slab_text = f"{SLAB_NAMES[mode]} {thickness:g} mm ({n} slices)"
        texts = corner_lines(self.corner_layout, v if self.window is not None else None,
                             self.index, self.window, self.zoom_factor(),
                             self.use_voi_lut, self.user_invert, slab_text)
        for corner, lab in self.corner_labels.items():
            lab.setText(texts[corner])
            lab.adjustSize()
        self._place_labels()

    def _update_labels(self) -> None:
        v = self.volume
        direction = v.direction if v is not None else None
        labels = orientation_labels(direction)
        if direction is None and v is not None and v.patient_orientation:
            labels = patient_orientation_labels(*v.patient_orientation)  # projection films
        where = self.screen_edges()
        for edge, lab in self._labels.items():
            lab.setText(labels[where[edge]])
            lab.adjustSize()
        self._place_labels()

    def _place_labels(self) -> None:
        w, h = self.graphics.width(), self.graphics.height()
        lab = self._labels
        lab["left"].move(6, h // 2 - lab["left"].height() // 2)
        lab["right"].move(w - lab["right"].width() - 6, h // 2 - lab["right"].height() // 2)
        lab["top"].move(w // 2 - lab["top"].width() // 2, 4)
        lab["bottom"].move(w // 2 - lab["bottom"].width() // 2, h - lab["bottom"].height() - 4)
        c = self.corner_labels
        c["top_left"].move(6, 4)
        c["top_right"].move(w - c["top_right"].width() - 6, 4)
        c["bottom_left"].move(6, h - c["bottom_left"].height() - 4)
        c["bottom_right"].move(w - c["bottom_right"].width() - 6,
                               h - c["bottom_right"].height() - 4)

    def resizeEvent(self, ev) -> None:
        super().resizeEvent(ev)
        self._place_labels()

    def keyPressEvent(self, ev: QKeyEvent) -> None:
        key = ev.key()
        n = self.volume.n_slices if self.volume is not None else 0
        if key in (Qt.Key.Key_Up, Qt.Key.Key_Left):
            self.step_slice(-1)
        elif key in (Qt.Key.Key_Down, Qt.Key.Key_Right):
            self.step_slice(1)
        elif key == Qt.Key.Key_PageUp:
            self.step_slice(-max(1, n // 10))
        elif key == Qt.Key.Key_PageDown:
            self.step_slice(max(1, n // 10))
        elif key == Qt.Key.Key_Home:
            self.set_slice(0)
        elif key == Qt.Key.Key_End:
            self.set_slice(n - 1)
        elif key in (Qt.Key.Key_Delete, Qt.Key.Key_Backspace):
            self.measure.delete()
        elif key == Qt.Key.Key_Escape and self.measure.tool:
            self.measure.set_tool("")
        else:
            super().keyPressEvent(ev)
