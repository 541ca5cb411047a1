"""The main window: menus, drag-and-drop, series browser, slice view, side panels."""

from __future__ import annotations

import contextlib
import logging
import os

from PySide6.QtCore import QSettings, Qt, Signal
from PySide6.QtGui import QAction, QDragEnterEvent, QDropEvent, QKeySequence
from PySide6.QtWidgets import (
    QComboBox,
    QDockWidget,
    QDoubleSpinBox,
    QFileDialog,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMainWindow,
    QMenu,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QStyle,
    QTabWidget,
    QToolBar,
    QVBoxLayout,
    QWidget,
)

from medview.core.progress import Progress
from medview.core.volume import ImageVolume, LoadResult, WindowPreset, first_to_show
from medview.gui.model_panel import ModelPanel
from medview.gui.panels import SeriesBrowser, SkippedPanel, TagBrowser
from medview.gui.viewer import SliceView
from medview.gui.workers import JobRunner
from medview.imaging import window_presets
from medview.io import iter_load

log = logging.getLogger(__name__)


def _select_data(box: QComboBox, data) -> None:
    """Select the item of ``box`` holding ``data`` without acting on it (the caller has
    already done what choosing it does)."""
    k = box.findData(data)
    if k >= 0 and box.currentIndex() != k:
        box.blockSignals(True)
        box.setCurrentIndex(k)
        box.blockSignals(False)

RUO_NOTICE = "Research use only - not for diagnostic use"
MAX_RECENT = 10


def glyph_icon(glyph: str, size: int = 32):
    """A toolbar icon drawn from one character (no icon files to ship or theme needed)."""
    from PySide6.QtGui import QColor, QFont, QIcon, QPainter, QPixmap

    pix = QPixmap(size, size)
    pix.fill(QColor(0, 0, 0, 0))
    p = QPainter(pix)
    font = QFont()
    font.setPixelSize(int(size * 0.8))
    font.setBold(True)
    p.setFont(font)
    p.setPen(QColor("#2f5f8f"))
    p.drawText(pix.rect(), Qt.AlignmentFlag.AlignCenter, glyph)
    p.end()
    return QIcon(pix)


def window_label(p: WindowPreset) -> str:
    """How the Window box names a window: its name with the width and level in use."""
    return f"{p.name}  (W {p.width:.0f} / L {p.center:.0f})"


