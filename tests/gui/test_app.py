"""The GUI entry point: command-line studies and model, the system's file-open requests,
the start-up timing report."""

import json
import os
import time

import pytest
from PySide6.QtCore import QSettings, QUrl
from PySide6.QtGui import QFileOpenEvent
from PySide6.QtWidgets import QApplication

from medview.gui import app as gui_app


@pytest.fixture
def settings(tmp_path):
    return QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)


@pytest.fixture(autouse=True)
def quiet_app(monkeypatch):
    """The report's quit request is recorded, not acted on (pytest-qt owns the loops);
    the application-wide file-open router forgets the test's window afterwards."""
    app = gui_app.create_app()
    codes = []
    monkeypatch.setattr(app, "exit", codes.append, raising=False)
    yield codes
    router = getattr(app, "file_router", None)
    if router is not None:
        router.window = None
        router.pending = []


@pytest.fixture
def models_dir(tiny_model, monkeypatch):
    monkeypatch.setenv("MEDVIEW_MODELS_DIR", os.path.dirname(tiny_model[0]))
    return tiny_model


def _patch_image(data):
    folder = os.path.join(data, "patch")
    return os.path.join(folder, sorted(os.listdir(folder))[0])


def _models_read(qtbot, panel) -> None:
    """Wait until the panel's model list is read (the launch may have handed it over)."""
    if not panel.models_loaded:
        with qtbot.waitSignal(panel.models_ready, timeout=30000):
            pass


def _check_report(qtbot, win, capsys, quiet_app) -> None:
    """The timing report is printed once everything it waits for has happened."""
    qtbot.waitUntil(lambda: win._startup_report.done is None, timeout=10000)
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(report) == {"first_window_s", "first_image_s", "first_prediction_s"}
    assert 0 <= report["first_image_s"] <= report["first_prediction_s"]
    assert quiet_app == [0]  # then it asked the app to quit, successfully


def test_work_done_ahead_is_in_the_window_when_it_first_shows(qtbot, models_dir, settings,
                                                              capsys, quiet_app):
    """Study and model named on the command line: the study read, the model loaded, the
    image scored and its map made while the window was built are shown by the window as
    it is made, not passed through worker threads (one paint instead of four) and not run
    again."""
    from medview.models.card import read_card

    path = _patch_image(models_dir[1])
    app = gui_app.create_app()
    args = gui_app.build_parser().parse_args([path, "--model", "tiny-patch",
                                              "--startup-report"])
    ahead = gui_app.start_prefetch(args)
    ahead.thread.join(60)
    assert ahead.prediction is not None and ahead.saliency is not None
    win = gui_app.launch(args, app, settings=settings, prefetch=ahead)
    qtbot.addWidget(win)
    panel = win.model_panel
    assert panel.session is ahead.session
    # all of it on screen when launch() returns, before the event loop runs
    assert panel.models_loaded and panel.current_card().id == "tiny-patch"
    assert panel.auto_run.isChecked()
    assert win.view.volume is ahead.study.result().volumes[0]
    assert panel.state.prediction is ahead.prediction
    assert ahead.prediction.label == "patch"
    assert panel.jobs.current("predict") is None and panel.jobs.current("models") is None
    assert win.jobs.current("load") is None
    assert panel.session.is_loaded(read_card(models_dir[0]), "auto")
    assert panel.state.saliency is not None and panel.state.saliency.values is ahead.saliency
    assert panel.jobs.current("saliency") is None and panel.sal_progress.isHidden()
    _check_report(qtbot, win, capsys, quiet_app)
    win.close()


def test_a_request_that_comes_before_the_work_ahead_waits_for_it(qtbot, models_dir, settings,
                                                                 capsys, quiet_app,
                                                                 monkeypatch):
    """On a slow machine the window is up before the launch has scored the image: the
    panel's request waits for that work and shows its result (the model is not run twice,
    which on such a machine would double the wait)."""
    import threading

    release = threading.Event()
    score = gui_app.LaunchPrefetch._score

    def held(self, card, volume):
        release.wait(60)
        score(self, card, volume)

    monkeypatch.setattr(gui_app.LaunchPrefetch, "_score", held)
    path = _patch_image(models_dir[1])
    app = gui_app.create_app()
    args = gui_app.build_parser().parse_args([path, "--model", "tiny-patch",
                                              "--startup-report"])
    win = gui_app.launch(args, app, settings=settings)
    qtbot.addWidget(win)
    panel = win.model_panel
    ahead = win._launch_prefetch
    _models_read(qtbot, panel)
    assert panel.current_card().id == "tiny-patch"
    qtbot.waitUntil(lambda: panel.jobs.current("predict") is not None, timeout=30000)
    assert panel.state.prediction is None
    with (qtbot.waitSignal(panel.prediction_ready, timeout=60000) as got,
          qtbot.waitSignal(panel.saliency_ready, timeout=60000)):
        release.set()
    assert got.args[0] is ahead.prediction and got.args[0].label == "patch"
    assert panel.state.saliency.values is ahead.saliency
    _check_report(qtbot, win, capsys, quiet_app)
    win.close()


