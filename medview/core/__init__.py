"""Plain data classes and typed errors shared by every layer (no torch, no Qt)."""

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
