"""The fine-tuning wizard end to end on a small synthetic labelled folder."""

import os
import shutil

import pytest

from medview.training.export import TMP_PREFIX
from tests.tiny import write_patch_dataset

# one of the slowest files: `pytest -m "not slow"` leaves it out
pytestmark = pytest.mark.slow


@pytest.fixture
def app_window(make_window, tmp_path, monkeypatch):
    models = tmp_path / "user-models"
    monkeypatch.setenv("MEDVIEW_MODELS_DIR", str(models))
    win = make_window()
    yield win, models
    if getattr(win, "wizard", None) is not None:
        win.wizard.train_page.stop_and_wait()
    win.jobs.shutdown()


def _wizard(win):
    wiz = win.open_wizard()
    wiz.min_per_class = 5
    wiz.n_bootstrap = 50
    wiz.model_page.add_base_option("Tiny test network", "timm:test_efficientnet")
    return wiz


def _scan(qtbot, wiz, path):
    wiz.data_page.path_edit.setText(str(path))
    with qtbot.waitSignal(wiz.scan_done, timeout=30000) as got:
        wiz.data_page.scan_button.click()
    return got.args[0]


def _configure(wiz, epochs):
    mp = wiz.model_page
    mp.base_box.setCurrentIndex(mp.base_box.findData("timm:test_efficientnet"))
    mp.strategy_box.setCurrentIndex(mp.strategy_box.findData("full"))
    mp.size.setValue(64)
    mp.epochs.setValue(epochs)
    mp.batch.setValue(8)
    mp.lr.setValue(0.002)
    mp.augment.setChecked(False)


def _ready_to_train(qtbot, win, tmp_path, epochs=50):
    """The wizard on its training page's doorstep: a scanned folder, split, configured."""
    data = write_patch_dataset(str(tmp_path / "data"), n_per_class=24)
    wiz = _wizard(win)
    _scan(qtbot, wiz, data)
    wiz.next()
    wiz.next()
    _configure(wiz, epochs=epochs)
    return wiz


def test_wizard_trains_saves_and_model_is_selectable(qtbot, app_window, tmp_path):
    win, models = app_window
    data = write_patch_dataset(str(tmp_path / "data"), n_per_class=48)
    wiz = _wizard(win)
    report = _scan(qtbot, wiz, data)
    assert report.problems == []
    text = wiz.data_page.summary.text()
    assert "96 readable images in 2 classes: patch: 48, plain: 48" in text
    assert "patient ids from the file names" in text
    wiz.next()
    assert wiz.currentPage() is wiz.split_page
    assert "train:" in wiz.split_page.counts.text()
    wiz.next()
    mp = wiz.model_page
    from medview.core.modeling import DEVICES

    assert [mp.device.itemText(k) for k in range(mp.device.count())] == list(DEVICES)
    mp.strategy_box.setCurrentIndex(mp.strategy_box.findData("feature"))
    assert not mp.augment.isEnabled() and not mp.blocks.isEnabled()  # nothing that won't run
    mp.strategy_box.setCurrentIndex(mp.strategy_box.findData("partial"))
    assert mp.augment.isEnabled() and mp.blocks.isEnabled()
    _configure(wiz, epochs=6)
    assert not mp.blocks.isEnabled()  # "full" reads no block count
    with qtbot.waitSignal(wiz.preview_done, timeout=30000):
        wiz.model_page.preview_button.click()
    assert not wiz.model_page.preview_labels[0].pixmap().isNull()
    with qtbot.waitSignal(wiz.training_finished, timeout=300000):
        wiz.next()
    page = wiz.train_page
    assert len(page.history) >= 1 and page.auc_curve.getData()[0] is not None
    assert page.progress.value() == page.progress.maximum()  # finished is 100%
    assert page.metric_plot.getAxis("bottom")._tickSpacing[0][0] == 1  # whole epochs
    wiz.next()
    results = wiz.results_page
    assert results.metrics.rowCount() >= 6 and results.confusion.rowCount() == 2
    assert "validation sensitivity" in results.threshold_label.text()
    # the trust gate was fitted and is shown with where it was checked
    assert "Trust gate fitted" in results.gate_label.text()
    checked = [results.gate_table.item(r, 0).text() for r in
               range(results.gate_table.rowCount())]
    assert any(c.startswith("internal test") for c in checked)
    assert any("inverted" in c for c in checked)
    # worst rows first, every row on screen (no scrolling), metrics named in words
    from medview.models.card import checked_rows

    concerns = sorted((r[3] for r in checked_rows(wiz.result.card)), reverse=True)
    assert [results.gate_table.item(0, 0).text()] == [
        next(r[0] for r in checked_rows(wiz.result.card) if r[3] == concerns[0])]
    assert results.gate_table.verticalScrollBar().maximum() == 0 or \
        results.gate_table.minimumHeight() == 420
    names = [results.metrics.item(r, 0).text() for r in range(results.metrics.rowCount())]
    assert "AUC (ROC)" in names and not {"auc", "ece"} & set(names)
    assert any(n.startswith("Calibration error") for n in names)
    # ... and what the model relies on (the shortcut audit of the test split)
    rel = results.reliance_label.text()
    assert rel.startswith("What the model relies on (shortcut audit)")
    assert "Checked on the test split" in rel and "edges of the film" in rel
    results.name_edit.setText("Wizard patch model")
    panel = win.model_panel
    with qtbot.waitSignal(wiz.model_saved, timeout=30000) as saved, \
            qtbot.waitSignal(panel.models_ready, timeout=30000):
        results.save_button.click()  # then the panel re-reads the models in a worker
    assert saved.args[0] == "wizard-patch-model"
    # saved without touching the slider: the engine's exact threshold, not a user choice
    saved_card = panel.current_card().card
    engine_card = wiz.result.card
    assert saved_card.thresholds == engine_card.thresholds
    assert "the user chose" not in saved_card.decision.rule
    assert os.listdir(models) == ["wizard-patch-model"]
    assert "scope.safetensors" in os.listdir(os.path.join(models, "wizard-patch-model"))
    assert panel.current_card().id == "wizard-patch-model"
    # the new model predicts the right class
    from medview.inference.predictor import Predictor
    from medview.io import load

    pred = Predictor(panel.current_card(), "cpu")
    for cls in ("patch", "plain"):
        f = sorted(os.listdir(os.path.join(data, cls)))[-1]
        vol = load([os.path.join(data, cls, f)]).volumes[0]
        assert pred.predict(vol, 0).label == cls
    # the wizard remembers its settings
    assert win.settings.value("wizard/epochs") in (6, "6")
    assert win.settings.value("wizard/data") == data


