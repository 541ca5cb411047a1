"""PNG, JPEG, TIFF and BMP images (8/16-bit, grey or colour) through Pillow."""

from __future__ import annotations

import math
import os
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from medview.core.errors import CorruptFileError, LoadError, NotAnImageError, TooLargeError
from medview.core.limits import COPIES_RASTER, check_budget
from medview.core.safeio import open_regular
from medview.core.volume import ImageVolume

#: Refuse images with more pixels than this (decompression bombs); checked on the header.
MAX_PIXELS = 250_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


def _to_array(img: Image.Image, path: str, warns: list[str]) -> tuple[np.ndarray, str]:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(img, dtype=np.uint16), "MONOCHROME2"
    if mode == "1":
        return np.asarray(img.convert("L")), "MONOCHROME2"
    if mode in ("L", "I", "F"):
        arr = np.asarray(img)
        if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
            raise CorruptFileError(path, "image holds NaN or infinite values")
        return arr, "MONOCHROME2"
    if mode in ("LA", "PA", "RGBA"):
        alpha = np.asarray(img.getchannel("A"))
        if alpha.min() < 255:
            warns.append("transparency (alpha channel) ignored")
        img = img.convert("L" if mode == "LA" else "RGB")
    elif mode == "P":
        return _grey_if_equal(np.asarray(img.convert("RGB")))
    elif mode != "RGB":
        img = img.convert("RGB")
    arr = np.asarray(img)
    if arr.ndim == 2:
        return arr, "MONOCHROME2"
    return _grey_if_equal(arr)


def _grey_if_equal(rgb: np.ndarray) -> tuple[np.ndarray, str]:
    """A grey film saved as RGB (three equal channels: every JPEG of the pediatric chest
    set) is a grey image: one channel, shown, hashed and scored as MONOCHROME2 (its luma
    is that channel exactly); a colour image stays RGB."""
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]):
        return np.ascontiguousarray(rgb[..., 0]), "MONOCHROME2"
    return rgb, "RGB"


def read_raster(path: str) -> ImageVolume:
    """Read a PNG/JPEG/TIFF/BMP file (all pages of a multi-page TIFF of equal size)."""
    with open_regular(path) as fh:
        return _read_open_raster(path, fh)


_GREY_MODES = ("1", "L", "I", "F", "I;16", "I;16B", "I;16L", "I;16N")


def _band_bytes(mode: str) -> int:
    """Bytes per pixel of a Pillow mode once decoded (all bands)."""
    if mode.startswith("I;16"):
        return 2
    if mode in ("I", "F"):
        return 4
    if mode == "1":
        return 1
    if mode in ("P", "PA"):
        return 4  # expanded to RGB(A) on conversion
    return max(Image.getmodebands(mode), 1) if mode in Image.MODES else 4


def _read_open_raster(path: str, fh) -> ImageVolume:
    warns: list[str] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(fh)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise TooLargeError(path, f"image too large to open safely: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise NotAnImageError(path, "not a readable PNG/JPEG/TIFF/BMP image") from exc
    except OSError as exc:
        raise LoadError(path, f"cannot read the file: {exc}") from exc
    with img:
        w, h = img.size
        if w <= 0 or h <= 0:
            raise CorruptFileError(path, f"image dimensions {w}x{h} are invalid")
        n_frames = getattr(img, "n_frames", 1)
        if w * h * max(n_frames, 1) > MAX_PIXELS:
            raise TooLargeError(
                path, f"{w}x{h} pixels x {n_frames} page(s) exceeds the limit of {MAX_PIXELS}"
            )
        # decoded size from the header, times the copies made on the way (decode, mode
        # conversion, numpy, stacking), before a pixel is decoded
        check_budget(path, w * h * max(n_frames, 1) * _band_bytes(img.mode), COPIES_RASTER,
                     f"the pixels ({w}x{h}, {img.mode}, {n_frames} page(s))",
                     w * h * (1 if img.mode in _GREY_MODES else 3))
        frames: list[np.ndarray] = []
        photometric = "MONOCHROME2"
        try:
            for k in range(n_frames):
                img.seek(k)
                page = ImageOps.exif_transpose(img) if k == 0 else img
                arr, photometric_k = _to_array(page, path, warns)
                if frames and (arr.shape != frames[0].shape or photometric_k != photometric):
                    warns.append(f"pages after page {k} differ in size or colour; not shown")
                    break
                photometric = photometric_k
                frames.append(np.array(arr))
        except (OSError, SyntaxError, ValueError) as exc:
            raise CorruptFileError(path, f"image data is corrupt or cut off: {exc}") from exc
    pixels = np.stack(frames)
    name = os.path.basename(path)
    return ImageVolume(
        pixels=pixels,
        modality="OT",
        photometric=photometric,
        spacing=(math.nan, math.nan, math.nan),
        description=name,
        series_uid=f"file:{name}",
        source_format="raster",
        source_paths=[path],
        warnings=warns,
        multiframe=len(frames) > 1,
    )
