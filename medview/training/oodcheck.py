"""Out-of-distribution check images that need no data beyond the model's own films:
synthetic graphics, and films transformed into what the model was not built for
(rotated, inverted, lateral-looking crops, zoomed out with a border as a stand-in for
adult proportions), plus benign variations that must stay in scope (brightness, gamma,
JPEG re-compression, small crops, upscaling, small rotations).

Used when training fits the trust gate (the card's quick check), by the benchmark and
by the script that refits the bundled models. Grey uint8 arrays in, out.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance

from medview.imaging.model_input import resize_grey
from medview.training.robust import jpeg, rotate


def _zoom_out(a: np.ndarray) -> np.ndarray:
    """The film shrunk to 2/3 inside a border of its own background level: the chest
    then fills less of the frame, as an adult chest does on a child-sized detector."""
    h, w = a.shape
    small = resize_grey(a, (h * 2 // 3, w * 2 // 3))
    out = np.full_like(a, int(np.median(a[: max(h // 32, 1)])))
    y, x = (h - small.shape[0]) // 2, (w - small.shape[1]) // 2
    out[y:y + small.shape[0], x:x + small.shape[1]] = small
    return out


#: Films turned into something the model was not built for: must be withheld.
OUT_TRANSFORMS = {
    "rotated 90": lambda a: np.ascontiguousarray(np.rot90(a)),
    "inverted": lambda a: 255 - a,
    "lateral-like crop": lambda a: np.ascontiguousarray(a[:, : a.shape[1] // 2]),
    "zoomed out (adult proxy)": _zoom_out,
}

#: Benign variations of the same films: should stay in scope.
BENIGN_TRANSFORMS = {
    "brighter 10%": lambda a: np.clip(a.astype(np.float32) * 1.1, 0, 255).astype(np.uint8),
    "darker 10%": lambda a: (a.astype(np.float32) * 0.9).astype(np.uint8),
    "gamma 0.8": lambda a: (255 * (a / 255.0) ** 0.8).astype(np.uint8),
    "contrast 0.85": lambda a: np.asarray(ImageEnhance.Contrast(Image.fromarray(a))
                                          .enhance(0.85)),
    "JPEG quality 50": lambda a: jpeg(a, 50),
    "crop 5% each side": lambda a: np.ascontiguousarray(
        a[a.shape[0] // 20: a.shape[0] - a.shape[0] // 20,
          a.shape[1] // 20: a.shape[1] - a.shape[1] // 20]),
    "upscaled 2x": lambda a: resize_grey(a, (a.shape[0] * 2, a.shape[1] * 2)),
    "rotated 5 degrees": lambda a: rotate(a, 5),
}


def synthetic_images(size: int = 256, seed: int = 0) -> list[np.ndarray]:
    """Gradients, flat grey, noise, binary noise and rendered text: 24 images."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    scale = 255.0 / max(size - 1, 1)
    out = [(xx * scale).astype(np.uint8), (yy * scale).astype(np.uint8),
           ((xx + yy) * scale / 2).astype(np.uint8), np.full((size, size), 128, np.uint8)]
    out += [rng.integers(0, 256, (size, size)).astype(np.uint8) for _ in range(8)]
    out += [(rng.random((size, size)) > 0.5).astype(np.uint8) * 255 for _ in range(4)]
    for k in range(8):
        img = Image.new("L", (size, size), 255 if k % 2 else 0)
        d = ImageDraw.Draw(img)
        for j in range(12):
            d.text((10, 10 + 20 * j), f"Report line {j} {k}", fill=0 if k % 2 else 255)
        out.append(np.asarray(img))
    return out
