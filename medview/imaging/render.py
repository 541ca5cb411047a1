"""From stored pixels to modality values and to the 8-bit image on screen."""

from __future__ import annotations

import numpy as np

from medview.core.volume import ImageVolume, WindowPreset
from medview.imaging.lut import (
    apply_modality_lut,
    apply_voi_lut_table,
    apply_window,
    invert,
    to_uint8,
)
from medview.imaging.window import FULL_SCALE_8BIT, default_window


def modality_slice(volume: ImageVolume, index: int) -> np.ndarray:
    """Modality values (e.g. HU for CT) of slice ``index`` as float32.

    RGB slices are returned as float32 without rescaling.
    """
    stored = volume.pixels[index]
    if volume.is_rgb:
        return stored.astype(np.float32)
    return apply_modality_lut(stored, *volume.rescale(index))


def render_slice(
    volume: ImageVolume,
    index: int,
    window: WindowPreset | None,
    user_invert: bool = False,
    use_voi_lut: bool = False,
) -> np.ndarray:
    """The uint8 image shown for slice ``index``: modality LUT, VOI, MONOCHROME1, invert.

    With ``use_voi_lut`` and a VOI LUT in the volume, the table replaces the window.
    MONOCHROME1 images are inverted so that low values are bright, as the standard
    specifies; ``user_invert`` inverts again on top of that.
    """
    voi_lut = volume.voi_lut if use_voi_lut else None
    if voi_lut is None and _display_ready(volume, index, window, user_invert):
        return volume.pixels[index].copy()  # what the window below computes, exactly
    if voi_lut is not None and not volume.is_rgb:
        display = apply_voi_lut_table(volume.pixels[index], voi_lut)
    else:
        values = modality_slice(volume, index)
        if window is None:
            window = default_window(volume, values)
        display = apply_window(values, window.center, window.width)
    if (volume.photometric == "MONOCHROME1") != bool(user_invert):
        display = invert(display)
    return to_uint8(display)


def _display_ready(volume: ImageVolume, index: int, window: WindowPreset | None,
                   user_invert: bool) -> bool:
    """Whether the shown image is the stored 8-bit grey slice itself: a MONOCHROME2 uint8
    slice, identity rescale, no window of the file's own, shown at full scale (0 -> black,
    255 -> white), not inverted: PNG/JPEG films. The float window is then skipped."""
    if (volume.pixels.dtype != np.uint8 or volume.is_rgb or volume.windows or user_invert
            or volume.photometric != "MONOCHROME2" or volume.rescale(index) != (1.0, 0.0)):
        return False
    return window is None or (window.center, window.width) == (
        FULL_SCALE_8BIT.center, FULL_SCALE_8BIT.width)


def value_at(volume: ImageVolume, index: int, row: int, col: int) -> float | tuple[int, ...]:
    """The modality value (or RGB triple) at one pixel, for the cursor read-out."""
    stored = volume.pixels[index, row, col]
    if volume.is_rgb:
        return tuple(int(v) for v in stored)
    slope, intercept = volume.rescale(index)
    return float(stored) * slope + intercept
