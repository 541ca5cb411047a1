"""Saliency heat-maps as RGBA overlays and blended PNG images (pure numpy)."""

from __future__ import annotations

import numpy as np

# Piecewise-linear colormaps: (position, (r, g, b)) control points.
COLORMAPS: dict[str, list[tuple[float, tuple[int, int, int]]]] = {
    "inferno": [(0.0, (0, 0, 4)), (0.25, (87, 16, 110)), (0.5, (188, 55, 84)),
                (0.75, (249, 142, 9)), (1.0, (252, 255, 164))],
    "jet": [(0.0, (0, 0, 128)), (0.125, (0, 0, 255)), (0.375, (0, 255, 255)),
            (0.625, (255, 255, 0)), (0.875, (255, 0, 0)), (1.0, (128, 0, 0))],
    "hot": [(0.0, (0, 0, 0)), (0.375, (255, 0, 0)), (0.75, (255, 255, 0)),
            (1.0, (255, 255, 255))],
    "viridis": [(0.0, (68, 1, 84)), (0.25, (59, 82, 139)), (0.5, (33, 145, 140)),
                (0.75, (94, 201, 98)), (1.0, (253, 231, 37))],
}


def colormap_lut(name: str, n: int = 256) -> np.ndarray:
    """A (n, 3) uint8 lookup table for one of :data:`COLORMAPS`."""
    points = COLORMAPS[name]
    pos = np.array([p for p, _ in points])
    rgb = np.array([c for _, c in points], np.float64)
    x = np.linspace(0, 1, n)
    return np.stack([np.interp(x, pos, rgb[:, k]) for k in range(3)], 1).round().astype(np.uint8)


def heatmap_rgba(saliency: np.ndarray, colormap: str = "inferno", opacity: float = 0.5
                 ) -> np.ndarray:
    """(rows, cols) map in [0, 1] -> RGBA uint8; alpha grows with saliency x opacity, so
    regions the model ignored stay transparent."""
    s = np.clip(np.nan_to_num(saliency), 0.0, 1.0)
    lut = colormap_lut(colormap)
    rgba = np.empty((*s.shape, 4), np.uint8)
    rgba[..., :3] = lut[(s * 255).astype(np.uint8)]
    rgba[..., 3] = np.clip(s * opacity * 255 * 1.5, 0, 255 * opacity).astype(np.uint8)
    return rgba


def blend(grey_or_rgb: np.ndarray, rgba: np.ndarray) -> np.ndarray:
    """Composite an RGBA overlay onto a displayed uint8 image -> RGB uint8."""
    base = grey_or_rgb if grey_or_rgb.ndim == 3 else np.repeat(grey_or_rgb[..., None], 3, 2)
    a = rgba[..., 3:4].astype(np.float32) / 255.0
    out = base.astype(np.float32) * (1 - a) + rgba[..., :3].astype(np.float32) * a
    return np.clip(out.round(), 0, 255).astype(np.uint8)


OUT_OF_SCOPE = "OUT OF SCOPE"


def stamp_out_of_scope(image: np.ndarray, text: str = OUT_OF_SCOPE) -> np.ndarray:
    """An RGB (H, W, 3) image greyed (contrast halved), or an RGBA overlay (H, W, 4) as
    it is, with a red band across the top that reads ``text``: a result shown although
    the image is outside the model's scope."""
    from PIL import Image, ImageDraw, ImageFont

    rgba = image.shape[-1] == 4
    base = image if rgba else (image.astype(np.float32) * 0.5 + 64).astype(np.uint8)
    img = Image.fromarray(np.ascontiguousarray(base), "RGBA" if rgba else "RGB")
    h, w = base.shape[:2]
    band = max(16, h // 12)
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, 0, w, band], fill=(190, 20, 20, 255) if rgba else (190, 20, 20))
    try:
        font = ImageFont.load_default(size=max(10, int(band * 0.7)))
    except TypeError:  # Pillow without sized default fonts
        font = ImageFont.load_default()
    draw.text((max(4, band // 4), band // 2), text, fill=(255, 255, 255, 255) if rgba
              else (255, 255, 255), font=font, anchor="lm")
    return np.asarray(img)