def test_unknown_model_is_reported_and_viewer_still_opens(qtbot, models_dir, settings):
    path = _patch_image(models_dir[1])
    app = gui_app.create_app()
    args = gui_app.build_parser().parse_args([path, "--model", "no-such-model"])
    win = gui_app.launch(args, app, settings=settings)
    qtbot.addWidget(win)
    _models_read(qtbot, win.model_panel)
    status = win.model_panel.status.text()
    assert "no-such-model" in status and "tiny-patch" in status
    assert not win.model_panel.auto_run.isChecked()
    qtbot.waitUntil(lambda: win.view.volume is not None, timeout=20000)
    win.close()


def test_file_open_requests_before_and_after_the_window(qtbot, models_dir, settings):
    app = gui_app.create_app()
    router = gui_app.install_file_open_filter(app)
    assert gui_app.install_file_open_filter(app) is router  # installed once
    first = _patch_image(models_dir[1])
    folder = os.path.join(models_dir[1], "plain")
    second = os.path.join(folder, sorted(os.listdir(folder))[0])
    # macOS sends the files a user opened the app with before any window exists
    QApplication.sendEvent(app, QFileOpenEvent(first))
    assert router.pending == [first]
    args = gui_app.build_parser().parse_args([])
    win = gui_app.launch(args, app, settings=settings)
    qtbot.addWidget(win)
    qtbot.waitUntil(lambda: len(win.volumes) == 1, timeout=20000)
    assert router.pending == []
    assert win.volumes[0].source_paths[0] == first
    # later requests (a file dropped on the Dock icon) go straight to the window
    with qtbot.waitSignal(win.load_finished, timeout=20000):
        QApplication.sendEvent(app, QFileOpenEvent(QUrl.fromLocalFile(second)))
    assert len(win.volumes) == 2
    win.close()


def test_launch_time_origin(monkeypatch):
    monkeypatch.setenv(gui_app.ENV_LAUNCH_T0, "1234.5")
    assert gui_app.launch_t0() == 1234.5
    monkeypatch.delenv(gui_app.ENV_LAUNCH_T0)
    t0 = gui_app.launch_t0()
    # this process started before now, and not days ago
    assert time.time() - 24 * 3600 < t0 <= time.time()


def test_app_icon_ships_and_renders():
    from PySide6.QtGui import QIcon

    gui_app.create_app()
    icon = QIcon(gui_app.icon_path())
    assert not icon.isNull()
    img = icon.pixmap(64, 64).toImage()
    assert img.width() == 64
    # not blank: the icon's centre differs from its corner
    assert img.pixelColor(32, 40) != img.pixelColor(1, 1)


def test_startup_report_exits_when_the_only_file_cannot_be_loaded(qtbot, settings, tmp_path,
                                                                   capsys, quiet_app):
    bad = tmp_path / "notes.dcm"
    bad.write_text("not an image")
    app = gui_app.create_app()
    args = gui_app.build_parser().parse_args([str(bad), "--startup-report"])
    win = gui_app.launch(args, app, settings=settings)
    qtbot.addWidget(win)
    with qtbot.waitSignal(win.load_finished, timeout=20000):
        pass
    qtbot.waitUntil(lambda: win._startup_report.done is None, timeout=10000)
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["error"] == "nothing could be loaded"
    assert quiet_app == [1]
    win.close()


