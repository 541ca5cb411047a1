"""Inference and saliency: the Predictor against a bare timm forward on the same tensor.

Uses the bundled ``cxr-pneumonia`` model when present, else an EfficientNet-Lite0 built
from the offline ImageNet weights with a 2-class head (same architecture and cost).
Reports per-image latency ratios (I/O excluded), Grad-CAM and IG cost in forwards, peak
traced memory, time from launching ``medview PATH`` to the first prediction on screen
(cold: new process; warm: model already loaded) and the worst GUI stall meanwhile.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc

import numpy as np

try:
    from benchmarks.common import compile_bytecode, print_table
except ImportError:
    from common import compile_bytecode, print_table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _card():
    from medview.models.registry import discover_models

    reg = discover_models()
    try:
        return reg.get("cxr-pneumonia")
    except KeyError:
        return None


def _median_ms(fn, n: int = 15) -> float:
    fn()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def run_latency() -> list[tuple[str, str, str, str]]:
    import torch

    from medview.core.volume import ImageVolume
    from medview.explain import explain
    from medview.inference.predictor import Predictor

    card = _card()
    if card is None:
        return [("bundled cxr-pneumonia model", "missing", "run scripts first", "SKIP")]
    torch.set_num_threads(max(1, torch.get_num_threads()))
    pred = Predictor(card, "cpu", "torch")  # its overhead over the bare model it runs
    rng = np.random.default_rng(0)
    vol = ImageVolume(rng.integers(0, 4096, (1, 2048, 2048), dtype=np.uint16), modality="DX")
    prep = pred.prepare(vol, 0)
    x = torch.from_numpy(prep.tensor[None])
    bare = pred.model

    def bare_forward():
        with torch.inference_mode():
            bare(x)

    def ours():
        pred.predict_prepared(prep)

    base_ms = _median_ms(bare_forward)
    ours_ms = _median_ms(ours)
    prep_ms = _median_ms(lambda: pred.prepare(vol, 0), 5)
    spec = card.preprocessing
    black = [(0 - m) / s for m, s in zip(spec.mean, spec.std, strict=True)]
    cam_ms = _median_ms(lambda: explain(bare, prep.tensor, 1, "gradcam", black=black), 5)
    ig_ms = _median_ms(lambda: explain(bare, prep.tensor, 1, "ig", black=black), 3)
    tracemalloc.start()
    pred.predict_prepared(prep)
    explain(bare, prep.tensor, 1, "gradcam", black=black)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    ratio = ours_ms / base_ms
    return [
        ("bare timm forward (1 image, CPU)", f"{base_ms:.1f} ms", "(baseline)", ""),
        ("Predictor.predict_prepared", f"{ours_ms:.1f} ms", f"{ratio:.2f}x (target <= 1.10x)",
         "PASS" if ratio <= 1.10 else "FAIL"),
        ("preprocessing a 2048x2048 DX film", f"{prep_ms:.1f} ms", "(I/O-free, reported)", ""),
        ("Grad-CAM", f"{cam_ms:.1f} ms", f"{cam_ms / base_ms:.2f} forwards (target <= 2)",
         "PASS" if cam_ms <= 2 * base_ms else "FAIL"),
        ("Integrated Gradients (24 steps)", f"{ig_ms:.0f} ms", f"{ig_ms / base_ms:.1f} forwards",
         ""),
        ("peak traced memory (predict + Grad-CAM)", f"{peak / 1e6:.0f} MB", "(reported)", ""),
    ]


def run_launch(backend: str = "auto") -> list[tuple[str, str, str, str]]:
    if _card() is None:
        return []
    compile_bytecode()  # as installed
    from medview.io.samples import sample_path

    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", PYTHONPATH=ROOT)
    code = (
        "import sys, time; t0 = float(sys.argv[1]);"
        "from medview.gui.app import create_app; app = create_app();"
        "from medview.gui.main_window import MainWindow;"
        "from PySide6.QtCore import QTimer, QSettings; import tempfile, os;"
        "s = QSettings(os.path.join(tempfile.mkdtemp(), 's.ini'), QSettings.Format.IniFormat);"
        "w = MainWindow(settings=s); w.show(); p = w.model_panel; p.wait_for_models();"
        "ids = [c.id for c in p.cards]; p.model_box.setCurrentIndex(ids.index('cxr-pneumonia'));"
        "p.backend_box.setCurrentIndex(p.backend_box.findData(sys.argv[3]));"
        "p.show_overlay.setChecked(False); p.auto_run.setChecked(True); times = [];"
        "worst = [0.0]; last = [time.perf_counter()]\n"
        "def tick():\n"
        "    now = time.perf_counter(); worst[0] = max(worst[0], now - last[0] - 0.01);"
        " last[0] = now\n"
        "timer = QTimer(); timer.timeout.connect(tick); timer.start(10)\n"
        "def done(_p):\n"
        "    times.append(time.time() - t0)\n"
        "    if len(times) == 1:\n"
        "        w.view.step_slice(0); p.volume = None; t1 = time.time();"
        " times.append(t1); p.set_image(w.view.volume, w.view.index)\n"
        "    else:\n"
        "        print(times[0], time.time() - times[1], worst[0]); app.quit()\n"
        "p.prediction_ready.connect(done); w.open_paths([sys.argv[2]]); app.exec()\n"
    )
    out = subprocess.run([sys.executable, "-c", code, repr(time.time()),
                          sample_path("cr-chest"), backend], capture_output=True, text=True,
                         env=env, timeout=300)
    cold, warm, stall = (float(v) for v in out.stdout.split()[-3:])
    if backend == "torch":
        return [
            ("launch -> first prediction on screen, cold (torch: before)", f"{cold:.2f} s",
             "(baseline)", ""),
            ("new image -> prediction on screen, warm (torch)", f"{warm:.2f} s",
             "target < 3 s", "PASS" if warm < 3 else "FAIL"),
            ("worst GUI stall, cold (torch: imports torch)", f"{stall * 1000:.0f} ms",
             "(baseline)", ""),
        ]
    return [
        ("launch -> first prediction on screen, cold (auto: graph)", f"{cold:.2f} s",
         "target < 2 s", "PASS" if cold < 2 else "FAIL"),
        ("new image -> prediction on screen, warm (auto)", f"{warm:.2f} s", "target < 3 s",
         "PASS" if warm < 3 else "FAIL"),
        ("worst GUI stall, cold (auto): first film shown + model load", f"{stall * 1000:.0f} ms",
         "(reported; model load alone: below)", ""),
    ]


WARM_UP_CODE = """
import os, sys, tempfile, time
from medview.gui.app import create_app
app = create_app()
from PySide6.QtCore import QSettings, QTimer
from medview.gui.main_window import MainWindow
s = QSettings(os.path.join(tempfile.mkdtemp(), "s.ini"), QSettings.Format.IniFormat)
w = MainWindow(settings=s); w.show(); p = w.model_panel; p.wait_for_models()
i = [c.id for c in p.cards].index("cxr-pneumonia")
p.model_box.setCurrentIndex(i); p.auto_run.setChecked(True); p.show_overlay.setChecked(False)
p.backend_box.setCurrentIndex(p.backend_box.findData(sys.argv[2]))
worst = [0.0]; last = [time.perf_counter()]; t = {}
def tick():
    now = time.perf_counter(); worst[0] = max(worst[0], now - last[0] - 0.01); last[0] = now
