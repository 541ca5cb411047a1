"""The Worklist tab of the AI panel: every open series scored in one run, a row each as
it is scored, sortable, double-click to open, exported as the command line's CSV. It
renders :class:`~medview.state.panel.PanelModel`'s worklist."""

from __future__ import annotations

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from medview.core.volume import ImageVolume
from medview.gui.panels import plain_label, plain_tooltip
from medview.state.panel import PanelModel


class NumberItem(QTableWidgetItem):
    """A probability cell: three decimals always, sorted by value (blank sorts first)."""

    def __init__(self, value: float | None) -> None:
        super().__init__("" if value is None else f"{value:.3f}")
        self.value = -1.0 if value is None else value

    def __lt__(self, other) -> bool:
        if isinstance(other, NumberItem):
            return self.value < other.value
        return super().__lt__(other)


class TextItem(QTableWidgetItem):
    """A text cell; a withheld (out-of-scope) row's cells sort after every answered row's
    in ascending order (the order of a first click)."""

    def __init__(self, text: str, last: bool = False) -> None:
        super().__init__(text)
        self.last = last

    def __lt__(self, other) -> bool:
        if isinstance(other, TextItem) and self.last != other.last:
            return other.last
        return self.text() < other.text()  # (the base class's would call back into this)


def study_text(volume: ImageVolume) -> str:
    """Patient and study of a DICOM series for the worklist (on screen only, never
    logged); empty for PNG/JPEG/NIfTI."""
    st = volume.study
    parts = [st.patient_name, st.study_date, st.study_description]
    return "  ".join(p for p in parts if p)


class WorklistTab(QWidget):
    """Run and Export buttons, progress with Cancel, a status line and the table."""

    open_requested = Signal(object)  # an ImageVolume double-clicked
    width_wanted = Signal(int)  # the columns need this many pixels

    def __init__(self, state: PanelModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.batch_button = QPushButton("Run on all open series")
        self.export_button = QPushButton("Export CSV...")
        self.worklist = QTableWidget(0, 0)
        self.worklist.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.worklist.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.worklist.setSortingEnabled(True)
        self.worklist.verticalHeader().setVisible(False)
        self.worklist.horizontalHeader().setStretchLastSection(True)  # Warnings visible
        self.worklist.cellDoubleClicked.connect(self._open_row)
        self._sorted_by = -1
        self.worklist.horizontalHeader().sortIndicatorChanged.connect(self._on_sort)
        self.batch_progress = QProgressBar()
        self.batch_progress.setVisible(False)
        self.batch_cancel = QPushButton("Cancel")
        self.batch_cancel.setVisible(False)
        self.batch_status = plain_label()
        bl = QVBoxLayout(self)
        brow = QHBoxLayout()
        brow.addWidget(self.batch_button)
        brow.addWidget(self.export_button)
        bl.addLayout(brow)
        prow = QHBoxLayout()
        prow.addWidget(self.batch_progress, 1)
        prow.addWidget(self.batch_cancel)
        bl.addLayout(prow)
        bl.addWidget(self.batch_status)
        bl.addWidget(self.worklist)
        state.events.worklist_reset.connect(self._set_worklist_headers)
        state.events.worklist_row.connect(self._add_worklist_row)

    def start(self, total: int) -> None:
        """A run of ``total`` series begins."""
        self.batch_progress.setRange(0, total)
        self.batch_progress.setValue(0)
        self.batch_progress.setVisible(True)
        self.batch_cancel.setVisible(True)
        self.batch_status.setText(f"Scoring {total} series...")

    def step(self, done: int, total: int) -> None:
        self.batch_status.setText(f"Scored {done} of {total} series...")
        self.batch_progress.setRange(0, max(total, 1))
        self.batch_progress.setValue(done)

    def end(self, text: str) -> None:
        self.batch_progress.setVisible(False)
        self.batch_cancel.setVisible(False)
        self.worklist.setSortingEnabled(True)
        self._fit_columns()
        self.batch_status.setText(text)

    def _on_sort(self, column: int, order) -> None:
        """A first click on a probability column sorts the highest first (withheld rows,
        which have none, last); a first click on any other column sorts ascending, withheld
        rows last (:class:`TextItem`); a second click reverses."""
        first = column != self._sorted_by
        self._sorted_by = column
        item = self.worklist.item(0, column)
        if first and isinstance(item, NumberItem) and order == Qt.SortOrder.AscendingOrder:
            # after the click's own ascending sort (the view's slot runs after this one)
            QTimer.singleShot(0, lambda: self.worklist.sortItems(
                column, Qt.SortOrder.DescendingOrder))

    def _set_worklist_headers(self, classes) -> None:
        self._sorted_by = -1
        headers = ["Series", "Patient / study", "Predicted", *[f"p({c})" for c in classes],
                   "In scope", "Warnings"]
        self.worklist.setSortingEnabled(False)
        self.worklist.clear()
        self.worklist.setRowCount(0)
        self.worklist.setColumnCount(len(headers))
        self.worklist.setHorizontalHeaderLabels(headers)

    def _add_worklist_row(self, k: int) -> None:
        """Append row ``k`` of the worklist to the table (sorting off while filling)."""
        row = self.state.worklist[k]
        p, shown = row.prediction, row.presented
        grey = QColor("#9a9a9a")
        last = shown.withheld
        cells: list[QTableWidgetItem] = [TextItem(row.description, last),
                                         TextItem(study_text(row.volume), last),
                                         TextItem(shown.label_text, last)]
        for c in p.classes:
            cells.append(NumberItem(None if shown.probabilities is None
                                    else float(shown.probabilities[c])))
        cells.append(TextItem(shown.scope_text, last))
        cells.append(TextItem("; ".join(shown.notes), last))
        cells[0].setData(Qt.ItemDataRole.UserRole, k)  # which worklist entry, after sorting
        r = self.worklist.rowCount()
        self.worklist.insertRow(r)
        for c, item in enumerate(cells):
            if p.withheld:
                item.setForeground(grey)
            self.worklist.setItem(r, c, item)

    #: names are cut (the full text is in the tooltip) so the result columns stay in view
    NAME_COLUMN_MAX = 140
    WORKLIST_MAX_WIDTH = 760

    def _fit_columns(self) -> None:
        t = self.worklist
        t.resizeColumnsToContents()
        for c in (0, 1):  # Series, Patient / study
            if t.columnWidth(c) > self.NAME_COLUMN_MAX:
                t.setColumnWidth(c, self.NAME_COLUMN_MAX)
        for r in range(t.rowCount()):
            for c in (0, 1):
                item = t.item(r, c)
                if item is not None:
                    item.setToolTip(plain_tooltip(item.text()))
        # ask for the room the results need (the dock widens once; the user can still
        # narrow it, and the table then scrolls)
        need = sum(t.columnWidth(c) for c in range(t.columnCount())) + 40
        self.width_wanted.emit(min(need, self.WORKLIST_MAX_WIDTH))

    def _open_row(self, row: int, _col: int) -> None:
        item = self.worklist.item(row, 0)
        k = item.data(Qt.ItemDataRole.UserRole) if item is not None else None
        if k is not None and 0 <= k < len(self.state.worklist):
            self.open_requested.emit(self.state.worklist[k].volume)
