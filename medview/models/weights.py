"""Safe weight loading: safetensors only, sha256 checked against the card, shapes checked.

Pickles (``.pt``/``.pth``), TorchScript archives, truncated or tampered files and weights
that do not fit the architecture are refused with a plain message; nothing is ever
unpickled.
"""

from __future__ import annotations

import json
import os
import struct

from medview.core.errors import MedviewError
from medview.core.progress import file_sha256

MAX_HEADER = 100 * 1024 * 1024


class WeightsError(MedviewError):
    """Weights were refused; the message says why."""


def check_safetensors_file(path: str) -> None:
    """Refuse anything that is not a complete safetensors file, by content."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
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
            header = json.loads(f.read(n))
    except FileNotFoundError as exc:
        raise WeightsError("the weights file is missing") from exc
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise WeightsError(f"refused: unreadable safetensors header ({exc})") from exc
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            end = max(end, int(entry["data_offsets"][1]))
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise WeightsError(f"refused: malformed entry for tensor {name!r}") from exc
    if 8 + n + end != size:
        raise WeightsError(
            f"refused: the file is truncated or padded ({size} bytes, header says {8 + n + end})"
        )


def load_verified_state_dict(path: str, expected_sha256: str) -> dict:
    """The tensors of a safetensors file whose sha256 matches the card."""
    from safetensors.torch import load_file

    check_safetensors_file(path)
    actual = file_sha256(path)
    if actual != expected_sha256:
        raise WeightsError(
            f"refused: weights sha256 {actual[:12]}... does not match the card's "
            f"{expected_sha256[:12]}... (file changed or corrupted)"
        )
    try:
        return load_file(path, device="cpu")
    except Exception as exc:
        raise WeightsError(f"refused: unreadable safetensors data ({exc})") from exc


def load_into(model, state: dict) -> None:
    """Load ``state`` strictly into ``model``, with a clear message on any mismatch."""
    target = model.state_dict()
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(target[k].shape)}"
        for k in target
        if k in state and tuple(state[k].shape) != tuple(target[k].shape)
    ]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append("wrong shapes: " + "; ".join(wrong[:3]))
        if missing:
            parts.append(f"{len(missing)} missing tensor(s) e.g. {missing[0]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensor(s) e.g. {unexpected[0]}")
        raise WeightsError("refused: weights do not fit the architecture: " + ", ".join(parts))
    model.load_state_dict(state, strict=True)


def save_weights(model, path: str, metadata: dict[str, str] | None = None) -> str:
    """Write a model's state dict as safetensors; return the file's sha256."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, path, metadata=metadata or {})
    return file_sha256(path)