timer = QTimer(); timer.timeout.connect(tick); timer.start(10)
def warmed(_r):
    t["warm"] = time.perf_counter() - t["pick"]; t["stall"] = worst[0]
    t["open"] = time.perf_counter(); w.open_paths([sys.argv[1]])
def done(_p):
    print(t["warm"], t["stall"], time.perf_counter() - t["open"]); app.quit()
p.prediction_ready.connect(done)
def pick():
    t["pick"] = time.perf_counter(); worst[0] = 0.0; last[0] = time.perf_counter()
    p.model_box.activated.emit(i)  # as when a user picks the model
    w.jobs.current("warm-up").succeeded.connect(warmed)
QTimer.singleShot(500, pick)
app.exec()
"""


def run_warm_up(backend: str = "auto") -> list[tuple[str, str, str, str]]:
    """A user picks a model first, then opens a study: the model loads in the background."""
    if _card() is None:
        return []
    from medview.io.samples import sample_path

    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-c", WARM_UP_CODE, sample_path("cr-chest"),
                          backend], capture_output=True, text=True, env=env, timeout=300)
    warm, stall, first = (float(v) for v in out.stdout.split()[-3:])
    stall_target = ("(baseline)", "") if backend == "torch" else (
        "target < 50 ms", "PASS" if stall < 0.05 else "FAIL")
    return [
        (f"model picked -> loaded in the background ({backend})", f"{warm:.2f} s",
         "(reported)", ""),
        (f"worst GUI stall meanwhile ({backend})", f"{stall * 1000:.0f} ms", *stall_target),
        (f"then study opened -> first prediction ({backend})", f"{first:.2f} s",
         "target < 3 s", "PASS" if first < 3 else "FAIL"),
    ]


def run_saliency_stall() -> list[tuple[str, str, str, str]]:
    """Worst GUI stall while inference and Grad-CAM run in the real window."""
    if _card() is None:
        return []
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import QEventLoop, QSettings, QTimer

    from medview.gui.app import create_app
    from medview.gui.main_window import MainWindow
    from medview.io.samples import sample_path

    app = create_app()
    settings = QSettings(os.path.join(tempfile.mkdtemp(), "s.ini"), QSettings.Format.IniFormat)
    win = MainWindow(settings=settings)
    win.show()
    loop = QEventLoop()
    win.load_finished.connect(lambda _r: loop.quit())
    win.open_paths([sample_path("cr-chest")])
    loop.exec()
    panel = win.model_panel
    panel.wait_for_models()
    panel.model_box.setCurrentIndex([c.id for c in panel.cards].index("cxr-pneumonia"))
    panel.show_overlay.setChecked(True)
    worst = 0.0
    last = time.perf_counter()

    def tick():
        nonlocal worst, last
        now = time.perf_counter()
        worst = max(worst, now - last - 0.010)
        last = now

    timer = QTimer()
    timer.timeout.connect(tick)
    timer.start(10)
    panel.saliency_ready.connect(lambda _m: QTimer.singleShot(100, loop.quit))
    last = time.perf_counter()
    t0 = time.perf_counter()
    panel.run()
    loop.exec()
    timer.stop()
    total = time.perf_counter() - t0
    win.close()
    app.processEvents()
    return [
        ("run + Grad-CAM overlay in window", f"{total:.2f} s", "(reported)", ""),
        ("worst GUI stall during inference + saliency", f"{worst * 1000:.0f} ms",
         "target < 50 ms", "PASS" if worst < 0.05 else "FAIL"),
    ]


if __name__ == "__main__":
    print_table("Inference and saliency (CPU)", run_latency() + run_launch("torch")
                + run_launch() + run_warm_up("torch") + run_warm_up()
                + run_saliency_stall())
