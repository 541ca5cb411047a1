"""PACS in the window: File > Open from PACS..., the PACS settings, and sending a result.

Every network call runs in a worker (:class:`JobRunner`); a dead server answers with a
clear message in the dialog within the timeout, and the window never waits on it.
"""

from __future__ import annotations

import os
import tempfile

from PySide6.QtCore import QSettings, Qt, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from medview.core.progress import Progress
from medview.gui.workers import JobRunner
from medview.io.dicom import date_text, person_name_text
from medview.pacs import (
    PacsError,
    PacsSettings,
    Query,
    connect,
    load_settings,
    save_settings,
)
from medview.pacs.retrieve import SeriesArrived, SeriesStarted, iter_retrieve_series

LAST_SERVER_KEY = "pacs/last_server"
_ERROR_STYLE = "color: #c62828; font-weight: bold;"


def server_choices(settings: PacsSettings, qsettings: QSettings) -> list[str]:
    """Saved server names first, then the last URL used (if not saved)."""
    names = list(settings.servers)
    last = str(qsettings.value(LAST_SERVER_KEY, "") or "")
    if last and last not in names and last not in settings.servers.values():
        names.append(last)
    return names


def _server_box(settings: PacsSettings, qsettings: QSettings) -> QComboBox:
    box = QComboBox()
    box.setEditable(True)
    box.addItems(server_choices(settings, qsettings))
    box.lineEdit().setPlaceholderText("dicom://AET@host:port or http://host:port/dicom-web")
    last = str(qsettings.value(LAST_SERVER_KEY, "") or "")
    if last:
        box.setCurrentText(last)
    return box


class PacsSettingsDialog(QDialog):
    """medview's AE title and port, timeout, cache, and the saved servers."""

    def __init__(self, settings: PacsSettings | None = None, path: str | None = None,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("PACS settings")
        self.path = path
        s = settings or load_settings(path)
        self.ae = QLineEdit(s.ae_title)
        self.ae.setMaxLength(16)
        self.port = QSpinBox()
        self.port.setRange(1, 65535)
        self.port.setValue(s.port)
        self.timeout = QDoubleSpinBox()
        self.timeout.setRange(0.5, 600)
        self.timeout.setValue(s.timeout_s)
        self.timeout.setSuffix(" s")
        self.cache = QLineEdit(s.cache_dir)
        self.cache.setPlaceholderText(PacsSettings().cache_root())
        self.limit = QSpinBox()
        self.limit.setRange(1, 10_000_000)
        self.limit.setValue(s.cache_limit_mb)
        self.limit.setSuffix(" MB")
        self.servers = QTableWidget(0, 2)
        self.servers.setHorizontalHeaderLabels(["Name", "URL"])
        self.servers.horizontalHeader().setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        for name, url in s.servers.items():
            self._add_row(name, url)
        add = QPushButton("Add server")
        add.clicked.connect(lambda: self._add_row("", ""))
        remove = QPushButton("Remove")
        remove.clicked.connect(lambda: self.servers.removeRow(self.servers.currentRow()))
        self.error = QLabel()
        self.error.setStyleSheet(_ERROR_STYLE)
        self.error.setWordWrap(True)
        form = QFormLayout()
        form.addRow("medview's AE title", self.ae)
        form.addRow("Port for C-MOVE", self.port)
        form.addRow("Network timeout", self.timeout)
        form.addRow("Cache folder", self.cache)
        form.addRow("Cache limit", self.limit)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Save
                                   | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.save)
        buttons.rejected.connect(self.reject)
        row = QHBoxLayout()
        row.addWidget(add)
        row.addWidget(remove)
        row.addStretch(1)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(QLabel("Saved servers"))
        lay.addWidget(self.servers)
        lay.addLayout(row)
        lay.addWidget(self.error)
        lay.addWidget(buttons)

    def _add_row(self, name: str, url: str) -> None:
        r = self.servers.rowCount()
        self.servers.insertRow(r)
        self.servers.setItem(r, 0, QTableWidgetItem(name))
        self.servers.setItem(r, 1, QTableWidgetItem(url))

    def settings(self) -> PacsSettings:
        servers = {}
        for r in range(self.servers.rowCount()):
            name = (self.servers.item(r, 0).text() if self.servers.item(r, 0) else "").strip()
            url = (self.servers.item(r, 1).text() if self.servers.item(r, 1) else "").strip()
            if name or url:
                servers[name] = url
        return PacsSettings(ae_title=self.ae.text(), port=self.port.value(), servers=servers,
                            cache_dir=self.cache.text().strip(),
                            cache_limit_mb=self.limit.value(),
                            timeout_s=self.timeout.value()).validate()

    def save(self) -> None:
        try:
            save_settings(self.settings(), self.path)
        except (PacsError, OSError) as exc:
            self.error.setText(str(exc))
            return
        self.accept()


