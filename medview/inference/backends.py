"""Inference backends: the same forward pass on torch or on an exported graph.

A backend takes a prepared batch (N, C, H, W float32) and returns, from one pass, the
logits, the pre-logit embedding and the trust gate's stage statistics (see
:mod:`medview.inference.features`); on request also the last feature maps (for Grad-CAM
as a class activation map). Two implementations:

- :class:`TorchBackend`: the timm model in inference mode (CUDA/MPS/CPU, GPU
  out-of-memory fallback), ``channels_last`` on the CPU, the gate scored in torch.
- :class:`OnnxBackend`: the model folder's ``graph.onnx`` on ONNX Runtime's CPU
  provider, loaded from verified bytes (:mod:`medview.models.graph`). This module, the
  graph, the gate and the class-activation map need no torch: a prediction on this path
  never imports torch, torchvision or timm.

:func:`resolve` picks one per model and device: on the CPU the graph when the card says
it agrees with torch within its tolerance and was faster where it was exported; CUDA and
MPS keep torch. ``torch`` or ``onnx`` can be forced.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy as np

from medview.core.errors import MedviewError
from medview.inference import scope
from medview.models.card import WEIGHTS_FILE, ModelCard
from medview.models.weights import WeightsError

log = logging.getLogger(__name__)

CHOICES = ("auto", "torch", "onnx")
#: Output names of an exported graph besides the gate's stage statistics.
LOGITS, PRE_LOGITS, FEATURE_MAPS = scope.LOGITS, scope.PRE_LOGITS, "feature_maps"
BACKEND_LABELS = {"torch": "PyTorch", "onnx": "ONNX Runtime"}


class BackendError(MedviewError, ValueError):
    """A backend was asked for that this model or machine cannot run."""


class Backend(Protocol):
    """What the :class:`~medview.inference.predictor.Predictor` runs a model on."""

    #: "torch" or "onnx"
    name: str
    #: where it computes ("cpu", "cuda", "mps"); a GPU backend may fall back to "cpu"
    device: str
    #: notes for the user about how it runs (e.g. a GPU fallback), shown once each
    notices: list[str]
    #: the model file that computes the results and its verified sha256
    #: ({"file": "graph.onnx" | "weights.safetensors", "sha256": ...})
    computed_by: dict[str, str]

    def run(self, batch: np.ndarray, batch_size: int = 16,
            maps: bool = False) -> dict[str, np.ndarray]:
        """One forward pass of a prepared batch (N, C, H, W float32): the logits, the
        pre-logit embedding, the gate's stage statistics (and the last feature maps with
        ``maps``, where the backend has them)."""
        ...


def cpu_threads() -> int:
    """Threads for one inference backend: the cores this process may use (MEDVIEW_THREADS
    overrides). Both torch and ONNX Runtime are given this number explicitly, so neither
    guesses, and only one of them runs a model at a time."""
    env = os.environ.get("MEDVIEW_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def gpu_may_be_present() -> bool:
    """Whether a CUDA or MPS device may exist, decided without importing torch (a cold
    start on a CPU-only workstation must not pay for it): torch's own answer when torch
    is already loaded, otherwise the NVIDIA driver's presence, or Apple silicon."""
    torch = sys.modules.get("torch")
    # torch's own answer only once its import has finished (another thread may be
    # importing it right now: the model preloading)
    if torch is not None and not getattr(getattr(torch, "__spec__", None), "_initializing",
                                         False):
        mps = getattr(torch.backends, "mps", None)
        return bool(torch.cuda.is_available() or (mps is not None and mps.is_available()))
    if sys.platform.startswith("linux"):
        return os.path.exists("/proc/driver/nvidia/version")
    if sys.platform == "win32":
        root = os.environ.get("SYSTEMROOT", r"C:\Windows")
        return os.path.exists(os.path.join(root, "System32", "nvcuda.dll"))
    if sys.platform == "darwin":
        import platform

        return platform.machine() == "arm64"
    return True


def onnxruntime_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


