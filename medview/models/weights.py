"""Safe weight loading: safetensors only, sha256 checked against the card, shapes checked.

Pickles (``.pt``/``.pth``), TorchScript archives, truncated or tampered files and weights
that do not fit the architecture are refused with a plain message; nothing is ever
unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct

from medview.core.errors import MedviewError
from medview.core.safeio import UnsafeFileError, open_regular

MAX_HEADER = 16 * 1024 * 1024
#: Bundled models are ~14 MB; a model folder's weights may not exceed this.
MAX_WEIGHTS_BYTES = 4 * 1024**3
ALLOWED_DTYPES = {"F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL"}
#: the dtypes a model's weights may be stored in (num_batches_tracked is int64); other
#: safetensors files (the trust gate's statistics) may use any of ALLOWED_DTYPES
WEIGHT_DTYPES = frozenset({"F32", "F16", "BF16", "I64"})


class WeightsError(MedviewError):
    """Weights were refused; the message says why."""


def _parse_header(f, size: int) -> dict:
    """The validated JSON header of an open safetensors file of ``size`` bytes."""
    head = f.read(16)
    if head[:2] == b"PK":
        raise WeightsError("refused: a ZIP/TorchScript archive, not safetensors")
    if head[:1] == b"\x80":
        raise WeightsError("refused: a Python pickle, not safetensors")
    if len(head) < 8:
        raise WeightsError("refused: the file is empty or truncated")
    (n,) = struct.unpack("<Q", head[:8])
    if n <= 1 or n > MAX_HEADER or 8 + n > size:
        raise WeightsError("refused: not a safetensors file, or truncated")
    f.seek(8)
    try:
        header = json.loads(f.read(n))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise WeightsError("refused: unreadable safetensors header") from exc
    if not isinstance(header, dict):
        raise WeightsError("refused: unreadable safetensors header")
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            start, stop = (int(v) for v in entry["data_offsets"])
            shape = [int(d) for d in entry["shape"]]
            dtype = str(entry["dtype"])
        except (KeyError, TypeError, ValueError) as exc:
            raise WeightsError(f"refused: malformed entry for tensor {name!r}") from exc
        if dtype not in ALLOWED_DTYPES or not 0 <= start <= stop or any(d < 0 for d in shape):
            raise WeightsError(f"refused: malformed entry for tensor {name!r}")
        end = max(end, stop)
    if 8 + n + end != size:
        raise WeightsError(
            f"refused: the file is truncated or padded ({size} bytes, header says {8 + n + end})"
        )
    return header


def _read(path: str, root: str | None, expected_shapes=None, whole: bool = False,
          max_bytes: int = MAX_WEIGHTS_BYTES, dtypes=None) -> tuple[dict, bytes]:
    """The checked header (and with ``whole`` the file's bytes) of a weights file that is
    a regular file inside ``root``; with ``dtypes``, every tensor must be stored in one of
    them. Every failure is a :class:`WeightsError`."""
    try:
        with open_regular(path, max_bytes=max_bytes, root=root) as f:
            header = _parse_header(f, os.fstat(f.fileno()).st_size)
            if dtypes is not None:
                odd = sorted({str(v.get("dtype")) for k, v in header.items()
                              if k != "__metadata__" and str(v.get("dtype")) not in dtypes})
                if odd:
                    raise WeightsError(f"refused: weights stored as {', '.join(odd)} (a "
                                       f"model's weights are {', '.join(sorted(dtypes))})")
            if expected_shapes is not None:
                check_shapes(header, expected_shapes)
            if not whole:
                return header, b""
            f.seek(0)
            return header, f.read()
    except FileNotFoundError as exc:
        raise WeightsError("the weights file is missing") from exc
    except UnsafeFileError as exc:
        raise WeightsError(f"refused: {exc.reason}") from exc
    except OSError as exc:
        raise WeightsError(f"refused: unreadable weights file ({exc.strerror or exc})") from exc


def check_safetensors_file(path: str, root: str | None = None) -> dict:
    """Refuse anything that is not a complete safetensors file, by content; return its
    header. With ``root``, a file (or link) leading outside that folder is refused."""
    return _read(path, root)[0]


def check_shapes(header: dict, expected: dict[str, tuple[int, ...]]) -> None:
    """Refuse tensors (a safetensors header: name -> {"shape": [...]}) whose names or shapes
    differ from ``expected``."""
    have = {k: tuple(int(d) for d in v["shape"]) for k, v in header.items()
            if k != "__metadata__"}
    missing = [k for k in expected if k not in have]
    unexpected = [k for k in have if k not in expected]
    wrong = [f"{k} {have[k]} vs {tuple(expected[k])}" for k in expected
             if k in have and have[k] != tuple(expected[k])]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append("wrong shapes: " + "; ".join(wrong[:3]))
        if missing:
            parts.append(f"{len(missing)} missing tensor(s) e.g. {missing[0]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensor(s) e.g. {unexpected[0]}")
        raise WeightsError("refused: weights do not fit the architecture: " + ", ".join(parts))


def _check_sha256(data: bytes, expected: str) -> None:
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise WeightsError(
            f"refused: weights sha256 {actual[:12]}... does not match the card's "
            f"{expected[:12]}... (file changed or corrupted)"
        )


def load_verified_state_dict(path: str, expected_sha256: str,
                             expected_shapes: dict[str, tuple[int, ...]] | None = None,
                             root: str | None = None, dtypes=None) -> dict:
    """The tensors of a safetensors file whose sha256 matches the card.

    Order of checks, cheapest first: a regular file inside ``root``; the header (size,
    offsets, dtypes); the tensor names and shapes against ``expected_shapes`` (so a huge
    or sparse file is refused in milliseconds); then the sha256 of the bytes that are then
    parsed (read once: no window between hashing and loading).
    """
    from safetensors.torch import load as load_bytes

    _, data = _read(path, root, expected_shapes, whole=True, dtypes=dtypes)
    _check_sha256(data, expected_sha256)
    try:
        return load_bytes(data)
    except Exception as exc:
        raise WeightsError(f"refused: unreadable safetensors data ({exc})") from exc


#: The trust gate's statistics are a few MB (covariances of the model's features).
MAX_SCOPE_BYTES = 256 * 1024**2


def read_scope_statistics(path: str, expected_sha256: str, root: str | None = None) -> bytes:
    """The bytes of a scope-statistics safetensors file (a regular file inside ``root``,
    at most ``MAX_SCOPE_BYTES``, a valid header) whose sha256 matches the card."""
    try:
        _, data = _read(path, root, whole=True, max_bytes=MAX_SCOPE_BYTES)
    except WeightsError as exc:
        msg = str(exc).replace("weights file", "scope statistics file")
        raise WeightsError(f"trust gate: {msg}") from exc
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected_sha256:
        raise WeightsError(f"trust gate: refused: scope statistics sha256 {actual[:12]}... "
                           f"does not match the card's {expected_sha256[:12]}...")
    return data


def load_into(model, state: dict) -> None:
    """Load ``state`` strictly into ``model``, with a clear message on any mismatch."""
    check_shapes({k: {"shape": list(v.shape)} for k, v in state.items()},
                 {k: tuple(v.shape) for k, v in model.state_dict().items()})
    model.load_state_dict(state, strict=True)


def save_weights(model, path: str, metadata: dict[str, str] | None = None) -> str:
    """Write a model's state dict as safetensors (flushed to disk); return its sha256."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    data = save(state, metadata=metadata or {})
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return hashlib.sha256(data).hexdigest()


def read_verified_tensors(path: str, expected_sha256: str, root: str | None = None) -> dict:
    """Every tensor of a verified weights file (regular file inside ``root``, size cap,
    header, sha256) as numpy arrays, without torch: the graph backend checks its graph
    against them and reads the class-activation-map head from them."""
    from safetensors.numpy import load as load_numpy

    _, data = _read(path, root, whole=True, dtypes=WEIGHT_DTYPES)
    _check_sha256(data, expected_sha256)
    try:
        return load_numpy(data)
    except Exception as exc:
        raise WeightsError(f"refused: unreadable safetensors data ({exc})") from exc


def read_tensor(path: str, expected_sha256: str, name: str, root: str | None = None):
    """One tensor of a verified weights file as a float32 numpy array, without torch
    (the class-activation-map head of the exported-graph backend)."""
    import numpy as np
    from safetensors.numpy import load as load_numpy

    header, data = _read(path, root, whole=True)
    _check_sha256(data, expected_sha256)
    if name not in header or name == "__metadata__":
        raise WeightsError(f"refused: the weights have no tensor {name!r}")
    try:
        return np.asarray(load_numpy(data)[name], np.float32)
    except Exception as exc:
        raise WeightsError(f"refused: unreadable safetensors data ({exc})") from exc
