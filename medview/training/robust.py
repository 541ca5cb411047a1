"""What hospitals do to films, as training augmentation and as audit transformations.

Training (the engine's default recipe, ``TrainConfig.robust``):

- :func:`hospital_variation`: one film as another site might have sent it - window and
  bit depth (a percentile window, gamma, fewer grey levels), cropping and collimation
  bands, a narrow border, resampling from 0.4x to 2x, blur, burned-in side markers and
  text, JPEG re-compression at quality 20-95, noise. Each is drawn independently.
- :func:`swap_outside`: the film's lung fields (:func:`medview.imaging.lungs.lung_field`)
  pasted into another film of the batch, label kept: what lies outside the lungs (body
  outline, markers, collimation, edges) then comes from a film of either class and
  cannot decide.
- :func:`lungs_hidden`: counterfactual films with the lungs replaced by a grey level;
  the engine trains their output towards "cannot tell" (uniform), so a film without
  lungs gives no answer either way.

Audit (:mod:`medview.training.audit`): :data:`NUISANCE_TESTS`, fixed versions of the
same variations at the model's input size, to count decisions that flip.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from medview.imaging.lungs import CENTRAL_BOX, box_mask
from medview.imaging.model_input import resize_grey

#: probability of each variation per training film
P_VARY = {"window": 0.3, "crop": 0.3, "collimation": 0.1, "border": 0.1, "resample": 0.35,
          "blur": 0.25, "marker": 0.3, "jpeg": 0.5, "noise": 0.15}
#: share of a batch whose lungs are pasted into another film of the batch
P_SWAP = 0.5
#: share of a batch that also appears with its lungs hidden (the counterfactual films)
COUNTERFACTUAL_SHARE = 0.25
#: share of a batch that also appears as a second, independent variation: the two views'
#: predictions are pulled together (:func:`medview.training.engine.consistency_loss`)
CONSISTENCY_SHARE = 0.25
MARKER_TEXTS = ("R", "L", "AP", "PA", "PORTABLE", "SUPINE", "ERECT", "1", "2")


def jpeg(a: np.ndarray, quality: int) -> np.ndarray:
    """The film saved as JPEG at ``quality`` and decoded again."""
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=int(quality))
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("L"))


def _resample(a: np.ndarray, factor: float) -> np.ndarray:
    """As a film sent at ``factor`` times the resolution and resized to the model's."""
    h, w = a.shape
    big = resize_grey(a, (max(8, round(h * factor)), max(8, round(w * factor))))
    return resize_grey(big, (h, w))


def blur(a: np.ndarray, sigma: float) -> np.ndarray:
    return np.asarray(Image.fromarray(a).filter(ImageFilter.GaussianBlur(sigma)))


def _crop(a: np.ndarray, top: float, bottom: float, left: float, right: float) -> np.ndarray:
    h, w = a.shape
    part = a[int(h * top):h - int(h * bottom), int(w * left):w - int(w * right)]
    return resize_grey(np.ascontiguousarray(part), (h, w))


def tighter_view(a: np.ndarray, c: float) -> np.ndarray:
    """The film cropped by the share ``c`` on every side and resized back."""
    return _crop(a, c, c, c, c)


def rotate(a: np.ndarray, deg: float) -> np.ndarray:
    return np.asarray(Image.fromarray(a).rotate(deg, resample=Image.Resampling.BILINEAR,
                                                fillcolor=0))


def auto_window_12bit(a: np.ndarray) -> np.ndarray:
    """The film stored as 12-bit values without window tags, shown as the viewer opens
    it (the 0.5-99.5th percentile window)."""
    from medview.imaging.window import auto_window

    v = a.astype(np.float64) * (4095.0 / 255.0)
    win = auto_window(v)
    lo = win.center - win.width / 2
    out = np.clip((v - lo) / win.width, 0, 1) * 255
    return np.rint(out).astype(np.uint8)


