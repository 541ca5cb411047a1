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


def auto_device(available: list[str]) -> str:
    """What "auto" means among ``available`` devices: CUDA, then MPS, then the CPU (the
    one rule of the panel, the commands, training and :mod:`medview.training.placement`)."""
    return next(d for d in ("cuda", "mps", "cpu") if d in available)


def choose_device(requested: str = "auto") -> str:
    """CUDA if available, else MPS, else CPU; an explicit request must be available."""
    devices = available_devices()
    if requested in ("auto", "", None):
        return auto_device(devices)
    if requested not in devices:
        raise DeviceError(f"device {requested!r} is not available here (available: "
                         f"{', '.join(devices)})")
    return requested


def full_precision_cuda() -> str:
    """Float32 convolutions and matrix products on CUDA computed in full float32, not
    TF32: TF32 (torch's default for cuDNN convolutions) moved a film's probability by up
    to 3.2e-3 from the CPU's on real films, 9e-6 without it (measured on an H200 before
    this switch existed; benchmarks/bench_gpu.py re-checks), inside a graph's 1e-4
    tolerance. Process-wide; returns how float32 now runs."""
    import torch

    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):  # torch >= 2.9's API
        conv.fp32_precision = "ieee"
        setattr(torch.backends.cuda.matmul, "fp32_precision", "ieee")  # noqa: B010
    else:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    return "float32 (TF32 off)"
