"""Model inputs from the same pixels the viewer shows (pure numpy + Pillow resize).

The chain is: stored pixels -> modality LUT -> default display window (the file's own,
MONOCHROME1 inverted; 8-bit raster files at full scale) -> grey uint8 -> resize to the
card's size -> [0, 1] -> channels -> (x - mean) / std. Training, inference, the "what the
model saw" preview and batch scoring all call these functions, so they cannot drift.
"""

from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image

from medview.core.modeling import Preprocessing
from medview.core.volume import ImageVolume
from medview.imaging.render import render_slice

_RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
    "area": Image.Resampling.BOX,
}


def display_grey(volume: ImageVolume, index: int) -> np.ndarray:
    """The slice as shown by default, as a grey uint8 image (colour -> ITU-R 601 luma)."""
    shown = render_slice(volume, index, None)
    if shown.ndim == 3:
        luma = shown.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        return np.clip(np.rint(luma), 0, 255).astype(np.uint8)
    return shown


def resize_grey(grey: np.ndarray, size: tuple[int, int], interpolation: str = "bilinear"
                ) -> np.ndarray:
    """Resize a uint8 grey image to ``size`` = (height, width) with the card's filter."""
    h, w = size
    if grey.shape == (h, w):
        return grey.copy()
    img = Image.fromarray(grey, mode="L")
    return np.asarray(img.resize((w, h), _RESAMPLE[interpolation]))


def normalise(resized: np.ndarray, spec: Preprocessing) -> np.ndarray:
    """Grey images with values 0-255 (``(H, W)`` or a batch ``(N, H, W)``) -> float32
    ``(C, H, W)`` / ``(N, C, H, W)``: scaled to [0, 1], repeated to the card's channels,
    then ``(x - mean) / std`` per channel. Training and inference both call this."""
    x = np.asarray(resized, dtype=np.float32) / np.float32(255.0)
    out = np.repeat(np.expand_dims(x, -3), spec.channels, axis=-3)
    mean = np.asarray(spec.mean, np.float32).reshape(-1, 1, 1)
    std = np.asarray(spec.std, np.float32).reshape(-1, 1, 1)
    return (out - mean) / std


def prepare(volume: ImageVolume, index: int, spec: Preprocessing) -> tuple[np.ndarray, np.ndarray]:
    """The model input for one slice: ``(tensor (C, H, W) float32, resized uint8 (H, W))``.

    ``spec.window`` must be ``"display"``: the pixels are the ones the viewer shows by
    default (the only kind of input medview's models are trained on)."""
    if spec.window != "display":
        raise ValueError(f"preprocessing window {spec.window!r} is not supported "
                         "(only 'display')")
    resized = resize_grey(display_grey(volume, index), spec.size, spec.interpolation)
    return normalise(resized, spec), resized


def pixels_sha256(volume: ImageVolume, index: int) -> str:
    """A hash of the stored pixels of one slice (recorded with every prediction)."""
    arr = np.ascontiguousarray(volume.pixels[index])
    h = hashlib.sha256()
    h.update(str(arr.dtype).encode() + str(arr.shape).encode())
    h.update(arr.tobytes())
    return h.hexdigest()


def resize_map(saliency: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Undo the preprocessing resize: a (h, w) float map back to the slice's (rows, cols)."""
    img = Image.fromarray(np.asarray(saliency, np.float32), mode="F")
    return np.asarray(img.resize((shape[1], shape[0]), Image.Resampling.BILINEAR))
