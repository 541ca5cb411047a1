import weakref

import pytest
from PySide6.QtCore import QSettings


@pytest.fixture(autouse=True)
def no_dangling_worker_threads(monkeypatch):
    """Fail any test that leaves a worker thread running (napari's dangling-QThread
    guard): every job must have ended, or been cancelled and joined, by the end."""
    from medview.gui import workers

    made = []
    real_init = workers.JobThread.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        made.append(weakref.ref(self))

    monkeypatch.setattr(workers.JobThread, "__init__", init)
    yield
    running = [t for ref in made if (t := ref()) is not None and t.isRunning()]
    for t in running:  # stop them so later tests are not disturbed, then fail
        t.cancel()
        t.wait(10000)
    assert not running, f"{len(running)} worker thread(s) still running after the test"


@pytest.fixture
def make_window(qtbot, tmp_path_factory):
    """Shown main windows with their own settings file; closed after the test. Set
    MEDVIEW_MODELS_DIR before making one: the AI panel reads the models when it is built."""
    from medview.gui.app import create_app
    from medview.gui.main_window import MainWindow

    made = []

    def make():
        create_app()
        settings = QSettings(str(tmp_path_factory.mktemp("settings") / "settings.ini"),
                             QSettings.Format.IniFormat)
        win = MainWindow(settings=settings)
        qtbot.addWidget(win)
        win.show()
        made.append(win)
        if not win.model_panel.models_loaded:  # the model folders are read in a worker
            with qtbot.waitSignal(win.model_panel.models_ready, timeout=30000):
                pass
        return win

    yield make
    for win in made:
        win.close()


@pytest.fixture
def window(make_window):
    return make_window()
