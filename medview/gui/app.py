"""GUI entry point: ``medview [PATH...] [--model ID]`` or ``medview --sample [NAME]``.

Files reach the window from the command line (the desktop entry's ``%F``, a file dropped on
the app icon on Linux and Windows), from drag-and-drop onto the window, and from the
operating system's "open with" requests (macOS Finder and Dock send them as
``QFileOpenEvent``, also before the window exists).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Sequence

ENV_LAUNCH_T0 = "MEDVIEW_LAUNCH_T0"  # epoch seconds when the launcher started the app
log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medview", description="Open the medview viewer.")
    p.add_argument("paths", nargs="*", metavar="PATH", help="files or folders to open")
    p.add_argument("--sample", nargs="?", const="cr-chest", default=None,
                   help="open a sample study shipped with medview (default: cr-chest)")
    p.add_argument("--model", metavar="ID", default=None,
                   help="select this model and run it on every image shown")
    p.add_argument("--screenshot", metavar="PNG", default=None, help=argparse.SUPPRESS)
    # Prints how long the first window, image and prediction took, as JSON, then quits.
    p.add_argument("--startup-report", action="store_true", help=argparse.SUPPRESS)
    return p


def qt_version() -> str:
    """The Qt binding's version (imports it: a check that Qt loads in this install)."""
    import PySide6
    from PySide6.QtCore import qVersion

    return f"PySide6 {PySide6.__version__} (Qt {qVersion()})"


def icon_path() -> str:
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "medview.svg")


class FileOpenRouter:
    """Routes the system's file-open requests to a window; holds them until one is set."""

    def __init__(self) -> None:
        self.pending: list[str] = []
        self.window = None

    def set_window(self, window) -> None:
        self.window = window
        if self.pending:
            paths, self.pending = self.pending, []
            window.open_paths(paths)

    def receive(self, path: str) -> None:
        if not path:
            return
        if self.window is None:
            self.pending.append(path)
        else:
            self.window.open_paths([path])


@functools.cache
def application_class():
    """medview's QApplication: it takes the file-open events sent to the application
    object itself, so no application-wide event filter sees every other event."""
    from PySide6.QtCore import QEvent
    from PySide6.QtWidgets import QApplication

    class MedviewApplication(QApplication):
        def __init__(self, argv) -> None:
            super().__init__(argv)
            self.file_router = FileOpenRouter()

        def event(self, event) -> bool:
            if event.type() == QEvent.Type.FileOpen:
                self.file_router.receive(event.file() or event.url().toLocalFile())
                return True
            return super().event(event)

    return MedviewApplication


def prefetch_runtime() -> threading.Thread:
    """Import ONNX Runtime in a background thread once the window is shown (before, it
    took the interpreter lock from the splash and the window being built): its native
    module holds the lock while it initialises, which would otherwise be a visible stall
    when the first model loads."""

    def work() -> None:
        try:
            import onnxruntime  # noqa: F401
        except Exception:  # not installed or broken: the torch backend is used
            log.debug("ONNX Runtime not available", exc_info=True)

    t = threading.Thread(target=work, name="medview-prefetch", daemon=True)
    t.start()
    return t


class StartupGC:
    """Python's cyclic garbage collector paused while a launch imports and builds: the
    ~1,000 modules, classes and widgets a launch makes live as long as the app, yet the
    collector walked them again and again as they were made (80-100 ms of a ~0.5 s
    launch on a 2-core machine, measured). It resumes, with everything made so far
    frozen out of later collections (``gc.freeze``: later pauses walk only what is made
    after), once every part named in ``waits_for`` has called :meth:`release`, or
    ``limit_s`` after the launch, whichever is first."""

    def __init__(self, waits_for: Sequence[str], limit_s: float = 10.0) -> None:
        import gc

        self._lock = threading.Lock()
        self._waiting = set(waits_for)
        self.resumed = threading.Event()
        self.paused = gc.isenabled()
        if self.paused:
            gc.disable()
        self._timer = threading.Timer(limit_s, self.resume)
        self._timer.daemon = True
        self._timer.start()

    def release(self, part: str) -> None:
        """``part`` of the launch is done (any thread)."""
        with self._lock:
            self._waiting.discard(part)
            last = not self._waiting
        if last:
            self.resume()

    def resume(self) -> None:
        import gc

        with self._lock:
            paused, self.paused = self.paused, False
        self._timer.cancel()
        if paused:
            gc.freeze()
            gc.enable()
        self.resumed.set()


