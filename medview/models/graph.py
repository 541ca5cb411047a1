"""Safe reading of a model folder's exported graph (``graph.onnx``).

An ONNX file is data - operators from the standard set and their tensors - as long as
the runtime is never given a custom operator library and never follows an external-data
path. So, before ONNX Runtime sees it, the file must be a regular file inside the model
folder, no larger than :data:`MAX_GRAPH_BYTES`, with the card's sha256, and parse as an
ONNX model whose every tensor is stored inside the file (no ``external_data``, anywhere:
initializers, node attributes, subgraphs), whose operators all come from the standard
domains (``ai.onnx``; ``ai.onnx.ml``), with no model-local functions or training graphs,
one input ``x`` and the outputs the card lists. Every failure is a
:class:`~medview.models.weights.WeightsError` and the model falls back to torch.

The check uses ONNX's own protobuf schema (``onnx/onnx_ml_pb2.py``) loaded on its own:
importing the whole ``onnx`` package costs far more start-up time than the schema
(docs/performance.md).

A graph that passed every check, bound to weights of a given sha256, is remembered by
those two hashes (and the outputs asked for, and :data:`CHECKS_VERSION`) in the user's
cache folder (:func:`checked_record_path`): the next load still reads and hashes the
file, and skips only the parse (the schema import and the parse are ~50 ms of a one-film
prediction's ~300 ms). Other bytes are other hashes: checked again. The record is the
user's own file, bounded and parsed strictly; writing to it takes write access to the
user's home folder, which is beyond what a model folder can do.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import sys
import threading
from collections.abc import Callable

from medview.core.safeio import UnsafeFileError, atomic_write_bytes, read_capped
from medview.models.weights import WeightsError

#: Bumped whenever a structural check is added or changed: earlier records are ignored.
CHECKS_VERSION = 1
ENV_CACHE_DIR = "MEDVIEW_CACHE_DIR"
#: The most checked graphs remembered (the oldest are forgotten first).
MAX_CHECKED = 256
_CHECKED_FILE = "checked-graphs.json"
_HEX64 = re.compile(r"[0-9a-f]{64}")

#: The bundled graphs are ~14 MB; a model folder's graph may not exceed this.
MAX_GRAPH_BYTES = 1024**3
ALLOWED_DOMAINS = {"", "ai.onnx", "ai.onnx.ml"}
#: ONNX TensorProto.DataLocation.EXTERNAL
_EXTERNAL = 1
#: The most elements a tensor of the graph may declare, or a shape constant may ask an
#: operator to make: far above any classifier's activations at the card's input size (a
#: 1024x1024x3 input is 3e6), far below what exhausts a workstation.
MAX_TENSOR_ELEMENTS = 2**28
#: operators whose integer input is a shape (or repeat counts) of what they allocate
_SHAPE_OPS = {"ConstantOfShape": 0, "Expand": 1, "Reshape": 1, "Tile": 1, "Resize": 3,
              "Upsample": 1, "Range": 1}
_INT64, _INT32 = 7, 6
_schema = None
_schema_lock = threading.Lock()


def onnx_schema():
    """ONNX's generated protobuf module (``ModelProto`` ...), without importing the whole
    ``onnx`` package when that has not been imported already. Thread-safe (the schema
    registers itself in protobuf's descriptor pool: once)."""
    global _schema
    with _schema_lock:
        return _load_schema() if _schema is None else _schema


def _load_schema():
    global _schema
    if _schema is None:
        loaded = sys.modules.get("onnx.onnx_ml_pb2")
        if loaded is not None:
            _schema = loaded
        else:
            spec = importlib.util.find_spec("onnx")
            if spec is None or not spec.origin:
                raise WeightsError("the exported graph cannot be checked: the onnx package "
                                   "is not installed")
            path = os.path.join(os.path.dirname(spec.origin), "onnx_ml_pb2.py")
            mspec = (importlib.util.spec_from_file_location("onnx.onnx_ml_pb2", path)
                     if os.path.isfile(path) else None)
            if mspec is not None and mspec.loader is not None:
                module = importlib.util.module_from_spec(mspec)
                mspec.loader.exec_module(module)
                # registered under its own name, so a later ``import onnx`` reuses it
                sys.modules["onnx.onnx_ml_pb2"] = module
            else:  # no source file (a frozen app without it): the package, slower
                import onnx.onnx_ml_pb2 as module
            _schema = module
    return _schema


def _check_tensor(t, where: str) -> None:
    if t.data_location == _EXTERNAL or len(t.external_data):
        raise WeightsError(f"exported graph refused: tensor {t.name[:60]!r} ({where}) points "
                           "to data outside the graph file")


def _elements(dims) -> int:
    n = 1
    for d in dims:
        n *= max(int(d), 0)
    return n


def _int_values(t) -> list[int]:
    """The values of an integer tensor stored in the graph (raw or typed)."""
    import numpy as np

    if t.data_type not in (_INT64, _INT32):
        return []
    if t.raw_data:
        return np.frombuffer(t.raw_data, "<i8" if t.data_type == _INT64 else "<i4").tolist()
    return list(t.int64_data or t.int32_data)


def _check_sizes(g) -> None:
    """Refuse tensors, and shape constants of allocating operators, past
    :data:`MAX_TENSOR_ELEMENTS` (a graph of standard operators can still ask the runtime
    for 10^11 elements)."""
    constants = {t.name: t for t in g.initializer}
    for node in g.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.HasField("t"):
                    constants[node.output[0]] = a.t
    for t in constants.values():  # the initializers and the Constant nodes' tensors
        if _elements(t.dims) > MAX_TENSOR_ELEMENTS:
            raise WeightsError(f"exported graph refused: tensor {t.name[:60]!r} declares "
                               "too many elements")
    for node in g.node:
        k = _SHAPE_OPS.get(node.op_type)
        if k is None or len(node.input) <= k or node.input[k] not in constants:
            continue
        values = _int_values(constants[node.input[k]])
        if node.op_type == "Range":
            continue  # start/limit/delta: bounded by the output size check below
        if values and _elements(v for v in values if v > 0) > MAX_TENSOR_ELEMENTS:
            raise WeightsError(f"exported graph refused: {node.op_type} asks for more than "
                               f"{MAX_TENSOR_ELEMENTS} elements")


def _check_graph(g, depth: int = 0) -> None:
    if depth > 8:
        raise WeightsError("exported graph refused: subgraphs nested too deeply")
    _check_sizes(g)
    for t in g.initializer:
        _check_tensor(t, "initializer")
    for st in g.sparse_initializer:
        _check_tensor(st.values, "sparse initializer")
        _check_tensor(st.indices, "sparse initializer")
    for node in g.node:
        if node.domain not in ALLOWED_DOMAINS:
            raise WeightsError(f"exported graph refused: operator {node.op_type[:40]!r} from "
                               f"the non-standard domain {node.domain[:40]!r}")
        for a in node.attribute:
            if a.HasField("t"):
                _check_tensor(a.t, "attribute")
            for t in a.tensors:
                _check_tensor(t, "attribute")
            if a.HasField("sparse_tensor"):
                _check_tensor(a.sparse_tensor.values, "attribute")
                _check_tensor(a.sparse_tensor.indices, "attribute")
            if a.HasField("g"):
                _check_graph(a.g, depth + 1)
            for sub in a.graphs:
                _check_graph(sub, depth + 1)


def check_graph_bytes(data: bytes, outputs: list[str] | None = None):
    """Refuse a graph that is not plain, self-contained, standard-operator ONNX with one
    input ``x`` and (when given) every one of ``outputs``; returns the parsed model."""
    pb = onnx_schema()
    model = pb.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as exc:  # protobuf's DecodeError, RecursionError...
        raise WeightsError("exported graph refused: not an ONNX model") from exc
    if not model.HasField("graph") or not model.ir_version:
        raise WeightsError("exported graph refused: not an ONNX model")
    bad = [o.domain for o in model.opset_import if o.domain not in ALLOWED_DOMAINS]
    if bad:
        raise WeightsError(f"exported graph refused: it needs the non-standard operator "
                           f"set {bad[0][:40]!r}")
    if len(model.functions) or len(model.training_info):
        raise WeightsError("exported graph refused: model-local functions or training "
                           "graphs are not accepted")
    _check_graph(model.graph)
    inputs = [i.name for i in model.graph.input]
    if inputs != ["x"]:
        raise WeightsError("exported graph refused: it must have exactly one input, x")
    have = {o.name for o in model.graph.output}
    missing = [o for o in outputs or [] if o not in have]
    if missing:
        raise WeightsError(f"exported graph refused: output {missing[0]!r} named by the "
                           "card is missing")
    return model


#: ONNX TensorProto data types medview compares with weights (float32 only: a trained
#: model's parameters)
_FLOAT = 1


def _parameter(t):
    """A float32 initializer as a numpy array (its data checked against its shape)."""
    import numpy as np

    shape = tuple(int(d) for d in t.dims)
    arr = (np.frombuffer(t.raw_data, dtype="<f4") if t.raw_data
           else np.asarray(t.float_data, dtype=np.float32))
    if arr.size != int(np.prod(shape, dtype=np.int64)):
        raise WeightsError("exported graph refused: a parameter's data does not fit its "
                           "shape")
    return arr.reshape(shape)


def check_bound_to_weights(model, weights: dict) -> int:
    """Refuse a graph (a parsed ModelProto) whose parameters are not the weights': every
    float32 graph parameter that the weights file also holds (by name, the exporter's
    ``model.`` prefix aside; the classifier always is, the convolutions are folded with
    their batch norms and are not) must be equal to it, and at least one must be there.
    Only those parameters are converted. Returns how many were compared."""
    import numpy as np

    compared = 0
    for t in model.graph.initializer:
        key = t.name.removeprefix("model.")
        if t.data_type != _FLOAT or key not in weights:
            continue
        value = _parameter(t)
        ref = np.asarray(weights[key], dtype=np.float32)
        if ref.shape != value.shape or not np.array_equal(ref, value):
            raise WeightsError(f"exported graph refused: its parameter {key!r} differs from "
                               "the model's weights (the graph does not compute this "
                               "model)")
        compared += 1
    if not compared:
        raise WeightsError("exported graph refused: it shares no parameter with the "
                           "model's weights")
    return compared


def checked_record_path() -> str:
    """Where graphs that passed the checks are remembered (``MEDVIEW_CACHE_DIR``
    overrides the user's cache folder)."""
    base = os.environ.get(ENV_CACHE_DIR)
    if not base:
        from platformdirs import user_cache_dir

        base = user_cache_dir("medview", "medview")
    return os.path.join(base, _CHECKED_FILE)


def _check_key(sha256: str, outputs: list[str] | None, weights_sha256: str) -> str:
    text = json.dumps([CHECKS_VERSION, sha256, sorted(outputs or []), weights_sha256])
    return hashlib.sha256(text.encode()).hexdigest()


def _read_checked() -> list[str]:
    """The remembered keys; an unreadable, oversized or malformed record is none."""
    try:
        doc = json.loads(read_capped(checked_record_path(), 80 * MAX_CHECKED))
    except (OSError, UnsafeFileError, ValueError):
        return []
    if not isinstance(doc, list):
        return []
    return [k for k in doc[-MAX_CHECKED:] if isinstance(k, str) and _HEX64.fullmatch(k)]


def _remember_checked(key: str, known: list[str]) -> None:
    keys = [k for k in known if k != key] + [key]
    path = checked_record_path()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_write_bytes(path, json.dumps(keys[-MAX_CHECKED:]).encode())
    except OSError:
        pass  # a read-only cache folder: checked again next time


def read_graph(path: str, sha256: str, outputs: list[str] | None = None,
               root: str | None = None, max_bytes: int = MAX_GRAPH_BYTES,
               weights: dict | Callable[[], dict] | None = None,
               weights_sha256: str | None = None) -> bytes:
    """The bytes of a verified graph file (regular file inside ``root``, size cap, sha256,
    structure; with ``weights``, bound to them: :func:`check_bound_to_weights`); the
    runtime is then given these bytes, never the path. The file is parsed once.
    ``weights`` may be a function that returns them (called after the parse: the caller
    may be verifying the weights file on another thread meanwhile). With
    ``weights_sha256`` (the verified hash of those weights) a graph that passed the
    structure and binding checks before is not parsed again (see the module's notes);
    the caller must still verify the weights file."""
    try:
        data = read_capped(path, max_bytes, root=root)
    except FileNotFoundError as exc:
        raise WeightsError("exported graph refused: the file named by the card is "
                           "missing") from exc
    except UnsafeFileError as exc:
        raise WeightsError(f"exported graph refused: {exc.reason}") from exc
    except OSError as exc:
        raise WeightsError(f"exported graph refused: unreadable ({exc.strerror})") from exc
    if hashlib.sha256(data).hexdigest() != sha256:
        raise WeightsError("exported graph refused: its sha256 does not match the card "
                           "(modified or corrupted)")
    key = (_check_key(sha256, outputs, weights_sha256)
           if weights is not None and weights_sha256 else None)
    known = _read_checked() if key is not None else []
    if key is not None and key in known:
        return data
    model = check_graph_bytes(data, outputs)
    if weights is not None:
        check_bound_to_weights(model, weights() if callable(weights) else weights)
    if key is not None:
        _remember_checked(key, known)
    return data