def graph_usable(card: ModelCard) -> str:
    """Why the card's graph cannot be chosen automatically ("" when it can)."""
    g = card.card.graph
    if g is None:
        return "the model has no exported graph"
    if g.weights_sha256 != card.weights_sha256:
        return "its exported graph is not bound to these weights (exported from others)"
    if not g.max_abs_diff <= g.tolerance:
        return (f"its exported graph differs from torch by {g.max_abs_diff:.2g} "
                f"(tolerance {g.tolerance:.2g})")
    speed = g.speed or {}
    if speed.get("graph_ms") and speed.get("torch_ms") and speed["graph_ms"] >= speed["torch_ms"]:
        return "its exported graph was not faster than torch where it was measured"
    if not onnxruntime_available():
        return "ONNX Runtime is not installed"
    return ""


def resolve(card: ModelCard, device: str = "auto", backend: str = "auto") -> tuple[str, str]:
    """(backend, device) for ``card``: see the module docstring. ``device`` stays "auto"
    when torch will choose it (so that choosing does not import torch on the graph path)."""
    if backend not in CHOICES:
        raise BackendError(f"unknown backend {backend!r}; use one of {', '.join(CHOICES)}")
    if backend == "onnx":
        if device not in ("auto", "cpu", "", None):
            raise BackendError("the ONNX Runtime backend runs on the CPU only")
        if card.card.graph is None:
            raise BackendError(f"model {card.id!r} has no exported graph (graph.onnx); "
                               "use the torch backend")
        if not onnxruntime_available():
            raise BackendError("ONNX Runtime is not installed")
        return "onnx", "cpu"
    if backend == "torch":
        return "torch", device or "auto"
    if device in ("cuda", "mps") or (device in ("auto", "", None) and gpu_may_be_present()):
        return "torch", device or "auto"
    return ("onnx", "cpu") if not graph_usable(card) else ("torch", device or "auto")