#: the longest the window waits, before its first paint, for a result being scored
FINISH_WAIT_S = 0.06


class LaunchPrefetch:
    """The work a launch naming a study and a model can do before its window exists, on
    one thread while the viewer is built: read the study, load the model, score the image
    the viewer opens on and make its Grad-CAM (the panel's defaults: automatic device and
    engine). The window's load job takes the study read here (:meth:`iter_study`) and the
    panel finds the prediction and the map kept in its session
    (:meth:`InferenceSession.predict` ``keep``), so the film, its prediction and its
    heat-map appear with the window instead of one after another behind it: what is
    done when the window is built (the model list, the study, the prediction) is shown
    before its first paint, and a request that comes before the work is done waits for
    it (:meth:`InferenceSession.working_ahead`). Anything that differs from what the
    panel then asks for is simply not used."""

    def __init__(self, paths: Sequence[str], model_id: str | None, done=None) -> None:
        """The session (for the panel) is made on the thread: its import, ~0.1 s, then
        overlaps the viewer's. ``done()`` is called on the thread when its work ends."""
        from concurrent.futures import Future

        self.paths = list(paths)
        self.model_id = model_id
        self._session = None
        self._session_made = threading.Event()
        self.study: Future = Future()
        #: what was worked out ahead (kept in the session for the panel), for reports
        self.prediction = None
        self.saliency = None
        #: the model folders as read here (None until read), for the panel's list
        self.registry = None
        #: set when what is left is short: the image is being scored with the model
        #: loaded, or only its map is left
        self.scoring = threading.Event()
        self._done = done
        if not self.paths:
            self.study.set_result(None)
        self.thread = threading.Thread(target=self._work, name="medview-launch", daemon=True)
        self.thread.start()

    @property
    def session(self):
        """The session the work runs in (made on the thread: waits for it; None if it
        could not be made)."""
        self._session_made.wait()
        return self._session

    def _work(self) -> None:
        try:
            self._ahead()
        except BaseException as exc:  # never leave the window's load job waiting
            if not self.study.done():
                self.study.set_exception(exc)
            log.debug("work ahead of the window failed", exc_info=True)
        finally:
            self._session_made.set()
            if self._done is not None:
                self._done()

    def _ahead(self) -> None:
        from medview.inference.session import InferenceSession

        self._session = InferenceSession()
        self._session_made.set()
        card = None
        if self.model_id:
            from medview.models.registry import discover_models

            try:
                self.registry = discover_models()
                card = self.registry.get(self.model_id)
            except (KeyError, OSError):
                card = None  # named in the panel once the model list is read
            if card is not None:
                self.session.preload(card)
        if not self.paths:
            return
        from medview.core.volume import first_to_show
        from medview.io.loader import load

        result = load(self.paths)  # a failure is raised by the window's load job
        if card is None or not result.volumes:
            self.study.set_result(result)
            return
        volume = result.volumes[first_to_show(result.volumes)]
        # marked before the window can see the study: the panel's first request waits
        # for this work instead of scoring the image a second time on a slow machine
        with self.session.working_ahead(volume):
            self.study.set_result(result)
            try:
                self._score(card, volume)
            except Exception:  # the panel runs it again and reports what fails
                log.debug("scoring ahead of the window failed", exc_info=True)

    def _score(self, card, volume) -> None:
        from medview.core.presentation import present
        from medview.core.progress import drain

        if self.session.is_loaded(card, "auto"):  # else loading: the window does not wait
            self.scoring.set()
        index = volume.default_index
        p, prep = drain(self.session.predict(card, volume, index, keep=True))
        self.prediction = p
        self.scoring.set()  # only the map is left: milliseconds
        if p.withheld:
            return  # out of scope: no saliency until the user asks
        shown = present(p)
        target = shown.label if shown.label in p.classes else p.classes[0]
        self.saliency, _note = drain(self.session.explain_with_note(
            card, volume, index, "gradcam", target, prep=prep, keep=True))

    def study_ready(self):
        """The study if it has been read with something to show, else None (never
        waits)."""
        if not self.study.done() or self.study.exception() is not None:
            return None
        result = self.study.result()
        return result if result is not None and result.volumes else None

    def iter_study(self, cancel):
        """The window's load job: the study read on the launch thread."""
        from medview.core.progress import Progress

        yield Progress(0, 1, "reading images")
        while True:
            try:
                return self.study.result(timeout=0.05)
            except TimeoutError:
                cancel.raise_if_cancelled()


