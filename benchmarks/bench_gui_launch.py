"""Launch to prediction and heat-map on screen, watched from outside the app.

A virtual X display (Xvfb) is started; the app is launched on it and the whole display is
captured every ~15 ms by a watcher process (a separate Qt client grabbing the root window:
5-15 ms a frame, against ~60 ms for spawning ImageMagick's ``import``), not by the app.
Two moments are read from the screenshots:
- first paint: the first capture with any pixel drawn on the black root window;
- heat-map on screen: the first capture with a warm overlay (over 3,000 pixels red > 170,
  blue < 90: the inferno map over the film).
The baseline is ``baselines/bare_gui.py`` (a plain PySide6 window that shows the film,
scores it with ONNX Runtime on a thread and draws the class activation map), launched on
the same film, rounds alternated, min and median of 5. Bytecode is compiled for both.
Needs a chest film of the dev set (``../shared``): the bundled model withholds other
films, and a withheld film gets no heat-map.
"""

from __future__ import annotations

import glob
import os
import shutil
import statistics
import subprocess
import sys
import time

try:
    from benchmarks.common import compile_bytecode, print_table
except ImportError:
    from common import compile_bytecode, print_table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILMS = os.path.join(ROOT, "..", "shared", "datasets", "pediatric-cxr", "test")
SIZE = (1600, 1000)  # the virtual screen
ROUNDS = 5


#: The watcher, run with DISPLAY and QT_QPA_PLATFORM=xcb: launches the command given
#: after ``--`` and prints "first-paint heat-map" in seconds from the launch.
WATCHER = """
import subprocess, sys, time
import numpy as np
from PySide6.QtGui import QGuiApplication, QImage
app = QGuiApplication(sys.argv[:1])
screen = app.primaryScreen()
cmd = sys.argv[sys.argv.index("--") + 1:]
t0 = time.perf_counter()
proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
first = heat = float("nan")
try:
    while time.perf_counter() - t0 < float(sys.argv[1]):
        t = time.perf_counter() - t0  # the moment this capture starts
        img = screen.grabWindow(0).toImage().convertToFormat(QImage.Format.Format_RGB888)
        h, w = img.height(), img.width()
        px = np.frombuffer(img.constBits(), np.uint8, count=img.sizeInBytes()).reshape(
            h, img.bytesPerLine())[:, :w * 3].reshape(h, w, 3).astype(np.int16)
        if first != first and px.any():
            first = t
        r, b = px[..., 0], px[..., 2]
        if int(((r > 170) & (b < 90) & (r - b > 120)).sum()) > 3000:
            heat = t
            break
        time.sleep(0.01)
finally:
    proc.terminate()
    proc.wait(timeout=30)
print(first, heat)
"""


def watch(display: str, cmd: list[str], timeout: float = 60.0) -> tuple[float, float]:
    """(first paint, heat-map on screen) in seconds from launching ``cmd``."""
    env = dict(os.environ, DISPLAY=display, QT_QPA_PLATFORM="xcb")
    out = subprocess.run([sys.executable, "-c", WATCHER, str(timeout), "--", *cmd], env=env,
                         capture_output=True, text=True, timeout=timeout + 60)
    first, heat = (float(v) for v in out.stdout.split()[-2:])
    return first, heat


def _display() -> tuple[subprocess.Popen, str]:
    for n in range(97, 140):
        if not os.path.exists(f"/tmp/.X{n}-lock"):
            proc = subprocess.Popen(["Xvfb", f":{n}", "-screen", "0",
                                     f"{SIZE[0]}x{SIZE[1]}x24"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for _ in range(100):
                if os.path.exists(f"/tmp/.X11-unix/X{n}"):
                    time.sleep(0.2)
                    return proc, f":{n}"
                time.sleep(0.05)
            proc.kill()
    raise RuntimeError("no X display could be started")


def run() -> list[tuple[str, str, str, str]]:
    films = sorted(glob.glob(os.path.join(FILMS, "*", "*.jpeg")))
    if not films:
        return [("launch -> heat-map on screen", "skipped", "needs ../shared films", "SKIP")]
    if not shutil.which("Xvfb"):
        return [("launch -> heat-map on screen", "skipped", "needs Xvfb", "SKIP")]
    compile_bytecode()
    import compileall

    compileall.compile_dir(os.path.join(ROOT, "benchmarks", "baselines"), quiet=1)
    film = films[0]
    bare = [sys.executable, os.path.join(ROOT, "benchmarks", "baselines", "bare_gui.py"),
            os.path.join(ROOT, "models", "cxr-pneumonia"), film]
    ours = [os.path.join(os.path.dirname(sys.executable), "medview"), film, "--model",
            "cxr-pneumonia"]
    server, display = _display()
    times: dict[str, list[tuple[float, float]]] = {"bare": [], "medview": []}
    try:
        for _round in range(ROUNDS):
            for name, cmd in (("bare", bare), ("medview", ours)):
                times[name].append(watch(display, cmd))
    finally:
        server.terminate()
        server.wait(timeout=30)

    def stat(name: str, k: int) -> tuple[float, float]:
        v = [t[k] for t in times[name]]
        return min(v), statistics.median(v)

    (bf, bfm), (mf, mfm) = stat("bare", 0), stat("medview", 0)
    (bh, bhm), (mh, mhm) = stat("bare", 1), stat("medview", 1)
    ratio = mh / bh
    return [
        ("first paint: bare PySide6 window", f"min {bf:.2f} s, median {bfm:.2f} s",
         "(baseline)", ""),
        ("first paint: medview (splash, then the window)", f"min {mf:.2f} s, median {mfm:.2f} s",
         "target <= 0.5 s", "PASS" if mfm <= 0.5 else "FAIL"),
        ("launch -> prediction + heat-map on screen: bare window",
         f"min {bh:.2f} s, median {bhm:.2f} s", "(baseline)", ""),
        ("launch -> prediction + heat-map on screen: medview",
         f"min {mh:.2f} s, median {mhm:.2f} s", f"{ratio:.2f}x (target <= 1.5x)",
         "PASS" if ratio <= 1.5 else "FAIL"),
    ]


if __name__ == "__main__":
    print_table("Launch, watched from outside (Xvfb screenshots; cxr-pneumonia, one film)",
                run())
