"""Saliency figures that carry their context: the overlay with a caption burned in (model
id and version, class, method, "Research use only") and the same as PNG text metadata.
Shared by ``medview explain`` and the AI panel's "Save overlay..."; no patient data goes
into either."""

from __future__ import annotations

import io

import numpy as np

from medview.core.volume import ImageVolume
from medview.imaging import render_slice
from medview.imaging.overlay import blend, heatmap_rgba, stamp_out_of_scope

RUO = "Research use only - not for diagnostic use"


def caption_lines(model_id: str, model_version: str, target: str, method_name: str,
                  out_of_scope: bool = False) -> list[str]:
    lines = [f"medview saliency: {method_name} for class {target}",
             f"model {model_id} {model_version}. {RUO}."]
    if out_of_scope:
        lines.append("OUT OF SCOPE: shown on request; the model should not answer this image.")
    return lines


def add_caption(rgb: np.ndarray, lines: list[str]) -> np.ndarray:
    """``rgb`` with a black band below it holding ``lines`` in white."""
    import textwrap

    from PIL import Image, ImageDraw, ImageFont

    h, w = rgb.shape[:2]
    size = max(11, min(18, w // 48))
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow without sized default fonts
        font = ImageFont.load_default()
    per_line = max(12, int((w - 12) / (0.6 * size)))  # wrap to the image's width
    lines = [part for line in lines for part in textwrap.wrap(line, per_line) or [""]]
    band = (size + 6) * len(lines) + 8
    out = Image.new("RGB", (w, h + band), (0, 0, 0))
    out.paste(Image.fromarray(np.ascontiguousarray(rgb[..., :3])), (0, 0))
    draw = ImageDraw.Draw(out)
    for k, line in enumerate(lines):
        draw.text((6, h + 4 + k * (size + 6)), line, fill=(255, 255, 255), font=font)
    return np.asarray(out)


def saliency_figure(volume: ImageVolume, index: int, saliency: np.ndarray, *, model_id: str,
                    model_version: str, target: str, method_name: str,
                    colormap: str = "inferno", opacity: float = 0.6,
                    out_of_scope: bool = False) -> tuple[np.ndarray, list[str]]:
    """The overlay with its caption burned in (RGB uint8) and the caption's lines: what
    the PNG and the DICOM Secondary Capture both hold."""
    image = blend(render_slice(volume, index, None), heatmap_rgba(saliency, colormap, opacity))
    if out_of_scope:
        image = stamp_out_of_scope(image)
    lines = caption_lines(model_id, model_version, target, method_name, out_of_scope)
    return add_caption(image, lines), lines


def saliency_png(volume: ImageVolume, index: int, saliency: np.ndarray, *, model_id: str,
                 model_version: str, target: str, method: str, method_name: str,
                 colormap: str = "inferno", opacity: float = 0.6,
                 out_of_scope: bool = False) -> bytes:
    """The slice as shown, the heat-map over it (greyed and stamped when out of scope)
    and a caption, as PNG bytes with the same context in text chunks."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    image, lines = saliency_figure(volume, index, saliency, model_id=model_id,
                                   model_version=model_version, target=target,
                                   method_name=method_name, colormap=colormap,
                                   opacity=opacity, out_of_scope=out_of_scope)
    info = PngInfo()
    info.add_text("Software", "medview")
    info.add_text("Description", " ".join(lines))
    for key, value in (("medview:model", f"{model_id} {model_version}"),
                       ("medview:class", target), ("medview:method", method),
                       ("medview:out_of_scope", "true" if out_of_scope else "false"),
                       ("Disclaimer", RUO)):
        info.add_text(key, value)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()