def create_app(argv: Sequence[str] = (), splash: bool = False, then=None):
    """The QApplication with medview's global pyqtgraph settings (row-major images). With
    ``splash``, a splash screen is painted before the rest of the interface is imported
    (``app.splash``; the launcher closes it when the window shows). ``then`` is called
    once the splash is up, before pyqtgraph and the viewer's modules are imported (the
    launch starts its background work there)."""
    from PySide6.QtGui import QIcon
    from PySide6.QtWidgets import QApplication

    from medview.gui import lighten_pyside_imports

    lighten_pyside_imports()  # before the ~500 modules imported after Qt
    app = QApplication.instance() or application_class()(["medview", *argv])
    app.setApplicationName("medview")
    app.setOrganizationName("medview")
    app.setDesktopFileName("medview")
    if os.path.isfile(icon_path()):
        app.setWindowIcon(QIcon(icon_path()))
    app.splash = show_splash(app) if splash else None
    if then is not None:
        then()
    from medview.gui import import_pyqtgraph

    import_pyqtgraph().setConfigOptions(imageAxisOrder="row-major", antialias=True)
    return app


def show_splash(app):
    """A splash window, painted now: what a user sees 0.2-0.3 s after the launch, while
    the viewer's modules load (benchmarks/bench_gui_launch.py watches the screen). A
    plain frameless label: QSplashScreen's show() waited a second for the window
    manager under Xvfb. :func:`close_splash` closes it once the main window shows."""
    from PySide6.QtCore import QRect, Qt
    from PySide6.QtGui import QColor, QFont, QPainter, QPixmap
    from PySide6.QtWidgets import QLabel

    pixmap = QPixmap(480, 200)
    pixmap.fill(QColor("#202326"))
    painter = QPainter(pixmap)
    font = QFont()
    font.setPointSize(26)
    font.setBold(True)
    painter.setFont(font)
    painter.setPen(QColor("#e8e8e8"))
    painter.drawText(QRect(0, 40, 480, 60), Qt.AlignmentFlag.AlignCenter, "medview")
    font.setPointSize(10)
    font.setBold(False)
    painter.setFont(font)
    painter.setPen(QColor("#a0a4a8"))
    painter.drawText(QRect(0, 110, 480, 24), Qt.AlignmentFlag.AlignCenter, "opening...")
    painter.setPen(QColor("#d08a2a"))
    painter.drawText(QRect(0, 150, 480, 24), Qt.AlignmentFlag.AlignCenter,
                     "Research use only - not for diagnostic use")
    painter.end()
    splash = QLabel()
    splash.setPixmap(pixmap)
    splash.setWindowFlags(Qt.WindowType.SplashScreen | Qt.WindowType.FramelessWindowHint)
    screen = app.primaryScreen()
    if screen is not None:
        centre = screen.availableGeometry().center()
        splash.move(centre.x() - 240, centre.y() - 100)
    splash.show()
    splash.repaint()
    app.processEvents()
    return splash