def input_thumbnail(batch: np.ndarray, size: int = scope.THUMBNAIL) -> np.ndarray:
    """The trust gate's input stage: the first channel average-pooled to ``size`` x
    ``size`` with torch's ``adaptive_avg_pool2d`` bins (start floor(i*H/s), end
    ceil((i+1)*H/s)), flattened: (N, size*size)."""
    x = np.asarray(batch[:, 0], np.float32)
    n, h, w = x.shape

    def bins(length: int) -> list[tuple[int, int]]:
        return [(i * length // size, -(-(i + 1) * length // size)) for i in range(size)]

    out = np.empty((n, size, size), np.float32)
    for i, (r0, r1) in enumerate(bins(h)):
        rows = x[:, r0:r1].mean(1)
        for j, (c0, c1) in enumerate(bins(w)):
            out[:, i, j] = rows[:, c0:c1].mean(1)
    return out.reshape(n, -1)


def graph_features(session, batch: np.ndarray, stages: tuple[str, ...],
                   input_stages: tuple[str, ...], batch_size: int = 16,
                   maps: bool = False) -> dict[str, np.ndarray]:
    """One pass of an exported graph on ONNX Runtime over a prepared batch (N, C, H, W),
    ``batch_size`` at a time: the logits, the pre-logit embedding, the gate's feature
    ``stages``, its ``input_stages`` computed from the batch (as
    :class:`~medview.inference.features.StageTap` does) and, with ``maps``, the last
    feature maps."""
    names = [LOGITS, PRE_LOGITS, *stages] + ([FEATURE_MAPS] if maps else [])
    x = np.ascontiguousarray(batch, np.float32)
    parts = []
    for i in range(0, len(x), max(1, batch_size)):
        try:
            parts.append(session.run(names, {"x": x[i:i + batch_size]}))
        except Exception as exc:  # ONNX Runtime's errors are plain RuntimeErrors
            first = str(exc).splitlines()[0][:200] if str(exc) else ""
            raise WeightsError(f"the model's exported graph failed in ONNX Runtime "
                               f"({type(exc).__name__}: {first})") from exc
    out = {n: np.concatenate([p[k] for p in parts]) for k, n in enumerate(names)}
    if input_stages:
        t = input_thumbnail(x)
        for stage in input_stages:
            out[stage] = scope.normalise_thumbnails(t) if stage == scope.INPUT_LAYOUT_STAGE else t
    return out


def ort_session(data: bytes, threads: int | None = None):
    """An ONNX Runtime CPU session for verified graph bytes: explicit thread counts, no
    custom operator libraries, full graph optimisation, no spinning."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or cpu_threads()
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # worker threads sleep between runs instead of spinning: the same latency here
    # (benchmarks/bench_backends.py) without burning the cores the GUI and the loader need
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


class OnnxBackend:
    """The card's exported graph on ONNX Runtime (CPU)."""

    name = "onnx"

    def __init__(self, card: ModelCard, gate: scope.ScopeGate | None) -> None:
        from medview.models.card import GRAPH_FILE
        from medview.models.graph import read_graph
        from medview.models.weights import read_verified_tensors

        spec = card.card.graph
        if spec is None:
            raise BackendError(f"model {card.id!r} has no exported graph")
        if spec.weights_sha256 != card.weights_sha256:
            raise WeightsError("exported graph refused: it was not exported from this "
                               "model's weights (graph.weights_sha256 differs)")
        # both files verified: the weights (regular file in the folder, size, sha256) and
        # the graph (the same, and its structure); then the graph's parameters must be
        # the weights' (a changed classifier is refused). Reading and hashing release the
        # interpreter lock: the weights are verified on a second thread while the graph
        # is (importing ONNX Runtime there too was measured slower: its import holds it)
        with ThreadPoolExecutor(1, thread_name_prefix="medview-verify") as pool:
            weights = pool.submit(read_verified_tensors, card.weights_path,
                                  card.weights_sha256, root=card.folder)
            data = read_graph(card.graph_path, spec.sha256, spec.outputs, root=card.folder,
                              weights=weights.result, weights_sha256=card.weights_sha256)
            self.weights = weights.result()  # verified: raises if the file is not the card's
        self.computed_by = {"file": GRAPH_FILE, "sha256": spec.sha256}
        self.card = card
        self.device = "cpu"
        self.stages = tuple(s for s in (gate.stages if gate else ())
                            if s not in scope.INPUT_STAGES)
        missing = [s for s in self.stages if s not in spec.outputs]
        if missing:
            raise WeightsError(f"exported graph refused: it lacks the trust gate's stage "
                               f"{missing[0]!r}")
        self.thumbnails = tuple(s for s in (gate.stages if gate else ())
                                if s in scope.INPUT_STAGES)
        self.notices: list[str] = []
        try:
            self.session = ort_session(data)
        except Exception as exc:  # ONNX Runtime's own errors are plain RuntimeErrors
            raise WeightsError(f"exported graph refused by ONNX Runtime: {exc}") from exc
        self.lock = threading.Lock()
        self._head: np.ndarray | None = None

    def run(self, batch: np.ndarray, batch_size: int = 16,
            maps: bool = False) -> dict[str, np.ndarray]:
        with self.lock:
            return graph_features(self.session, batch, self.stages, self.thumbnails,
                                  batch_size, maps)

    def head(self) -> np.ndarray:
        """The weight (K, C) of the linear classifier after the global average pool (its
        bias does not enter Grad-CAM), from the weights verified when the backend loaded."""
        graph = self.card.card.graph
        name = graph.cam_head if graph is not None else ""
        if not name or f"{name}.weight" not in self.weights:
            raise BackendError("this model's graph has no verified linear head")
        if self._head is None:
            self._head = np.asarray(self.weights[f"{name}.weight"], np.float32)
        return self._head


def class_activation_map(maps: np.ndarray, weight: np.ndarray, target: int,
                         size: tuple[int, int]) -> np.ndarray:
    """Grad-CAM of a network whose head is global average pool + linear, from its last
    feature maps ``maps`` (C, h, w) and the head's ``weight`` (K, C): the gradient of
    logit ``target`` with respect to map ``c`` is ``weight[target, c] / (h w)`` at every
    position, so Grad-CAM's channel weights are exactly those and the map is
    ``relu(sum_c weight[target, c] / (h w) * maps[c])``, upsampled bilinearly (half-pixel
    centres, as torch's ``interpolate``) to ``size`` = (H, W)."""
    _, h, w = maps.shape
    cam = np.tensordot(np.asarray(weight[target], np.float64) / (h * w),
                       np.asarray(maps, np.float64), axes=(0, 0))
    cam = np.maximum(cam, 0.0)
    return (_interp_matrix(size[0], h) @ cam @ _interp_matrix(size[1], w).T).astype(np.float32)


def _interp_matrix(out: int, inp: int) -> np.ndarray:
    """(out, inp) linear interpolation weights, align_corners=False."""
    src = np.maximum((np.arange(out) + 0.5) * (inp / out) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(int), inp - 1)
    i1 = np.minimum(i0 + 1, inp - 1)
    frac = src - i0
    m = np.zeros((out, inp))
    m[np.arange(out), i0] += 1.0 - frac
    m[np.arange(out), i1] += frac
    return m


class TorchBackend:
    """The timm model on torch (today's path, plus ``channels_last`` on the CPU)."""

    name = "torch"

    def __init__(self, card: ModelCard, device: str, gate: scope.ScopeGate | None) -> None:
        import torch

        from medview.inference.devices import choose_device
        from medview.inference.features import StageTap, TorchScorer
        from medview.models.loading import load_model

        torch_threads(torch)
        self._torch = torch
        self.device = choose_device(device)
        self.gate = gate
        if self.device.startswith("cuda"):
            from medview.inference.devices import full_precision_cuda

            full_precision_cuda()  # results must not depend on the machine beyond 1e-4
        self.model = load_model(card).to(self.device)
        if self.device == "cpu":
            # NHWC convolutions: faster on the CPU, same outputs to 1e-6
            # (benchmarks/bench_backends.py, docs/performance.md)
            self.model = self.model.to(memory_format=torch.channels_last)
        self.tap = StageTap(self.model, gate.stages if gate else ())
        self.scorer = (TorchScorer(gate, self.device)
                       if gate is not None and gate.method == "multi_depth" else None)
        self.notices: list[str] = []
        #: the file that computes the results: the weights, verified by load_model
        self.computed_by = {"file": WEIGHTS_FILE, "sha256": card.weights_sha256}
        self.lock = threading.Lock()

    def _run(self, batch: np.ndarray, maps: bool = False) -> dict[str, np.ndarray]:
        torch = self._torch
        x = torch.from_numpy(np.ascontiguousarray(batch))
        if str(self.device).startswith("cuda"):
            # page-locked host memory: the copy to the GPU runs asynchronously
            x = x.pin_memory().to(self.device, non_blocking=True)
        else:
            x = x.to(self.device)
        if self.device == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        return self.tap.forward(self.model, x, self.scorer)

    def run(self, batch: np.ndarray, batch_size: int = 16,
            maps: bool = False) -> dict[str, np.ndarray]:
        """One forward pass of a prepared batch, halving the batch and then moving to the
        CPU when the GPU runs out of memory."""
        from medview.inference.features import TorchScorer

        torch = self._torch
        size = max(1, min(batch_size, len(batch)))
        with self.lock:
            while True:
                try:
                    parts = [self._run(batch[i:i + size]) for i in range(0, len(batch), size)]
                    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
                except torch.cuda.OutOfMemoryError:
                    torch.cuda.empty_cache()
                    if size > 1:
                        size //= 2
                        log.warning("GPU out of memory; retrying with batch size %d", size)
                        continue
                    self.model = self.model.to("cpu")
                    self.device = "cpu"
                    if self.scorer is not None and self.gate is not None:
                        self.scorer = TorchScorer(self.gate, "cpu")
                    notice = "GPU out of memory: the model now runs on the CPU"
                    if notice not in self.notices:
                        self.notices.append(notice)
                    size = len(batch)


def torch_threads(torch) -> None:
    """Give torch the same explicit thread count as ONNX Runtime (once; torch's default
    may count hyper-threads or the whole machine inside a container)."""
    want = cpu_threads()
    if torch.get_num_threads() != want:
        torch.set_num_threads(want)
