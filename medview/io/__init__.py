"""Readers: DICOM (pydicom), NIfTI/NRRD/MHA (SimpleITK), PNG/JPEG/TIFF/BMP (Pillow).

``discover``, ``iter_load`` and ``load`` come from :mod:`medview.io.loader`, imported on
first use (``medview.io.samples`` alone stays light)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["discover", "iter_load", "load"]

if TYPE_CHECKING:
    from medview.io.loader import discover, iter_load, load


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'medview.io' has no attribute {name!r}")
    from medview.io import loader

    return getattr(loader, name)