def close_splash(app, window) -> None:
    """Close the splash when ``window`` has been painted (at once if there is none)."""
    splash = getattr(app, "splash", None)
    if splash is None:
        return
    from PySide6.QtCore import QTimer

    app.splash = None
    QTimer.singleShot(0, splash.close)  # after the window's first paint is queued
    window.raise_()


def install_file_open_filter(app) -> FileOpenRouter:
    """The application's file-open request router (an application that medview did not
    create gets one too, but no file-open events reach it)."""
    router = getattr(app, "file_router", None)
    if router is None:
        router = app.file_router = FileOpenRouter()
    return router


def launch_t0() -> float:
    """When this launch began: the launcher's stamp if given, else this process's start."""
    stamp = os.environ.get(ENV_LAUNCH_T0)
    if stamp:
        try:
            return float(stamp)
        except ValueError:
            pass
    try:  # Linux: the process start time, so interpreter and import time count too
        with open("/proc/self/stat", encoding="ascii") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime", encoding="ascii") as f:
            uptime = float(f.read().split()[0])
        return time.time() - uptime + start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.time()


class StartupReport:
    """Seconds from launch to the first painted window, first image and first prediction."""

    def __init__(self, window, t0: float, last: str, done) -> None:
        from PySide6.QtCore import QEvent, QObject

        self.t0 = t0
        self.times: dict[str, float] = {}
        self.last = last  # "first_window_s", "first_image_s" or "first_prediction_s"
        self.done = done
        report = self

        class PaintWatch(QObject):
            def eventFilter(self, obj, event) -> bool:
                if event.type() == QEvent.Type.Paint:
                    report.mark("first_window_s")
                    obj.removeEventFilter(self)
                return False

        self._paint = PaintWatch(window)
        window.installEventFilter(self._paint)
        window.volume_shown.connect(lambda _i: self.mark("first_image_s"))
        # a prediction is of the image in view: when both come in one call (work done
        # ahead), the panel is told before the window's volume_shown
        window.model_panel.prediction_ready.connect(
            lambda _p: (self.mark("first_image_s"), self.mark("first_prediction_s")))
        window.load_failed.connect(lambda msg: self.finish(error=msg))
        window.load_finished.connect(
            lambda result: None if result.volumes else self.finish(error="nothing could be "
                                                                          "loaded"))
        window.model_panel.failed.connect(lambda msg: self.finish(error=msg))

    def mark(self, name: str) -> None:
        if name in self.times:
            return
        self.times[name] = round(time.time() - self.t0, 3)
        if self.last in self.times and "first_window_s" in self.times:
            self.finish()

    def finish(self, error: str | None = None) -> None:
        if self.done is None:
            return
        doc = dict(self.times)
        if error:
            doc["error"] = error
        print(json.dumps(doc), flush=True)
        done, self.done = self.done, None
        done(0 if error is None else 1)


def launch_paths(args: argparse.Namespace) -> list[str]:
    """The files and folders a launch opens (the sample's included)."""
    paths = list(args.paths)
    if args.sample:
        from medview.io.samples import sample_path

        paths.append(sample_path(args.sample))
    return paths


def start_prefetch(args: argparse.Namespace, done=None) -> LaunchPrefetch | None:
    """The launch's work ahead of its window (:class:`LaunchPrefetch`), when it names a
    study or a model (else None, and ``done()`` is called at once)."""
    paths = launch_paths(args)
    if paths or args.model:
        return LaunchPrefetch(paths, args.model, done=done)
    if done is not None:
        done()
    return None


