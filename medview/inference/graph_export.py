"""Export a model as an ONNX graph for the fast CPU backend, and prove it agrees.

The graph computes, from one pass, what the product reads from the torch model: the
logits, the pre-logit embedding, the last feature maps (for Grad-CAM as a class
activation map) and the channel means/standard deviations of the trust gate's stages
(the same arithmetic as :class:`medview.inference.features.StageTap`; the gate's input
thumbnail is computed next to the graph, in numpy). The batch dimension is dynamic.

Before a graph is kept, it is run on ONNX Runtime next to torch on ``check_inputs``
(validation images where there are any, plus random inputs) and the largest difference
in any calibrated class probability is recorded in the card; the head is checked to be
a global average pool followed by a linear layer (then Grad-CAM needs no autograd).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import logging
import time
import warnings

import numpy as np

from medview.inference import scope
from medview.inference.backends import FEATURE_MAPS, LOGITS, PRE_LOGITS, ort_session
from medview.inference.predictor import calibrated_probabilities
from medview.models.card import GRAPH_FILE, Card, GraphSpec

log = logging.getLogger(__name__)

OPSET = 17
#: The largest calibrated-probability difference from torch at which a graph is chosen
#: automatically (stored per card; the export refuses graphs beyond it).
DEFAULT_TOLERANCE = 1e-4


class GraphExportError(RuntimeError):
    """The model could not be exported, or its graph does not agree with torch."""


class _GraphModule:
    """Builds the torch module that is traced (kept out of module scope: torch is only
    imported when a graph is made)."""

    @staticmethod
    def build(model, stages: tuple[str, ...]):
        import torch

        class GraphModule(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model
                modules = dict(model.named_modules())
                self.stages = stages
                self.captured: dict = {}
                self.handles = [modules[name].register_forward_hook(self._hook(name))
                                for name in stages]

            def _hook(self, name):
                def hook(_module, _inputs, out) -> None:
                    self.captured[name] = out
                return hook

            def forward(self, x):
                maps = self.model.forward_features(x)
                pre = self.model.forward_head(maps, pre_logits=True)
                logits = self.model.get_classifier()(pre)
                stats = []
                for name in self.stages:
                    out = self.captured[name].float()
                    flat = out.flatten(2) if out.ndim == 4 else out.transpose(1, 2)
                    mean = flat.mean(2)
                    std = (flat - mean[..., None]).pow(2).mean(2).sqrt()
                    stats.append(torch.cat([mean, std], 1))
                self.captured = {}
                return (logits, pre, maps, *stats)

            def remove(self) -> None:
                for h in self.handles:
                    h.remove()

        return GraphModule()


def _cam_head(model, maps: np.ndarray, pre: np.ndarray, logits: np.ndarray) -> str:
    """The module name of the classifier when the head is verified to be a global
    average pool followed by a linear layer ("" otherwise)."""
    import torch

    head = model.get_classifier()
    if not isinstance(head, torch.nn.Linear) or maps.ndim != 4:
        return ""
    names = [n for n, m in model.named_modules() if m is head]
    if not names:
        return ""
    pooled = maps.mean((2, 3))
    w = head.weight.detach().float().cpu().numpy()
    b = 0.0 if head.bias is None else head.bias.detach().float().cpu().numpy()
    scale = max(1.0, float(np.abs(logits).max()))
    if (pooled.shape != pre.shape or np.abs(pooled - pre).max() > 1e-4 * max(1.0, np.abs(pre).max())
            or np.abs(pooled @ w.T + b - logits).max() > 1e-4 * scale):
        return ""
    return names[0]


def median_seconds(fn, repeats: int) -> float:
    """The median time of ``repeats`` calls of ``fn`` after one warm-up call (also used
    by the benchmarks)."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def graph_outputs(stages: tuple[str, ...]) -> list[str]:
    """The graph's output names for the gate's ``stages`` (input stages are not outputs:
    they are computed from the input)."""
    return [LOGITS, PRE_LOGITS, FEATURE_MAPS,
            *(s for s in stages if s not in scope.INPUT_STAGES)]


def _exportable(model, stages: tuple[str, ...]):
    import torch

    model = copy.deepcopy(model).float().cpu().eval()
    model = model.to(memory_format=torch.contiguous_format)
    modules = dict(model.named_modules())
    stat_stages = tuple(s for s in stages if s not in scope.INPUT_STAGES)
    missing = [s for s in stat_stages if s not in modules]
    if missing:
        raise GraphExportError(f"the model has no stage {missing[0]!r}")
    return model, _GraphModule.build(model, stat_stages).eval()


def export_bytes(model, channels: int, size: tuple[int, int],
                 stages: tuple[str, ...] = ()) -> bytes:
    """The ONNX graph of ``model`` (a timm classifier) for inputs (N, ``channels``,
    ``size``): its logits, pre-logits, last feature maps and the gate's ``stages``."""
    _model, wrapper = _exportable(model, stages)
    try:
        return _onnx(wrapper, channels, size, graph_outputs(stages))
    finally:
        wrapper.remove()