def test_the_splash_paints_before_pyqtgraph_and_closes_when_the_window_shows(qtbot):
    """The launcher can paint before the viewer's modules load: importing the entry point
    imports neither pyqtgraph nor the main window (checked in a fresh process), and the
    splash closes once the window is shown."""
    import subprocess
    import sys

    code = ("import sys, medview.cli, medview.gui.app\n"
            "print(sorted(m for m in ('pyqtgraph', 'medview.gui.main_window') "
            "if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr
    from PySide6.QtWidgets import QWidget

    app = QApplication.instance()
    splash = gui_app.show_splash(app)
    qtbot.addWidget(splash)
    assert splash.isVisible() and not splash.pixmap().isNull()
    app.splash = splash
    window = QWidget()
    qtbot.addWidget(window)
    window.show()
    gui_app.close_splash(app, window)
    qtbot.waitUntil(lambda: not splash.isVisible())
    assert app.splash is None


def test_a_study_failing_on_the_launch_thread_is_reported_by_the_window(qtbot, settings,
                                                                        tmp_path, monkeypatch):
    """The study is read ahead of the window: an error there reaches the window's load
    job (a "Loading failed" message), never a job left waiting."""
    import medview.io.loader as loader

    def broken(paths, cancel=None):
        raise OSError("disk went away")

    monkeypatch.setattr(loader, "load", broken)
    film = tmp_path / "film.png"
    film.write_bytes(b"")
    app = gui_app.create_app()
    args = gui_app.build_parser().parse_args([str(film)])
    win = gui_app.launch(args, app, settings=settings)
    qtbot.addWidget(win)
    with qtbot.waitSignal(win.load_failed, timeout=20000) as failed:
        pass
    assert "disk went away" in failed.args[0]
    win.close()


def test_pyqtgraph_sees_qt_through_mirrors_made_on_demand():
    """pyqtgraph's copies of QtCore/QtGui/QtWidgets look names up in PySide6 when asked
    (the same objects), hold pyqtgraph's own additions, and were not filled by reading
    every name of PySide6 at import; PySide6's modules list their names again afterwards
    (a fresh process: this one imported pyqtgraph long ago)."""
    import subprocess
    import sys

    code = """
import json, sys
import PySide6.QtCore, PySide6.QtGui, PySide6.QtWidgets
names = {n: set(dir(getattr(PySide6, n))) for n in ("QtCore", "QtGui", "QtWidgets")}
from medview.gui import import_pyqtgraph
pg = import_pyqtgraph()
from pyqtgraph.Qt import QtCore, QtGui, QtWidgets
print(json.dumps({
    "same": [QtWidgets.QDial is PySide6.QtWidgets.QDial,
             QtCore.QObject is PySide6.QtCore.QObject,
             QtGui.QFileSystemModel is PySide6.QtWidgets.QFileSystemModel],
    "copied": "QDial" in vars(QtWidgets),
    "own": ["QFileSystemModel" in vars(QtGui), hasattr(PySide6.QtGui, "QFileSystemModel"),
            QtCore.Signal is PySide6.QtCore.Signal],
    "dir": [set(dir(getattr(PySide6, n))) >= k and len(k) > 100 for n, k in names.items()],
    "cuda": "cuda.bindings.runtime" in sys.modules,
    "image": pg.ImageItem is not None,
}))
"""
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["same"] == [True, True, True]
    assert got["copied"] is False  # nothing read ahead: QDial is looked up when asked
    assert got["own"] == [True, False, True]  # pyqtgraph's additions stay its own
    assert got["dir"] == [True, True, True]
    assert got["cuda"] is False
    assert got["image"]


def test_pyside_import_check_gives_pyside_s_own_answers(tmp_path):
    """The faster check of each imported module answers as PySide6's own does: a module
    whose source names PySide6, one that does not, a module without a file and one
    that is not a .py file (left to PySide6)."""
    import importlib.util
    import sys
    import types

    gui_app.create_app()  # applies it, as a launch does
    feature = sys.modules.get("shibokensupport.feature")
    if feature is None:
        pytest.skip("this PySide6 has no import check")
    import medview.gui as gui

    ours = feature._mod_uses_pyside
    assert getattr(ours, "_medview", False) and gui.lighten_pyside_imports()
    original = ours.pyside_check

    def module(name: str, text: str):
        path = tmp_path / f"{name}.py"
        path.write_text(text)
        spec = importlib.util.spec_from_file_location(name, path)
        m = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(m)
        return m

    uses = module("uses_qt", "# drawn with PySide6 widgets\nX = 1\n")
    plain = module("plain_mod", "X = 2\n")
    older = module("older_qt", "# once drawn with PySide2\nX = 3\n")
    bare = types.ModuleType("no_file")
    import _json

    for m in (uses, plain, older, bare, _json, sys.modules["medview.gui.app"]):
        assert ours(m) == original(m), m
    assert ours(uses) is True and ours(plain) is False


def test_startup_gc_pauses_the_collector_until_every_part_is_done():
    import gc

    assert gc.isenabled()
    try:
        paused = gui_app.StartupGC(waits_for=("window", "work ahead"), limit_s=60)
        assert not gc.isenabled()
        paused.release("window")
        assert not gc.isenabled()  # the work ahead still runs
        paused.release("work ahead")
        assert gc.isenabled()
        paused.resume()  # once only
        assert gc.isenabled()
        # the limit resumes it whatever happens
        late = gui_app.StartupGC(waits_for=("never",), limit_s=0.05)
        assert late.resumed.wait(10) and gc.isenabled()
    finally:
        gc.enable()
        gc.unfreeze()


def test_the_window_waits_a_moment_for_a_map_being_made_but_never_for_long(
        qtbot, models_dir, settings, capsys, quiet_app, monkeypatch):
    """Scored ahead, only the heat-map left: the window waits a bounded moment for it
    (one complete first paint); a map that takes longer comes by the usual job."""
    import threading

    from medview.inference.session import InferenceSession

    release = threading.Event()
    made = InferenceSession.explain_with_note

    def held(self, *args, **kwargs):
        release.wait(60)
        return (yield from made(self, *args, **kwargs))

    monkeypatch.setattr(InferenceSession, "explain_with_note", held)
    path = _patch_image(models_dir[1])
    app = gui_app.create_app()
    args = gui_app.build_parser().parse_args([path, "--model", "tiny-patch"])
    ahead = gui_app.start_prefetch(args)
    assert ahead.scoring.wait(60)  # scored; the map is held
    qtbot.waitUntil(lambda: ahead.prediction is not None, timeout=60000)
    win = gui_app.launch(args, app, settings=settings, prefetch=ahead)  # returns
    qtbot.addWidget(win)
    panel = win.model_panel
    assert panel.state.prediction is ahead.prediction and panel.state.saliency is None
    with qtbot.waitSignal(panel.saliency_ready, timeout=60000):
        release.set()
    assert panel.state.saliency.values is ahead.saliency
    win.close()
