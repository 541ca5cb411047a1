"""A training run's checkpoint, written at the end of every epoch, so that the same command
run again (or torchrun's restart after a worker died) continues from the last epoch
instead of from zero.

Data only, like a model folder: the tensors (model, best-so-far model, optimizer state)
in a safetensors file named by its epoch, and ``state.json``
(epoch, history, early-stopping counters, optimizer groups, the sha256 of the tensors
file and a digest of the settings). ``state.json`` is replaced last, atomically, so a
crash mid-write leaves the previous checkpoint in force. A checkpoint of other settings
is ignored.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict

from medview.core.safeio import atomic_write_bytes, read_capped

STATE = "state.json"
_MAX_STATE = 64 * 1024**2
_MAX_TENSORS = 16 * 1024**3
#: settings that do not change what is trained
_NOT_IN_DIGEST = ("out", "device", "num_threads", "name")


def config_digest(cfg) -> str:
    doc = {k: v for k, v in asdict(cfg).items() if k not in _NOT_IN_DIGEST}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def save(folder: str, *, epoch: int, model, best_state, optimizer, meta: dict,
         digest: str) -> None:
    """Write the checkpoint of a finished ``epoch`` (1-based)."""
    from safetensors.torch import save as st_save

    os.makedirs(folder, exist_ok=True)
    tensors = {f"model.{k}": v.detach().cpu().contiguous().clone()
               for k, v in model.state_dict().items()}
    if best_state is not None:
        tensors.update({f"best.{k}": v.detach().cpu().contiguous().clone()
                        for k, v in best_state.items()})
    opt = optimizer.state_dict()
    scalars = {}
    for pid, st in opt["state"].items():
        for name, v in st.items():
            if hasattr(v, "detach"):
                tensors[f"opt.{pid}.{name}"] = v.detach().cpu().contiguous().clone()
            else:
                scalars[f"{pid}.{name}"] = v
    data = st_save(tensors)
    name = f"epoch-{epoch:04d}.safetensors"
    atomic_write_bytes(os.path.join(folder, name), data)
    state = dict(meta, epoch=epoch, digest=digest, tensors=name,
                 tensors_sha256=hashlib.sha256(data).hexdigest(),
                 param_groups=opt["param_groups"], optimizer_scalars=scalars,
                 has_best=best_state is not None)
    atomic_write_bytes(os.path.join(folder, STATE),
                       json.dumps(state, default=_jsonable).encode())
    for old in os.listdir(folder):
        if old.startswith("epoch-") and old != name:
            os.remove(os.path.join(folder, old))


def _jsonable(v):
    if isinstance(v, tuple):
        return list(v)
    return float(v)


def load(folder: str, digest: str) -> tuple[dict, dict] | None:
    """``(state, tensors)`` of the checkpoint in ``folder`` when it belongs to these
    settings (``digest``) and its tensors file is intact; None otherwise."""
    from safetensors.torch import load as st_load

    path = os.path.join(folder, STATE)
    if not os.path.isfile(path):
        return None
    try:
        state = json.loads(read_capped(path, _MAX_STATE).decode())
        if state.get("digest") != digest or "/" in state["tensors"] or "\\" in state[
                "tensors"]:
            return None
        data = read_capped(os.path.join(folder, state["tensors"]), _MAX_TENSORS)
    except (OSError, ValueError, KeyError):
        return None
    if hashlib.sha256(data).hexdigest() != state.get("tensors_sha256"):
        return None
    return state, st_load(data)


def restore_optimizer(optimizer, state: dict, tensors: dict) -> None:
    opt_state: dict = {}
    for key, v in tensors.items():
        if key.startswith("opt."):
            _, pid, name = key.split(".", 2)
            opt_state.setdefault(int(pid), {})[name] = v
    for key, v in state.get("optimizer_scalars", {}).items():
        pid, name = key.split(".", 1)
        opt_state.setdefault(int(pid), {})[name] = v
    groups = state["param_groups"]
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    optimizer.load_state_dict({"state": opt_state, "param_groups": groups})


def prefixed(tensors: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