def _window(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    lo, hi = np.percentile(a, [rng.uniform(0, 3), rng.uniform(97, 100)])
    x = np.clip((a.astype(np.float32) - lo) / max(hi - lo, 1.0), 0, 1)
    x = x ** float(np.exp(rng.uniform(-0.35, 0.35)))
    levels = 2 ** int(rng.integers(5, 9))
    x = np.round(x * (levels - 1)) / (levels - 1)
    return np.rint(x * 255).astype(np.uint8)


def _marker(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = a.shape
    img = Image.fromarray(a)
    d = ImageDraw.Draw(img)
    size = max(6, int(h * rng.uniform(0.04, 0.10)))
    font = ImageFont.load_default(size=size)
    text = MARKER_TEXTS[int(rng.integers(len(MARKER_TEXTS)))]
    x, y = int(rng.uniform(0, 0.85) * w), int(rng.uniform(0, 0.9) * h)
    fill = 255 if rng.random() < 0.8 else 0
    if rng.random() < 0.2:
        d.rectangle([x, y, x + size, y + size // 2], fill=fill)
    else:
        d.text((x, y), text, fill=fill, font=font)
    return np.asarray(img)


#: the variations that keep a film's grey-level layout (codec, sampling, blur, crop):
#: what the gate's input thumbnail is fitted with (window, bands, borders and markers
#: would teach it to accept an inverted film)
LAYOUT_KEEPING = {"window": 0.0, "crop": 0.5, "collimation": 0.0, "border": 0.0,
                  "resample": 0.6, "blur": 0.5, "marker": 0.0, "jpeg": 0.7, "noise": 0.0}


def hospital_variation(a: np.ndarray, rng: np.random.Generator,
                       p: dict[str, float] | None = None) -> np.ndarray:
    """One grey uint8 film (H, W) as another site might have sent it (same size);
    ``p``: the probability of each variation (default :data:`P_VARY`)."""
    h, w = a.shape
    p = P_VARY if p is None else p
    if rng.random() < p["window"]:
        a = _window(a, rng)
    if rng.random() < p["crop"]:
        if rng.random() < 0.5:  # a tighter field of view: the same on every side
            a = tighter_view(a, rng.uniform(0.02, 0.14))
        else:
            a = _crop(a, *rng.uniform(0, 0.12, 4))
    if rng.random() < p["collimation"]:
        a = a.copy()
        level = 0 if rng.random() < 0.6 else 255
        for side in rng.choice(4, int(rng.integers(1, 3)), replace=False):
            k = max(1, int(rng.uniform(0.02, 0.08) * (h if side < 2 else w)))
            if side == 0:
                a[:k] = level
            elif side == 1:
                a[-k:] = level
            elif side == 2:
                a[:, :k] = level
            else:
                a[:, -k:] = level
    if rng.random() < p["border"]:
        f = rng.uniform(0.9, 0.97)
        small = resize_grey(a, (int(h * f), int(w * f)))
        out = np.full_like(a, 0 if rng.random() < 0.5 else int(np.median(a[:2])))
        y0, x0 = int(rng.integers(0, h - small.shape[0] + 1)), int(
            rng.integers(0, w - small.shape[1] + 1))
        out[y0:y0 + small.shape[0], x0:x0 + small.shape[1]] = small
        a = out
    if rng.random() < p["resample"]:
        a = _resample(a, float(np.exp(rng.uniform(np.log(0.4), np.log(2.0)))))
    if rng.random() < p["blur"]:
        a = blur(a, rng.uniform(0.3, 1.6))
    if rng.random() < p["marker"]:
        a = _marker(a, rng)
    if rng.random() < p["jpeg"]:
        a = jpeg(a, int(rng.integers(20, 96)))
    if rng.random() < p["noise"]:
        a = np.clip(a + rng.normal(0, rng.uniform(1, 5), a.shape), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(a, dtype=np.uint8)


def jittered_box(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    j = rng.uniform(-0.05, 0.05, 4)
    top, bottom, left, right = (float(v) + float(d) for v, d in zip(CENTRAL_BOX, j,
                                                                   strict=True))
    return box_mask(shape, (top, bottom, left, right))


def _region(mask: np.ndarray | None, shape, rng) -> np.ndarray:
    """The lungs of a film: its estimate, widened half of the time by a jittered box."""
    if mask is None:
        return jittered_box(shape, rng)
    return mask | jittered_box(shape, rng) if rng.random() < 0.5 else mask


def swap_outside(batch: np.ndarray, masks: np.ndarray | None, rng: np.random.Generator
                 ) -> np.ndarray:
    """Each film, with probability :data:`P_SWAP`, keeps its lungs and takes everything
    else from another film of the batch."""
    out = batch.copy()
    n = len(batch)
    if n < 2:
        return out
    for i in range(n):
        if rng.random() < P_SWAP:
            j = int(rng.integers(n - 1))
            j += j >= i
            keep = _region(None if masks is None else masks[i], batch[i].shape, rng)
            out[i] = np.where(keep, batch[i], batch[j])
    return out


def lungs_hidden(batch: np.ndarray, masks: np.ndarray | None, rng: np.random.Generator
                 ) -> np.ndarray:
    """Counterfactual films: the lungs replaced by the film's median grey (or another
    flat level), then varied like any other film."""
    out = []
    for i in range(len(batch)):
        a = batch[i].copy()
        region = _region(None if masks is None else masks[i], a.shape, rng)
        level = np.median(a) if rng.random() < 0.7 else rng.uniform(0, 255)
        a[region] = int(level)
        out.append(a)
    return np.stack(out) if out else batch[:0].copy()


def vary_batch(batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.stack([hospital_variation(a, rng) for a in batch]) if len(batch) else batch


#: Fixed variations for the audit, at the model's input size (what flips a decision).
NUISANCE_TESTS = {
    "JPEG quality 30": lambda a: jpeg(a, 30),
    "JPEG quality 50": lambda a: jpeg(a, 50),
    "JPEG quality 70": lambda a: jpeg(a, 70),
    "resampled 0.5x": lambda a: _resample(a, 0.5),
    "resampled 2x": lambda a: _resample(a, 2.0),
    "blurred (1 px)": lambda a: blur(a, 1.0),
    "rotated +10 degrees": lambda a: rotate(a, 10),
    "rotated -10 degrees": lambda a: rotate(a, -10),
    "cropped 10% per side": lambda a: tighter_view(a, 0.1),
    "12-bit without window": auto_window_12bit,
}