def test_cancel_mid_epoch_writes_nothing(qtbot, app_window, tmp_path):
    win, models = app_window
    wiz = _ready_to_train(qtbot, win, tmp_path)
    started = []

    def on_event(ev):
        if ev.stage == "train" and not started:
            started.append(ev)
            wiz.train_page.cancel_button.click()

    with qtbot.waitSignal(wiz.training_failed, timeout=120000) as failed:
        wiz.next()
        wiz.train_page.job.progress.connect(on_event)
    assert failed.args[0] == "cancelled"
    assert started and started[0].epoch == 1
    assert "No model was written" in wiz.train_page.status.text()
    assert not models.exists() or [n for n in os.listdir(models) if not n.startswith(
        (TMP_PREFIX, ".medview-checkpoints"))] == []
    assert not wiz.train_page.isComplete()


def test_a_cancelled_run_resumes_from_its_last_epoch(qtbot, app_window, tmp_path):
    """One process: the finished epochs are checkpointed beside the models, the same
    settings started again resume after them, and saving drops the checkpoint."""
    win, models = app_window
    wiz = _ready_to_train(qtbot, win, tmp_path, epochs=3)
    page = wiz.train_page

    def cancel_after_first_epoch(ev):
        if ev.stage == "epoch" and ev.epoch == 1:
            page.cancel_button.click()

    with qtbot.waitSignal(wiz.training_failed, timeout=120000):
        wiz.next()
        page.job.progress.connect(cancel_after_first_epoch)
    checkpoints = models / ".medview-checkpoints"
    assert checkpoints.is_dir() and len(os.listdir(checkpoints)) == 1
    assert "resumes from the last finished epoch" in page.status.text()
    events = []
    with qtbot.waitSignal(wiz.training_finished, timeout=300000):
        page.start()
        page.job.progress.connect(events.append)
    resumed = [ev for ev in events if ev.stage == "resume"]
    assert resumed and resumed[0].epoch >= 1
    assert not any(ev.stage == "epoch" and ev.epoch == 1 for ev in events)
    wiz.next()
    with qtbot.waitSignal(wiz.model_saved, timeout=30000):
        wiz.results_page.save_button.click()
    assert not checkpoints.exists()


