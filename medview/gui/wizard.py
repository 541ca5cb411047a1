"""The fine-tuning wizard: data -> split -> model -> training -> results and save.

All scanning, previewing and training runs in worker threads on the training engine; the
wizard only shows progress and results. Cancel never writes anything; saving writes the
model folder atomically to the user's models directory and announces it (the side panel
lists it at once). The last settings are remembered.
"""

from __future__ import annotations

import os

import numpy as np
from PySide6.QtCore import QSettings, Qt, Signal
from PySide6.QtGui import QColor, QImage, QPixmap
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QSlider,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWizard,
    QWizardPage,
)

from medview.core.modeling import DEVICES
from medview.gui import import_pyqtgraph
from medview.gui.workers import JobRunner
from medview.models.pretrained import IMAGENET_BASES
from medview.training import data as tdata
from medview.training.preview import ScanReport, scan_dataset
from medview.training.strategies import STRATEGIES
from medview.training.types import TrainConfig

pg = import_pyqtgraph()  # without its CUDA probe

#: the wizard's starting values are the engine's defaults
DEFAULTS = TrainConfig()



def _plain(text: str = "") -> QLabel:
    lab = QLabel(text)
    lab.setTextFormat(Qt.TextFormat.PlainText)
    lab.setWordWrap(True)
    return lab


class DataPage(QWizardPage):
    def __init__(self, wiz: TrainingWizard) -> None:
        super().__init__()
        self.wiz = wiz
        self.setTitle("1. Data")
        self.setSubTitle("A folder with one subfolder per class, or a CSV manifest "
                         "(path, label, optional patient_id and split).")
        self.path_edit = QLineEdit(wiz.settings.value("wizard/data", "", str))
        browse_dir = QPushButton("Folder...")
        browse_dir.clicked.connect(self._browse_dir)
        browse_csv = QPushButton("CSV...")
        browse_csv.clicked.connect(self._browse_csv)
        self.scan_button = QPushButton("Scan")
        self.scan_button.clicked.connect(self.scan)
        self.progress = QProgressBar()
        self.progress.setVisible(False)
        self.summary = _plain()
        self.message = _plain()
        self.message.setStyleSheet("color: #b00020; font-weight: bold;")
        self.warn = _plain()
        self.warn.setStyleSheet("color: #b36b00;")
        self.skipped = QTableWidget(0, 2)
        self.skipped.setHorizontalHeaderLabels(["Unreadable file", "Reason"])
        self.skipped.horizontalHeader().setStretchLastSection(True)
        self.skipped.setMaximumHeight(140)
        row = QHBoxLayout()
        row.addWidget(self.path_edit, 1)
        for b in (browse_dir, browse_csv, self.scan_button):
            row.addWidget(b)
        lay = QVBoxLayout(self)
        lay.addLayout(row)
        lay.addWidget(self.progress)
        lay.addWidget(self.summary)
        lay.addWidget(self.message)
        lay.addWidget(self.warn)
        lay.addWidget(self.skipped)
        lay.addStretch(1)
        self.path_edit.textChanged.connect(self._invalidate)

    def _browse_dir(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "Labelled folder")
        if d:
            self.path_edit.setText(d)
            self.scan()

    def _browse_csv(self) -> None:
        f, _ = QFileDialog.getOpenFileName(self, "Manifest", "", "CSV (*.csv)")
        if f:
            self.path_edit.setText(f)
            self.scan()

    def _invalidate(self) -> None:
        self.wiz.report = None
        self.completeChanged.emit()

    def scan(self) -> None:
        path = self.path_edit.text().strip()
        if not path:
            return
        self.wiz.settings.setValue("wizard/data", path)
        self.wiz.report = None
        self.message.setText("")
        self.progress.setVisible(True)
        self.progress.setRange(0, 0)
        min_per = self.wiz.min_per_class
        job = self.wiz.jobs.start("scan", lambda tok: scan_dataset(path, min_per, cancel=tok))
        job.progress.connect(lambda p: (self.progress.setRange(0, p.total),
                                        self.progress.setValue(p.done)))
        job.succeeded.connect(lambda r, j=job: self._on_scan(j, r))
        job.failed.connect(lambda exc, j=job: self._on_error(j, exc))

    def _on_error(self, job, exc) -> None:
        if self.wiz.jobs.is_current(job):
            self.progress.setVisible(False)
            self.message.setText(f"Cannot use this data: {exc}")
            self.wiz.scan_done.emit(None)

    def _on_scan(self, job, report: ScanReport) -> None:
        if not self.wiz.jobs.is_current(job):
            return
        self.progress.setVisible(False)
        ds = report.dataset
        counts = ds.counts()
        sizes = ", ".join(f"{k} ({n})" for k, n in report.sizes.most_common(4))
        mods = ", ".join(f"{k} ({n})" for k, n in report.modalities.most_common())
        grouping = {"manifest": "patient ids from the manifest", "file names":
                    "patient ids from the file names", "DICOM Patient ID":
                    "patient ids from DICOM Patient ID (hashed)", "none":
                    "no patient ids found"}[ds.patient_source]
        self.summary.setText(
            f"{len(ds.samples)} readable images in {len(ds.classes)} classes: "
            + ", ".join(f"{c}: {n}" for c, n in counts.items())
            + f"\nImage sizes: {sizes or '-'}\nModalities: {mods or '-'}"
            + f"\nExact duplicates: {report.duplicates}\nPatient grouping: {grouping}")
        self.message.setText("\n".join(report.problems))
        self.warn.setText("\n".join(f"Warning: {w}" for w in report.warnings))
        self.skipped.setRowCount(len(ds.skipped))
        for r, s in enumerate(ds.skipped):
            self.skipped.setItem(r, 0, QTableWidgetItem(os.path.basename(s.path)))
            self.skipped.setItem(r, 1, QTableWidgetItem(s.reason))
        self.wiz.report = report
        self.completeChanged.emit()
        self.wiz.scan_done.emit(report)

    def isComplete(self) -> bool:
        r = self.wiz.report
        return r is not None and not r.problems


