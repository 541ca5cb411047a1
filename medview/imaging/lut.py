"""Small pure functions of the DICOM grayscale and colour pipelines.

Each takes an array and a few parameters and returns a new array; none reads a file.
References are to DICOM PS3.3 (2024).
"""

from __future__ import annotations

import math

import numpy as np

from medview.core.volume import VoiLut


def apply_modality_lut(stored: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    """Rescale stored values to modality values (C.11.1, Rescale Slope/Intercept).

    ``slope`` and ``intercept`` must be finite: readers replace NaN/inf by the identity and
    record a warning, so a NaN never reaches the display or a model.
    """
    if not (math.isfinite(slope) and math.isfinite(intercept)):
        raise ValueError("rescale slope/intercept must be finite")
    out = stored.astype(np.float32, copy=True)
    if slope != 1.0:
        out *= np.float32(slope)
    if intercept != 0.0:
        out += np.float32(intercept)
    return out


def apply_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """Map modality values to display values in [0, 1] with a LINEAR VOI window.

    Implements C.11.2.1.2.1: values at or below ``center - 0.5 - (width - 1) / 2`` map to 0,
    values above ``center - 0.5 + (width - 1) / 2`` map to 1, linear in between. ``width`` is
    clamped to at least 1 as the standard requires.
    """
    width = max(float(width), 1.0)
    c = float(center) - 0.5
    scale = np.float32(1.0 / max(width - 1.0, 1e-6))
    out = values.astype(np.float32, copy=True)
    out -= np.float32(c)
    out *= scale
    out += np.float32(0.5)
    np.clip(out, 0.0, 1.0, out=out)
    return out


def apply_voi_lut_table(stored: np.ndarray, lut: VoiLut) -> np.ndarray:
    """Map values through a VOI LUT Sequence item (C.11.2.1.1) to display values in [0, 1].

    Values below the first mapped value take the first entry, values past the end take the
    last entry, as the standard specifies.
    """
    table = np.asarray(lut.table, dtype=np.float32)
    index = stored.astype(np.int64) - int(lut.first_mapped)
    np.clip(index, 0, len(table) - 1, out=index)
    out = table[index]
    out /= np.float32(2**lut.bits - 1)
    return out


def invert(display: np.ndarray) -> np.ndarray:
    """Invert display values in [0, 1] in place (MONOCHROME1, or the user's invert)."""
    return np.subtract(np.float32(1.0), display, out=display)


def palette_to_rgb(
    indices: np.ndarray,
    red: np.ndarray,
    green: np.ndarray,
    blue: np.ndarray,
    first_mapped: int,
    bits: int,
) -> np.ndarray:
    """Map PALETTE COLOR indices through the red/green/blue LUTs (C.7.6.3.1.5) to uint8 RGB.

    Indices below ``first_mapped`` take the first entry; past the end, the last.
    """
    n = min(len(red), len(green), len(blue))
    idx = indices.astype(np.int64) - int(first_mapped)
    np.clip(idx, 0, n - 1, out=idx)
    shift = max(int(bits) - 8, 0)
    lut = np.stack([red[:n], green[:n], blue[:n]], axis=-1).astype(np.uint32) >> shift
    return lut[idx].astype(np.uint8)


def ybr_full_to_rgb(ybr: np.ndarray, bits: int = 8) -> np.ndarray:
    """Convert YBR_FULL (and YBR_FULL_422 once upsampled) to RGB (C.7.6.3.1.2)."""
    maxval = float(2**bits - 1)
    half = float(2 ** (bits - 1))
    y = ybr[..., 0].astype(np.float32)
    cb = ybr[..., 1].astype(np.float32) - half
    cr = ybr[..., 2].astype(np.float32) - half
    rgb = np.empty(ybr.shape, dtype=np.float32)
    rgb[..., 0] = y + 1.402 * cr
    rgb[..., 1] = y - 0.344136 * cb - 0.714136 * cr
    rgb[..., 2] = y + 1.772 * cb
    np.clip(np.rint(rgb), 0, maxval, out=rgb)
    return rgb.astype(ybr.dtype)


def to_uint8(display: np.ndarray) -> np.ndarray:
    """Quantise display values in [0, 1] to uint8 for the screen."""
    out = display * np.float32(255.0)
    out += np.float32(0.5)
    return out.astype(np.uint8)
