"""The AI side panel: pick a model, run it on the image in view, see why it decided.

Model loading, inference, saliency and batch scoring all run in worker threads
(:mod:`medview.gui.workers`); the newest request of each kind wins, so changing the image
cancels the job for the old one. Everything from the model card is shown as plain text.
"""

from __future__ import annotations

import os

import numpy as np
from PySide6.QtCore import QRectF, Qt, Signal
from PySide6.QtGui import (
    QColor,
    QImage,
    QPainter,
    QPen,
    QPixmap,
)
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSlider,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from medview.core.modeling import DEVICES, Prediction
from medview.core.presentation import Presented, score_and_limit
from medview.core.progress import Progress
from medview.core.volume import ImageVolume
from medview.explain.saliency import METHODS
from medview.gui.model_card import ModelCardDialog
from medview.gui.panels import plain_label
from medview.gui.workers import JobRunner
from medview.gui.worklist import WorklistTab
from medview.imaging.overlay import COLORMAPS, OUT_OF_SCOPE, heatmap_rgba, stamp_out_of_scope
from medview.inference.backends import BACKEND_LABELS
from medview.inference.session import InferenceSession
from medview.state.panel import PanelModel, Saliency


class ProbabilityBars(QWidget):
    """One horizontal bar per class with its probability; the operating threshold of the
    positive class is drawn as a vertical line on its bar."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.classes: list[str] = []
        self.values: list[float] = []
        self.threshold: float | None = None
        self.positive: str | None = None
        #: an out-of-scope result shown on request: grey bars, stamped OUT OF SCOPE
        self.out_of_scope = False
        self.setMinimumHeight(30)

    def set_values(self, classes, values, threshold=None, positive=None,
                   out_of_scope: bool = False) -> None:
        self.classes, self.values = list(classes), list(values)
        self.threshold, self.positive = threshold, positive
        self.out_of_scope = out_of_scope
        self.setMinimumHeight(max(30, 26 * len(classes) + 6))
        self.update()

    def clear(self) -> None:
        self.set_values([], [])

    def paintEvent(self, _ev) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        label_w = 110
        w = max(self.width() - label_w - 60, 20)
        for k, (name, v) in enumerate(zip(self.classes, self.values, strict=True)):
            y = 4 + k * 26
            p.setPen(self.palette().text().color())
            p.drawText(QRectF(0, y, label_w - 6, 20), Qt.AlignmentFlag.AlignRight
                       | Qt.AlignmentFlag.AlignVCenter, name)
            p.fillRect(QRectF(label_w, y + 3, w, 14), QColor("#dddddd"))
            p.fillRect(QRectF(label_w, y + 3, w * v, 14),
                       QColor("#9a9a9a" if self.out_of_scope else "#2f7fd1"))
            p.drawText(QRectF(label_w + w + 6, y, 54, 20), Qt.AlignmentFlag.AlignVCenter,
                       f"{v:.2f}")
            if self.threshold is not None and name == self.positive:
                x = label_w + w * self.threshold
                p.setPen(QPen(QColor("#d11f1f"), 2))
                p.drawLine(int(x), y, int(x), y + 20)
        if self.out_of_scope and self.classes:
            p.setPen(QPen(QColor("#c01414")))
            font = p.font()
            font.setBold(True)
            p.setFont(font)
            p.drawText(QRectF(label_w, 0, w, self.height()), Qt.AlignmentFlag.AlignCenter,
                       OUT_OF_SCOPE)
        p.end()


def _audit(event: str, p: Prediction | None, shown_anyway: bool = False, **extra) -> None:
    """An audit entry for a result shown or saved, written off the GUI thread (an fsync
    must not stall the window)."""
    import threading

    from medview.core import audit

    if p is None:
        return
    fields = {**audit.prediction_fields(p, shown_anyway=shown_anyway), **extra}
    threading.Thread(target=audit.record, args=(event,), kwargs=fields, daemon=True,
                     name="medview-audit").start()


def _audit_many(event: str, predictions: list[Prediction], **extra) -> None:
    """Audit entries for many results (a worklist), one write, off the GUI thread."""
    import threading

    from medview.core import audit

    entries = [(event, {**audit.prediction_fields(p), **extra}) for p in predictions]
    threading.Thread(target=audit.record_many, args=(entries,), daemon=True,
                     name="medview-audit").start()


class ModelPanel(QWidget):
    """Model picker, run controls, results, saliency and the batch worklist."""

    overlay_changed = Signal(object)  # RGBA array or None
    prediction_ready = Signal(object)  # Prediction
    saliency_ready = Signal(object)  # (rows, cols) map
    batch_finished = Signal(object)  # list of (description, path, Prediction)
    failed = Signal(str)
    models_ready = Signal()  # the model list was (re)read
    open_requested = Signal(object)  # an ImageVolume double-clicked in the worklist
    width_wanted = Signal(int)  # the worklist's columns need this many pixels

    def __init__(self, jobs: JobRunner, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.jobs = jobs
        #: what this panel shows, without Qt (the widgets below render it)
        self.state = PanelModel()
        self.models_loaded = False
        self.volumes_provider = lambda: []
        self.session = InferenceSession()  # the same session the command line uses

        self.model_box = QComboBox()
        self.model_box.currentIndexChanged.connect(self._on_model)
        self.model_box.activated.connect(lambda _i: self.warm_up())  # a user's choice
        self.card_button = QPushButton("Model card...")
        self.card_button.clicked.connect(self.show_card)
        self._card_dialog: ModelCardDialog | None = None
        self.summary = plain_label()
        self.device_box = QComboBox()
        self.device_box.addItems(list(DEVICES))
        # what runs the model: auto = the exported graph on ONNX Runtime on the CPU when
        # the card says it agrees with PyTorch (see medview.inference.backends)
        self.backend_box = QComboBox()
        for key, text in (("auto", "Auto"), ("torch", "PyTorch"), ("onnx", "ONNX Runtime")):
            self.backend_box.addItem(text, key)
        self.backend_box.setToolTip(
            "Auto: on the CPU, the model's exported graph on ONNX Runtime (faster) "
            "when its card says it agrees with PyTorch; on a GPU, PyTorch.")
        self.run_button = QPushButton("Run")
        self.run_button.clicked.connect(self.run)
        self.auto_run = QCheckBox("Auto-run on image change")

        pick = QHBoxLayout()
        pick.addWidget(self.model_box, 1)
        pick.addWidget(self.card_button)
        run = QHBoxLayout()
        run.addWidget(QLabel("Device:"))
        run.addWidget(self.device_box)
        run.addWidget(QLabel("Engine:"))
        run.addWidget(self.backend_box)
        run.addWidget(self.run_button)
        model_group = QGroupBox("Model")
        mg = QVBoxLayout(model_group)
        mg.addLayout(pick)
        mg.addWidget(self.summary)
        self.evidence = plain_label()
        self.evidence.setStyleSheet("background: #fff3cd; color: #7a4b00; font-weight: bold; "
                                    "padding: 4px;")
        self.evidence.setVisible(False)
        mg.addWidget(self.evidence)
        mg.addLayout(run)
        mg.addWidget(self.auto_run)

        self.bars = ProbabilityBars()
        # the trust gate: a banner with the reasons, and a deliberate "Show anyway"
        self.scope_banner = plain_label()
        self.scope_banner.setStyleSheet(
            "background: #b71c1c; color: white; font-weight: bold; padding: 6px;")
        self.scope_banner.setVisible(False)
        self.show_anyway = QPushButton("Show anyway (greyed, stamped)")
        self.show_anyway.setVisible(False)
        self.show_anyway.clicked.connect(self.reveal)
        self.decision = plain_label()
        self.decision.setStyleSheet("font-weight: bold;")
        self.details = plain_label()
        self.warnings = plain_label()
        self.warnings.setStyleSheet("color: #b36b00;")
        self.status = plain_label()
        result_group = QGroupBox("Result")
        rg = QVBoxLayout(result_group)
        rg.addWidget(self.scope_banner)
        rg.addWidget(self.show_anyway)
        rg.addWidget(self.bars)
        rg.addWidget(self.decision)
        rg.addWidget(self.details)
        rg.addWidget(self.warnings)
        rg.addWidget(self.status)

        self.method_box = QComboBox()
        for key, name in METHODS.items():
            self.method_box.addItem(name, key)
        self.class_box = QComboBox()
        self.opacity = QSlider(Qt.Orientation.Horizontal)
        self.opacity.setRange(0, 100)
        self.opacity.setValue(60)
        self.cmap_box = QComboBox()
        self.cmap_box.addItems(list(COLORMAPS))
        self.show_overlay = QCheckBox("Show on image")
        self.show_overlay.setChecked(True)
        self.explain_button = QPushButton("Explain")
        self.explain_button.clicked.connect(self.explain)
        for w in (self.opacity, self.cmap_box):
            (w.valueChanged if isinstance(w, QSlider) else w.currentIndexChanged).connect(
                self._emit_overlay)
        self.show_overlay.toggled.connect(self._emit_overlay)
        self.seen = QLabel()
        self.seen.setFixedSize(160, 160)
        self.seen.setStyleSheet("background: black;")
        self.seen.setAlignment(Qt.AlignmentFlag.AlignCenter)
        sal_group = QGroupBox("Saliency")
        form = QFormLayout(sal_group)
        form.addRow("Method", self.method_box)
        form.addRow("Class", self.class_box)
        form.addRow("Opacity", self.opacity)
        form.addRow("Colormap", self.cmap_box)
        row = QHBoxLayout()
        row.addWidget(self.show_overlay)
        row.addWidget(self.explain_button)
        form.addRow(row)
        # Integrated Gradients and Occlusion take tens of seconds on a CPU: progress (one
        # step per forward pass of the model) and a Cancel that stops at the next one
        self.sal_progress = QProgressBar()
        self.sal_progress.setVisible(False)
        self.sal_cancel = QPushButton("Cancel")
        self.sal_cancel.setVisible(False)
        self.sal_cancel.clicked.connect(lambda: self.jobs.cancel("saliency"))
        prow = QHBoxLayout()
        prow.addWidget(self.sal_progress, 1)
        prow.addWidget(self.sal_cancel)
        form.addRow(prow)
        self.saliency_note = plain_label()
        self.saliency_note.setStyleSheet("color: #b36b00; font-weight: bold;")
        self.saliency_note.setVisible(False)
        form.addRow(self.saliency_note)
        self.save_overlay_button = QPushButton("Save overlay...")
        self.save_overlay_button.setEnabled(False)
        self.save_overlay_button.clicked.connect(self._save_overlay_dialog)
        form.addRow(self.save_overlay_button)
        self.send_button = QPushButton("Send result to PACS...")
        self.send_button.setToolTip("Store this result in the PACS as a DICOM Structured "
                                    "Report, with the heat-map as a Secondary Capture image "
                                    "when one is shown")
        self.send_button.setEnabled(False)
        self.send_button.clicked.connect(self._send_dialog)
        form.addRow(self.send_button)
        form.addRow("What the model saw", self.seen)

        single = QWidget()
        sl = QVBoxLayout(single)
        sl.addWidget(model_group)
        sl.addWidget(result_group)
        sl.addWidget(sal_group)
        sl.addStretch(1)

        self.worklist_tab = batch = WorklistTab(self.state)
        # the tab's widgets, by the names the panel's users know
        self.batch_button, self.export_button = batch.batch_button, batch.export_button
        self.worklist, self.batch_status = batch.worklist, batch.batch_status
        self.batch_progress, self.batch_cancel = batch.batch_progress, batch.batch_cancel
        self.batch_button.clicked.connect(self.run_batch)
        self.export_button.clicked.connect(self._export_dialog)
        self.batch_cancel.clicked.connect(lambda: self.jobs.cancel("batch"))
        batch.open_requested.connect(self.open_requested)
        batch.width_wanted.connect(self.width_wanted)

        tabs = QTabWidget()
        # scrolls rather than squeezing widgets over each other when the reasons are long
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setWidget(single)
        self._single, self._scroll = single, scroll
        self._fit_width()
        tabs.addTab(scroll, "This image")
        tabs.addTab(batch, "Worklist")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(tabs)
        events = self.state.events
        events.result.connect(self._render_result)
        events.saliency.connect(self._render_saliency)
        self.refresh_models()

    # the state this panel renders, by the names its users read
    @property
    def cards(self) -> list:
        return self.state.cards

    @property
    def registry(self):
        return self.state.registry

    @property
    def volume(self) -> ImageVolume | None:
        return self.state.volume

    @property
    def index(self) -> int:
        return self.state.index

    # ------------------------------------------------------------------ models
    def refresh_models(self, select: str | None = None) -> None:
        """Re-read the model folders in a worker thread (a model folder on a slow share, or
        a hostile one, never freezes the window); the list updates when they are read."""
        from medview.models.registry import discover_models

        def job(_token):
            yield Progress(0, 1, "reading model folders")
            return discover_models()

        if not self.cards:
            self.summary.setText("Reading the model folders...")
            for w in (self.run_button, self.explain_button, self.batch_button,
                      self.card_button):
                w.setEnabled(False)
        handle = self.jobs.start("models", job)
        handle.succeeded.connect(lambda reg, j=handle: self._apply_registry(j, reg, select))
        handle.failed.connect(lambda exc: self.status.setText(
            f"Model folders could not be read ({type(exc).__name__})"))

    def when_models_ready(self, callback) -> None:
        """Call ``callback()`` once the model list has been read (now, if it has)."""
        if self.models_loaded:
            callback()
            return

        def once() -> None:
            self.models_ready.disconnect(once)
            callback()

        self.models_ready.connect(once)

    def wait_for_models(self, timeout_ms: int = 30000) -> None:
        """Block in a local event loop until the model list is read (scripts, benchmarks)."""
        if self.models_loaded:
            return
        from PySide6.QtCore import QEventLoop, QTimer

        loop = QEventLoop()
        self.models_ready.connect(loop.quit)
        QTimer.singleShot(timeout_ms, loop.quit)
        loop.exec()
        self.models_ready.disconnect(loop.quit)

    def _apply_registry(self, job, registry, select: str | None) -> None:
        if self.jobs.is_current(job):
            self.use_registry(registry, select)

    def use_registry(self, registry, select: str | None = None) -> None:
        """Show a model list read elsewhere (the launch reads it while the window is
        built): the panel's own reading of the folders, if running, is dropped."""
        self.jobs.supersede("models")
        current = select or (self.current_card().id if self.current_card() else None)
        self.state.set_registry(registry)
        self.model_box.blockSignals(True)
        self.model_box.clear()
        for c in self.cards:
            self.model_box.addItem(f"{c.name} ({c.version})", c.id)
        ids = [c.id for c in self.cards]
        if current in ids:
            self.model_box.setCurrentIndex(ids.index(current))
        self.model_box.blockSignals(False)
        self._on_model()
        if self.registry.errors:
            self.status.setText("Refused model(s): " + "; ".join(
                f"{e.where}: {e.reason}" for e in self.registry.errors))
        self.models_loaded = True
        self.models_ready.emit()

    def current_card(self):
        k = self.model_box.currentIndex() if hasattr(self, "model_box") else -1
        return self.cards[k] if 0 <= k < len(self.cards) else None

    def _on_model(self, *_args) -> None:
        card = self.current_card()
        enabled = card is not None
        for w in (self.run_button, self.explain_button, self.batch_button, self.card_button):
            w.setEnabled(enabled)
        self.clear_result()
        if card is None:
            self.summary.setText("No model installed. Train one with the fine-tuning wizard "
                                 "or `medview train`.")
            return
        d = card.card
        test = d.metrics.get("test") or {}
        auc = test.get("auc") or {}
        perf = (f"Test AUC {auc.get('value')} (95% CI {auc['ci95'][0]}-{auc['ci95'][1]}), "
                f"n={test.get('n')}" if auc.get("value") is not None else "No test metrics.")
        flags = "; ".join(d.flags or [])
        small = d.evidence_warning
        self.summary.setText(
            f"{', '.join(card.classes)}\nIntended use: {d.intended_use}\n{perf}"
            + (f"\n{flags}" if flags else ""))
        # a model checked on a dozen images must not look like one checked on hundreds
        self.evidence.setText(small)
        self.evidence.setVisible(bool(small))
        self.class_box.blockSignals(True)
        self.class_box.clear()
        self.class_box.addItems(card.classes)
        self.class_box.blockSignals(False)
        if self.auto_run.isChecked():
            self.run()

    def show_card(self) -> None:
        """The model card dialog of the chosen model (non-modal)."""
        card = self.current_card()
        if card is None:
            return
        self._card_dialog = ModelCardDialog(card, self)
        self._card_dialog.show()

    # ------------------------------------------------------------------ image in view
    def set_image(self, volume: ImageVolume | None, index: int) -> None:
        """The image in view changed: stale results go, running jobs for it are cancelled."""
        if not self.state.set_image(volume, index):  # clears the result when it changed
            return
        self.jobs.cancel("predict")
        self.jobs.cancel("saliency")
        if volume is not None and self.auto_run.isChecked() and self.current_card():
            self.run()

    def clear_result(self) -> None:
        self.state.clear_result()

    def _render_result(self, shown: Presented | None) -> None:
        """Show the state's result (None: no result)."""
        if shown is None:
            self.send_button.setEnabled(False)
            self.scope_banner.setVisible(False)
            self.show_anyway.setVisible(False)
            self.bars.clear()
            self.decision.setText("")
            self.details.setText("")
            self.warnings.setText("")
            self.seen.clear()
            return
        p = shown.prediction
        if shown.out_of_scope:
            # no decision, no bars, no saliency until the user deliberately asks
            self.scope_banner.setText(shown.banner)
            self.scope_banner.setVisible(True)
            self.show_anyway.setVisible(not shown.revealed)
            self._fit_width()
            self._fit_banner()
        else:
            self.scope_banner.setVisible(False)
            self.show_anyway.setVisible(False)
        if shown.withheld:
            self.bars.clear()
        else:
            self._show_bars(self.state.shown_prediction)
        self.decision.setText(shown.decision)
        self.details.setText(
            f"{p.model_id} {p.model_version} on {p.device} "
            f"({BACKEND_LABELS.get(p.backend, p.backend)}): "
            f"{p.timings_ms.get('inference', 0):.0f} ms inference, "
            f"{p.timings_ms.get('total', 0):.0f} ms total\n"
            f"input sha256 {p.input_sha256[:16]}..."
            + (f"\ncomputed by {p.computed_by['file']} sha256 "
               f"{p.computed_by['sha256'][:16]}... (verified)" if p.computed_by else "")
            + ("\nscope score {} (limit {})".format(
                *score_and_limit(p.ood_score, p.ood_limit))
               if p.ood_score is not None and p.ood_limit is not None else ""))
        self.warnings.setText("\n".join(f"Warning: {w}" for w in p.warnings))
        label = shown.label if shown.label in p.classes else p.classes[0]
        self.class_box.setCurrentText(label)

    def _render_saliency(self, saliency: Saliency | None) -> None:
        if saliency is None:
            self.saliency_note.setVisible(False)
        self.save_overlay_button.setEnabled(saliency is not None)
        self._emit_overlay()

    # ------------------------------------------------------------------ workers
    def warm_up(self) -> None:
        """Load the chosen model in the background now (torch, timm, weights check), so
        the first Run on an image does not wait for it. Errors surface on Run."""
        card = self.current_card()
        if card is None:
            return
        device, backend = self.device_box.currentText(), self.backend()
        if self.session.is_loaded(card, device, backend):
            return

        def job(_token):
            yield Progress(0, 1, "loading model")
            self.session.predictor(card, device, backend)

        self.jobs.start("warm-up", job)

    def _start(self, kind: str, job, on_success):
        """Run ``job`` in a worker; ``on_success(job, result)`` only if it is still the
        newest of its kind, failures shown in the panel. Returns the job."""
        j = self.jobs.start(kind, job)
        j.succeeded.connect(lambda result, jj=j: on_success(jj, result))
        j.failed.connect(lambda exc, jj=j: self._on_failed(jj, exc))
        return j

    def backend(self) -> str:
        """"auto", "torch" or "onnx" (the Engine box)."""
        return self.backend_box.currentData() or "auto"

    def _subject(self):
        """(card, volume, slice index, device) of the image in view, or None."""
        card = self.current_card()
        if card is None or self.volume is None:
            return None
        return card, self.volume, self.index, self.device_box.currentText()

    def run(self) -> None:
        subject = self._subject()
        if subject is None:
            return
        card, volume, index, device = subject
        backend = self.backend()
        want_saliency = self.show_overlay.isChecked()
        made = self.session.predicted_ahead(card, volume, index, device, backend)
        if made is not None:  # scored while the window was built: shown at once
            self.jobs.supersede("predict")
            self._show_prediction(made, want_saliency)
            return
        self.status.setText("Running...")

        def job(token):
            return (yield from self.session.predict(card, volume, index, device, token,
                                                    backend=backend))

        self._start("predict", job, lambda j, r: self._on_prediction(j, r, want_saliency))

    def _on_prediction(self, job, result, want_saliency: bool) -> None:
        if self.jobs.is_current(job):
            self._show_prediction(result, want_saliency)

    def _show_prediction(self, result, want_saliency: bool) -> None:
        p, prep = result
        self.state.set_prediction(p, prep)  # rendered by _render_result
        _audit("result_shown", p)
        self.status.setText("Not a diagnosis. Research use only.")
        seen = np.ascontiguousarray(prep.seen)
        h, w = seen.shape
        img = QImage(seen.data, w, h, w, QImage.Format.Format_Grayscale8).copy()
        self.seen.setPixmap(QPixmap.fromImage(img).scaled(
            160, 160, Qt.AspectRatioMode.KeepAspectRatio))
        self.send_button.setEnabled(self.volume is not None
                                    and self.volume.source_format == "dicom")
        self.prediction_ready.emit(p)
        if want_saliency and not p.withheld:
            self.explain(prep=prep)

    def _fit_width(self) -> None:
        """The page scrolls vertically only: keep it as wide as its content needs."""
        if hasattr(self, "_scroll"):
            self._single.adjustSize()
            self._scroll.setMinimumWidth(self._single.minimumSizeHint().width()
                                         + self._scroll.verticalScrollBar().sizeHint().width()
                                         + 4)

    def _fit_banner(self) -> None:
        """Give the banner the height its wrapped text needs (a tab page does not pass
        height-for-width on, so a long list of reasons would otherwise be cut)."""
        from PySide6.QtCore import QRect
        from PySide6.QtGui import QFontMetrics

        label = self.scope_banner
        width = max(label.width(), self.decision.width(), 160) - 16
        bold = label.font()
        bold.setBold(True)
        rect = QFontMetrics(bold).boundingRect(QRect(0, 0, width, 100000),
                                               int(Qt.TextFlag.TextWordWrap), label.text())
        label.setMinimumHeight(rect.height() + 16)

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        if self.scope_banner.isVisible():
            self._fit_banner()

    def _show_bars(self, p: Prediction) -> None:
        card = self.current_card()
        self.bars.set_values(p.classes, p.probabilities, p.threshold,
                             card.positive_class if card else None, out_of_scope=p.withheld)

    def reveal(self) -> None:
        """"Show anyway": the withheld result, greyed and stamped OUT OF SCOPE; only now
        is its saliency drawn (stamped too)."""
        if not self.state.reveal():  # rendered by _render_result
            return
        _audit("result_shown", self.state.prediction, shown_anyway=True)
        self.prediction_ready.emit(self.state.shown_prediction)
        if self.show_overlay.isChecked():
            self.explain(prep=self.state.prep)

    def explain(self, _checked: bool = False, prep=None) -> None:
        subject = self._subject()
        if subject is None:
            return
        card, volume, index, device = subject
        refusal = self.state.saliency_refusal()
        if refusal:
            self.status.setText(refusal)
            return
        method = self.method_box.currentData()
        backend = self.backend()
        target = self.class_box.currentText() or card.classes[0]
        made = self.session.explained_ahead(card, volume, index, method, target, device,
                                            backend)
        if made is not None:  # made while the window was built: shown at once
            self.jobs.supersede("saliency")
            self._saliency_done(None)
            self._show_saliency(made, method, target)
            return
        self.status.setText(f"Computing {METHODS[method]}...")

        def job(token):  # the map and its note in the worker, not the GUI
            return (yield from self.session.explain_with_note(
                card, volume, index, method, target, device, prep, token, backend=backend))

        j = self._start("saliency", job, lambda jj, m: self._on_saliency(jj, m, method, target))
        self.sal_progress.setRange(0, 0)  # busy until the first forward pass reports
        self.sal_progress.setVisible(True)
        self.sal_cancel.setVisible(True)
        j.progress.connect(lambda step, jj=j: self._on_saliency_step(jj, step))
        j.finished.connect(lambda jj=j: self._saliency_done(jj))
        j.failed.connect(lambda _e, jj=j: self._saliency_done(jj))
        j.cancelled.connect(lambda jj=j: self._saliency_done(jj, f"{METHODS[method]} "
                                                                 "cancelled."))

    def _on_saliency_step(self, job, step) -> None:
        if self.jobs.is_current(job) and step.total:
            self.sal_progress.setRange(0, step.total)
            self.sal_progress.setValue(step.done)

    def _saliency_done(self, job, text: str | None = None) -> None:
        """Hide the saliency progress when the newest saliency job ends (a job cancelled
        before it started never emits ``finished``)."""
        if self.jobs.current("saliency") in (None, job):
            self.sal_progress.setVisible(False)
            self.sal_cancel.setVisible(False)
            if text:
                self.status.setText(text)

    def _on_saliency(self, job, result, method: str, target: str) -> None:
        if self.jobs.is_current(job):
            self._show_saliency(result, method, target)

    def _show_saliency(self, result, method: str, target: str) -> None:
        sal, note = result
        self.saliency_note.setText(note)
        self.saliency_note.setVisible(bool(note))
        self.state.set_saliency(sal, method, target)  # rendered by _render_saliency
        self.status.setText(f"{METHODS[method]} for {target}. Not a diagnosis.")
        self.saliency_ready.emit(sal)

    #: the overlay is drawn from a strided view of at most this many pixels per side, then
    #: stretched over the image; saliency maps are smooth, and colouring a full-size film
    #: on the GUI thread would stall it
    OVERLAY_MAX_SIDE = 640

    def overlay_rgba(self) -> np.ndarray | None:
        sal = self.state.saliency
        if sal is None or not self.show_overlay.isChecked():
            return None
        step = max(1, -(-max(sal.values.shape) // self.OVERLAY_MAX_SIDE))
        rgba = heatmap_rgba(sal.values[::step, ::step], self.cmap_box.currentText(),
                            self.opacity.value() / 100.0)
        if self.state.out_of_scope:
            rgba = stamp_out_of_scope(rgba)
        return rgba

    def _emit_overlay(self, *_args) -> None:
        self.overlay_changed.emit(self.overlay_rgba())

    def _on_failed(self, job, exc) -> None:
        if not self.jobs.is_current(job):
            return
        self.status.setText(f"Failed: {exc}")
        self.failed.emit(str(exc))

    # ------------------------------------------------------------------ batch
    def run_batch(self) -> None:
        """Score every open series in a worker; rows appear as they are scored, with a
        progress bar and Cancel on the Worklist tab."""
        card = self.current_card()
        volumes = list(self.volumes_provider())
        if card is None or not volumes:
            return
        device, backend = self.device_box.currentText(), self.backend()

        def job(token):
            scored = yield from self.session.batch(card, volumes, device, token,
                                                   backend=backend)
            return list(scored)

        self.state.start_worklist(card.classes)  # rendered by the worklist tab
        self.worklist_tab.start(len(volumes))
        j = self.jobs.start("batch", job)
        j.progress.connect(lambda step, jj=j: self._on_batch_step(jj, step))
        j.succeeded.connect(lambda items, jj=j: self._on_batch(jj, items, card.classes))
        j.failed.connect(lambda exc, jj=j: self._end_batch(jj, f"Failed: {exc}"))
        j.cancelled.connect(lambda jj=j: self._end_batch(
            jj, f"Cancelled after {len(self.state.worklist)} of {len(volumes)} series; the rows "
                "scored so far are kept."))

    def _on_batch_step(self, job, step) -> None:
        if not self.jobs.is_current(job):
            return
        item = getattr(step, "item", None)
        if item is not None:
            self.state.add_scored(item)  # rendered by the worklist tab
            self.batch_status.setText(f"Scored {step.done} of {step.total} series...")
        self.batch_progress.setRange(0, max(step.total, 1))
        self.batch_progress.setValue(step.done)

    def _end_batch(self, job, text: str) -> None:
        if not self.jobs.is_current(job) and self.jobs.current("batch") is not None:
            return
        self.worklist_tab.end(text)

    def _on_batch(self, job, items, classes) -> None:
        if not self.jobs.is_current(job):
            return
        # out-of-scope rows are kept apart, after the ones the model may answer
        self.state.finish_worklist(items, classes)  # rendered row by row
        rows = self.state.worklist
        _audit_many("result_shown", [r.prediction for r in rows], output="worklist")
        text = self.state.worklist_summary
        self._end_batch(job, text + " Double-click a row to open it.")
        self.status.setText(text)
        self.batch_finished.emit(rows)

    def export_csv(self, path: str) -> None:
        card = self.current_card()
        self.state.export_worklist(path, card.classes if card else [])
        _audit_many("result_exported", [r.prediction for r in self.state.worklist],
                    output="csv")

    def save_overlay(self, path: str) -> None:
        """The image with its heat-map and a caption (model, class, method, research use
        only), as a PNG with the same context in its text chunks."""
        from medview.core.safeio import atomic_write_bytes
        from medview.reports.figures import saliency_png

        card = self.current_card()
        sal = self.state.saliency
        if sal is None or card is None:
            return
        atomic_write_bytes(path, saliency_png(
            self.volume, self.index, sal.values, model_id=card.id,
            model_version=card.version, target=sal.target, method=sal.method,
            method_name=METHODS[sal.method], colormap=self.cmap_box.currentText(),
            opacity=self.opacity.value() / 100.0, out_of_scope=self.state.out_of_scope))
        _audit("saliency_saved", self.state.prediction, shown_anyway=self.state.revealed,
               method=sal.method, target=sal.target, output="png")

    def _save_as(self, title: str, folders: list[str], name: str, kind: str, write,
                 label: QLabel, done: str, failed: str) -> None:
        """Ask where to save (starting in the first existing of ``folders``, else the home
        folder - never the process's working directory), call ``write(path)`` and say
        what happened in ``label``."""
        start = next((f for f in folders if f and os.path.isdir(f)), os.path.expanduser("~"))
        path, _ = QFileDialog.getSaveFileName(self, title, os.path.join(start, name), kind)
        if not path:
            return
        try:
            write(path)
        except OSError as exc:
            label.setText(f"{failed}: {exc.strerror or exc}")
            return
        label.setText(done.format(path=path))

    def _save_overlay_dialog(self) -> None:
        if self.state.saliency is None:
            return
        folder = os.path.dirname(self.volume.source_of(self.index)) if self.volume else ""
        self._save_as("Save overlay", [folder], "saliency.png", "PNG (*.png)",
                      self.save_overlay, self.status, "Saved the overlay to {path}",
                      "Not saved")

    # ------------------------------------------------------------------ PACS
    def send_result(self, server: str, settings=None):
        """Store the result in view (SR; the heat-map as SC when one is shown) in
        ``server``, in a worker; returns the job (None when there is no result)."""
        from functools import partial

        from medview.gui.pacs_dialog import send_result_job
        from medview.pacs import load_settings
        from medview.reports.figures import saliency_figure

        card = self.current_card()
        st = self.state
        if st.prediction is None or self.volume is None or card is None:
            return None
        figure = None
        if st.saliency is not None:
            sal = st.saliency
            # drawn in the worker: rendering a full-size film would stall the window
            figure = partial(
                saliency_figure, self.volume, self.index, sal.values, model_id=card.id,
                model_version=card.version, target=sal.target,
                method_name=METHODS[sal.method], colormap=self.cmap_box.currentText(),
                opacity=self.opacity.value() / 100.0, out_of_scope=st.out_of_scope)
        frame = self.index + 1 if self.volume.multiframe else None
        factory = send_result_job(server, settings or load_settings(),
                                  self.volume.source_of(self.index), st.prediction, figure,
                                  frame, reveal=st.revealed)
        self.status.setText(f"Sending the result to {server}...")
        what = "the SR and the heat-map" if figure is not None else "the SR"
        job = self.jobs.start("send", factory)
        job.succeeded.connect(lambda r: self.status.setText(
            f"Sent {what} to {server} ({r.sent} object(s))." if r.ok else
            f"Not all sent to {server}: " + "; ".join(r.messages)))
        job.failed.connect(lambda exc: self.status.setText(f"Not sent: {exc}"))
        return job

    def _send_dialog(self) -> None:
        from PySide6.QtCore import QSettings

        from medview.gui.pacs_dialog import ask_server
        from medview.pacs import load_settings

        settings = load_settings()
        server = ask_server(self, "Send result to PACS", QSettings("medview", "medview"),
                            settings)
        if server:
            self.send_result(server, settings)

    def export_folder(self) -> str:
        """Where the export dialog starts: the folder of the first scored study, else the
        home folder."""
        return self.state.export_folder()

    def _export_dialog(self) -> None:
        if not self.state.worklist:
            return
        self._save_as("Export worklist", [self.export_folder()], "worklist.csv",
                      "CSV (*.csv)", self.export_csv, self.batch_status,
                      f"Exported {len(self.state.worklist)} rows to {{path}}", "Not exported")