class SplitPage(QWizardPage):
    def __init__(self, wiz: TrainingWizard) -> None:
        super().__init__()
        self.wiz = wiz
        self.setTitle("2. Split")
        self.setSubTitle("Stratified by class; all images of one patient stay in one split "
                         "when patient ids are known.")
        self.spins = {}
        form = QFormLayout()
        for name, default in (("train", 70), ("val", 15), ("test", 15)):
            sb = QSpinBox()
            sb.setRange(0, 100)
            sb.setSuffix(" %")
            sb.setValue(int(wiz.settings.value(f"wizard/split_{name}", default)))
            sb.valueChanged.connect(self.update_counts)
            self.spins[name] = sb
            form.addRow({"train": "Training", "val": "Validation", "test": "Test"}[name], sb)
        self.counts = _plain()
        self.note = _plain()
        self.note.setStyleSheet("color: #b36b00;")
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.counts)
        lay.addWidget(self.note)
        lay.addStretch(1)

    def fractions(self) -> tuple[float, float, float]:
        return tuple(self.spins[n].value() / 100 for n in ("train", "val", "test"))

    def initializePage(self) -> None:
        self.update_counts()

    def update_counts(self) -> None:
        r = self.wiz.report
        if r is None:
            return
        for n, sb in self.spins.items():
            self.wiz.settings.setValue(f"wizard/split_{n}", sb.value())
        ds = r.dataset
        if all(s.split for s in ds.samples):
            self.note.setText("The manifest's own split column is used.")
        else:
            self.note.setText("")
        splits = tdata.assign_splits(ds, self.fractions(), seed=0)
        lines = []
        for sp in ("train", "val", "test"):
            c = ds.counts(splits[sp])
            pats = len({ds.samples[i].patient for i in splits[sp] if ds.samples[i].patient})
            lines.append(f"{sp}: {len(splits[sp])} images ({pats} patients) - "
                         + ", ".join(f"{k}: {v}" for k, v in c.items()))
        leaks = tdata.leakage_report(ds, splits)
        self.counts.setText("\n".join(lines))
        if leaks:
            self.note.setText("\n".join(leaks))
        self.completeChanged.emit()

    def isComplete(self) -> bool:
        f = self.fractions()
        return abs(sum(f) - 1.0) < 1e-6 and f[0] > 0 and f[1] > 0


