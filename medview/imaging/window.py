"""Window presets: from the modality, from the file's tags, and from the data."""

from __future__ import annotations

import numpy as np

from medview.core.volume import ImageVolume, WindowPreset

# Common CT windows in Hounsfield units (center, width).
CT_PRESETS = (
    WindowPreset("CT lung", -600.0, 1500.0),
    WindowPreset("CT mediastinum", 50.0, 350.0),
    WindowPreset("CT bone", 400.0, 1800.0),
    WindowPreset("CT brain", 40.0, 80.0),
)

#: 0 -> black, 255 -> white: the identity for display-ready 8-bit images.
FULL_SCALE_8BIT = WindowPreset("Full scale (8-bit)", 128.0, 256.0)

_SAMPLE = 262_144  # values looked at to estimate a window


def _sample(values: np.ndarray) -> np.ndarray:
    flat = values.reshape(-1)
    step = max(1, flat.size // _SAMPLE)
    sample = flat[::step]
    return sample[np.isfinite(sample)] if sample.dtype.kind == "f" else sample


def full_range_window(values: np.ndarray) -> WindowPreset:
    """A window spanning the minimum to maximum value."""
    lo, hi = float(np.min(values)), float(np.max(values))
    return WindowPreset("Full range", (lo + hi + 1) / 2.0, max(hi - lo + 1.0, 1.0))


def auto_window(values: np.ndarray, low: float = 0.5, high: float = 99.5) -> WindowPreset:
    """A window from the 0.5th to 99.5th percentile of a subsample of ``values``."""
    s = _sample(values)
    if s.size == 0:
        return WindowPreset("Auto", 0.5, 1.0)
    lo, hi = (float(v) for v in np.percentile(s, [low, high]))
    if hi <= lo:
        lo, hi = float(s.min()), float(s.max())
    return WindowPreset("Auto", (lo + hi + 1) / 2.0, max(hi - lo + 1.0, 1.0))


def window_presets(volume: ImageVolume, values: np.ndarray) -> list[WindowPreset]:
    """All windows offered for a volume: file tags first, modality presets, auto, full."""
    presets: list[WindowPreset] = list(volume.windows)
    if volume.modality == "CT" and volume.rescale_type in ("HU", "") and not volume.is_rgb:
        presets.extend(CT_PRESETS)  # an RGB capture of a CT holds colours, not HU
    if volume.pixels.dtype == np.uint8:
        presets.append(FULL_SCALE_8BIT)
    presets.append(auto_window(values))
    presets.append(full_range_window(values))
    return presets


def default_window(volume: ImageVolume, values: np.ndarray) -> WindowPreset:
    """The window a volume opens with: the file's first window, else a data-driven one."""
    if volume.windows:
        return volume.windows[0]
    if volume.pixels.dtype == np.uint8:
        return FULL_SCALE_8BIT  # 8-bit images (PNG/JPEG, US, RGB) are display-ready
    if volume.is_rgb:
        return full_range_window(values)
    return auto_window(values)