class OpenFromPacsDialog(QDialog):
    """Query fields, studies -> series, Retrieve (progress, Cancel) into the cache; each
    series is announced by ``series_arrived`` as soon as its files are in."""

    series_arrived = Signal(str)  # a folder of one retrieved series
    #: a retrieved series that is not whole: (folder, instances present, expected)
    series_incomplete = Signal(str, int, int)
    studies_found = Signal(int)
    series_listed = Signal(str)  # study UID
    retrieve_finished = Signal(object)  # list of RetrieveResult
    failed = Signal(str)
    echoed = Signal(object)  # EchoResult

    def __init__(self, qsettings: QSettings | None = None, settings_path: str | None = None,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Open from PACS")
        self.resize(900, 560)
        self.qsettings = qsettings or QSettings("medview", "medview")
        self.settings_path = settings_path
        self.settings = load_settings(settings_path)
        self.jobs = JobRunner(self)
        self._retrieving = False
        self._series_done: list[tuple[int, int, int, int]] = []
        self._series_now: tuple[int, int] | None = None
        self._series_planned = 0
        self.server = _server_box(self.settings, self.qsettings)
        settings_button = QPushButton("Settings...")
        settings_button.clicked.connect(self.edit_settings)
        self.echo_button = QPushButton("Test")
        self.echo_button.setToolTip("Check that the server answers (C-ECHO or a QIDO request)")
        self.echo_button.clicked.connect(self.echo)
        self.patient_id = QLineEdit()
        self.patient_name = QLineEdit()
        self.patient_name.setPlaceholderText("wildcards * ?")
        self.modality = QLineEdit()
        self.modality.setPlaceholderText("e.g. CR")
        self.study_date = QLineEdit()
        self.study_date.setPlaceholderText("YYYYMMDD or YYYYMMDD-YYYYMMDD")
        self.accession = QLineEdit()
        self.find_button = QPushButton("Find")
        self.find_button.setDefault(True)
        self.find_button.clicked.connect(self.find)
        self.tree = QTreeWidget()
        self.tree.setHeaderLabels(["Date", "Patient ID", "Patient", "Modalities", "Series",
                                   "Images", "Description"])
        self.tree.itemExpanded.connect(self._on_expand)
        self.tree.itemSelectionChanged.connect(self._update_buttons)
        self.tree.setSelectionMode(QTreeWidget.SelectionMode.ExtendedSelection)
        self.retrieve_button = QPushButton("Retrieve")
        self.retrieve_button.setEnabled(False)
        self.retrieve_button.clicked.connect(self.retrieve)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setVisible(False)
        self.cancel_button.clicked.connect(lambda: self.jobs.cancel("retrieve"))
        self.progress = QProgressBar()
        self.progress.setVisible(False)
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.status.setTextFormat(Qt.TextFormat.PlainText)

        top = QHBoxLayout()
        top.addWidget(QLabel("Server"))
        top.addWidget(self.server, 1)
        top.addWidget(self.echo_button)
        top.addWidget(settings_button)
        form = QFormLayout()
        form.addRow("Patient ID", self.patient_id)
        form.addRow("Patient name", self.patient_name)
        form.addRow("Modality", self.modality)
        form.addRow("Study date", self.study_date)
        form.addRow("Accession", self.accession)
        form.addRow(self.find_button)
        bottom = QHBoxLayout()
        bottom.addWidget(self.progress, 1)
        bottom.addWidget(self.cancel_button)
        bottom.addWidget(self.retrieve_button)
        lay = QVBoxLayout(self)
        lay.addLayout(top)
        lay.addLayout(form)
        lay.addWidget(self.tree, 1)
        lay.addWidget(self.status)
        lay.addLayout(bottom)

    # -- helpers --------------------------------------------------------------------
    def _client(self):
        url = self.server.currentText().strip()
        client = connect(url, self.settings)
        self.qsettings.setValue(LAST_SERVER_KEY, url)
        return client

    def _say(self, text: str, error: bool = False) -> None:
        self.status.setStyleSheet(_ERROR_STYLE if error else "")
        self.status.setText(text)

    def _fail(self, exc) -> None:
        msg = str(exc) if isinstance(exc, PacsError) else f"{type(exc).__name__}: {exc}"
        if self._retrieving:  # mid-retrieve: say what is whole and what is not
            msg += "\n" + self._series_account()
        self._say(msg, error=True)
        self.find_button.setEnabled(True)
        self._end_retrieve()
        self.failed.emit(msg)

    def edit_settings(self) -> None:
        dlg = PacsSettingsDialog(self.settings, self.settings_path, self)
        if dlg.exec():
            self.settings = load_settings(self.settings_path)

    def closeEvent(self, event) -> None:
        self.jobs.shutdown()
        super().closeEvent(event)

    # -- echo -----------------------------------------------------------------------
    def echo(self) -> None:
        try:
            client = self._client()
        except PacsError as exc:
            self._fail(exc)
            return
        self._say(f"Asking {client.server}...")

        def job(_token):
            yield Progress(0, 0, "echo")
            return client.echo()

        j = self.jobs.start("echo", job)
        j.succeeded.connect(self._on_echo)
        j.failed.connect(self._fail)

    def _on_echo(self, r) -> None:
        self._say(f"{r.server} answers ({r.detail}), round trip {r.ms:.0f} ms.")
        self.echoed.emit(r)

    # -- find -----------------------------------------------------------------------
    def query(self) -> Query:
        return Query(patient_id=self.patient_id.text(), patient_name=self.patient_name.text(),
                     modality=self.modality.text(), study_date=self.study_date.text(),
                     accession=self.accession.text())

    def find(self) -> None:
        try:
            client = self._client()
        except PacsError as exc:
            self._fail(exc)
            return
        query = self.query()
        self.tree.clear()
        self.find_button.setEnabled(False)
        self._say(f"Asking {client.server}...")

        def job(_token):
            yield Progress(0, 0, "query")
            return client.find_studies(query)

        j = self.jobs.start("find", job)
        j.succeeded.connect(self._on_studies)
        j.failed.connect(self._fail)

    def _on_studies(self, studies) -> None:
        self.find_button.setEnabled(True)
        for s in studies:
            item = QTreeWidgetItem([date_text(s.study_date), s.patient_id,
                                    person_name_text(s.patient_name),
                                    ",".join(s.modalities), _n(s.n_series),
                                    _n(s.n_instances), s.description])
            item.setData(0, Qt.ItemDataRole.UserRole, ("study", s.study_uid))
            item.setChildIndicatorPolicy(QTreeWidgetItem.ChildIndicatorPolicy.ShowIndicator)
            self.tree.addTopLevelItem(item)
        for c in range(self.tree.columnCount()):
            self.tree.resizeColumnToContents(c)
        self._say(f"{len(studies)} study/studies found. Expand a study to see its series.")
        if studies:
            self.tree.setCurrentItem(self.tree.topLevelItem(0))
        self.studies_found.emit(len(studies))

    def _on_expand(self, item: QTreeWidgetItem) -> None:
        kind, _uid = item.data(0, Qt.ItemDataRole.UserRole)
        if kind != "study" or item.childCount():
            return
        self.list_series(item)

    def list_series(self, item: QTreeWidgetItem) -> None:
        _kind, study_uid = item.data(0, Qt.ItemDataRole.UserRole)
        try:
            client = self._client()
        except PacsError as exc:
            self._fail(exc)
            return

        def job(_token):
            yield Progress(0, 0, "series")
            return client.find_series(study_uid)

        j = self.jobs.start(f"series-{study_uid}", job)
        j.succeeded.connect(lambda series, it=item: self._on_series(it, series))
        j.failed.connect(self._fail)

    def _on_series(self, item: QTreeWidgetItem, series) -> None:
        item.takeChildren()
        for s in series:
            child = QTreeWidgetItem(["", "", "", s.modality, f"#{_n(s.number)}",
                                     _n(s.n_instances), s.description])
            child.setData(0, Qt.ItemDataRole.UserRole, ("series", s.series_uid))
            item.addChild(child)
        item.setExpanded(True)
        self.series_listed.emit(item.data(0, Qt.ItemDataRole.UserRole)[1])

    # -- retrieve -------------------------------------------------------------------
    def _selection(self) -> list[tuple[str, str | None]]:
        """(study UID, series UID or None for the whole study) of the selected rows."""
        out = []
        for item in self.tree.selectedItems():
            kind, uid = item.data(0, Qt.ItemDataRole.UserRole)
            if kind == "study":
                out.append((uid, None))
            else:
                study = item.parent().data(0, Qt.ItemDataRole.UserRole)[1]
                if (study, None) not in out:
                    out.append((study, uid))
        return out

    def _update_buttons(self) -> None:
        self.retrieve_button.setEnabled(bool(self._selection()) and not self._retrieving)

    def retrieve(self) -> None:
        wanted = self._selection()
        if not wanted:
            return
        try:
            client = self._client()
        except PacsError as exc:
            self._fail(exc)
            return
        dest = self.settings.cache_root()
        limit = self.settings.cache_limit_mb * 1024**2

        def job(token):
            done = yield from iter_retrieve_series(client, wanted, dest, token,
                                                   cache_limit_bytes=limit)
            return done.results

        self.progress.setVisible(True)
        self.progress.setRange(0, 0)
        self.cancel_button.setVisible(True)
        #: what this retrieve has done so far, series by series, for what it says when
        #: the server stops: [(series number, of how many, present, expected)]
        self._series_done: list[tuple[int, int, int, int]] = []
        self._series_now: tuple[int, int] | None = None
        self._series_planned = 0
        self._retrieving = True
        self.retrieve_button.setEnabled(False)
        self._say(f"Retrieving from {client.server}...")
        j = self.jobs.start("retrieve", job)
        j.progress.connect(self._on_step)
        j.succeeded.connect(self._on_retrieved)
        j.failed.connect(self._fail)
        j.cancelled.connect(lambda: (self._end_retrieve(),
                                     self._say("Cancelled. What arrived is kept; Retrieve "
                                               "again fetches only the rest.")))

    def _on_step(self, step) -> None:
        if isinstance(step, SeriesStarted):
            self._series_now = (step.done + 1, step.total)
            if step.done == 0:  # a study's first series: its count joins the plan
                self._series_planned += step.total
            return
        if isinstance(step, SeriesArrived):
            self._series_now = None
            self._series_done.append((step.done, step.total, step.present, step.expected))
            if step.folder:
                if not step.whole:  # announced first: the window marks it when it opens
                    self.series_incomplete.emit(step.folder, step.present, step.expected)
                self.series_arrived.emit(step.folder)
            return
        if step.total:
            self.progress.setRange(0, step.total)
            self.progress.setValue(step.done)
        if step.message:
            self._say(step.message)

    def _end_retrieve(self) -> None:
        self._retrieving = False
        self.progress.setVisible(False)
        self.cancel_button.setVisible(False)
        self._update_buttons()

    def _on_retrieved(self, results) -> None:
        self._end_retrieve()
        lines = [r.summary() for r in results]
        incomplete = any(not r.complete for r in results)
        if incomplete:
            lines.insert(0, self._series_account())
        self._say("\n".join(lines) or "Nothing retrieved.", error=incomplete)
        self.retrieve_finished.emit(results)

    def _series_account(self) -> str:
        """Which series of this retrieve are whole, which are not (n of m images) and
        which did not arrive - what a reader needs after a server stopped."""
        done = self._series_done
        whole = [d for d in done if d[3] <= 0 or d[2] >= d[3]]
        planned = max(self._series_planned, len(done) + (1 if self._series_now else 0))
        parts = [f"{len(whole)} of {planned} series complete"]
        for k, m, present, expected in done:
            if expected > 0 and present < expected:
                parts.append(f"series {k} of {m} incomplete ({present} of {expected} "
                             "images; open, marked incomplete)")
        if self._series_now is not None:
            k, m = self._series_now
            parts.append(f"series {k} of {m} did not arrive")
        return "; ".join(parts) + ". What arrived is kept: Retrieve again fetches only " \
            "the rest."


def _n(v) -> str:
    return "" if v is None else str(v)


def store_job(server: str, settings: PacsSettings, write_files, event: str,
              fields=None, what: str = "the DICOM objects"):
    """A job factory: ``write_files(folder)`` writes DICOM objects into a temporary folder
    (in the worker) and returns them; they are stored in ``server``, the store is
    audited as ``event`` (with ``fields``, the objects as type:UID, never patient data)
    and the folder removed. Returns the StoreResult."""

    def job(token):
        from medview.core import audit

        yield Progress(0, 2, f"writing {what}")
        folder = tempfile.mkdtemp(prefix="medview-send-")
        try:
            files = write_files(folder)
            result = yield from connect(server, settings).iter_store(files, token)
            audit.record(event, **(fields or {}), destination=audit.server_text(server),
                         sent=result.sent, failed=result.failed,
                         objects=[os.path.basename(f).removesuffix(".dcm").replace("_", ":", 1)
                                  for f in files])
        finally:
            for name in os.listdir(folder):
                os.remove(os.path.join(folder, name))
            os.rmdir(folder)
        return result

    return job


def send_result_job(server: str, settings: PacsSettings, source_path: str, prediction,
                    figure=None, frame: int | None = None, reveal: bool = False):
    """A job factory: write the SR (and the heat-map SC when ``figure``, a function that
    draws it, is given) for one prediction and store them in ``server``. Returns the
    StoreResult."""
    from medview.core import audit
    from medview.reports.dicom_results import write_result

    return store_job(
        server, settings,
        lambda folder: write_result(folder, source_path, prediction,
                                    figure=figure() if figure is not None else None,
                                    frame=frame, reveal=reveal),
        "result_sent", audit.prediction_fields(prediction, shown_anyway=reveal),
        "the DICOM result")


def ask_server(parent: QWidget, title: str, qsettings: QSettings,
               settings: PacsSettings) -> str:
    """The server to send to: a saved name or a URL, the last one used offered first
    (and remembered); "" when cancelled."""
    from PySide6.QtWidgets import QInputDialog

    server, ok = QInputDialog.getItem(parent, title,
                                      "Server (saved name or dicom://AET@host:port):",
                                      server_choices(settings, qsettings), 0, True)
    if not ok or not server.strip():
        return ""
    qsettings.setValue(LAST_SERVER_KEY, server.strip())
    return server.strip()