class ModelPage(QWizardPage):
    def __init__(self, wiz: TrainingWizard) -> None:
        super().__init__()
        self.wiz = wiz
        s = wiz.settings
        self.setTitle("3. Model")
        self.setSubTitle("Start from an ImageNet network or from one of your models.")
        self.base_box = QComboBox()
        for base in IMAGENET_BASES.values():
            self.base_box.addItem(base.label, base.id)
        panel = getattr(wiz.parent(), "model_panel", None)
        if panel is not None and panel.models_loaded:  # read in the background already
            cards = panel.cards
        else:
            from medview.models.registry import discover_models

            cards = discover_models().models
        for card in cards:
            self.base_box.addItem(f"Model: {card.name} ({card.version})", card.id)
        self.base_box.addItem("Other timm architecture with a local weights file...", "other")
        self.base_box.currentIndexChanged.connect(self._on_base)
        self.arch_edit = QLineEdit(s.value("wizard/arch", "", str))
        self.arch_edit.setPlaceholderText("timm architecture, e.g. resnet50")
        self.weights_edit = QLineEdit(s.value("wizard/weights", "", str))
        self.weights_edit.setPlaceholderText("weights.safetensors")
        self.strategy_box = QComboBox()
        for strategy in STRATEGIES.values():
            self.strategy_box.addItem(strategy.label, strategy.name)
        self.strategy_help = _plain()
        self.strategy_box.currentIndexChanged.connect(self._on_strategy)
        self.blocks = QSpinBox()
        self.blocks.setRange(1, 7)
        self.blocks.setValue(int(s.value("wizard/blocks", DEFAULTS.unfreeze_blocks)))
        self.size = QSpinBox()
        self.size.setRange(32, 512)
        self.size.setSingleStep(16)
        self.size.setValue(int(s.value("wizard/size", DEFAULTS.image_size)))
        self.epochs = QSpinBox()
        self.epochs.setRange(1, 200)
        self.epochs.setValue(int(s.value("wizard/epochs", DEFAULTS.epochs)))
        self.lr = QDoubleSpinBox()
        self.lr.setDecimals(5)
        self.lr.setRange(1e-5, 1.0)
        self.lr.setSingleStep(1e-4)
        self.lr.setValue(float(s.value("wizard/lr", DEFAULTS.lr)))
        self.batch = QSpinBox()
        self.batch.setRange(1, 512)
        self.batch.setValue(int(s.value("wizard/batch", DEFAULTS.batch_size)))
        self.augment = QCheckBox("Augment: what other hospitals do to films (codec, "
                                 "resampling, blur, window, crops, markers), small "
                                 "rotation/shift; lungs moved into other films, lung-hidden "
                                 "films taught 'cannot tell' (no flips)")
        self.augment.setToolTip("The robust recipe: the model learns to decide from the "
                                "lungs, not from how a film was encoded or framed. The "
                                "results page shows what the trained model relies on.")
        self.augment.setChecked(s.value("wizard/augment", "true") in ("true", True))
        self.balance = QComboBox()
        self.balance.addItem("Weight the loss by class frequency", "weights")
        self.balance.addItem("Balanced sampling", "sampler")
        self.balance.addItem("None", "none")
        self.device = QComboBox()
        self.device.addItems(list(DEVICES))  # the same choices as the AI panel
        self.device.setCurrentText(s.value("wizard/device", "auto", str))
        self.run_on = QComboBox()  # "Run on": this process, or N local processes
        self.run_on.addItem("This computer (one process)", 1)
        from medview.training.distributed import can_launch

        cores = max(2, os.cpu_count() or 2)
        for n in sorted({2, 4, 8, cores}):
            if n <= cores:
                self.run_on.addItem(f"This computer, {n} processes (torchrun)", n)
        if not can_launch():
            for k in range(1, self.run_on.count()):
                self.run_on.model().item(k).setEnabled(False)
            self.run_on.setToolTip("Several processes need medview installed with Python "
                                   "(pip); the app bundle trains on one process.")
        self.run_on.setCurrentIndex(max(0, self.run_on.findData(
            int(s.value("wizard/nproc", 1)))))
        self.cluster_button = QPushButton("Write a cluster script...")
        self.cluster_button.setToolTip("Write train.json, run_torchrun.sh and run_slurm.sh "
                                       "for a GPU server or cluster into a folder")
        self.cluster_button.clicked.connect(self._cluster_dialog)
        self.cluster_status = _plain()
        self.preview_button = QPushButton("Preview augmentation")
        self.preview_button.clicked.connect(self.preview)
        self.preview_grid = QGridLayout()
        self.preview_labels = []
        for k in range(8):
            lab = QLabel()
            lab.setFixedSize(84, 84)
            lab.setStyleSheet("background: black;")
            self.preview_grid.addWidget(lab, k // 4, k % 4)
            self.preview_labels.append(lab)
        form = QFormLayout()
        form.addRow("Start from", self.base_box)
        form.addRow("Architecture", self.arch_edit)
        form.addRow("Weights file", self.weights_edit)
        form.addRow("Strategy", self.strategy_box)
        form.addRow("", self.strategy_help)
        form.addRow("Blocks to fine-tune", self.blocks)
        form.addRow("Image size", self.size)
        form.addRow("Epochs", self.epochs)
        form.addRow("Learning rate", self.lr)
        form.addRow("Batch size", self.batch)
        form.addRow("Class balancing", self.balance)
        form.addRow("Device", self.device)
        form.addRow("Run on", self.run_on)
        form.addRow(self.cluster_button, self.cluster_status)
        form.addRow(self.augment)
        form.addRow(self.preview_button)
        form.addRow(self.preview_grid)
        self.setLayout(form)
        strategy = s.value("wizard/strategy", DEFAULTS.strategy, str)
        self.strategy_box.setCurrentIndex(max(0, self.strategy_box.findData(strategy)))
        self._on_strategy()
        base = s.value("wizard/base", DEFAULTS.base, str)
        self.base_box.setCurrentIndex(max(0, self.base_box.findData(base)))
        self._on_base()

    def _on_strategy(self, *_args) -> None:
        strategy = STRATEGIES[self.strategy_box.currentData()]
        self.strategy_help.setText(strategy.description)
        # only what the strategy uses can be set (and the card records only what ran)
        self.augment.setEnabled(strategy.augments)
        self.augment.setToolTip("" if strategy.augments else
                                "This strategy trains on cached features: no augmentation.")
        self.preview_button.setEnabled(strategy.augments)
        self.blocks.setEnabled(strategy.uses_blocks)
        self.blocks.setToolTip("" if strategy.uses_blocks else
                               "Only 'fine-tune the last blocks' uses this.")

    def add_base_option(self, label: str, base_id: str) -> None:
        """Offer another base (used for small test networks)."""
        self.base_box.addItem(label, base_id)

    def _on_base(self) -> None:
        other = self.base_box.currentData() == "other"
        self.arch_edit.setEnabled(other)
        self.weights_edit.setEnabled(other)

    def config_kwargs(self) -> dict:
        base = self.base_box.currentData()
        kw = dict(strategy=self.strategy_box.currentData(), unfreeze_blocks=self.blocks.value(),
                  image_size=self.size.value(), epochs=self.epochs.value(), lr=self.lr.value(),
                  batch_size=self.batch.value(),
                  augment=self.augment.isChecked() and self.augment.isEnabled(),
                  balance=self.balance.currentData(), device=self.device.currentText())
        if base == "other":
            kw.update(base=f"timm:{self.arch_edit.text().strip()}",
                      weights_file=self.weights_edit.text().strip() or None)
        else:
            kw["base"] = base
        return kw

    def nproc(self) -> int:
        return int(self.run_on.currentData() or 1)

    def write_cluster_scripts(self, folder: str) -> list[str]:
        """The current settings as train.json plus torchrun and SLURM scripts."""
        from medview.models.registry import user_models_dir
        from medview.training.distributed import write_cluster_scripts
        from medview.training.types import TrainConfig

        cfg = TrainConfig(data=os.path.abspath(self.wiz.report.dataset.source),
                          split_fractions=self.wiz.split_page.fractions(),
                          min_per_class=self.wiz.min_per_class,
                          n_bootstrap=self.wiz.n_bootstrap, **self.config_kwargs())
        out = self.wiz.models_dir or user_models_dir()
        written = write_cluster_scripts(cfg, folder, out)
        self.cluster_status.setText(f"Wrote {len(written)} files to {folder}")
        return written

    def _cluster_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Write the cluster scripts into")
        if folder:
            try:
                self.write_cluster_scripts(folder)
            except OSError as exc:
                self.cluster_status.setText(f"Not written: {exc.strerror or exc}")

    def remember(self) -> None:
        s = self.wiz.settings
        s.setValue("wizard/nproc", self.nproc())
        for key, value in (("base", self.base_box.currentData()),
                           ("strategy", self.strategy_box.currentData()),
                           ("blocks", self.blocks.value()), ("size", self.size.value()),
                           ("epochs", self.epochs.value()), ("lr", self.lr.value()),
                           ("batch", self.batch.value()),
                           ("augment", "true" if self.augment.isChecked() else "false"),
                           ("device", self.device.currentText()),
                           ("arch", self.arch_edit.text()), ("weights", self.weights_edit.text())):
            s.setValue(f"wizard/{key}", value)

    def preview(self) -> None:
        """Augmented versions of a few training images, computed in a worker."""
        r = self.wiz.report
        if r is None or not r.dataset.samples:
            return
        samples = r.dataset.samples[:: max(1, len(r.dataset.samples) // 8)][:8]
        size = min(self.size.value(), 160)
        kw = self.config_kwargs()

        def job(token):
            from medview.training.preview import augmentation_preview

            return (yield from augmentation_preview([s.path for s in samples], size,
                                                    kw.get("augment", True), token))

        j = self.wiz.jobs.start("preview", job)
        j.succeeded.connect(self._show_preview)

    def _show_preview(self, arr: np.ndarray) -> None:
        for lab, img in zip(self.preview_labels, arr, strict=False):
            img = np.ascontiguousarray(img)
            h, w = img.shape
            q = QImage(img.data, w, h, w, QImage.Format.Format_Grayscale8).copy()
            lab.setPixmap(QPixmap.fromImage(q).scaled(84, 84, Qt.AspectRatioMode.KeepAspectRatio))
        self.wiz.preview_done.emit()

    def validatePage(self) -> bool:
        self.remember()
        if self.base_box.currentData() == "other" and not self.arch_edit.text().strip():
            QMessageBox.warning(self, "Model", "Enter a timm architecture name.")
            return False
        return True


class TrainPage(QWizardPage):
    def __init__(self, wiz: TrainingWizard) -> None:
        super().__init__()
        self.wiz = wiz
        self.setTitle("4. Training")
        self.setSubTitle("Curves update after every epoch. Cancel stops within a batch and "
                         "writes nothing.")
        self.status = _plain()
        self.progress = QProgressBar()
        self.cancel_button = QPushButton("Cancel training")
        self.cancel_button.clicked.connect(self.cancel)
        self.loss_plot = pg.PlotWidget(title="Training loss")
        self.loss_plot.setBackground("w")
        self.loss_curve = self.loss_plot.plot([], [], pen=pg.mkPen("#2f7fd1", width=2),
                                              symbol="o")
        self.metric_plot = pg.PlotWidget(title="Validation AUC (blue) and accuracy (orange)")
        self.metric_plot.setBackground("w")
        self.metric_plot.setYRange(0, 1)
        self.auc_curve = self.metric_plot.plot([], [], pen=pg.mkPen("#2f7fd1", width=2),
                                               symbol="o")
        self.acc_curve = self.metric_plot.plot([], [], pen=pg.mkPen("#e07b00", width=2),
                                               symbol="t")
        lay = QVBoxLayout(self)
        row = QHBoxLayout()
        row.addWidget(self.progress, 1)
        row.addWidget(self.cancel_button)
        lay.addLayout(row)
        lay.addWidget(self.status)
        plots = QHBoxLayout()
        plots.addWidget(self.loss_plot)
        plots.addWidget(self.metric_plot)
        lay.addLayout(plots, 1)
        self.history: list[dict] = []
        self.job = None
        self._running = False

    def initializePage(self) -> None:
        self.wiz.result = None
        self.history = []
        self.loss_curve.setData([], [])
        self.auc_curve.setData([], [])
        self.acc_curve.setData([], [])
        self.start()

    def start(self) -> None:
        from medview.training.engine import train
        from medview.training.types import TrainConfig

        r = self.wiz.report
        kw = self.wiz.model_page.config_kwargs()
        cfg = TrainConfig(data=r.dataset.source, split_fractions=self.wiz.split_page.fractions(),
                          min_per_class=self.wiz.min_per_class,
                          n_bootstrap=self.wiz.n_bootstrap, **kw)
        nproc = self.wiz.model_page.nproc()
        self.status.setText("Starting..." if nproc == 1 else
                            f"Starting {nproc} processes (torchrun)...")
        self.cancel_button.setEnabled(True)
        self._running = True
        if nproc > 1:
            import tempfile

            from medview.training.distributed import iter_train_processes

            work = tempfile.mkdtemp(prefix="medview-wizard-")
            cfg.data = os.path.abspath(cfg.data)
            self.job = self.wiz.jobs.start(
                "train", lambda tok: iter_train_processes(cfg, nproc, work, tok))
        else:
            # one folder per settings beside the models: a cancelled run started again
            # with the same settings resumes from its last finished epoch
            from medview.models.registry import user_models_dir
            from medview.training.engine import checkpoint_dir_for

            cfg.data = os.path.abspath(cfg.data)
            ckpt = checkpoint_dir_for(cfg, self.wiz.models_dir or user_models_dir())
            self.wiz.checkpoint_dir = ckpt
            self.job = self.wiz.jobs.start(
                "train", lambda tok: train(cfg, tok, checkpoint_dir=ckpt))
        self.job.progress.connect(self._on_event)
        self.job.succeeded.connect(lambda res, j=self.job: self._on_done(j, res))
        self.job.failed.connect(lambda exc, j=self.job: self._on_failed(j, exc))
        self.job.cancelled.connect(lambda j=self.job: self._on_cancelled(j))
        self.completeChanged.emit()

    def _on_event(self, ev) -> None:
        eta = f", about {ev.eta_s / 60:.1f} min left" if ev.eta_s else ""
        if ev.stage == "load":
            self.progress.setRange(0, ev.steps)
            self.progress.setValue(ev.step)
            self.status.setText(f"Reading images {ev.step}/{ev.steps}")
        elif ev.stage == "train":
            self.progress.setRange(0, ev.steps * ev.epochs)
            self.progress.setValue((ev.epoch - 1) * ev.steps + ev.step)
            self.status.setText(f"Epoch {ev.epoch}/{ev.epochs}, batch {ev.step}/{ev.steps}, "
                                f"loss {ev.loss:.4f}{eta}")
        elif ev.stage == "epoch":
            self.history.append(ev.metrics)
            x = [h["epoch"] for h in self.history]
            self.loss_curve.setData(x, [h["loss"] for h in self.history])
            self.auc_curve.setData(x, [h["val_auc"] for h in self.history])
            self.acc_curve.setData(x, [h["val_accuracy"] for h in self.history])
            step = max(1, -(-ev.epochs // 10))  # whole epochs on the x axis
            for plot in (self.loss_plot, self.metric_plot):
                plot.getAxis("bottom").setTickSpacing(step, step)
            self.wiz.epoch_done.emit(ev.metrics)
        elif ev.stage in ("early_stop", "features", "evaluate"):
            self.status.setText(ev.message[:1].upper() + ev.message[1:])

    def cancel(self) -> None:
        if self._running and self.job is not None:
            self.status.setText("Cancelling...")
            self.job.cancel()

    def running(self) -> bool:
        return self._running

    def stop_and_wait(self, timeout_ms: int = 10000) -> None:
        if self._running and self.job is not None:
            self.job.cancel()
            self.job.wait(timeout_ms)

    def _on_done(self, job, result) -> None:
        if job is not self.job:
            return
        self._running = False
        self.wiz.result = result
        self.cancel_button.setEnabled(False)
        best = result.card.training["best_epoch"]
        self.progress.setRange(0, 1)
        self.progress.setValue(1)  # done is 100%, however early training stopped
        self.status.setText(f"Finished. Best epoch: {best} (its weights are kept).")
        self.completeChanged.emit()
        self.wiz.training_finished.emit(result)

    def _on_failed(self, job, exc) -> None:
        if job is self.job:
            self._running = False
            self.cancel_button.setEnabled(False)
            self.status.setText(f"Training failed: {exc}")
            self.wiz.training_failed.emit(str(exc))

    def _on_cancelled(self, job) -> None:
        if job is self.job:
            self._running = False
            self.cancel_button.setEnabled(False)
            self.status.setText("Cancelled. No model was written; training again with the "
                                "same settings resumes from the last finished epoch.")
            self.wiz.training_failed.emit("cancelled")

    def isComplete(self) -> bool:
        return self.wiz.result is not None


#: a gate row where at least this share of the images went the wrong way is marked
GATE_CONCERN = 0.2
METRIC_NAMES = {"auc": "AUC (ROC)", "sensitivity": "Sensitivity", "specificity": "Specificity",
                "accuracy": "Accuracy", "f1": "F1 score",
                "ece": "Calibration error (ECE, lower is better)"}


def metric_name(key: str) -> str:
    """A card metric's name in words ("auc_PNEUMONIA": "AUC, PNEUMONIA vs the rest")."""
    if key in METRIC_NAMES:
        return METRIC_NAMES[key]
    if key.startswith("auc_"):
        return f"AUC, {key[4:]} vs the rest"
    return key


class ResultsPage(QWizardPage):
    def __init__(self, wiz: TrainingWizard) -> None:
        super().__init__()
        self.wiz = wiz
        self.setTitle("5. Results")
        self.setSubTitle("Validation data picks the threshold; test data only reports. "
                         "Locally trained models are not clinically validated.")
        self.metrics = QTableWidget(0, 3)
        self.metrics.setHorizontalHeaderLabels(["Metric (test)", "Value", "95% CI"])
        self.metrics.horizontalHeader().setStretchLastSection(True)
        self.confusion = QTableWidget(0, 0)
        self.roc = pg.PlotWidget(title="ROC (test)")
        self.roc.setBackground("w")
        self.roc.setXRange(0, 1)
        self.roc.setYRange(0, 1)
        self.calib = pg.PlotWidget(title="Calibration (test)")
        self.calib.setBackground("w")
        self.threshold = QSlider(Qt.Orientation.Horizontal)
        self.threshold.setRange(1, 99)
        self.threshold.valueChanged.connect(self._on_threshold)
        # only a user's drag, click or key press makes the threshold a user's choice; the
        # engine's validation threshold is kept exactly (the slider has 0.01 steps)
        self.threshold_touched = False
        self.threshold.actionTriggered.connect(self._touch_threshold)
        self.threshold_label = _plain()
        self.warn = _plain()
        self.warn.setStyleSheet("color: #b36b00;")
        # the trust gate fitted with the model: what it lets through and what it withholds
        self.gate_label = _plain()
        self.gate_table = QTableWidget(0, 3)
        self.gate_table.setHorizontalHeaderLabels(["Trust gate: where checked", "Images",
                                                   "Result"])
        self.gate_table.horizontalHeader().setStretchLastSection(True)
        self.gate_table.verticalHeader().setVisible(False)
        # the shortcut audit: what the model relies on, in words
        self.reliance_label = _plain()
        self.name_edit = QLineEdit()
        self.save_button = QPushButton("Save model")
        self.save_button.clicked.connect(self.save)
        self.saved_label = _plain()
        grid = QGridLayout(self)
        grid.addWidget(self.metrics, 0, 0)
        grid.addWidget(self.confusion, 0, 1)
        grid.addWidget(self.roc, 1, 0)
        grid.addWidget(self.calib, 1, 1)
        thr = QHBoxLayout()
        thr.addWidget(QLabel("Threshold"))
        thr.addWidget(self.threshold, 1)
        grid.addLayout(thr, 2, 0, 1, 2)
        grid.addWidget(self.threshold_label, 3, 0, 1, 2)
        grid.addWidget(self.gate_label, 4, 0, 1, 2)
        grid.addWidget(self.gate_table, 5, 0, 1, 2)
        grid.addWidget(self.reliance_label, 6, 0, 1, 2)
        grid.addWidget(self.warn, 7, 0, 1, 2)
        save = QHBoxLayout()
        save.addWidget(QLabel("Name"))
        save.addWidget(self.name_edit, 1)
        save.addWidget(self.save_button)
        grid.addLayout(save, 8, 0, 1, 2)
        grid.addWidget(self.saved_label, 9, 0, 1, 2)
        grid.setRowStretch(0, 2)
        grid.setRowStretch(1, 3)
        grid.setRowStretch(5, 1)
        self.saved_folder: str | None = None

    def initializePage(self) -> None:
        from medview.training import metrics as M

        res = self.wiz.result
        card = res.card
        test = card.headline_metrics
        rows = [(k, test[k]) for k in ("auc", "sensitivity", "specificity", "accuracy", "f1",
                                       "ece")]
        rows += [(k, v) for k, v in test.items() if k.startswith("auc_") and k != "auc_macro"]
        self.metrics.setRowCount(len(rows))
        for r, (k, v) in enumerate(rows):
            name = QTableWidgetItem(metric_name(k))
            name.setToolTip(f"card field: {k}")
            self.metrics.setItem(r, 0, name)
            self.metrics.setItem(r, 1, QTableWidgetItem(str(v["value"])))
            self.metrics.setItem(r, 2, QTableWidgetItem(f"{v['ci95'][0]} - {v['ci95'][1]}"))
        cm = test["confusion_matrix"]
        classes = res.classes
        self.confusion.setRowCount(len(classes))
        self.confusion.setColumnCount(len(classes))
        self.confusion.setHorizontalHeaderLabels([f"pred {c}" for c in classes])
        self.confusion.setVerticalHeaderLabels([f"true {c}" for c in classes])
        for i in range(len(classes)):
            for j in range(len(classes)):
                self.confusion.setItem(i, j, QTableWidgetItem(str(cm[i][j])))
        self.confusion.resizeColumnsToContents()
        self.metrics.resizeColumnsToContents()
        self.roc.clear()
        self.calib.clear()
        self.roc.plot([0, 1], [0, 1], pen=pg.mkPen("#999999", style=Qt.PenStyle.DashLine))
        self.calib.plot([0, 1], [0, 1], pen=pg.mkPen("#999999", style=Qt.PenStyle.DashLine))
        colors = ["#2f7fd1", "#e07b00", "#2a9d3a", "#b00020"]
        probs, y = (res.test_probs, res.test_y) if len(res.test_y) else (res.val_probs, res.val_y)
        for k, c in enumerate(classes):
            if len(classes) == 2 and k == 0:
                continue
            fpr, tpr, _ = M.roc_curve(y == k, probs[:, k])
            self.roc.plot(fpr, tpr, pen=pg.mkPen(colors[k % 4], width=2), name=c)
            pred, obs, _ = M.calibration_curve(probs[:, k], y == k)
            self.calib.plot(pred, obs, pen=pg.mkPen(colors[k % 4], width=2), symbol="o")
        thr = card.thresholds
        pos = card.decision.positive_class
        self.threshold.setEnabled(bool(thr))
        self.threshold_touched = False
        if thr:
            self.threshold.blockSignals(True)
            self.threshold.setValue(round(100 * next(iter(thr.values()))))
            self.threshold.blockSignals(False)
        self._on_threshold()
        audit_warnings = set(card.reliance.warnings) if card.reliance is not None else set()
        self.warn.setText("\n".join(f"Warning: {w}" for w in res.warnings
                                    if w not in audit_warnings))
        self._show_gate(card)
        self._show_reliance(card)
        self.name_edit.setText(card.name)
        self.saved_label.setText("")
        self.saved_folder = None
        if pos:
            self.threshold.setToolTip(f"Threshold on p({pos})")

    def _show_gate(self, card) -> None:
        from medview.models.card import checked_rows, gate_summary

        sc = card.scope
        if sc is None:
            self.gate_label.setText("No trust gate was fitted: the model would answer any "
                                    "image.")
            self.gate_table.setRowCount(0)
            return
        self.gate_label.setText(f"Trust gate fitted: {gate_summary(card)}")
        # the rows that went worst first, and every row on screen (no 3-row scroll
        # hiding them): out-of-distribution images let through, in-scope ones withheld
        rows = sorted(checked_rows(card), key=lambda row: -row[3])
        self.gate_table.setRowCount(len(rows))
        for r, (*cells, concern) in enumerate(rows):
            for c, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if concern >= GATE_CONCERN:
                    item.setForeground(QColor("#d08a2a"))
                    item.setToolTip(f"{concern:.0%} of these images were not handled as "
                                    "they should be")
                self.gate_table.setItem(r, c, item)
        self.gate_table.resizeColumnsToContents()
        self.gate_table.resizeRowsToContents()
        header = self.gate_table.horizontalHeader().height()
        body = sum(self.gate_table.rowHeight(r) for r in range(len(rows)))
        self.gate_table.setMinimumHeight(min(header + body + 4, 420))

    def _show_reliance(self, card) -> None:
        from medview.models.card import reliance_lines

        self.reliance_label.setText("What the model relies on (shortcut audit): "
                                    + "\n".join(reliance_lines(card)))
        warned = card.reliance is not None and bool(card.reliance.warnings)
        self.reliance_label.setStyleSheet("color: #b00020;" if warned else "")

    def _touch_threshold(self, _action=None) -> None:
        self.threshold_touched = True  # the value changes right after; the label follows

    def current_threshold(self) -> float:
        """The slider's value once the user moved it; until then the engine's
        validation-chosen threshold, unrounded."""
        res = self.wiz.result
        if not self.threshold_touched and res is not None and res.card.thresholds:
            return float(next(iter(res.card.thresholds.values())))
        return self.threshold.value() / 100.0

    def _on_threshold(self) -> None:
        from medview.training import metrics as M

        res = self.wiz.result
        if res is None:
            return
        pos = res.card.decision.positive_class
        if not pos:
            self.threshold_label.setText("Multi-class model: the label is the most probable "
                                         "class.")
            return
        k = res.classes.index(pos)
        t = self.current_threshold()
        b = M.binary_at(res.val_y == k, res.val_probs[:, k], t)
        who = ("your threshold" if self.threshold_touched else
               "the validation-chosen threshold")
        self.threshold_label.setText(
            f"At {who} {t:.4g} on p({pos}), validation sensitivity {b['sensitivity']:.3f}, "
            f"specificity {b['specificity']:.3f} ({b['tp']} TP, {b['fn']} FN, {b['fp']} FP, "
            f"{b['tn']} TN).")

    def save(self) -> str | None:
        from medview.models.registry import user_models_dir
        from medview.training.save import save_trained

        res = self.wiz.result
        threshold = (self.current_threshold()
                     if res.card.decision.positive_class and self.threshold_touched else None)
        out = self.wiz.models_dir or user_models_dir()
        try:
            folder = save_trained(res, out,
                                  name=self.name_edit.text().strip() or res.card.name,
                                  threshold=threshold, n_bootstrap=self.wiz.n_bootstrap,
                                  checkpoint_dir=self.wiz.checkpoint_dir)
        except (FileExistsError, OSError) as exc:
            self.saved_label.setText(f"Not saved: {exc}")
            return None
        card_id = os.path.basename(folder)  # the folder is named by the card's id
        self.saved_folder = folder
        self.saved_label.setText(f"Saved as '{card_id}'. It is now selectable in the AI "
                                 "model panel.")
        self.wiz.model_saved.emit(card_id)
        self.completeChanged.emit()
        return folder

    def isComplete(self) -> bool:
        return self.saved_folder is not None


class TrainingWizard(QWizard):
    """The five-page fine-tuning wizard."""

    scan_done = Signal(object)
    preview_done = Signal()
    epoch_done = Signal(object)
    training_finished = Signal(object)
    training_failed = Signal(str)
    model_saved = Signal(str)

    def __init__(self, jobs: JobRunner | None = None, settings: QSettings | None = None,
                 models_dir: str | None = None, parent=None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Fine-tune a model")
        self.setWizardStyle(QWizard.WizardStyle.ModernStyle)
        self.resize(980, 760)
        self.jobs = jobs or JobRunner(self)
        self.settings = settings or QSettings("medview", "medview")
        self.models_dir = models_dir
        self.min_per_class = 10
        self.n_bootstrap = 1000
        #: the one-process run's checkpoint folder (dropped when its model is saved)
        self.checkpoint_dir: str | None = None
        self.report: ScanReport | None = None
        self.result = None
        self.data_page = DataPage(self)
        self.split_page = SplitPage(self)
        self.model_page = ModelPage(self)
        self.train_page = TrainPage(self)
        self.results_page = ResultsPage(self)
        for p in (self.data_page, self.split_page, self.model_page, self.train_page,
                  self.results_page):
            self.addPage(p)

    def training_running(self) -> bool:
        return self.train_page.running()

    def confirm_stop(self) -> bool:
        """Ask before abandoning a running training; cancel it cleanly if confirmed."""
        if not self.training_running():
            return True
        answer = QMessageBox.question(
            self, "Training is running",
            "Stop the training? No model will be saved and your existing models are "
            "untouched; training again with the same settings resumes from the last "
            "finished epoch.")
        if answer != QMessageBox.StandardButton.Yes:
            return False
        self.train_page.stop_and_wait()
        return True

    def reject(self) -> None:
        if self.confirm_stop():
            super().reject()

    def closeEvent(self, ev) -> None:
        if self.confirm_stop():
            ev.accept()
        else:
            ev.ignore()