def launch(args: argparse.Namespace, app, settings=None,
           prefetch: LaunchPrefetch | None = None):
    """Create and show the main window for parsed arguments; returns the window.
    ``prefetch``: the launch's work started ahead (:func:`start_prefetch`; started here
    when not given)."""
    paths = launch_paths(args)
    if prefetch is None:
        prefetch = start_prefetch(args)
    from medview.gui.main_window import MainWindow

    router = install_file_open_filter(app)
    window = MainWindow(settings=settings)
    if prefetch is not None and prefetch.session is not None:
        window.model_panel.session = prefetch.session  # the model and first result
    window._launch_prefetch = prefetch
    model_ok = bool(args.model)  # until the model folders are read (in the background)
    if args.startup_report:
        last = ("first_prediction_s" if paths and model_ok else
                "first_image_s" if paths else "first_window_s")
        window._startup_report = StartupReport(window, launch_t0(), last,
                                               lambda code: app.exit(code))
    if not args.screenshot:
        window.show_as_last_time()
    else:  # documentation screenshots: the window's default size, not the user's
        window.show()
        from PySide6.QtCore import QTimer

        def grab(_result=None) -> None:
            QTimer.singleShot(500, lambda: (window.grab().save(args.screenshot), app.quit()))

        panel = window.model_panel
        if model_ok and paths:
            def on_prediction(p) -> None:
                # an out-of-scope result gets no saliency until the user asks: grab now
                if p.withheld or not panel.show_overlay.isChecked():
                    grab()

            panel.prediction_ready.connect(on_prediction)
            if panel.show_overlay.isChecked():
                panel.saliency_ready.connect(grab)
        elif paths:
            window.load_finished.connect(grab)
        else:
            grab()
    if prefetch is not None and prefetch.registry is not None:
        window.model_panel.use_registry(prefetch.registry)  # read ahead: no second read
    if args.model:
        def choose() -> None:
            if select_model(window, args.model):
                return
            if args.screenshot and paths:
                grab()  # the unknown model is named in the panel
            if args.startup_report:
                report = window._startup_report
                report.last = "first_image_s" if paths else "first_window_s"
                if report.last in report.times and "first_window_s" in report.times:
                    report.finish()

        window.model_panel.when_models_ready(choose)
    if paths:  # read on the launch thread (started before the window)
        if prefetch is not None and prefetch.scoring.is_set():
            # the image is being scored (study read, model loaded): its result and map
            # are milliseconds away; one complete first paint beats a paint now and
            # another when they land (the splash is on screen meanwhile)
            prefetch.thread.join(FINISH_WAIT_S)
        # what the launch has already read and scored is in the window's first paint;
        # the rest arrives from the launch thread as it is done
        ready = prefetch.study_ready() if prefetch is not None else None
        window.open_paths(paths, read=prefetch.iter_study if prefetch is not None else None,
                          ready=ready)
    router.set_window(window)
    return window


def select_model(window, model_id: str) -> bool:
    """Pick a model in the AI panel and run it on each image shown; False if unknown."""
    panel = window.model_panel
    ids = [c.id for c in panel.cards]
    if model_id not in ids:
        msg = f"no model {model_id!r}; installed: {', '.join(ids) or 'none'}"
        logging.getLogger(__name__).warning(msg)
        panel.status.setText(msg.capitalize())
        return False
    panel.auto_run.setChecked(True)
    k = ids.index(model_id)
    if panel.model_box.currentIndex() != k:
        panel.model_box.setCurrentIndex(k)  # runs on the image in view, if any
    elif panel.volume is not None:
        panel.run()  # the study arrived before the model list was read
    # (the model has been loading since the launch: LaunchPrefetch)
    window.model_dock.raise_()
    return True


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    collector = StartupGC(waits_for=("window", "work ahead"))
    ahead: list[LaunchPrefetch | None] = []
    app = create_app(splash=not args.screenshot, then=lambda: ahead.append(
        start_prefetch(args, done=lambda: collector.release("work ahead"))))
    window = launch(args, app, prefetch=ahead[0])  # kept alive while the event loop runs
    close_splash(app, window)
    collector.release("window")
    from PySide6.QtCore import QTimer

    QTimer.singleShot(0, prefetch_runtime)
    return app.exec()


if __name__ == "__main__":
    sys.exit(main())
