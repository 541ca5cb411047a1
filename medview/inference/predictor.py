"""The Predictor: card-driven preprocessing, device choice, calibrated outputs, warnings.

Everything about the input comes from the model card (size, channels, mean/std, filter);
the pixels are the ones the viewer shows (:mod:`medview.imaging.model_input`). Outputs are
temperature-calibrated probabilities, the label at the card's operating threshold, and a
record of what ran (model id/version/weights hash, input hash, device, timings).

The trust gate runs in the same forward pass: the pre-logit embedding and the channel
statistics of a few feature stages are read while the classifier computes its logits
(no second forward), scored by :mod:`medview.inference.scope` against the statistics in
the model folder, and combined with the card's population checks (modality, view,
age...). An image outside the model's scope gets its label and decision withheld.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from medview.core.modeling import Prediction
from medview.core.volume import ImageVolume
from medview.imaging.model_input import pixels_sha256, prepare
from medview.inference import scope
from medview.inference.features import SCORE, StageTap, TorchScorer
from medview.models.card import ModelCard
from medview.models.loading import load_model
from medview.models.weights import WeightsError, read_scope_statistics

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
    #: why the image is outside the card's population (modality, view, age...)
    reasons: list[str] = field(default_factory=list)


def contract_warnings(card: ModelCard, volume: ImageVolume, index: int) -> list[str]:
    """Plain-language warnings about the input that do not put it out of scope (those
    are :func:`medview.inference.scope.population_reasons`)."""
    warns: list[str] = []
    h, w = card.preprocessing.size
    if volume.rows < h / 2 or volume.cols < w / 2:
        warns.append(f"the image ({volume.rows}x{volume.cols}) is far smaller than the model "
                     f"input ({h}x{w}); it is upscaled")
    if volume.n_slices > 1:
        kind = "frame" if volume.multiframe else "slice"
        warns.append(f"{kind} {index + 1} of {volume.n_slices} was scored")
    aspect = volume.cols / max(volume.rows, 1)
    if aspect > 1.6 or aspect < 0.6:
        warns.append("unusual aspect ratio for a chest film (lateral view, detail or crop?)")
    for w_ in volume.warnings:
        if w_.startswith(("incomplete", "Rescale")):
            warns.append(f"image warning: {w_}")
    return warns


def load_gate(card: ModelCard) -> scope.ScopeGate | None:
    """The trust gate of a model folder (None when its card has no ``scope``): the
    statistics file must be a regular file inside the folder whose sha256 is the card's,
    holding every array the method needs."""
    spec = card.card.scope
    if spec is None:
        return None
    data = read_scope_statistics(card.scope_path, spec.sha256, root=card.folder)
    try:
        return scope.ScopeGate.from_bytes(
            data, spec.method, spec.limit, spec.sha256, percentile=spec.percentile,
            in_distribution_pass_rate=spec.in_distribution_pass_rate,
            stages=tuple(spec.stages))
    except (ValueError, KeyError) as exc:
        raise WeightsError(f"trust gate: refused: {exc}") from exc


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
        self.gate = load_gate(card)
        self.tap = StageTap(self.model, self.gate.stages if self.gate else ())
        self.scorer = (TorchScorer(self.gate, self.device)
                       if self.gate is not None and self.gate.method == "multi_depth" else None)

    # ------------------------------------------------------------------ preparation
    def prepare(self, volume: ImageVolume, index: int) -> PreparedInput:
        tensor, seen = prepare(volume, index, self.spec)
        return PreparedInput(tensor, seen, pixels_sha256(volume, index),
                             contract_warnings(self.card, volume, index),
                             (volume.rows, volume.cols),
                             scope.population_reasons(self.card.card, volume, index))

    def logits(self, batch: np.ndarray, batch_size: int = 16) -> np.ndarray:
        """Raw logits for a prepared batch (N, C, H, W), with GPU OOM fallback."""
        return self.forward(batch, batch_size)[scope.LOGITS]

    def forward(self, batch: np.ndarray, batch_size: int = 16) -> dict[str, np.ndarray]:
        """One forward pass of a prepared batch: the logits, the pre-logit embedding and
        the gate's stage statistics (see :mod:`medview.inference.scope`)."""
        with self.lock:
            return self._forward_with_fallback(batch, batch_size)

    def _run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        x = self._torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
        return self.tap.forward(self.model, x, self.scorer)

    def _forward_with_fallback(self, batch: np.ndarray, batch_size: int
                               ) -> dict[str, np.ndarray]:
        torch = self._torch
        size = max(1, min(batch_size, len(batch)))
        while True:
            try:
                parts = [self._run(batch[i:i + size]) for i in range(0, len(batch), size)]
                return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                if size > 1:
                    size //= 2
                    log.warning("GPU out of memory; retrying with batch size %d", size)
                    continue
                self.model = self.model.to("cpu")
                self.device = "cpu"
                if self.scorer is not None:
                    self.scorer = TorchScorer(self.gate, "cpu")
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

    def gate_score(self, feats: dict[str, np.ndarray]) -> np.ndarray | None:
        """The out-of-distribution scores of a forward pass (None without a gate)."""
        if self.gate is None:
            return None
        if SCORE in feats:  # scored inside the forward pass
            return feats[SCORE]
        for name, arr in feats.items():
            want = self.gate.expected_width(name)
            if want is not None and arr.shape[1] != want:
                raise WeightsError(f"trust gate: statistics for {name!r} expect {want} "
                                   f"features, the model gives {arr.shape[1]}")
        return self.gate.score(feats)

    def predict_prepared(self, prep: PreparedInput, prep_ms: float = 0.0) -> Prediction:
        t = time.perf_counter()
        feats = self.forward(prep.tensor[np.newaxis])
        infer_ms = (time.perf_counter() - t) * 1000
        t = time.perf_counter()
        scores = self.gate_score(feats)
        gate_ms = (time.perf_counter() - t) * 1000
        logits = feats[scope.LOGITS][0]
        probs = self.probabilities(logits[np.newaxis])[0]
        label, decision = self.decide(probs)
        reasons = list(prep.reasons)
        score = limit = None
        if scores is not None:
            score, limit = float(scores[0]), float(self.gate.limit)
            if not score <= limit:  # NaN is out of scope too
                reasons.insert(0, scope.content_reason(score, limit))
        in_scope = not reasons if (self.gate is not None or reasons) else None
        warnings = list(prep.warnings) + list(self.notices)
        if self.gate is None:
            warnings.append("this model has no trust gate: nothing checked whether the "
                            "image is like its training images")
        withheld = in_scope is False
        return Prediction(
            model_id=self.card.id,
            model_version=self.card.version,
            weights_sha256=self.card.weights_sha256,
            classes=self.card.classes,
            probabilities=[float(p) for p in probs],
            label="" if withheld else label,
            decision=("Withheld: the image is outside this model's scope" if withheld
                      else decision),
            threshold=self.threshold,
            input_sha256=prep.input_sha256,
            device=self.device,
            timings_ms={"preprocess": round(prep_ms, 2), "inference": round(infer_ms, 2),
                        "trust_gate": round(gate_ms, 2)},
            warnings=warnings,
            in_scope=in_scope,
            ood_score=score,
            ood_limit=limit,
            scope_reasons=reasons,
            withheld_label=label if withheld else "",
            withheld_decision=decision if withheld else "",
        )
