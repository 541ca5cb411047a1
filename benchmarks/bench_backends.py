"""CPU inference backends side by side in one process, on the same prepared inputs.

- today's path (before this change): torch eager, NCHW, inference mode, the gate's
  stage statistics from forward hooks and its score in torch (what ``Predictor`` ran);
- torch ``channels_last`` (the torch backend now);
- the exported graph on ONNX Runtime (CPU provider, explicit threads) - the auto choice
  on a CPU;
- OpenVINO f32 on the same graph, when the package is installed (it is not a dependency:
  reported for comparison only).

Engines are alternated round by round; per-image times are medians. Agreement is the
largest class-probability difference from today's path over every input. Inputs are
validation films of the pediatric chest X-ray set when ``../shared`` has them, else
random films. Also: Grad-CAM on the graph path against one forward, Integrated Gradients
by captum ``internal_batch_size``, and a worklist of 100 films end to end (a whole
``medview predict --csv`` process per backend).
"""

from __future__ import annotations

import glob
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

try:
    from benchmarks.common import compile_bytecode, print_table
except ImportError:
    from common import compile_bytecode, print_table

from medview.inference.graph_export import median_seconds

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILMS = os.path.join(ROOT, "..", "shared", "datasets", "pediatric-cxr", "val")


def _films(n: int) -> list[str]:
    files = sorted(glob.glob(os.path.join(FILMS, "*", "*.jpeg")))
    return files[:: max(1, len(files) // n)][:n] if files else []


def _inputs(pred, n: int = 32) -> tuple[np.ndarray, str]:
    from medview.core.volume import ImageVolume
    from medview.io import load

    files = _films(n)
    if files:
        vols = load(files).volumes
        what = f"{len(vols)} validation films"
    else:
        rng = np.random.default_rng(0)
        vols = [ImageVolume(rng.integers(0, 256, (1, 512, 512), np.uint8)) for _ in range(n)]
        what = f"{n} random films"
    return np.stack([pred.prepare(v, 0).tensor for v in vols]), what


def _engines(card):
    """name -> callable(batch) -> logits, for every engine compared."""
    import torch

    from medview.inference.backends import OnnxBackend, TorchBackend, torch_threads
    from medview.inference.predictor import load_gate

    torch_threads(torch)
    gate = load_gate(card)
    tb = TorchBackend(card, "cpu", gate)  # channels_last
    nchw = TorchBackend(card, "cpu", gate)
    nchw.model = nchw.model.to(memory_format=torch.contiguous_format)

    def today(batch):
        x = torch.from_numpy(np.ascontiguousarray(batch))
        return nchw.tap.forward(nchw.model, x, nchw.scorer)["logits"]

    ob = OnnxBackend(card, gate)
    engines = {
        "torch NCHW (today's path)": today,
        "torch channels_last": lambda b: tb.run(b, len(b))["logits"],
        "ONNX Runtime (auto on CPU)": lambda b: ob.run(b, len(b))["logits"],
    }
    try:
        import openvino as ov

        core = ov.Core()
        with open(card.graph_path, "rb") as f:
            model = core.read_model(f.read())
        compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        engines["OpenVINO f32 (optional, not shipped)"] = (
            lambda b: compiled(np.ascontiguousarray(b))[0])
    except ImportError:
        pass
    return engines, ob


def run_backends() -> list[tuple[str, str, str, str]]:
    from medview.inference.predictor import Predictor
    from medview.models.registry import discover_models

    card = discover_models().get("cxr-pneumonia")
    if card.card.graph is None:
        return [("cxr-pneumonia exported graph", "missing", "scripts/export_graphs.py", "SKIP")]
    pred = Predictor(card, "cpu", "torch")
    x, what = _inputs(pred)
    engines, _ob = _engines(card)
    names = list(engines)
    ref = pred.probabilities(engines[names[0]](x))
    diffs = {n: float(np.abs(pred.probabilities(engines[n](x)) - ref).max()) for n in names}
    one: dict[str, list[float]] = {n: [] for n in names}
    b16: dict[str, list[float]] = {n: [] for n in names}
    b8: dict[str, list[float]] = {n: [] for n in names}
    for _round in range(3):  # alternate the engines
        for n in names:
            fn = engines[n]
            one[n].append(median_seconds(lambda fn=fn: [fn(x[i:i + 1]) for i in range(8)], 2) / 8)
            b8[n].append(median_seconds(lambda fn=fn: fn(x[:8]), 2) / 8)
            b16[n].append(median_seconds(lambda fn=fn: fn(x[:16]), 2) / 16)
    base1 = statistics.median(one[names[0]])
    base16 = statistics.median(b16[names[0]])
    rows = [("inputs", what, "same prepared tensors for every engine", "")]
    auto = "ONNX Runtime (auto on CPU)"
    for n in names:
        t1, t8, t16 = (statistics.median(d[n]) for d in (one, b8, b16))
        r1, r16 = base1 / t1, base16 / t16
        target1 = "(baseline)" if n == names[0] else f"{r1:.2f}x"
        target16 = "(baseline)" if n == names[0] else f"{r16:.2f}x"
        verdict1 = verdict16 = ""
        if n == auto:
            target1 += " (target >= 2x)"
            target16 += " (target >= 3x)"
            verdict1 = "PASS" if r1 >= 2 else "FAIL"
            verdict16 = "PASS" if r16 >= 3 else "FAIL"
        rows += [
            (f"{n}: batch 1", f"{t1 * 1000:.1f} ms/img", target1, verdict1),
            (f"{n}: batch 8", f"{t8 * 1000:.1f} ms/img ({1 / t8:.0f} img/s)", "", ""),
            (f"{n}: batch 16", f"{t16 * 1000:.1f} ms/img ({1 / t16:.0f} img/s)", target16,
             verdict16),
        ]
        if n != names[0]:
            ok = diffs[n] <= 1e-4
            rows.append((f"{n}: max |dp| vs today's path", f"{diffs[n]:.1e}",
                         "target <= 1e-4", "PASS" if ok else "FAIL"))
    return rows


def run_threads() -> list[tuple[str, str, str, str]]:
    """ONNX Runtime at batch 1 with 1 thread, the explicit core count medview sets, and
    with spinning threads (ONNX Runtime's default), alternated."""
    import onnxruntime as ort

    from medview.inference.backends import cpu_threads, ort_session
    from medview.models.graph import read_graph
    from medview.models.registry import discover_models

    card = discover_models().get("cxr-pneumonia")
    g = card.card.graph
    data = read_graph(card.graph_path, g.sha256, root=card.folder)
    spin_opts = ort.SessionOptions()
    spin_opts.intra_op_num_threads = cpu_threads()
    sessions = {
        "ONNX Runtime, 1 thread": ort_session(data, 1),
        f"ONNX Runtime, {cpu_threads()} threads, no spinning (medview)": ort_session(data),
        f"ONNX Runtime, {cpu_threads()} threads, spinning (its default)":
            ort.InferenceSession(data, spin_opts, providers=["CPUExecutionProvider"]),
    }
    x = np.random.default_rng(0).standard_normal((1, 3, *card.preprocessing.size)).astype(
        np.float32)
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _round in range(5):
        for k, s in sessions.items():
            times[k].append(median_seconds(lambda s=s: s.run(["logits"], {"x": x}), 10))
    base = statistics.median(times["ONNX Runtime, 1 thread"])
    return [(k, f"{statistics.median(v) * 1000:.1f} ms", f"{base / statistics.median(v):.2f}x "
             "vs 1 thread", "") for k, v in times.items()]


def run_cam_and_ig() -> list[tuple[str, str, str, str]]:
    from medview.explain import explain
    from medview.inference.predictor import Predictor
    from medview.inference.session import cam_for_slice
    from medview.models.registry import discover_models

    card = discover_models().get("cxr-pneumonia")
    pred = Predictor(card, "cpu", "onnx")
    x, _ = _inputs(pred, 4)
    t = x[0]
    fwd = median_seconds(lambda: pred.forward(t[None]), 15)
    cam = median_seconds(lambda: cam_for_slice(pred, t, 1, (224, 224)), 15)
    r = cam / fwd
    rows = [
        ("graph path: one forward (logits + gate features)", f"{fwd * 1000:.1f} ms",
         "(baseline)", ""),
        ("graph path: Grad-CAM (feature maps x head, no autograd)", f"{cam * 1000:.1f} ms",
         f"{r:.2f} forwards (target <= 1.2)", "PASS" if r <= 1.2 else "FAIL"),
    ]
    model = Predictor(card, "cpu", "torch").model
    spec = card.preprocessing
    black = [(0 - m) / s for m, s in zip(spec.mean, spec.std, strict=True)]
    torch_cam = median_seconds(lambda: explain(model, t, 1, "gradcam", black=black), 5)
    rows.append(("torch path: captum Grad-CAM", f"{torch_cam * 1000:.1f} ms",
                 f"{torch_cam / cam:.1f}x the graph path's", ""))
    ref = None
    base = None
    for ibs in (24, 12, 8, 6, 4, 3, 2):
        from medview.explain import saliency

        real = saliency.IG_INTERNAL_BATCH
        saliency.IG_INTERNAL_BATCH = ibs
        try:
            ms = median_seconds(lambda: explain(model, t, 1, "ig", black=black), 3)
            out = explain(model, t, 1, "ig", black=black)
        finally:
            saliency.IG_INTERNAL_BATCH = real
        if ref is None:
            ref, base = out, ms
        rows.append((f"Integrated Gradients, 24 steps, internal batch {ibs}",
                     f"{ms * 1000:.0f} ms", f"{base / ms:.2f}x vs all 24 at once; max map "
                     f"diff {float(np.abs(out - ref).max()):.1e}",
                     "(chosen)" if ibs == real else ""))
    return rows


def _cli(args: list[str], env: dict | None = None) -> float:
    t = time.perf_counter()
    out = subprocess.run([os.path.join(os.path.dirname(sys.executable), "medview"), *args],
                         capture_output=True, text=True, env=env, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return time.perf_counter() - t


def run_worklist(n: int = 100) -> list[tuple[str, str, str, str]]:
    files = _films(n)
    if len(files) < n:
        return [("worklist of 100 films", "skipped", "needs ../shared films", "SKIP")]
    with tempfile.TemporaryDirectory() as tmp:
        times = {}
        for backend in ("torch", "auto", "torch", "auto"):
            t = _cli(["predict", "--model", "cxr-pneumonia", "--backend", backend,
                      "--device", "cpu", "--csv", os.path.join(tmp, f"{backend}.csv"), *files])
            times.setdefault(backend, []).append(t)
    torch_s, auto_s = min(times["torch"]), min(times["auto"])
    r = torch_s / auto_s
    return [
        (f"medview predict, {n} films, --backend torch (whole process)", f"{torch_s:.1f} s",
         "(baseline)", ""),
        (f"medview predict, {n} films, auto (graph, batches of 8)", f"{auto_s:.1f} s",
         f"{r:.2f}x (target >= 2x)", "PASS" if r >= 2 else "FAIL"),
    ]


def run_cold_start() -> list[tuple[str, str, str, str]]:
    """A cold ``medview predict`` of one film, whole process, before (torch; interpreter
    teardown kept with MEDVIEW_SLOW_EXIT=1) and after (auto: graph, fast exit); and the
    import graph of the fast path."""
    compile_bytecode()
    films = _films(1)
    if films:
        film = films[0]
    else:
        from medview.io.samples import sample_path

        film = sample_path("cr-chest")
    before_env = dict(os.environ, MEDVIEW_SLOW_EXIT="1")
    args = ["predict", "--model", "cxr-pneumonia", "--device", "cpu", film]
    before, after = [], []
    for _ in range(3):
        before.append(_cli([*args, "--backend", "torch"], before_env))
        after.append(_cli(args))
    b, a = statistics.median(before), statistics.median(after)
    imp = subprocess.run([sys.executable, "-X", "importtime", "-m", "medview", *args],
                         capture_output=True, text=True, timeout=300)
    mods = {}
    for line in imp.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            parts = line.split("|")
            try:
                mods[parts[2].strip()] = int(parts[1])
            except ValueError:
                continue
    heavy = [m for m in ("torch", "torchvision", "timm", "captum") if m in mods]
    top = sorted(((v, k) for k, v in mods.items() if "." not in k), reverse=True)[:4]
    return [
        ("cold `medview predict` of one film: before (torch, full teardown)", f"{b:.2f} s",
         "(baseline)", ""),
        ("cold `medview predict` of one film: now (auto: graph, fast exit)", f"{a:.2f} s",
         f"{b / a:.1f}x faster (target < 1.5 s)", "PASS" if a < 1.5 else "FAIL"),
        ("torch/torchvision/timm/captum imported on the graph path",
         ", ".join(heavy) or "none", "target: none", "FAIL" if heavy else "PASS"),
        ("largest top-level imports on the graph path",
         ", ".join(f"{k} {v / 1e6:.2f} s" for v, k in top), "(python -X importtime)", ""),
    ]


if __name__ == "__main__":
    print_table("CPU backends (cxr-pneumonia, same inputs, engines alternated)",
                run_backends())
    print_table("ONNX Runtime threads (batch 1)", run_threads())
    print_table("Saliency on the graph path; Integrated Gradients batching", run_cam_and_ig())
    print_table("Cold start (whole process)", run_cold_start())
    print_table("Worklist end to end (whole process)", run_worklist())
