"""The reading tools stay interactive on a 512 x 512 x 300 CT in the real window.

Per frame: one step of scrolling (set the slice, render, paint) in the acquired plane, in
a coronal and a sagittal reformat, with MIP slabs, and in a 2x2 layout whose four
viewports follow by position; the plane and layout switches themselves; and the worst
event-loop stall meanwhile (a 10 ms QTimer's lateness). The baseline is scrolling
the acquired plane without a slab, in the same run. Target: every stall under 50 ms.
"""

from __future__ import annotations

import os
import time

import numpy as np

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

try:
    from benchmarks.common import print_table
except ImportError:
    from common import print_table

FRAMES = 40


def _volume(n: int = 300, size: int = 512):
    from medview.core.volume import ImageVolume

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 2000, (n, size, size), dtype=np.int16)
    return ImageVolume(pixels, modality="CT", spacing=(1.0, 0.7, 0.7),
                       origin=(-180.0, -180.0, 0.0), direction=np.eye(3),
                       rescale_slope=np.ones(n), rescale_intercept=np.full(n, -1024.0),
                       rescale_type="HU", description="benchmark CT",
                       series_uid="1.2.3.4")


def run() -> list[tuple[str, str, str, str]]:
    from PySide6.QtCore import QSettings, QTimer
    from PySide6.QtWidgets import QApplication

    from medview.core.volume import LoadResult
    from medview.gui.app import create_app
    from medview.gui.main_window import MainWindow

    app = create_app()
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        settings = QSettings(os.path.join(folder, "s.ini"), QSettings.Format.IniFormat)
        win = MainWindow(settings=settings)
        win.resize(1400, 900)
        win.show()
        win._show_loaded(LoadResult(volumes=[_volume()], skipped=[]))
        app.processEvents()
        view = win.view
        worst = [0.0]
        last = [time.perf_counter()]

        def tick() -> None:
            now = time.perf_counter()
            worst[0] = max(worst[0], now - last[0] - 0.010)
            last[0] = now

        timer = QTimer()
        timer.setInterval(10)
        timer.timeout.connect(tick)

        def scroll(label: str) -> tuple[str, float, float]:
            """ms per frame (median) and the worst stall while scrolling FRAMES slices."""
            worst[0] = 0.0
            start = max(0, view.index - FRAMES // 2)
            times = []
            timer.start()
            last[0] = time.perf_counter()
            for k in range(FRAMES):
                t = time.perf_counter()
                view.set_slice(start + k)
                view.graphics.viewport().repaint()
                QApplication.processEvents()
                times.append(time.perf_counter() - t)
            timer.stop()
            return label, float(np.median(times)) * 1000, worst[0] * 1000

        def switch(plane: str) -> float:
            t = time.perf_counter()
            assert win.show_plane(plane)
            view.graphics.viewport().repaint()
            QApplication.processEvents()
            return (time.perf_counter() - t) * 1000

        results = [scroll("scroll, acquired (axial) plane")]
        switches = {"coronal": switch("coronal")}
        results.append(scroll("scroll, coronal reformat"))
        switches["sagittal"] = switch("sagittal")
        results.append(scroll("scroll, sagittal reformat"))
        switches["acquired"] = switch("acquired")
        win.set_slab("mip", 10.0)
        results.append(scroll("scroll, axial MIP 10 mm"))
        switch("coronal")
        win.set_slab("mip", 30.0)
        results.append(scroll("scroll, coronal MIP 30 mm (43 columns)"))
        win.set_slab("")
        switch("acquired")
        layouts = {}
        for name in ("2x2", "1x2", "2x1", "1x1"):
            done = []
            win.layout_filled.connect(lambda done=done: done.append(1))
            worst[0] = 0.0
            timer.start()
            last[0] = t = time.perf_counter()
            win.set_layout(name)
            while not done:
                QApplication.processEvents()
            win.grid.repaint()
            QApplication.processEvents()
            layouts[name] = ((time.perf_counter() - t) * 1000, worst[0] * 1000)
            timer.stop()
            win.layout_filled.disconnect()
        win.set_layout("2x2")
        results.append(scroll("scroll in 2x2, four viewports synchronised"))
        win.close()
    base = results[0][1]
    rows = []
    for label, ms, stall in results:
        rows.append((f"{label}: ms per frame", f"{ms:.1f}",
                     "(baseline)" if label == results[0][0] else f"{ms / base:.2f}x baseline",
                     ""))
        rows.append((f"{label}: worst stall", f"{stall:.1f} ms", "target < 50 ms",
                     "PASS" if stall < 50 else "FAIL"))
    for name, (ms, stall) in layouts.items():
        rows.append((f"switch to the {name} layout: all viewports filled and painted",
                     f"{ms:.1f} ms", "", ""))
        rows.append((f"switch to the {name} layout: worst stall", f"{stall:.1f} ms",
                     "target < 50 ms", "PASS" if stall < 50 else "FAIL"))
    for plane, ms in switches.items():
        rows.append((f"switch to the {plane} plane (reformat + first frame)", f"{ms:.1f} ms",
                     "target < 50 ms", "PASS" if ms < 50 else "FAIL"))
    return rows


if __name__ == "__main__":
    print_table("Reading tools on a 512 x 512 x 300 CT (real window, offscreen)", run())
