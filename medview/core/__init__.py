"""Plain data classes and typed errors shared by every layer (no torch, no Qt).

The names below are loaded on first use: importing one light submodule (the errors, the
model-card records) does not import numpy (a cold ``medview predict`` starts loading its
model sooner)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_WHERE = {
    "CancelledError": "errors",
    "CorruptFileError": "errors",
    "InvalidPixelTagError": "errors",
    "LoadError": "errors",
    "MedviewError": "errors",
    "NotAnImageError": "errors",
    "TooLargeError": "errors",
    "UnsupportedTransferSyntaxError": "errors",
    "CancelToken": "progress",
    "Progress": "progress",
    "ImageVolume": "volume",
    "LoadResult": "volume",
    "SkippedFile": "volume",
    "WindowPreset": "volume",
}

__all__ = [
    "CancelToken",
    "CancelledError",
    "CorruptFileError",
    "ImageVolume",
    "InvalidPixelTagError",
    "LoadError",
    "LoadResult",
    "MedviewError",
    "NotAnImageError",
    "Progress",
    "SkippedFile",
    "TooLargeError",
    "UnsupportedTransferSyntaxError",
    "WindowPreset",
]

if TYPE_CHECKING:
    from medview.core.errors import (
        CancelledError,
        CorruptFileError,
        InvalidPixelTagError,
        LoadError,
        MedviewError,
        NotAnImageError,
        TooLargeError,
        UnsupportedTransferSyntaxError,
    )
    from medview.core.progress import CancelToken, Progress
    from medview.core.volume import ImageVolume, LoadResult, SkippedFile, WindowPreset


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'medview.core' has no attribute {name!r}")
    return getattr(importlib.import_module(f"medview.core.{where}"), name)