def test_bad_folders_get_their_messages(qtbot, app_window, tmp_path):
    win, _ = app_window
    wiz = _wizard(win)
    # one class only
    one = write_patch_dataset(str(tmp_path / "one"), n_per_class=8)
    shutil.rmtree(os.path.join(one, "plain"))
    report = _scan(qtbot, wiz, one)
    assert any("at least 2 are needed" in p for p in report.problems)
    assert "at least 2" in wiz.data_page.message.text()
    assert not wiz.data_page.isComplete()
    # too few per class, plus unreadable files listed with reasons
    few = write_patch_dataset(str(tmp_path / "few"), n_per_class=3)
    with open(os.path.join(few, "plain", "broken.png"), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n broken")
    report = _scan(qtbot, wiz, few)
    assert any("too few images per class" in p and "plain: 3" in p for p in report.problems)
    assert wiz.data_page.skipped.rowCount() == 1
    assert wiz.data_page.skipped.item(0, 0).text() == "broken.png"
    # strong imbalance warns but does not block
    imb = write_patch_dataset(str(tmp_path / "imb"), n_per_class=24)
    for name in sorted(os.listdir(os.path.join(imb, "plain")))[6:]:
        os.remove(os.path.join(imb, "plain", name))
    report = _scan(qtbot, wiz, imb)
    assert report.problems == [] and "imbalance" in wiz.data_page.warn.text()
    # the same patient in train and validation (a manifest's own split column)
    data = write_patch_dataset(str(tmp_path / "m"), n_per_class=8)
    rows = ["path,label,patient_id,split"]
    for cls in ("patch", "plain"):
        for k, name in enumerate(sorted(os.listdir(os.path.join(data, cls)))):
            split = ["train", "train", "train", "train", "val", "val", "test", "test"][k]
            rows.append(f"{cls}/{name},{cls},{cls}-{min(k, 4)},{split}")
    manifest = os.path.join(data, "manifest.csv")
    with open(manifest, "w") as f:
        f.write("\n".join(rows))
    _scan(qtbot, wiz, manifest)
    wiz.next()
    assert "patient(s) appear in more than one split" in wiz.split_page.note.text()


def test_closing_app_during_training_asks_then_cancels(qtbot, app_window, tmp_path,
                                                       monkeypatch):
    from PySide6.QtWidgets import QMessageBox

    win, models = app_window
    wiz = _ready_to_train(qtbot, win, tmp_path)
    with qtbot.waitSignal(wiz.epoch_done, timeout=120000):
        wiz.next()
    asked = []

    def answer(*args, **kwargs):
        asked.append(args[1])
        return answer.reply

    monkeypatch.setattr(QMessageBox, "question", answer)
    answer.reply = QMessageBox.StandardButton.No
    assert not win.close()  # the user said no: still training, window stays
    assert wiz.training_running() and asked
    answer.reply = QMessageBox.StandardButton.Yes
    assert win.close()
    assert not wiz.train_page.job.isRunning()
    # no model; the finished epochs' checkpoint stays for the same run to resume
    assert not models.exists() or [n for n in os.listdir(models) if not n.startswith(
        (TMP_PREFIX, ".medview-checkpoints"))] == []


def test_wizard_trains_on_two_processes_and_writes_cluster_scripts(qtbot, app_window,
                                                                    tmp_path):
    win, models = app_window
    wiz = _ready_to_train(qtbot, win, tmp_path, epochs=3)
    mp = wiz.model_page
    written = mp.write_cluster_scripts(str(tmp_path / "cluster"))
    assert sorted(os.path.basename(p) for p in written) == [
        "run_slurm.sh", "run_torchrun.sh", "train.json"]
    mp.run_on.setCurrentIndex(mp.run_on.findData(2))
    assert mp.nproc() == 2
    with qtbot.waitSignal(wiz.training_finished, timeout=300000) as done:
        wiz.next()
    result = done.args[0]
    assert result.card.training["world_size"] == 2
    assert result.card.training["effective_batch_size"] == 16
    page = wiz.train_page
    assert [h["epoch"] for h in page.history] == [1, 2, 3]  # curves from the workers
    wiz.next()
    wiz.results_page.name_edit.setText("Two process model")
    with qtbot.waitSignal(wiz.model_saved, timeout=30000), \
            qtbot.waitSignal(win.model_panel.models_ready, timeout=30000):
        wiz.results_page.save_button.click()
    assert os.listdir(models) == ["two-process-model"]


def test_training_on_processes_can_be_cancelled(qtbot, app_window, tmp_path):
    win, models = app_window
    wiz = _ready_to_train(qtbot, win, tmp_path, epochs=200)
    mp = wiz.model_page
    mp.run_on.setCurrentIndex(mp.run_on.findData(2))
    with qtbot.waitSignal(wiz.epoch_done, timeout=300000):
        wiz.next()
    page = wiz.train_page
    with qtbot.waitSignal(page.job.cancelled, timeout=30000):
        page.cancel_button.click()
    assert "Cancelled" in page.status.text()
    assert not os.path.exists(models) or os.listdir(models) == []
    # torchrun stops its workers (they may take a moment to exit)
    qtbot.waitUntil(lambda: not [p for p in os.listdir("/proc")
                                 if p.isdigit() and _is_worker(p)], timeout=20000)


def _is_worker(pid: str) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read()
    except OSError:
        return False
    return b"medview.training.distributed" in cmd and b"medview-wizard-" in cmd