@contextlib.contextmanager
def without_onnxscript_pass():
    """torch's TorchScript exporter parses the graph it has just written with the ``onnx``
    package (0.6-0.7 s to import on a 2-core machine, a tenth of a short training run)
    only to add ONNX-script functions of custom operators, which live in custom domains.
    medview's graphs have none, and could not use one: :mod:`medview.models.graph` refuses
    any operator outside the standard domains and any model-local function before a
    graph is used or saved. So the pass is skipped while medview exports (where a
    caller passes custom opsets, torch's pass still runs)."""
    try:
        from torch.onnx._internal.torchscript_exporter import onnx_proto_utils as utils
    except ImportError:  # another torch layout: its exporter runs as it is
        yield
        return
    original = getattr(utils, "_add_onnxscript_fn", None)
    if original is None:
        yield
        return

    def add_functions(model_bytes: bytes, custom_opsets) -> bytes:
        return original(model_bytes, custom_opsets) if custom_opsets else model_bytes

    utils._add_onnxscript_fn = add_functions
    try:
        yield
    finally:
        utils._add_onnxscript_fn = original


def _onnx(wrapper, channels: int, size: tuple[int, int], names: list[str]) -> bytes:
    import torch

    buf = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad(), without_onnxscript_pass(), \
                contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapper, (torch.zeros(1, channels, *size),), buf, dynamo=False,
                opset_version=OPSET, input_names=["x"], output_names=names,
                dynamic_axes={n: {0: "batch"} for n in ["x", *names]},
                do_constant_folding=True)
    except Exception as exc:
        raise GraphExportError(f"the model could not be exported as a graph: {exc}") from exc
    return buf.getvalue()


def export_graph(model, card: Card, stages: tuple[str, ...] = (),
                 check_inputs: np.ndarray | None = None, *, n_random: int = 4,
                 tolerance: float = DEFAULT_TOLERANCE, seed: int = 0,
                 time_repeats: int = 5, data: bytes | None = None) -> tuple[bytes, GraphSpec]:
    """The ONNX graph of ``model`` (a timm classifier) and its card section.

    ``stages`` are the trust gate's feature stages (the input pseudo-stages are skipped);
    ``check_inputs`` (N, C, H, W) prepared images to check agreement on, to which
    ``n_random`` random inputs are added. ``data``: the graph already exported by
    :func:`export_bytes` (checked here, not exported again). Raises
    :class:`GraphExportError` when the graph differs from torch by more than
    ``tolerance`` in any class probability."""
    import torch

    c = card.preprocessing.channels
    h, w = card.preprocessing.size
    model, wrapper = _exportable(model, stages)
    names = graph_outputs(stages)
    if data is None:
        data = _onnx(wrapper, c, (h, w), names)
    session = ort_session(data)
    rng = np.random.default_rng(seed)
    inputs = [rng.standard_normal((n_random, c, h, w)).astype(np.float32)]
    if check_inputs is not None and len(check_inputs):
        inputs.insert(0, np.asarray(check_inputs, np.float32))
    x = np.concatenate(inputs)
    worst = 0.0
    ref_all = []
    with torch.inference_mode():
        for i in range(0, len(x), 16):
            xb = x[i:i + 16]
            ref = [t.float().numpy() for t in wrapper(torch.from_numpy(xb))]
            got = session.run(names, {"x": xb})
            for r, g, n in zip(ref, got, names, strict=True):
                if r.shape != g.shape or not np.isfinite(g).all():
                    raise GraphExportError(f"the graph's {n} output is wrong (shape or "
                                           "non-finite values)")
            diff = calibrated_probabilities(ref[0], card) - calibrated_probabilities(got[0], card)
            worst = max(worst, float(np.abs(diff).max()))
            ref_all.append(ref)
    if worst > tolerance:
        raise GraphExportError(f"the exported graph differs from torch by {worst:.2g} in a "
                               f"class probability (tolerance {tolerance:.2g})")
    first = ref_all[0]
    cam_head = _cam_head(model, first[2], first[1], first[0])
    speed = {}
    if time_repeats:
        one = x[:1]
        t_ms = _torch_ms(model, one, time_repeats)
        g_ms = median_seconds(lambda: session.run([LOGITS], {"x": one}), time_repeats) * 1000
        speed = {"torch_ms": round(t_ms, 2), "graph_ms": round(g_ms, 2)}
    wrapper.remove()
    spec = GraphSpec(file=GRAPH_FILE, sha256=hashlib.sha256(data).hexdigest(), format="onnx",
                     opset=OPSET, outputs=names, tolerance=tolerance,
                     max_abs_diff=float(f"{worst:.3g}"), checked_on=len(x),
                     cam_head=cam_head, speed=speed)
    return data, spec


def _torch_ms(model, one: np.ndarray, repeats: int) -> float:
    """Today's torch path at batch 1 (inference mode, channels_last on the CPU)."""
    import torch

    m = model.to(memory_format=torch.channels_last)
    xt = torch.from_numpy(one).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        return median_seconds(lambda: m(xt), repeats) * 1000
