"""Side panels: series browser, DICOM tag browser, skipped files."""

from __future__ import annotations

import html

import numpy as np
from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QIcon, QImage, QPixmap
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHeaderView,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from medview.core.errors import LoadError
from medview.core.volume import ImageVolume, SkippedFile, is_localizer
from medview.imaging import render_slice

THUMB = 72


def plain_label(text: str = "", wrap: bool = True) -> QLabel:
    """A label that shows ``text`` literally (never as rich text), selectable."""
    lab = QLabel(text)
    lab.setTextFormat(Qt.TextFormat.PlainText)
    lab.setWordWrap(wrap)
    lab.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    return lab


def plain_tooltip(text: str) -> str:
    """Tooltip markup that shows ``text`` literally: Qt renders a tooltip as rich text
    whenever it looks like HTML, so DICOM strings and file names are escaped first."""
    return "<p style='white-space:pre'>" + html.escape(text) + "</p>"


def thumbnail(volume: ImageVolume) -> QPixmap:
    """A small rendering of the middle slice (default window), for the series browser."""
    index = volume.n_slices // 2
    step = max(1, max(volume.rows, volume.cols) // (THUMB * 2))
    small = ImageVolume(
        pixels=volume.pixels[index : index + 1, ::step, ::step],
        modality=volume.modality,
        photometric=volume.photometric,
        rescale_slope=volume.rescale_slope[index : index + 1],
        rescale_intercept=volume.rescale_intercept[index : index + 1],
        windows=volume.windows,
    )
    img = np.ascontiguousarray(render_slice(small, 0, None))
    h, w = img.shape[:2]
    if img.ndim == 3:
        qimg = QImage(img.data, w, h, 3 * w, QImage.Format.Format_RGB888)
    else:
        qimg = QImage(img.data, w, h, w, QImage.Format.Format_Grayscale8)
    return QPixmap.fromImage(qimg.copy()).scaled(
        THUMB, THUMB, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation
    )


def study_key(volume: ImageVolume) -> tuple | None:
    """The (patient, study) a DICOM series belongs to; None for other files."""
    st = volume.study
    if volume.source_format != "dicom" or not (st.study_uid or st.patient_id
                                               or st.patient_name):
        return None
    return (st.patient_id or st.patient_name, st.study_uid or st.study_date)


def study_header(volume: ImageVolume) -> str:
    st = volume.study
    who = st.patient_name or st.patient_id or "(no patient name)"
    what = " · ".join(x for x in (st.study_date, st.study_description,
                                  f"acc {st.accession}" if st.accession else "") if x)
    return f"{who}\n{what or '(no study date or description)'}"


class SeriesBrowser(QListWidget):
    """Open series with thumbnail, description and image count, grouped by patient and
    study (a header row per study; click it to collapse or expand its series). Rows of
    series carry their volume index; header rows carry none."""

    series_selected = Signal(int)
    ROLE = Qt.ItemDataRole.UserRole

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setIconSize(QSize(THUMB, THUMB))
        self.setSpacing(2)
        self.setWordWrap(True)
        self.currentRowChanged.connect(self._on_row)
        self.itemClicked.connect(self._on_click)
        # a series row can be dragged onto a viewport (medview.gui.layout)
        self.setDragEnabled(True)
        self.setDragDropMode(QListWidget.DragDropMode.DragOnly)
        self._n = 0
        self._headers: dict[tuple, QListWidgetItem] = {}

    def clear(self) -> None:
        super().clear()
        self._n = 0
        self._headers = {}

    def volume_count(self) -> int:
        return self._n

    def volume_item(self, k: int) -> QListWidgetItem | None:
        for row in range(self.count()):
            if self.item(row).data(self.ROLE) == k:
                return self.item(row)
        return None

    def select_volume(self, k: int) -> None:
        item = self.volume_item(k)
        if item is not None:
            item.setHidden(False)
            self.setCurrentItem(item)

    def add_volume(self, volume: ImageVolume) -> None:
        kind = "frames" if volume.multiframe else "images"
        desc = volume.description or "(no description)"
        flag = "  [incomplete]" if volume.incomplete else ""
        warn = f"  ({len(volume.warnings)} warning(s))" if volume.warnings else ""
        scout = "  [localizer]" if is_localizer(volume) else ""
        text = f"{desc}\n{volume.modality} · {volume.n_slices} {kind}{flag}{warn}{scout}"
        item = QListWidgetItem(QIcon(thumbnail(volume)), text)
        item.setToolTip(plain_tooltip("\n".join(volume.warnings) or desc))
        item.setData(self.ROLE, self._n)
        self._n += 1
        key = study_key(volume)
        if key is None:
            self.addItem(item)
            return
        item.setData(self.ROLE + 3, key)
        header = self._headers.get(key)
        if header is None:
            header = QListWidgetItem(study_header(volume))
            header.setFlags(Qt.ItemFlag.ItemIsEnabled)  # not selectable: a group title
            font = header.font()
            font.setBold(True)
            header.setFont(font)
            header.setToolTip(plain_tooltip("Click to collapse or expand this study"))
            header.setData(self.ROLE + 1, key)
            self.addItem(header)
            self._headers[key] = header
            self.addItem(item)
            return
        row = self.row(header) + 1  # after the study's last series
        while row < self.count() and self.item(row).data(self.ROLE + 3) == key:
            row += 1
        self.insertItem(row, item)
        item.setHidden(header.data(self.ROLE + 2) is True)

    def mimeData(self, items):
        """A dragged series row: its index (for a viewport to show it)."""
        from medview.gui.layout import series_mime

        rows = [i.data(self.ROLE) for i in items if i.data(self.ROLE) is not None]
        return series_mime(int(rows[0])) if rows else super().mimeData(items)

    def mimeTypes(self) -> list[str]:
        from medview.gui.layout import SERIES_MIME

        return [SERIES_MIME]

    def _on_click(self, item: QListWidgetItem) -> None:
        if item.data(self.ROLE + 1) is None:
            return
        collapsed = not bool(item.data(self.ROLE + 2))
        item.setData(self.ROLE + 2, collapsed)
        key = item.data(self.ROLE + 1)
        for row in range(self.count()):
            if self.item(row).data(self.ROLE + 3) == key:
                self.item(row).setHidden(collapsed)

    def _on_row(self, row: int) -> None:
        item = self.item(row) if row >= 0 else None
        k = item.data(self.ROLE) if item is not None else None
        if k is not None:
            self.series_selected.emit(int(k))


class TagBrowser(QWidget):
    """Searchable table of the current file's DICOM elements, all plain text."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.filter = QLineEdit()
        self.filter.setPlaceholderText("Search tags, names or values")
        self.filter.setClearButtonEnabled(True)
        self.filter.textChanged.connect(self._apply_filter)
        self.table = QTableWidget(0, 4)
        self.table.setHorizontalHeaderLabels(["Tag", "Name", "VR", "Value"])
        self.table.verticalHeader().setVisible(False)
        self.table.setWordWrap(False)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.horizontalHeader().setSectionResizeMode(3, QHeaderView.ResizeMode.Stretch)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.filter)
        layout.addWidget(self.table)
        self._path = None

    def show_file(self, path: str, volume: ImageVolume) -> None:
        if path == self._path:
            return
        self._path = path
        if volume.source_format == "dicom" and path:
            from medview.io.dicom import tag_rows

            try:
                rows = tag_rows(path)
            except LoadError as exc:
                rows = [("", "Error", "", exc.reason)]
        else:
            rows = [
                ("", "Format", "", volume.source_format),
                ("", "Shape", "", " x ".join(str(s) for s in volume.shape)),
                ("", "Data type", "", str(volume.pixels.dtype)),
                ("", "Spacing (mm)", "", ", ".join(f"{s:.4g}" for s in volume.spacing)),
            ]
        self.table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, text in enumerate(row):
                self.table.setItem(r, c, QTableWidgetItem(text))
        self.table.resizeColumnsToContents()
        self.table.setColumnWidth(1, min(self.table.columnWidth(1), 170))
        self._apply_filter(self.filter.text())

    def clear(self) -> None:
        self._path = None
        self.table.setRowCount(0)

    def _apply_filter(self, text: str) -> None:
        needle = text.strip().lower()
        for r in range(self.table.rowCount()):
            hit = not needle or any(
                needle in (self.table.item(r, c).text().lower() if self.table.item(r, c) else "")
                for c in range(4)
            )
            self.table.setRowHidden(r, not hit)


class SkippedPanel(QTableWidget):
    """Files that were not loaded, with the reason."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(0, 2, parent)
        self.setHorizontalHeaderLabels(["File", "Reason"])
        self.verticalHeader().setVisible(False)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.setWordWrap(True)
        self.horizontalHeader().setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)

    def add(self, skipped: list[SkippedFile]) -> None:
        start = self.rowCount()
        self.setRowCount(start + len(skipped))
        for k, s in enumerate(skipped):
            item = QTableWidgetItem(s.path.replace("\\", "/").rsplit("/", 1)[-1])
            item.setToolTip(plain_tooltip(s.path))
            self.setItem(start + k, 0, item)
            self.setItem(start + k, 1, QTableWidgetItem(s.reason))
        self.resizeColumnToContents(0)
