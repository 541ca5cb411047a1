"""Viewports side by side: 1x1, 1x2, 2x1 or 2x2 slice views, one of them active.

The active viewport (outlined) is the one the toolbar, the AI panel, the measurements and
the keyboard act on; a click in a viewport makes it active. A series dragged from the
series browser onto a viewport is shown there. With sync on, the other viewports follow
the active one's slice by patient position (same Frame of Reference; otherwise keeping
the offset they had when they were linked), and can share its window/level and zoom; a
viewport whose plane crosses the active slice (a localizer) shows where it cuts.
"""

from __future__ import annotations

from PySide6.QtCore import QEvent, QObject, Signal
from PySide6.QtWidgets import QFrame, QGridLayout, QVBoxLayout, QWidget

from medview.gui.viewer import SliceView

LAYOUTS = {"1x1": (1, 1), "1x2": (1, 2), "2x1": (2, 1), "2x2": (2, 2)}
#: the mime type of a series dragged from the series browser (its index, as text)
SERIES_MIME = "application/x-medview-series"
ACTIVE_COLOUR = "#2f8fff"


class Viewport(QFrame):
    """One slice view with a frame that shows whether it is the active one, and that
    takes a series dropped on it."""

    dropped = Signal(int)  # a series index

    def __init__(self, view: SliceView, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.view = view
        self.setAcceptDrops(True)
        box = QVBoxLayout(self)
        box.setContentsMargins(2, 2, 2, 2)
        box.addWidget(view)
        self.set_active(False)

    def set_active(self, on: bool) -> None:
        colour = ACTIVE_COLOUR if on else "transparent"
        self.setStyleSheet(f"Viewport {{ border: 2px solid {colour}; }}")

    def dragEnterEvent(self, ev) -> None:
        if ev.mimeData().hasFormat(SERIES_MIME):
            ev.acceptProposedAction()

    def dropEvent(self, ev) -> None:
        data = ev.mimeData()
        if not data.hasFormat(SERIES_MIME):
            return
        try:
            k = int(bytes(data.data(SERIES_MIME).data()).decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            return
        ev.acceptProposedAction()
        self.dropped.emit(k)


class _Activator(QObject):
    """A mouse press (or focus) in a viewport's view makes it active."""

    def __init__(self, grid: ViewGrid, k: int) -> None:
        super().__init__(grid)
        self.grid, self.k = grid, k

    def eventFilter(self, obj, event) -> bool:
        if event.type() in (QEvent.Type.MouseButtonPress, QEvent.Type.FocusIn):
            self.grid.set_active(self.k)
        return False


class ViewGrid(QWidget):
    """Up to four viewports; ``views[0]`` always exists."""

    active_changed = Signal(int)
    view_added = Signal(int)
    dropped = Signal(int, int)  # viewport, series index

    def __init__(self, first: SliceView, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.grid = QGridLayout(self)
        self.grid.setContentsMargins(0, 0, 0, 0)
        self.grid.setSpacing(2)
        self.ports: list[Viewport] = []
        self.active = 0
        self.shape = (1, 1)
        self._add(first)
        self.grid.addWidget(self.ports[0], 0, 0)
        self.ports[0].set_active(True)

    @property
    def views(self) -> list[SliceView]:
        return [p.view for p in self.ports]

    @property
    def active_view(self) -> SliceView:
        return self.ports[self.active].view

    def visible_count(self) -> int:
        return self.shape[0] * self.shape[1]

    def shown_views(self) -> list[SliceView]:
        return self.views[:self.visible_count()]

    def _add(self, view: SliceView) -> None:
        k = len(self.ports)
        port = Viewport(view, self)
        port.dropped.connect(lambda s, k=k: self.dropped.emit(k, s))
        activator = _Activator(self, k)
        view.graphics.viewport().installEventFilter(activator)
        view.installEventFilter(activator)
        view._activator = activator
        self.ports.append(port)
        self.view_added.emit(k)

    def set_layout(self, name: str) -> None:
        """Show ``name`` (:data:`LAYOUTS`) viewports; ones beyond it are hidden, not
        dropped (their series comes back with a larger layout)."""
        rows, cols = LAYOUTS[name]
        while len(self.ports) < rows * cols:
            self._add(SliceView())
        for port in self.ports:
            self.grid.removeWidget(port)
            port.setVisible(False)
        for k in range(rows * cols):
            self.grid.addWidget(self.ports[k], k // cols, k % cols)
            self.ports[k].setVisible(True)
        self.shape = (rows, cols)
        if self.active >= rows * cols:
            self.set_active(0)

    def set_active(self, k: int) -> None:
        if not 0 <= k < len(self.ports) or k == self.active:
            return
        self.ports[self.active].set_active(False)
        self.active = k
        self.ports[k].set_active(True)
        self.active_changed.emit(k)

    def layout_name(self) -> str:
        return f"{self.shape[0]}x{self.shape[1]}"


def series_mime(index: int):
    from PySide6.QtCore import QMimeData

    data = QMimeData()
    data.setData(SERIES_MIME, str(int(index)).encode("ascii"))
    return data

