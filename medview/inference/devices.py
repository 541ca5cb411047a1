"""Which device computes: CUDA if present, else Apple's MPS, else the CPU.

Imports torch when called (never at import), so the graph path can decide without it.
"""

from __future__ import annotations

from medview.core.errors import MedviewError


class DeviceError(MedviewError, ValueError):
    """A device was asked for that this machine does not have."""


def available_devices() -> list[str]:
    import torch

    out = ["cpu"]
    if torch.cuda.is_available():
        out.insert(0, "cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        out.insert(0, "mps")
    return out


def choose_device(requested: str = "auto") -> str:
    """CUDA if available, else MPS, else CPU; an explicit request must be available."""
    devices = available_devices()
    if requested in ("auto", "", None):
        for d in ("cuda", "mps", "cpu"):
            if d in devices:
                return d
    if requested not in devices:
        raise DeviceError(f"device {requested!r} is not available here (available: "
                         f"{', '.join(devices)})")
    return requested
