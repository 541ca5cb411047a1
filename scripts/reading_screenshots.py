"""Screenshots of the reading tools where a radiologist meets them: a CT slice of
pydicom-data's files (a head CT) with a distance and an ellipse ROI drawn with the mouse, the
Measurements list beside it.

    xvfb-run -a -s "-screen 0 1400x900x24" python scripts/reading_screenshots.py docs/screenshots

Drives the real window: opens the file, picks the tools from the Measure menu and drags
on the image through the viewport (as a hand would, via Qt mouse events), then saves
``measure-ct.png``.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def wait_for(app, signal, timeout_ms: int) -> None:
    from PySide6.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    signal.connect(loop.quit)
    QTimer.singleShot(timeout_ms, loop.quit)
    loop.exec()


def drag(app, view, a, b, steps: int = 12) -> None:
    """A left-button drag from image point ``a`` to ``b``, with the events spaced as a
    hand spaces them (pyqtgraph drops moves closer than 10 ms apart)."""
    import time

    from PySide6.QtCore import QEvent, QPointF, Qt
    from PySide6.QtGui import QMouseEvent

    port = view.graphics.viewport()

    def at(x: float, y: float):
        view.viewbox.updateMatrix()
        return view.graphics.mapFromScene(view.image_item.mapToScene(QPointF(x, y)))

    def send(kind, p, button, buttons) -> None:
        app.sendEvent(port, QMouseEvent(kind, QPointF(p), QPointF(port.mapToGlobal(p)),
                                        button, buttons, Qt.KeyboardModifier.NoModifier))
        app.processEvents()

    left, none = Qt.MouseButton.LeftButton, Qt.MouseButton.NoButton
    pa, pb = at(*a), at(*b)
    send(QEvent.Type.MouseButtonPress, pa, left, left)
    for k in range(1, steps + 1):
        time.sleep(0.012)
        send(QEvent.Type.MouseMove, pa + (pb - pa) * (k / steps), none, left)
    send(QEvent.Type.MouseButtonRelease, pb, left, none)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="folder for the PNG files")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    from PySide6.QtCore import QSettings

    from medview.gui.app import create_app
    from medview.gui.main_window import MainWindow
    from tests.testdata import local_file

    app = create_app()
    settings = QSettings(os.path.join(args.out, ".screenshot-settings.ini"),
                         QSettings.Format.IniFormat)
    win = MainWindow(settings=settings)
    win.resize(1400, 900)
    win.show()
    win.open_paths([local_file("693_UNCR.dcm")])  # a 512 x 512 head CT slice
    wait_for(app, win.load_finished, 20000)
    app.processEvents()
    names = [win.preset_box.itemText(k).lower() for k in range(win.preset_box.count())]
    win.apply_preset(next(k for k, n in enumerate(names) if "brain" in n))  # a head CT
    view = win.view
    win.measure_actions["distance"].trigger()
    drag(app, view, (150.0, 250.0), (330.0, 232.0))
    win.measure_actions["ellipse"].trigger()
    drag(app, view, (300.0, 280.0), (380.0, 340.0))
    win.measure_actions["ellipse"].trigger()  # back to navigating
    app.processEvents()
    path = os.path.join(args.out, "measure-ct.png")
    win.grab().save(path)
    os.remove(settings.fileName())
    print(path, [(m.kind, round(m.points[0][0])) for m in view.measure.store.all()])
    win.close()
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    # the PNG is saved and closed: skip tearing down Qt's objects by garbage collection
    # at exit, which can crash a script that made and closed windows (the app itself
    # quits through its event loop and exits normally)
    os._exit(code)