class MainWindow(QMainWindow):
    """medview's main window. ``open_paths`` is the one entry point for opening studies
    (menus, drag-and-drop, command line and recent studies all call it)."""

    load_finished = Signal(object)  # LoadResult
    layout_filled = Signal()  # the viewports of a new layout all show their series
    load_failed = Signal(str)
    volume_shown = Signal(int)
    audit_log_shown = Signal(bool)  # the audit dialog is filled; whether the chain holds

    def __init__(self, settings: QSettings | None = None) -> None:
        super().__init__()
        self.setWindowTitle("medview")
        self.resize(1400, 900)
        self.setAcceptDrops(True)
        self.settings = settings or QSettings("medview", "medview")
        from medview.gui.theme import apply_theme

        # before the widgets are made: they are polished once, in the chosen colours
        apply_theme(str(self.settings.value("view/theme", "dark")))
        self.jobs = JobRunner(self)
        self.volumes: list[ImageVolume] = []
        self._presets: list[WindowPreset] = []
        self._voi_row: int | None = None
        self._custom_row: int | None = None
        self._dialogs: list[QMessageBox] = []

        from medview.gui.layout import ViewGrid

        #: the viewports (1x1 ... 2x2); ``self.view`` is the active one, and
        #: ``self.series_of[k]`` the series index viewport k shows (-1: none)
        self.series_of: list[int] = []
        self._offsets: dict[tuple[int, int], float] = {}
        self._filling: list[tuple[int, int]] = []
        #: retrieved series folders that are not whole: {folder: (present, expected)}
        self._incomplete_folders: dict[str, tuple[int, int]] = {}
        self._just_incomplete = ""
        self._linking = False
        self.grid = ViewGrid(SliceView())
        # the open series' safety warnings (gap, tilt, thickness change...) over the image,
        # where they are seen when the series opens; the Details dock lists them all
        self.series_banner = QLabel()
        self.series_banner.setObjectName("series-warnings")
        self.series_banner.setTextFormat(Qt.TextFormat.PlainText)
        self.series_banner.setWordWrap(True)
        self.series_banner.setStyleSheet("QLabel#series-warnings { background: #5a4500; "
                                         "color: #ffe9a8; padding: 4px 8px; }")
        self.series_banner.setVisible(False)
        centre = QWidget()
        box = QVBoxLayout(centre)
        box.setContentsMargins(0, 0, 0, 0)
        box.setSpacing(0)
        box.addWidget(self.series_banner)
        box.addWidget(self.grid, 1)
        self.setCentralWidget(centre)
        self.series = SeriesBrowser()
        self.series.series_selected.connect(self.show_volume)
        self.tags = TagBrowser()
        self.skipped = SkippedPanel()
        # one line per warning, the first tab of the Details dock: a gap or a tilt must
        # not hide behind the tag list
        self.warnings_list = QListWidget()
        self.warnings_list.setWordWrap(True)
        self.warnings_list.setObjectName("warnings-list")

        left = QDockWidget("Series", self)
        left.setObjectName("series-dock")
        left.setWidget(self.series)
        left.setMinimumWidth(240)
        self.addDockWidget(Qt.DockWidgetArea.LeftDockWidgetArea, left)

        self.side_tabs = QTabWidget()
        self.side_tabs.addTab(self.warnings_list, "Warnings")
        self.side_tabs.addTab(self.tags, "DICOM tags")
        self.side_tabs.addTab(self.skipped, "Skipped files (0)")
        from medview.gui.measure_tools import MeasurementPanel

        self.measurements = MeasurementPanel(self.view.measure)
        self.measurements.export_requested.connect(self._export_measurements_dialog)
        self.side_tabs.addTab(self.measurements, "Measurements")
        right = QDockWidget("Details", self)
        right.setObjectName("details-dock")
        right.setWidget(self.side_tabs)
        right.setMinimumWidth(360)
        self.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, right)
        self.details_dock = right

        self.model_panel = ModelPanel(self.jobs)
        self.model_panel.volumes_provider = lambda: list(self.volumes)
        self.model_panel.overlay_changed.connect(lambda rgba: self.view.set_overlay(rgba))
        self.model_panel.open_requested.connect(self.show_volume_of)
        self.model_panel.width_wanted.connect(self._widen_model_dock)
        ai = QDockWidget("AI model", self)
        ai.setObjectName("model-dock")
        ai.setWidget(self.model_panel)
        self.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, ai)
        self.tabifyDockWidget(right, ai)
        ai.raise_()
        self.model_dock = ai

        self._build_toolbar()
        self._build_menus()
        self._build_status()
        self.grid.view_added.connect(self._wire_view)
        self.grid.active_changed.connect(self._on_active_changed)
        self.grid.dropped.connect(self.show_volume_in)
        self._wire_view(0)

    # ------------------------------------------------------------------ viewports
    @property
    def view(self) -> SliceView:
        """The active viewport's slice view."""
        return self.grid.active_view

    @property
    def current(self) -> int:
        """The index of the series in the active viewport (-1: none)."""
        return self.series_of[self.grid.active] if self.series_of else -1

    @current.setter
    def current(self, index: int) -> None:
        self.series_of[self.grid.active] = index

    def _wire_view(self, k: int) -> None:
        v = self.grid.views[k]
        while len(self.series_of) <= k:
            self.series_of.append(-1)
        v.slice_changed.connect(lambda i, v=v: self._view_slice(v, i))
        v.window_changed.connect(lambda w, v=v: self._view_window(v, w))
        v.cursor_info.connect(self.cursor_label.setText)
        v.viewbox.sigRangeChanged.connect(lambda *_a, v=v: self._view_range(v))
        first = self.grid.views[0]
        if v is not first:  # one store: a measurement belongs to its image, wherever shown
            v.measure.store = first.measure.store
            v.set_corner_layout(first.corner_layout)
            v.set_corners_visible(first.corners_visible)
        v.measure.tool_changed.connect(
            lambda tool, v=v: self._sync_tool_actions(tool) if v is self.view else None)

    def set_layout(self, name: str) -> None:
        """1x1, 1x2, 2x1 or 2x2 viewports; a newly shown empty one gets the next open
        series not shown yet (else the active one's)."""
        self.grid.set_layout(name)
        _select_data(self.layout_box, name)
        shown = {s for s in self.series_of[:self.grid.visible_count()] if s >= 0}
        todo = []
        for k, view in enumerate(self.grid.shown_views()):
            if view.volume is not None or not self.volumes:
                continue
            rest = [i for i in range(len(self.volumes)) if i not in shown]
            pick = rest[0] if rest else max(self.current, 0)
            shown.add(pick)
            todo.append((k, pick))
        self._fill_viewports(todo)

    def _fill_viewports(self, todo: list[tuple[int, int]]) -> None:
        """Show series in empty viewports one per event-loop turn (each first image is
        ~10-15 ms of work on a 512 x 512 CT: four at once would stall the window);
        ``layout_filled`` is emitted when the last is shown."""
        from PySide6.QtCore import QTimer

        self._filling = todo
        if not todo:
            self._update_reference_lines()
            self.layout_filled.emit()
            return
        (k, pick), rest = todo[0], todo[1:]
        view = self.grid.views[k]
        if view.volume is None and 0 <= pick < len(self.volumes):
            self.series_of[k] = pick
            view.set_volume(self.volumes[pick])
        QTimer.singleShot(0, lambda: self._fill_viewports(rest)
                          if self._filling is todo else None)

    def show_volume_in(self, port: int, index: int) -> None:
        """Show series ``index`` in viewport ``port`` (a series dropped on it)."""
        if not 0 <= index < len(self.volumes) or port >= len(self.grid.ports):
            return
        self.grid.set_active(port)
        self.show_volume(index)

    def _on_active_changed(self, _k: int) -> None:
        """Another viewport is active: the toolbar, panels and AI follow its image."""
        v = self.view
        self.measurements.set_layer(v.measure)
        self._sync_tool_actions(v.measure.tool)
        self.act_invert.blockSignals(True)
        self.act_invert.setChecked(v.user_invert)
        self.act_invert.blockSignals(False)
        if v.volume is None:
            self.model_panel.set_image(None, 0)
            return
        if 0 <= self.current < len(self.volumes):
            self.series.blockSignals(True)
            self.series.select_volume(self.current)
            self.series.blockSignals(False)
            self._reset_plane_controls(self.volumes[self.current])
        self._describe(v.volume)
        self._on_slice_changed(v.index)
        self._update_reference_lines()

    def _view_slice(self, v: SliceView, index: int) -> None:
        if v is not self.view:
            self._update_reference_lines()
            return
        self._on_slice_changed(index)
        if self.act_sync.isChecked():
            self._sync_slices(v)
        self._update_reference_lines()

    def _sync_slices(self, source: SliceView) -> None:
        """The other viewports go to the slice nearest the active one's position (same
        Frame of Reference), or keep the offset they had when first linked."""
        from medview.imaging.sync import nearest_slice, offset_between, same_frame

        src = source.volume
        if src is None:
            return
        for v in self.grid.shown_views():
            if v is source or v.volume is None:
                continue
            offset = 0.0
            if not same_frame(src, v.volume):
                key = (id(src), id(v.volume))
                if key not in self._offsets:
                    self._offsets[key] = offset_between(v.volume, v.index, src, source.index)
                offset = self._offsets[key]
            k = nearest_slice(v.volume, src, source.index, offset)
            if k is not None and k != v.index:
                v.set_slice(k)

    def _on_sync_toggled(self, on: bool) -> None:
        self._offsets.clear()  # relink at the slices shown now
        if on:
            self._sync_slices(self.view)

    def _view_window(self, v: SliceView, window) -> None:
        if v is not self.view:
            return
        self._on_window_changed(window)
        if self.act_link_wl.isChecked() and not self._linking and v.volume is not None:
            self._linking = True
            try:
                for o in self.grid.shown_views():
                    if o is not v and o.volume is not None and \
                            o.volume.modality == v.volume.modality:
                        o.set_window(window)
            finally:
                self._linking = False

    def _view_range(self, v: SliceView) -> None:
        if v is not self.view or self._linking or not self.act_link_zoom.isChecked():
            return
        z = v.zoom_factor()
        if z is None:
            return
        self._linking = True
        try:
            for o in self.grid.shown_views():
                if o is not v and o.volume is not None:
                    o.set_zoom_factor(z)
        finally:
            self._linking = False

    def _update_reference_lines(self) -> None:
        """On every other viewport, where the active slice's plane cuts its image."""
        from medview.imaging.sync import reference_line

        av = self.view
        on = self.act_ref_lines.isChecked()
        for v in self.grid.views:
            line = None
            if (on and v is not av and v.isVisible() and v.volume is not None
                    and av.volume is not None):
                line = reference_line(av.volume, av.index, v.volume, v.index)
            v.set_reference_line(line)

    # ------------------------------------------------------------------ UI
    def _build_toolbar(self) -> None:
        tb = QToolBar("View", self)
        tb.setObjectName("view-toolbar")
        self.addToolBar(tb)
        tb.addWidget(QLabel(" Window: "))
        self.preset_box = QComboBox()
        self.preset_box.setMinimumWidth(220)
        # wide enough for its longest label ("File: ...  (W 1500 / L -600)")
        self.preset_box.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        self.preset_box.activated.connect(self._on_preset)
        tb.addWidget(self.preset_box)
        self.act_invert = QAction("Invert", self, checkable=True, shortcut="I")
        self.act_invert.toggled.connect(lambda on: self.view.set_invert(on))
        self.act_fit = QAction("Fit", self, shortcut="F", triggered=lambda: self.view.fit())
        self.act_reset = QAction("Reset", self, shortcut="R", triggered=self._reset_view)
        self.act_zoom_in = QAction("Zoom in", self, shortcut="+",
                                   triggered=lambda: self.view.zoom(1.25))
        self.act_zoom_out = QAction("Zoom out", self, shortcut="-",
                                    triggered=lambda: self.view.zoom(0.8))
        self.act_cine = QAction("Cine", self, checkable=True, shortcut="Space")
        self.act_cine.toggled.connect(self._on_cine)
        for act, glyph in ((self.act_invert, "\u25d0"), (self.act_fit, "\u2922"),
                           (self.act_reset, "\u21ba"), (self.act_zoom_in, "+"),
                           (self.act_zoom_out, "\u2212"), (self.act_cine, "\u25b6")):
            act.setIcon(glyph_icon(glyph))
            tb.addAction(act)
        tb.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.fps_box = QDoubleSpinBox()
        self.fps_box.setRange(0.5, 60.0)
        self.fps_box.setValue(10.0)
        self.fps_box.setSuffix(" fps")
        self.fps_box.valueChanged.connect(self._on_fps)
        tb.addWidget(self.fps_box)
        tb.addSeparator()
        tb.addWidget(QLabel(" Layout: "))
        from medview.gui.layout import LAYOUTS

        self.layout_box = QComboBox()
        for name in LAYOUTS:
            self.layout_box.addItem(name, name)
        self.layout_box.activated.connect(
            lambda k: self.set_layout(self.layout_box.itemData(k)))
        tb.addWidget(self.layout_box)
        tb.addWidget(QLabel(" Plane: "))
        self.plane_box = QComboBox()
        for data, text in (("acquired", "As acquired"), ("axial", "Axial"),
                           ("coronal", "Coronal"), ("sagittal", "Sagittal")):
            self.plane_box.addItem(text, data)
        self.plane_box.setEnabled(False)
        self.plane_box.activated.connect(self._on_plane)
        tb.addWidget(self.plane_box)
        tb.addWidget(QLabel(" Slab: "))
        self.slab_box = QComboBox()
        for data, text in (("", "Off"), ("mip", "MIP"), ("minip", "MinIP"), ("mean", "Mean")):
            self.slab_box.addItem(text, data)
        self.slab_box.activated.connect(lambda k: self.set_slab(self.slab_box.itemData(k)))
        tb.addWidget(self.slab_box)
        self.slab_mm = QDoubleSpinBox()
        self.slab_mm.setRange(1.0, 200.0)
        self.slab_mm.setValue(10.0)
        self.slab_mm.setSuffix(" mm")
        self.slab_mm.setEnabled(False)
        self.slab_mm.valueChanged.connect(lambda _v: self.set_slab(self.slab_box.currentData()))
        tb.addWidget(self.slab_mm)

    def _build_menus(self) -> None:
        file_menu = self.menuBar().addMenu("&File")
        file_menu.addAction(QAction("Open file...", self, shortcut=QKeySequence.StandardKey.Open,
                                    triggered=self._open_file_dialog))
        file_menu.addAction(QAction("Open folder...", self, shortcut="Ctrl+Shift+O",
                                    triggered=self._open_folder_dialog))
        file_menu.addAction(QAction("Open from PACS...", self, shortcut="Ctrl+Shift+P",
                                    triggered=self.open_pacs_dialog))
        self.recent_menu = file_menu.addMenu("Recent studies")
        self._refresh_recent()
        file_menu.addSeparator()
        self.act_export_deid = QAction("Export study de-identified...", self,
                                       triggered=self._export_deidentified_dialog)
        file_menu.addAction(self.act_export_deid)
        file_menu.addSeparator()
        file_menu.addAction(QAction("Close all series", self, triggered=self.close_all))
        file_menu.addAction(QAction("Quit", self, shortcut=QKeySequence.StandardKey.Quit,
                                    triggered=self.close))
        tools = self.menuBar().addMenu("&Tools")
        tools.addAction(QAction("Fine-tune a model...", self, triggered=self.open_wizard))
        tools.addAction(QAction("Reload models", self,
                                triggered=lambda: self.model_panel.refresh_models()))
        tools.addAction(QAction("PACS settings...", self, triggered=self._pacs_settings))
        view_menu = self.menuBar().addMenu("&View")
        for act in (self.act_invert, self.act_fit, self.act_reset, self.act_zoom_in,
                    self.act_zoom_out, self.act_cine):
            view_menu.addAction(act)
        # window presets on the number keys, in the order of the Window box
        presets_menu = view_menu.addMenu("Window preset")
        self.preset_actions = []
        for k in range(1, 10):
            act = QAction(f"Preset {k}", self, shortcut=str(k),
                          triggered=lambda _c=False, row=k - 1: self.apply_preset(row))
            presets_menu.addAction(act)
            self.addAction(act)
            self.preset_actions.append(act)
        view_menu.addSeparator()
        self.act_flip_h = QAction("Flip left-right", self, shortcut="H",
                                  triggered=lambda: self.view.set_orientation(
                                      flip_h=not self.view.flip_h))
        self.act_flip_v = QAction("Flip top-bottom", self, shortcut="V",
                                  triggered=lambda: self.view.set_orientation(
                                      flip_v=not self.view.flip_v))
        self.act_rotate_right = QAction("Rotate 90\u00b0 clockwise", self, shortcut="]",
                                        triggered=lambda: self.view.rotate(90))
        self.act_rotate_left = QAction("Rotate 90\u00b0 anticlockwise", self, shortcut="[",
                                       triggered=lambda: self.view.rotate(-90))
        for act in (self.act_flip_h, self.act_flip_v, self.act_rotate_right,
                    self.act_rotate_left):
            view_menu.addAction(act)
        view_menu.addSeparator()
        self.act_corners = QAction("Corner text", self, checkable=True, shortcut="O")
        self.act_corners.setChecked(True)
        self.act_corners.toggled.connect(self._on_corners)
        view_menu.addAction(self.act_corners)
        view_menu.addAction(QAction("Corner text layout...", self,
                                    triggered=self._corner_layout_dialog))
        theme_menu = view_menu.addMenu("Theme")
        from PySide6.QtGui import QActionGroup

        from medview.gui.theme import current_theme

        themes = QActionGroup(self)
        self.theme_actions: dict[str, QAction] = {}
        for name, text in (("dark", "Dark (reading room)"), ("light", "Light")):
            act = QAction(text, self, checkable=True)
            act.setChecked(current_theme() == name)
            act.triggered.connect(lambda _c=False, n=name: self.set_theme(n))
            themes.addAction(act)
            theme_menu.addAction(act)
            self.theme_actions[name] = act
        view_menu.addSeparator()
        self.act_sync = QAction("Sync scrolling (by position)", self, checkable=True)
        self.act_sync.setChecked(True)
        self.act_sync.toggled.connect(self._on_sync_toggled)
        self.act_link_wl = QAction("Link window/level", self, checkable=True)
        self.act_link_zoom = QAction("Link zoom", self, checkable=True)
        self.act_ref_lines = QAction("Reference lines", self, checkable=True)
        self.act_ref_lines.setChecked(True)
        self.act_ref_lines.toggled.connect(lambda _on: self._update_reference_lines())
        for act in (self.act_sync, self.act_link_wl, self.act_link_zoom, self.act_ref_lines):
            view_menu.addAction(act)
        layouts = view_menu.addMenu("Layout")
        from medview.gui.layout import LAYOUTS

        for name in LAYOUTS:
            layouts.addAction(QAction(name, self, triggered=lambda _c=False, n=name:
                                      self.set_layout(n)))
        self._build_measure_menu()
        self._restore_corner_text()
        view_menu.addSeparator()
        self.act_export_view = QAction("Export view as PNG...", self, shortcut="Ctrl+E",
                                       triggered=self._export_view_dialog)
        view_menu.addAction(self.act_export_view)
        help_menu = self.menuBar().addMenu("&Help")
        self.act_shortcuts = QAction("Keyboard shortcuts", self,
                                     shortcut=QKeySequence.StandardKey.HelpContents,
                                     triggered=self.show_shortcuts)
        help_menu.addAction(self.act_shortcuts)
        help_menu.addAction(QAction("Audit log...", self, triggered=self.show_audit_log))
        help_menu.addAction(QAction("About medview", self, triggered=self._about))

    def set_theme(self, name: str) -> None:
        """Dark or light colours, now and next time."""
        from medview.gui.theme import apply_theme

        name = apply_theme(name)
        self.settings.setValue("view/theme", name)
        for n, act in self.theme_actions.items():
            act.setChecked(n == name)

    def _on_corners(self, on: bool) -> None:
        for v in self.grid.views:
            v.set_corners_visible(on)
        self.settings.setValue("view/corner_text", bool(on))

    def _restore_corner_text(self) -> None:
        from medview.imaging.corners import parse_layout

        text = self.settings.value("view/corner_layout")
        if isinstance(text, str) and text.strip():
            # a layout from another version (unknown fields) leaves the default
            with contextlib.suppress(ValueError):
                for v in self.grid.views:
                    v.set_corner_layout(parse_layout(text))
        shown = self.settings.value("view/corner_text", True)
        self.act_corners.setChecked(str(shown).lower() not in ("false", "0"))
        for v in self.grid.views:
            v.set_corners_visible(self.act_corners.isChecked())

    def set_corner_layout(self, text: str) -> None:
        """Apply and keep a corner layout (``corner: field, field`` lines); ValueError
        names what is unknown."""
        from medview.imaging.corners import layout_text, parse_layout

        layout = parse_layout(text)
        for v in self.grid.views:
            v.set_corner_layout(layout)
        self.settings.setValue("view/corner_layout", layout_text(layout))

    def _corner_layout_dialog(self) -> None:
        from PySide6.QtWidgets import QDialog, QDialogButtonBox, QPlainTextEdit

        from medview.imaging.corners import DEFAULT_LAYOUT, FIELDS, layout_text

        dlg = QDialog(self)
        dlg.setWindowTitle("Corner text layout")
        box = QVBoxLayout(dlg)
        help_text = QLabel("One line per corner: top_left, top_right, bottom_left, "
                           "bottom_right, each followed by the fields to show, in order.\n"
                           "Fields: " + ", ".join(f"{k} ({v})" for k, v in FIELDS.items()))
        help_text.setWordWrap(True)
        help_text.setTextFormat(Qt.TextFormat.PlainText)
        box.addWidget(help_text)
        edit = QPlainTextEdit(layout_text(self.view.corner_layout))
        box.addWidget(edit)
        error = QLabel("")
        error.setStyleSheet("color: #ff6b6b;")
        box.addWidget(error)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok
                                   | QDialogButtonBox.StandardButton.Cancel
                                   | QDialogButtonBox.StandardButton.RestoreDefaults)
        box.addWidget(buttons)

        def accept() -> None:
            try:
                self.set_corner_layout(edit.toPlainText())
            except ValueError as exc:
                error.setText(str(exc))
                return
            dlg.accept()

        buttons.accepted.connect(accept)
        buttons.rejected.connect(dlg.reject)
        buttons.button(QDialogButtonBox.StandardButton.RestoreDefaults).clicked.connect(
            lambda: edit.setPlainText(layout_text(DEFAULT_LAYOUT)))
        self._corner_dialog = dlg
        dlg.resize(640, 320)
        dlg.show()

    def _build_measure_menu(self) -> None:
        """Measure: one checkable action per tool (a second press goes back to
        navigating), the measurement list and the CSV export."""
        from PySide6.QtGui import QActionGroup

        from medview.gui.measure_tools import TOOLS

        menu = self.menuBar().addMenu("&Measure")
        group = QActionGroup(self)
        group.setExclusionPolicy(QActionGroup.ExclusionPolicy.ExclusiveOptional)
        self.measure_actions: dict[str, QAction] = {}
        for tool, name, key in TOOLS:
            act = QAction(name, self, checkable=True, shortcut=key)
            act.toggled.connect(lambda on, t=tool: self._on_tool(t, on))
            group.addAction(act)
            menu.addAction(act)
            self.measure_actions[tool] = act
        self.view.measure.tool_changed.connect(self._sync_tool_actions)
        menu.addSeparator()
        menu.addAction(QAction("Show measurements", self, triggered=self.show_measurements))
        self.act_export_measurements = QAction("Export measurements (CSV)...", self,
                                               triggered=self._export_measurements_dialog)
        menu.addAction(self.act_export_measurements)
        menu.addAction(QAction("Save measurements as DICOM SR...", self,
                               triggered=self._save_measurements_dialog))
        menu.addAction(QAction("Send measurements to PACS...", self,
                               triggered=self._send_measurements_dialog))

    def _on_tool(self, tool: str, on: bool) -> None:
        if on:
            self.view.measure.set_tool(tool)
            self.show_measurements()
            self.view.setFocus()
        elif self.view.measure.tool == tool:
            self.view.measure.set_tool("")

    def _sync_tool_actions(self, tool: str) -> None:
        for t, act in self.measure_actions.items():
            if act.isChecked() != (t == tool):
                act.blockSignals(True)
                act.setChecked(t == tool)
                act.blockSignals(False)

    def show_measurements(self) -> None:
        self.details_dock.raise_()
        self.side_tabs.setCurrentWidget(self.measurements)

    def export_measurements(self, path: str) -> int:
        """Every measurement on the open series as CSV (numbers, kinds, UIDs, values;
        no names or paths), written atomically; returns the number of rows."""
        from medview.core.safeio import atomic_write_bytes
        from medview.gui.measure_tools import csv_text

        rows = self.view.measure.rows_for(self.volumes)
        atomic_write_bytes(path, csv_text(rows).encode("utf-8"))
        return len(rows)

    def _measured_dicom_images(self):
        """Every measurement located on its open image (GUI thread: no file is read)."""
        from medview.imaging.measure import located

        return located(self.view.measure.store.all(), self.volumes)

    def save_measurements_sr(self, folder: str) -> tuple[list[str], int]:
        """Write the measurement SRs (one per study) into ``folder`` (atomically, named by
        UID); returns the files and how many measurements could not go in one."""
        from medview.core import audit
        from medview.reports.dicom_results import write_dataset
        from medview.reports.measurement_sr import reports_for

        total = len(self.view.measure.store.all())
        items = self._measured_dicom_images()  # those on an open image
        reports, skipped = reports_for(items)
        left_out = total - len(items) + skipped
        files = [write_dataset(folder, sr, "SR") for sr in reports]
        if files:
            audit.record("measurements_saved", reports=len(files),
                         measurements=total - left_out,
                         objects=[str(sr.SOPInstanceUID) for sr in reports])
        return files, left_out

    def send_measurements(self, server: str, settings=None):
        """Store the measurement SRs in ``server``: the reports are made and sent in a
        worker (each image's header is read from its file); returns the job (None when
        no measurement is on a DICOM image)."""
        from medview.gui.pacs_dialog import store_job
        from medview.pacs import load_settings
        from medview.reports.dicom_results import write_dataset
        from medview.reports.measurement_sr import reports_for

        items = [(m, v, k) for m, v, k in self._measured_dicom_images() if v.instance_uids]
        if not items:
            self.statusBar().showMessage("No measurements on DICOM images to send", 5000)
            return None
        left_out = [len(self.view.measure.store.all()) - len(items)]

        def write_files(folder: str) -> list[str]:
            reports, skipped = reports_for(items)
            left_out[0] += skipped
            if not reports:
                raise ValueError("no measurement is on an image with a DICOM file")
            return [write_dataset(folder, sr, "SR") for sr in reports]

        handle = self.jobs.start("send-measurements", store_job(
            server, settings or load_settings(), write_files, "measurements_sent",
            what="the measurement reports"))

        def sent(r) -> None:
            note = f"; {left_out[0]} on non-DICOM images not sent" if left_out[0] else ""
            self.statusBar().showMessage(
                f"Sent the measurements to {server} ({r.sent} report(s)){note}" if r.ok else
                f"Not all sent to {server}: " + "; ".join(r.messages), 10000)

        handle.succeeded.connect(sent)
        handle.failed.connect(lambda exc: self.statusBar().showMessage(
            f"Not sent: {type(exc).__name__}", 10000))
        return handle

    def _save_measurements_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Save measurements as DICOM SR")
        if not folder:
            return
        try:
            files, left_out = self.save_measurements_sr(folder)
        except (OSError, ValueError) as exc:
            self.show_error("Not saved", f"{type(exc).__name__}: {exc}")
            return
        note = f"; {left_out} on non-DICOM images not saved" if left_out else ""
        self.statusBar().showMessage(f"{len(files)} measurement report(s) saved{note}", 10000)

    def _send_measurements_dialog(self) -> None:
        from medview.gui.pacs_dialog import ask_server
        from medview.pacs import load_settings

        settings = load_settings()
        server = ask_server(self, "Send measurements to PACS", self.settings, settings)
        if server:
            self.send_measurements(server, settings)

    def _read_measurement_reports(self, result: LoadResult) -> None:
        """Measurement SRs among the files just opened (skipped as images: no pixels)
        put their measurements back on their images; read in a worker, bounded."""
        paths = [sk.path for sk in result.skipped if sk.modality == "SR"]
        if not paths:
            return

        def job(_token):
            from medview.reports.measurement_sr import read_report_file

            yield Progress(0, len(paths), "reading measurement reports")
            found = []
            for p in paths:
                found.extend(read_report_file(p))
            return found

        handle = self.jobs.start(f"reports:{id(result)}", job)
        handle.succeeded.connect(self._restore_measurements)

    def _restore_measurements(self, found) -> None:
        store = self.view.measure.store
        have = {(m.kind, m.instance, m.frame, tuple(m.points)) for m in store.all()}
        added = 0
        for m in found:
            key = (m.kind, m.instance, m.frame, tuple(m.points))
            if key not in have:
                have.add(key)
                store.add(m)
                added += 1
        if added:
            for v in self.grid.views:
                v.measure.refresh()
            self.statusBar().showMessage(f"{added} measurement(s) restored from the study's "
                                         "report", 10000)

    def _export_measurements_dialog(self) -> None:
        if not self.view.measure.store.all():
            self.statusBar().showMessage("No measurements to export", 5000)
            return
        path, _ = QFileDialog.getSaveFileName(self, "Export measurements", "measurements.csv",
                                              "CSV (*.csv)")
        if not path:
            return
        try:
            n = self.export_measurements(path)
        except OSError as exc:
            self.show_error("Export failed", f"{type(exc).__name__}: {exc.strerror or exc}")
            return
        self.statusBar().showMessage(f"{n} measurement(s) exported", 5000)

    def _build_status(self) -> None:
        sb = self.statusBar()
        self.cursor_label = QLabel("")
        self.cursor_label.setTextFormat(Qt.TextFormat.PlainText)
        self.cursor_label.setObjectName("pixel-readout")
        # permanent: a temporary status message ("Loaded 1 series") never hides it
        sb.addPermanentWidget(self.cursor_label, 1)
        self.progress = QProgressBar()
        self.progress.setMaximumWidth(220)
        self.progress.setVisible(False)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setVisible(False)
        self.cancel_button.clicked.connect(lambda: self.jobs.cancel("load"))
        sb.addPermanentWidget(self.progress)
        sb.addPermanentWidget(self.cancel_button)
        ruo = QLabel(RUO_NOTICE)
        ruo.setObjectName("ruo-notice")
        ruo.setStyleSheet("color: #b36b00; padding: 0 6px;")
        sb.addPermanentWidget(ruo)
        self.ruo_label = ruo

    # ------------------------------------------------------------------ opening
    def open_paths(self, paths: list[str], kind: str = "load", select: bool = True,
                   read=None, ready: LoadResult | None = None) -> None:
        """Load files/folders in the background; newest request of a ``kind`` wins (series
        arriving from a PACS each have their own kind, so none cancels another). ``read``
        (a cancel token -> load generator) replaces reading ``paths`` here (the launch
        reads them while the window is built); ``ready``: ``paths`` already read (shown
        now)."""
        paths = [os.fspath(p) for p in paths if p]
        if not paths:
            return
        if kind == "load":
            self._remember(paths)
        if ready is not None:
            self.jobs.supersede(kind)
            self._show_loaded(ready, select)
            return
        self.progress.setRange(0, 0)
        self.progress.setVisible(True)
        self.cancel_button.setVisible(True)
        self.statusBar().showMessage("Loading...")
        job = self.jobs.start(kind, read or (lambda token: iter_load(paths, token)))
        job.progress.connect(self._on_load_progress)
        job.succeeded.connect(lambda result, j=job: self._on_loaded(j, result, select))
        job.failed.connect(lambda exc, j=job: self._on_load_failed(j, exc))
        job.cancelled.connect(lambda j=job: self._on_load_cancelled(j))

    def _on_load_progress(self, step) -> None:
        self.progress.setRange(0, max(step.total, 1))
        self.progress.setValue(step.done)
        self.statusBar().showMessage(f"{step.message.capitalize()}: {step.done} / {step.total}")

    def _end_loading(self) -> None:
        if self.jobs.current("load") is None:
            self.progress.setVisible(False)
            self.cancel_button.setVisible(False)

    def _on_loaded(self, job, result: LoadResult, select: bool = True) -> None:
        if self.jobs.is_current(job):
            self._show_loaded(result, select)

    def _show_loaded(self, result: LoadResult, select: bool = True) -> None:
        for v in result.volumes:
            folder = os.path.normpath(os.path.dirname(v.source_paths[0])) \
                if v.source_paths else ""
            if folder in self._incomplete_folders:
                present, expected = self._incomplete_folders[folder]
                v.incomplete = True
                v.warnings.insert(0, f"only {present} of {expected} images of this series "
                                     "were retrieved (the transfer stopped): Retrieve again "
                                     "to fetch the rest")
        self.progress.setVisible(False)
        self.cancel_button.setVisible(False)
        first_new = len(self.volumes)
        for v in result.volumes:
            self.volumes.append(v)
            self.series.add_volume(v)
        self.skipped.add(result.skipped)
        self.side_tabs.setTabText(2, f"Skipped files ({self.skipped.rowCount()})")
        msg = f"Loaded {len(result.volumes)} series"
        if result.skipped:
            msg += f"; {len(result.skipped)} file(s) skipped (see Skipped files)"
        self.statusBar().showMessage(msg, 10000)
        if result.volumes and (select or self.current < 0):
            # open on the first diagnostic series, not a localizer (scout)
            self.series.select_volume(first_new + first_to_show(result.volumes))
        elif not result.volumes:
            reasons = "\n".join(f"{os.path.basename(s.path)}: {s.reason}"
                                for s in result.skipped[:20])
            self.show_error("Nothing could be loaded", reasons or "No image files found.")
        self._read_measurement_reports(result)
        self.load_finished.emit(result)

    def _on_load_failed(self, job, exc: Exception) -> None:
        if not self.jobs.is_current(job):
            return
        self._end_loading()
        self.show_error("Loading failed", str(exc))
        self.load_failed.emit(str(exc))

    def _on_load_cancelled(self, job) -> None:
        if self.jobs.is_current(job):
            self.progress.setVisible(False)
            self.cancel_button.setVisible(False)
            self.statusBar().showMessage("Loading cancelled", 5000)
            self.load_failed.emit("cancelled")

    def show_error(self, title: str, text: str) -> None:
        """A non-modal error dialog (plain text); other work goes on."""
        self.statusBar().showMessage(f"{title}: {text.splitlines()[0] if text else ''}", 15000)
        box = QMessageBox(QMessageBox.Icon.Warning, title, text, QMessageBox.StandardButton.Ok,
                          self)
        box.setTextFormat(Qt.TextFormat.PlainText)
        box.setModal(False)
        box.setWindowModality(Qt.WindowModality.NonModal)
        box.finished.connect(lambda _r, b=box: self._dialogs.remove(b) if b in self._dialogs
                             else None)
        self._dialogs.append(box)
        box.show()

    # ------------------------------------------------------------------ showing
    def show_volume(self, index: int) -> None:
        if not 0 <= index < len(self.volumes):
            return
        self.current = index
        self._reset_plane_controls(self.volumes[index])
        self._display(self.volumes[index])

    def show_plane(self, plane: str) -> bool:
        """Show the open series in ``plane`` ("acquired", "axial", "coronal" or
        "sagittal"); False (and the reason in the status bar) when it cannot be
        reformatted."""
        from medview.imaging.mpr import MprError, reformat

        if not 0 <= self.current < len(self.volumes):
            return False
        source = self.volumes[self.current]
        try:
            volume = source if plane == "acquired" else reformat(source, plane)
        except MprError as exc:
            self.statusBar().showMessage(f"No {plane} reformat: {exc}", 10000)
            return False
        _select_data(self.plane_box, plane)
        if volume is not self.view.volume:
            # the same series in another plane: keep the window the reader set
            window, voi = self.view.window, self.view.use_voi_lut
            self._display(volume)
            if window is not None:
                self.view.set_window(window, voi)
        return True

    def _on_plane(self, k: int) -> None:
        if not self.show_plane(self.plane_box.itemData(k)):
            self.plane_box.setCurrentIndex(0)

    def set_slab(self, mode: str, thickness_mm: float | None = None) -> None:
        """MIP / MinIP / mean slab ("" for none) of ``thickness_mm`` around the slice."""
        if thickness_mm is not None:
            self.slab_mm.blockSignals(True)
            self.slab_mm.setValue(thickness_mm)
            self.slab_mm.blockSignals(False)
        _select_data(self.slab_box, mode)
        self.slab_mm.setEnabled(bool(mode))
        self.view.set_slab(mode, self.slab_mm.value())

    def _reset_plane_controls(self, volume: ImageVolume) -> None:
        from medview.imaging.mpr import MprError, acquired_plane, check_reformattable

        self.plane_box.blockSignals(True)
        self.plane_box.setCurrentIndex(0)
        self.plane_box.blockSignals(False)
        try:
            check_reformattable(volume)
            why = ""
        except MprError as exc:
            why = str(exc)
        self.plane_box.setEnabled(not why)
        plane = acquired_plane(volume)
        self.plane_box.setItemText(0, f"As acquired ({plane})" if plane else "As acquired")
        self.plane_box.setToolTip(why or "Reformat the series (MPR)")

    def _display(self, volume: ImageVolume) -> None:
        """Show ``volume`` (a series, or a reformat of the current one) in the view."""
        index = self.current
        self.act_cine.setChecked(False)
        self.act_invert.blockSignals(True)
        self.act_invert.setChecked(False)
        self.act_invert.blockSignals(False)
        self.view.set_volume(volume)
        self._describe(volume)
        self.volume_shown.emit(index)

    def _describe(self, volume: ImageVolume) -> None:
        """The window's parts that describe the active viewport's image: cine rate,
        window presets, warnings, title."""
        self.fps_box.blockSignals(True)
        self.fps_box.setValue(self.view.cine_fps)
        self.fps_box.blockSignals(False)
        self._fill_presets(volume)
        self.warnings_list.clear()
        for w in volume.warnings:
            item = QListWidgetItem(w)
            item.setIcon(self.style().standardIcon(QStyle.StandardPixmap.SP_MessageBoxWarning))
            self.warnings_list.addItem(item)
        if not volume.warnings:
            self.warnings_list.addItem("No warnings.")
        self._show_series_warnings(volume.warnings)
        self.side_tabs.setTabText(0, f"Warnings ({len(volume.warnings)})")
        if volume.warnings:
            self.side_tabs.setCurrentIndex(0)
        title = volume.description or "(no description)"
        self.setWindowTitle(f"medview - {title}")

    def _show_series_warnings(self, warnings: list[str]) -> None:
        """The series' warnings above the image: the first two, then how many more."""
        if not warnings:
            self.series_banner.setVisible(False)
            self.series_banner.setText("")
            return
        lines = [f"Warning: {w}" for w in warnings[:2]]
        if len(warnings) > 2:
            lines.append(f"... and {len(warnings) - 2} more (Details > Warnings)")
        self.series_banner.setText("\n".join(lines))
        self.series_banner.setVisible(True)

    #: the AI dock widens for the worklist's columns up to this share of the window, never
    #: over the image
    MODEL_DOCK_MAX_SHARE = 0.4

    @classmethod
    def model_dock_width(cls, wanted: int, window_width: int) -> int:
        """How wide the AI dock may grow for columns that want ``wanted`` pixels."""
        return min(wanted, int(window_width * cls.MODEL_DOCK_MAX_SHARE))

    def _widen_model_dock(self, width: int) -> None:
        width = self.model_dock_width(width, self.width())
        if self.model_dock.width() < width:
            self.resizeDocks([self.model_dock], [width], Qt.Orientation.Horizontal)

    def show_as_last_time(self) -> None:
        """Show the window with the geometry and dock sizes it had when last closed;
        maximised the first time."""
        geometry = self.settings.value("window/geometry")
        state = self.settings.value("window/state")
        if geometry is not None and self.restoreGeometry(geometry):
            if state is not None:
                self.restoreState(state)
            self.show()
        else:
            self.showMaximized()

    def show_volume_of(self, volume: ImageVolume) -> None:
        """Show ``volume`` (a worklist double-click) if it is still open."""
        for k, v in enumerate(self.volumes):
            if v is volume:
                self.series.select_volume(k)
                return

    def _fill_presets(self, volume: ImageVolume) -> None:
        # the view already computed the opening slice's modality values: no second pass
        self._presets = window_presets(volume, self.view.opening_values)
        self.preset_box.blockSignals(True)
        self.preset_box.clear()
        for p in self._presets:
            self.preset_box.addItem(window_label(p))
        self._voi_row = None
        if volume.voi_lut is not None:
            label = volume.voi_lut.explanation or "from file"
            self._voi_row = self.preset_box.count()
            self.preset_box.addItem(f"VOI LUT: {label}")
        self._custom_row = None
        self.preset_box.blockSignals(False)
        self._on_window_changed(self.view.window)  # name the window actually in use

    def apply_preset(self, row: int) -> bool:
        """Use the Window box's preset ``row`` (keys 1-9); False when there is none."""
        if self.view.volume is None or not 0 <= row < self.preset_box.count():
            return False
        self.preset_box.setCurrentIndex(row)
        self._on_preset(row)
        return True

    def shortcut_rows(self) -> list[tuple[str, str]]:
        """(what, keys) of every action with a shortcut, in menu order, and the viewer's
        own keys."""
        rows = []
        for menu in self.menuBar().findChildren(QMenu):
            for act in menu.actions():
                keys = act.shortcut().toString(QKeySequence.SequenceFormat.NativeText)
                row = (act.text().replace("&", ""), keys)
                if keys and row not in rows:
                    rows.append(row)
        rows += [("Stop measuring (navigate)", "Esc"),
                 ("Delete the selected measurement", "Delete"),
                 ("Previous / next slice", "Up, Left / Down, Right, mouse wheel"),
                 ("Ten slices back / on", "Page Up / Page Down"),
                 ("First / last slice", "Home / End"),
                 ("Window / level", "right-drag")]
        return rows

    def show_shortcuts(self) -> None:
        """Help > Keyboard shortcuts (F1): every shortcut, as plain text."""
        rows = self.shortcut_rows()
        width = max(len(keys) for _what, keys in rows) + 2
        text = "\n".join(f"{keys:<{width}}{what}" for what, keys in rows)
        box = QMessageBox(QMessageBox.Icon.NoIcon, "Keyboard shortcuts", text,
                          QMessageBox.StandardButton.Ok, self)
        box.setTextFormat(Qt.TextFormat.PlainText)
        box.setStyleSheet("QLabel { font-family: monospace; }")
        box.setModal(False)
        self._shortcuts_box = box
        box.show()

    def export_view(self, path: str) -> None:
        """The image area as the user sees it (window, zoom, overlays, corner text) as a
        PNG, written atomically."""
        from PySide6.QtCore import QBuffer, QByteArray, QIODevice

        from medview.core.safeio import atomic_write_bytes

        data = QByteArray()
        buf = QBuffer(data)
        buf.open(QIODevice.OpenModeFlag.WriteOnly)
        if not self.view.grab().save(buf, "PNG"):
            raise OSError("the view could not be encoded as PNG")
        buf.close()
        atomic_write_bytes(path, bytes(data.data()))

    def _export_view_dialog(self) -> None:
        if self.view.volume is None:
            self.statusBar().showMessage("Nothing to export: no image is open", 5000)
            return
        path, _ = QFileDialog.getSaveFileName(self, "Export view as PNG",
                                              os.path.expanduser("~/medview-view.png"),
                                              "PNG image (*.png)")
        if not path:
            return
        try:
            self.export_view(path if path.lower().endswith(".png") else path + ".png")
        except OSError as exc:
            self.show_error("Export failed", str(exc))
        else:
            self.statusBar().showMessage("View exported", 5000)

    def _on_preset(self, row: int) -> None:
        if row < len(self._presets):
            self.view.set_window(self._presets[row])
        elif row == self._voi_row and self.view.volume is not None:
            self.view.set_window(self.view.window, use_voi_lut=True)

    def _on_window_changed(self, window: WindowPreset) -> None:
        """The Window box always names the window in use: the matching preset (same
        width and level), the VOI LUT, or "Custom W/L" after a drag."""
        if window is None:
            return
        box = self.preset_box
        box.blockSignals(True)
        try:
            if self.view.use_voi_lut and self._voi_row is not None:
                box.setCurrentIndex(self._voi_row)
                return
            for k, p in enumerate(self._presets):
                if p.center == window.center and p.width == window.width:
                    box.setCurrentIndex(k)
                    return
            text = window_label(WindowPreset("Custom", window.center, window.width))
            if self._custom_row is None:
                self._custom_row = box.count()
                box.addItem(text)
            else:
                box.setItemText(self._custom_row, text)
            box.setCurrentIndex(self._custom_row)
        finally:
            box.blockSignals(False)

    def current_window_text(self) -> str:
        return self.preset_box.currentText()

    def _on_slice_changed(self, index: int) -> None:
        v = self.view.volume
        if v is not None:
            self.tags.show_file(v.source_of(index), v)
        self.model_panel.set_image(v, index)

    def _on_cine(self, on: bool) -> None:
        if on:
            self.view.start_cine()
        else:
            self.view.stop_cine()

    def _on_fps(self, fps: float) -> None:
        self.view.cine_fps = fps
        if self.view.cine_timer.isActive():
            self.view.start_cine()

    def _reset_view(self) -> None:
        self.act_invert.setChecked(False)
        self.view.reset()

    def close_all(self) -> None:
        self.jobs.cancel("load")
        self.view.measure.store.clear()
        self.plane_box.setEnabled(False)
        self.volumes.clear()
        self.series.clear()
        self.skipped.setRowCount(0)
        self.tags.clear()
        for v in self.grid.views:
            v.set_volume(None)
            v.set_reference_line(None)
        self.series_of = [-1] * len(self.series_of)
        self._offsets.clear()
        self.model_panel.set_image(None, 0)
        self.setWindowTitle("medview")
        self.preset_box.clear()
        self._presets = []
        self.warnings_list.clear()
        self._show_series_warnings([])
        self.side_tabs.setTabText(0, "Warnings")
        self.side_tabs.setTabText(2, "Skipped files (0)")

    # ------------------------------------------------------------------ dialogs
    def _open_file_dialog(self) -> None:
        files, _ = QFileDialog.getOpenFileNames(
            self, "Open images", "",
            "Images (*.dcm *.DCM *.nii *.nii.gz *.nrrd *.mha *.mhd *.png *.jpg *.jpeg *.tif "
            "*.tiff *.bmp);;All files (*)",
        )
        self.open_paths(files)

    def _open_folder_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Open folder")
        if folder:
            self.open_paths([folder])

    # ------------------------------------------------------------------ PACS
    def open_pacs_dialog(self):
        """File > Open from PACS: a non-modal dialog; each retrieved series opens in
        the series browser as soon as it is in the cache."""
        from medview.gui.pacs_dialog import OpenFromPacsDialog

        dlg = getattr(self, "pacs_dialog", None)
        if dlg is None:
            dlg = OpenFromPacsDialog(self.settings, parent=self)
            dlg.series_incomplete.connect(self._on_series_incomplete)
            dlg.series_arrived.connect(self._on_series_arrived)
            self.pacs_dialog = dlg
        dlg.show()
        dlg.raise_()
        return dlg

    def _on_series_incomplete(self, folder: str, present: int, expected: int) -> None:
        """A retrieved series is not whole: when it opens it is marked so."""
        self._incomplete_folders[os.path.normpath(folder)] = (present, expected)
        self._just_incomplete = os.path.normpath(folder)

    def _on_series_arrived(self, folder: str) -> None:
        key = os.path.normpath(folder)
        if self._just_incomplete != key:  # whole now (a retrieve again): no longer marked
            self._incomplete_folders.pop(key, None)
        self._just_incomplete = ""
        self.open_paths([folder], kind=f"pacs:{folder}", select=self.current < 0)

    def _pacs_settings(self) -> None:
        from medview.gui.pacs_dialog import PacsSettingsDialog

        PacsSettingsDialog(parent=self).exec()

    def study_files(self) -> list[str]:
        """The files of every open series of the study in view (for export)."""
        if not 0 <= self.current < len(self.volumes):
            return []
        study = self.volumes[self.current].study.study_uid
        vols = [v for v in self.volumes if study and v.study.study_uid == study] or [
            self.volumes[self.current]]
        return [p for v in vols if v.source_format == "dicom" for p in v.source_paths]

    def export_deidentified(self, out_dir: str):
        """De-identify the study in view into ``out_dir`` in a worker; returns the job."""
        from medview.reports.deid import iter_export

        files = self.study_files()
        job = self.jobs.start("export", lambda token: iter_export(files, out_dir,
                                                                   cancel=token))
        job.succeeded.connect(self._on_exported)
        job.failed.connect(lambda exc: self.show_error("Export failed", str(exc)))
        return job

    def _on_exported(self, r) -> None:
        text = f"Wrote {len(r.written)} de-identified file(s)."
        if r.burned_in:
            text += (f"\n{r.burned_in} image(s) are flagged with burned-in annotation "
                     "(identity may be in the pixels) and were left out.")
        self.statusBar().showMessage(text.splitlines()[0], 10000)
        if r.burned_in or r.skipped:
            self.show_error("De-identified export", text + "".join(
                f"\n{os.path.basename(p)}: {why}" for p, why in r.skipped[:10]))

    def _export_deidentified_dialog(self) -> None:
        if not self.study_files():
            self.show_error("Export study de-identified", "Open a DICOM study first.")
            return
        folder = QFileDialog.getExistingDirectory(self, "Export de-identified copies into")
        if folder:
            self.export_deidentified(folder)

    def show_audit_log(self) -> None:
        """The audit log's newest entries and whether its hash chain is intact (read in a
        worker: the log may be long; shown as plain text)."""
        from PySide6.QtWidgets import QDialog, QPlainTextEdit, QVBoxLayout

        from medview.core import audit

        dlg = QDialog(self)
        dlg.setWindowTitle("Audit log")
        status = QLabel("Checking the log...")
        status.setTextFormat(Qt.TextFormat.PlainText)
        status.setWordWrap(True)
        text = QPlainTextEdit()
        text.setReadOnly(True)
        lay = QVBoxLayout(dlg)
        lay.addWidget(status)
        lay.addWidget(text)
        dlg.resize(900, 600)
        dlg.setModal(False)
        dlg.show()
        self._dialogs.append(dlg)
        self.audit_dialog = (dlg, status, text)

        def job(_token):
            yield from ()
            v = audit.verify()
            lines = []
            for _name, _line, entry in audit.iter_entries():
                if entry is None:
                    continue
                extra = {k: x for k, x in entry.items()
                         if k not in ("seq", "time", "user", "event", "prev", "hash")}
                lines.append(f"{entry.get('seq')}  {entry.get('time')}  {entry.get('user')}  "
                             f"{entry.get('event')}  {extra}")
            return v, lines[-500:]

        def done(result) -> None:
            v, lines = result
            status.setText(
                (f"Intact: {v.entries} entries, hash-chained; newest hash {v.newest_hash}. "
                 if v.ok else f"BROKEN after {v.entries} intact entries: {v.broken}. ")
                + f"Kept in {audit.audit_dir()}.")
            text.setPlainText("\n".join(reversed(lines)) or "No entries yet.")
            self.audit_log_shown.emit(v.ok)

        handle = self.jobs.start("audit", job)
        handle.succeeded.connect(done)

    def _about(self) -> None:
        from medview import __version__

        box = QMessageBox(QMessageBox.Icon.Information, "About medview",
                          f"medview {__version__}\n\n{RUO_NOTICE}.\n\nDisplays DICOM, NIfTI, "
                          "NRRD, MetaImage and PNG/JPEG/TIFF images. Model outputs are not a "
                          "diagnosis.", QMessageBox.StandardButton.Ok, self)
        box.setModal(False)
        box.show()
        self._dialogs.append(box)

    # ------------------------------------------------------------------ recent
    def recent(self) -> list[str]:
        value = self.settings.value("recent", [])
        if isinstance(value, str):
            value = [value]
        return [str(v) for v in (value or [])]

    def _remember(self, paths: list[str]) -> None:
        entry = os.pathsep.join(paths)
        items = [r for r in self.recent() if r != entry]
        self.settings.setValue("recent", [entry, *items][:MAX_RECENT])
        self._refresh_recent()

    def _refresh_recent(self) -> None:
        self.recent_menu.clear()
        for entry in self.recent():
            paths = entry.split(os.pathsep)
            label = ", ".join(os.path.basename(p.rstrip("/\\")) or p for p in paths)
            act = QAction(label.replace("&", "&&"), self)
            act.triggered.connect(lambda _=False, p=paths: self.open_paths(p))
            self.recent_menu.addAction(act)
        if self.recent():
            self.recent_menu.addSeparator()
            self.act_clear_recent = QAction("Clear recent studies", self,
                                            triggered=self.clear_recent)
            self.recent_menu.addAction(self.act_clear_recent)
        self.recent_menu.setEnabled(bool(self.recent()))

    def clear_recent(self) -> None:
        """Forget the recent-study paths and the wizard's last data folder (both persist in
        medview's QSettings file)."""
        self.settings.remove("recent")
        self.settings.remove("wizard/data")
        self.settings.sync()
        self._refresh_recent()

    # ------------------------------------------------------------------ drag and drop
    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:
        paths = [u.toLocalFile() for u in event.mimeData().urls() if u.isLocalFile()]
        if paths:
            event.acceptProposedAction()
            self.open_paths(paths)

    def open_wizard(self):
        """Open (or raise) the fine-tuning wizard; saved models appear in the panel."""
        from medview.gui.wizard import TrainingWizard

        if getattr(self, "wizard", None) is None:
            self.wizard = TrainingWizard(self.jobs, self.settings, parent=self)
            self.wizard.model_saved.connect(
                lambda mid: self.model_panel.refresh_models(select=mid))
            self.wizard.finished.connect(lambda _r: setattr(self, "wizard", None))
        self.wizard.show()
        self.wizard.raise_()
        return self.wizard

    def closeEvent(self, event) -> None:
        wizard = getattr(self, "wizard", None)
        if wizard is not None and not wizard.confirm_stop():
            event.ignore()
            return
        self.view.stop_cine()
        self.jobs.shutdown()
        self.settings.setValue("window/geometry", self.saveGeometry())
        self.settings.setValue("window/state", self.saveState())
        super().closeEvent(event)
