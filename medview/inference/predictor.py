"""The Predictor: card-driven preprocessing, device choice, calibrated outputs, warnings.

Everything about the input comes from the model card (size, channels, mean/std, filter);
the pixels are the ones the viewer shows (:mod:`medview.imaging.model_input`). Outputs are
temperature-calibrated probabilities, the label at the card's operating threshold, and a
record of what ran (model id/version/weights hash, input hash, device, timings). Inputs
outside the card's contract produce warnings, never a silent score.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import numpy as np

from medview.core.modeling import Prediction
from medview.core.volume import ImageVolume
from medview.imaging.model_input import pixels_sha256, prepare
from medview.models.card import ModelCard
from medview.models.loading import load_model

log = logging.getLogger(__name__)


def available_devices() -> list[str]:
    import torch

    out = ["cpu"]
    if torch.cuda.is_available():
        out.insert(0, "cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        out.insert(0, "mps")
    return out


def choose_device(requested: str = "auto") -> str:
    """CUDA if available, else MPS, else CPU; an explicit request must be available."""
    devices = available_devices()
    if requested in ("auto", "", None):
        for d in ("cuda", "mps", "cpu"):
            if d in devices:
                return d
    if requested not in devices:
        raise ValueError(f"device {requested!r} is not available here (available: "
                         f"{', '.join(devices)})")
    return requested


@dataclass
class PreparedInput:
    tensor: np.ndarray  # (C, H, W) float32, normalised
    seen: np.ndarray  # (H, W) uint8: what the model saw
    input_sha256: str
    warnings: list[str]
    shape: tuple[int, int]  # the slice's (rows, cols)


def contract_warnings(card: ModelCard, volume: ImageVolume, index: int) -> list[str]:
    """Plain-language warnings when an image is outside the model's input contract."""
    warns: list[str] = []
    inp = card.card.input
    modalities = [m.upper() for m in inp.modalities]
    if modalities and volume.modality.upper() not in modalities:
        warns.append(f"modality {volume.modality} is not one the model was trained on "
                     f"({', '.join(modalities)})")
    if volume.is_rgb:
        px = volume.pixels[index]
        grey_like = np.array_equal(px[..., 0], px[..., 1]) and np.array_equal(px[..., 1],
                                                                               px[..., 2])
        if not grey_like:
            warns.append("a colour image: the model expects a grey radiograph (photograph, "
                         "screenshot or colour overlay?)")
    h, w = card.preprocessing.size
    if volume.rows < h / 2 or volume.cols < w / 2:
        warns.append(f"the image ({volume.rows}x{volume.cols}) is far smaller than the model "
                     f"input ({h}x{w}); it is upscaled")
    if inp.dimensionality == "2D" and volume.n_slices > 1 and not volume.multiframe:
        warns.append(f"a {volume.n_slices}-slice volume: the model expects a 2-D film and "
                     f"scored slice {index + 1} only")
    elif inp.dimensionality == "2D" and volume.multiframe:
        warns.append(f"a multi-frame image: frame {index + 1} was scored")
    aspect = volume.cols / max(volume.rows, 1)
    if aspect > 1.6 or aspect < 0.6:
        warns.append("unusual aspect ratio for a chest film (lateral view, detail or crop?)")
    for w_ in volume.warnings:
        if w_.startswith(("incomplete", "Rescale")):
            warns.append(f"image warning: {w_}")
    return warns


class Predictor:
    """Runs one model. Thread-safe: calls are serialised by a lock."""

    def __init__(self, card: ModelCard, device: str = "auto") -> None:
        import torch

        self.card = card
        self.device = choose_device(device)
        self.spec = card.preprocessing
        t = time.perf_counter()
        self.model = load_model(card).to(self.device)
        self.load_ms = (time.perf_counter() - t) * 1000
        self.lock = threading.Lock()
        self.notices: list[str] = []
        self._torch = torch
        classes = card.classes
        pos = card.positive_class
        self.positive = classes.index(pos) if pos in classes else None
        self.threshold = card.card.threshold

    # ------------------------------------------------------------------ preparation
    def prepare(self, volume: ImageVolume, index: int) -> PreparedInput:
        tensor, seen = prepare(volume, index, self.spec)
        return PreparedInput(tensor, seen, pixels_sha256(volume, index),
                             contract_warnings(self.card, volume, index),
                             (volume.rows, volume.cols))

    def logits(self, batch: np.ndarray, batch_size: int = 16) -> np.ndarray:
        """Raw logits for a prepared batch (N, C, H, W), with GPU OOM fallback."""
        with self.lock:
            return self._logits_with_fallback(batch, batch_size)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
            return self.model(x).float().cpu().numpy()

    def _logits_with_fallback(self, batch: np.ndarray, batch_size: int) -> np.ndarray:
        torch = self._torch
        size = max(1, min(batch_size, len(batch)))
        while True:
            try:
                return np.concatenate([self._run(batch[i:i + size])
                                       for i in range(0, len(batch), size)])
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                if size > 1:
                    size //= 2
                    log.warning("GPU out of memory; retrying with batch size %d", size)
                    continue
                self.model = self.model.to("cpu")
                self.device = "cpu"
                notice = "GPU out of memory: the model now runs on the CPU"
                if notice not in self.notices:
                    self.notices.append(notice)
                size = len(batch)

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        z = np.asarray(logits, np.float64) / self.card.temperature
        if self.card.card.output_activation == "sigmoid":
            return 1.0 / (1.0 + np.exp(-z))
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def decide(self, probs: np.ndarray) -> tuple[str, str]:
        classes = self.card.classes
        if self.positive is not None and self.threshold is not None:
            p = float(probs[self.positive])
            pos = classes[self.positive]
            neg = classes[1 - self.positive] if len(classes) == 2 else "not " + pos
            if p >= self.threshold:
                return pos, (f"{pos}: probability {p:.2f} is at or above the operating "
                             f"threshold {self.threshold:.2f}")
            return neg, (f"{neg}: {pos} probability {p:.2f} is below the operating threshold "
                         f"{self.threshold:.2f}")
        k = int(np.argmax(probs))
        return classes[k], f"{classes[k]}: the most probable class ({probs[k]:.2f})"

    # ------------------------------------------------------------------ public
    def predict(self, volume: ImageVolume, index: int) -> Prediction:
        return self.predict_prepared(self.prepare(volume, index))

    def predict_prepared(self, prep: PreparedInput, prep_ms: float = 0.0) -> Prediction:
        t = time.perf_counter()
        logits = self.logits(prep.tensor[np.newaxis])[0]
        infer_ms = (time.perf_counter() - t) * 1000
        probs = self.probabilities(logits[np.newaxis])[0]
        label, decision = self.decide(probs)
        return Prediction(
            model_id=self.card.id,
            model_version=self.card.version,
            weights_sha256=self.card.weights_sha256,
            classes=self.card.classes,
            probabilities=[float(p) for p in probs],
            label=label,
            decision=decision,
            threshold=self.threshold,
            input_sha256=prep.input_sha256,
            device=self.device,
            timings_ms={"preprocess": round(prep_ms, 2), "inference": round(infer_ms, 2)},
            warnings=list(prep.warnings) + list(self.notices),
        )
