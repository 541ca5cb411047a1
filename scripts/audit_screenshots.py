"""Screenshots of the shortcut audit where a user meets it: the wizard's results page
after training on a folder whose positive films carry a planted corner marker, and the
model card dialog of a bundled model.

    xvfb-run -a python scripts/audit_screenshots.py docs/screenshots [--model cxr-pneumonia]

Drives the real window (File menu's wizard, the AI panel's card button), waits on the
wizard's signals, and saves ``wizard-audit.png`` and ``model-card-audit.png``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def wait_for(app, signal, timeout_ms: int) -> None:
    from PySide6.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    signal.connect(loop.quit)
    QTimer.singleShot(timeout_ms, loop.quit)
    loop.exec()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--model", default="cxr-pneumonia")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="medview-shots-")
    os.environ["MEDVIEW_MODELS_DIR"] = os.path.join(tmp, "models")
    os.environ.setdefault("MEDVIEW_AUDIT_DIR", os.path.join(tmp, "audit"))

    from PySide6.QtWidgets import QApplication

    from medview.gui.main_window import MainWindow
    from tests.test_robust import _write_marker_dataset

    app = QApplication.instance() or QApplication([])
    win = MainWindow()
    win.resize(1400, 900)
    win.show()
    data = _write_marker_dataset(os.path.join(tmp, "marker"), n=32)
    wiz = win.open_wizard()
    wiz.min_per_class = 5
    wiz.model_page.add_base_option("Tiny test network", "timm:test_efficientnet")
    wiz.data_page.path_edit.setText(data)
    wiz.data_page.scan_button.click()
    wait_for(app, wiz.scan_done, 60000)
    wiz.next()
    wiz.next()
    mp = wiz.model_page
    mp.base_box.setCurrentIndex(mp.base_box.findData("timm:test_efficientnet"))
    mp.strategy_box.setCurrentIndex(mp.strategy_box.findData("full"))
    mp.size.setValue(64)
    mp.epochs.setValue(6)
    mp.batch.setValue(8)
    mp.lr.setValue(0.003)
    mp.augment.setChecked(False)  # the plain recipe: the marker is learned
    wiz.next()
    wait_for(app, wiz.training_finished, 600000)
    wiz.next()
    wiz.resize(1100, 1000)
    app.processEvents()
    wiz.grab().save(os.path.join(args.out, "wizard-audit.png"))
    wiz.train_page.stop_and_wait()
    wiz.close()

    panel = win.model_panel
    wait_for(app, panel.models_ready, 30000) if not panel.cards else None
    panel.model_box.setCurrentIndex([c.id for c in panel.cards].index(args.model))
    panel.show_card()
    dlg = panel._card_dialog
    dlg.resize(1000, 900)
    app.processEvents()
    dlg.grab().save(os.path.join(args.out, "model-card-audit.png"))
    dlg.close()
    win.jobs.shutdown()
    win.close()
    print("saved wizard-audit.png and model-card-audit.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
