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

from medview.core.errors import MedviewError
from medview.core.modeling import Prediction
from medview.core.volume import ImageVolume
from medview.imaging.model_input import pixels_sha256, prepare
from medview.inference import scope
from medview.inference.features import SCORE
from medview.models.card import Card, ModelCard
from medview.models.weights import WeightsError, read_scope_statistics

log = logging.getLogger(__name__)


class NonFiniteOutput(MedviewError):
    """The model computed NaN or infinite outputs for an image: no result for it."""

    def __init__(self, index: int = 0) -> None:
        super().__init__("the model produced non-finite outputs (NaN or infinity) for this "
                         "image: no result (the model or its weights are broken)")
        self.index = index


def calibrated_probabilities(logits: np.ndarray, card: Card) -> np.ndarray:
    """Class probabilities of raw logits (N, K): the card's temperature, then its output
    activation (softmax or sigmoid)."""
    z = np.asarray(logits, np.float64) / float(card.calibration.temperature)
    if card.output_activation == "sigmoid":
        return 1.0 / (1.0 + np.exp(-z))
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@dataclass
class PreparedInput:
    tensor: np.ndarray  # (C, H, W) float32, normalised
    seen: np.ndarray  # (H, W) uint8: what the model saw
    input_sha256: str
    warnings: list[str]
    shape: tuple[int, int]  # the slice's (rows, cols)
    #: why the image is outside the card's population (modality, view, age...)
    reasons: list[str] = field(default_factory=list)
    #: the graph's last feature maps (C, h, w) from the pass that scored this input, when
    #: it was asked for them (:meth:`Predictor.predict_prepared` ``maps``): its Grad-CAM
    #: then needs no second pass
    feature_maps: np.ndarray | None = field(default=None, repr=False, compare=False)


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
    """Runs one model on one backend (:mod:`medview.inference.backends`). Thread-safe:
    calls are serialised by a lock."""

    def __init__(self, card: ModelCard, device: str = "auto", backend: str = "auto") -> None:
        from medview.inference import backends

        self.card = card
        self.spec = card.preprocessing
        self.lock = threading.Lock()
        self.notices: list[str] = []
        classes = card.classes
        pos = card.positive_class
        self.positive = classes.index(pos) if pos in classes else None
        self.threshold = card.card.threshold
        self.gate = load_gate(card)
        t = time.perf_counter()
        name, dev = backends.resolve(card, device, backend)
        engine: backends.Backend | None = None
        if name == "onnx":
            try:
                engine = backends.OnnxBackend(card, self.gate)
            except WeightsError as exc:
                if backend == "onnx":
                    raise
                # the graph is an accelerator, never a requirement: torch still runs
                self.notices.append(f"{exc}; the model runs on PyTorch instead")
                log.warning("exported graph refused; falling back to torch")
        self.engine: backends.Backend = (
            engine if engine is not None else backends.TorchBackend(card, dev, self.gate))
        self.load_ms = (time.perf_counter() - t) * 1000
        self._torch_model = None

    @property
    def backend(self) -> str:
        """"torch" or "onnx": what scores the images."""
        return self.engine.name

    @property
    def device(self) -> str:
        return self.engine.device

    @property
    def model(self):
        """The torch model (saliency other than Grad-CAM, tests). On the graph backend it
        is loaded on first use, on the CPU: torch is imported only then."""
        engine_model = getattr(self.engine, "model", None)
        if engine_model is not None:
            return engine_model
        with self.lock:
            if self._torch_model is None:
                import torch

                from medview.inference.backends import torch_threads
                from medview.models.loading import load_model

                torch_threads(torch)
                self._torch_model = load_model(self.card)
        return self._torch_model

    @property
    def tap(self):
        """The torch backend's stage tap (fitting and tests)."""
        from medview.inference.backends import TorchBackend

        if not isinstance(self.engine, TorchBackend):
            raise ValueError("the stage tap needs the PyTorch backend")
        return self.engine.tap

    # ------------------------------------------------------------------ preparation
    def prepare(self, volume: ImageVolume, index: int) -> PreparedInput:
        tensor, seen = prepare(volume, index, self.spec)
        return PreparedInput(tensor, seen, pixels_sha256(volume, index),
                             contract_warnings(self.card, volume, index),
                             (volume.rows, volume.cols),
                             scope.population_reasons(self.card.card, volume, index))

    def logits(self, batch: np.ndarray, batch_size: int = 16) -> np.ndarray:
        """Raw logits for a prepared batch (N, C, H, W)."""
        return self.forward(batch, batch_size)[scope.LOGITS]

    def forward(self, batch: np.ndarray, batch_size: int = 16,
                maps: bool = False) -> dict[str, np.ndarray]:
        """One forward pass of a prepared batch: the logits, the pre-logit embedding and
        the gate's stage statistics (see :mod:`medview.inference.scope`); with ``maps``
        (graph backend) also the last feature maps."""
        with self.lock:
            out = self.engine.run(batch, batch_size, maps=maps)
        for notice in self.engine.notices:
            if notice not in self.notices:
                self.notices.append(notice)
        return out

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        return calibrated_probabilities(logits, self.card.card)

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

    def predict_prepared(self, prep: PreparedInput, prep_ms: float = 0.0,
                         maps: bool = False) -> Prediction:
        """One prediction; with ``maps``, the same pass also keeps the graph's feature
        maps in ``prep`` (where the backend has them) for a Grad-CAM without a second
        pass."""
        return self.predict_many([prep], [prep_ms], maps=maps)[0]

    def predict_many(self, preps: list[PreparedInput],
                     prep_ms: list[float] | None = None,
                     maps: bool = False) -> list[Prediction]:
        """Predictions for prepared inputs scored in one forward pass (the timings are
        the pass's, divided evenly)."""
        t = time.perf_counter()
        feats = self.forward(np.stack([p.tensor for p in preps]), batch_size=len(preps),
                             maps=maps)
        infer_ms = (time.perf_counter() - t) * 1000 / len(preps)
        if maps:
            from medview.inference.backends import FEATURE_MAPS

            for k, prep in enumerate(preps):
                if FEATURE_MAPS in feats:
                    prep.feature_maps = feats[FEATURE_MAPS][k]
        t = time.perf_counter()
        scores = self.gate_score(feats)
        gate_ms = (time.perf_counter() - t) * 1000 / len(preps)
        logits = feats[scope.LOGITS]
        probs = self.probabilities(logits)
        bad = ~(np.isfinite(logits).all(axis=1) & np.isfinite(probs).all(axis=1))
        if bad.any():  # a failed prediction, never a label
            raise NonFiniteOutput(int(np.flatnonzero(bad)[0]))
        return [self._prediction(prep, probs[k], None if scores is None else float(scores[k]),
                                 {"preprocess": round((prep_ms or [0.0] * len(preps))[k], 2),
                                  "inference": round(infer_ms, 2),
                                  "trust_gate": round(gate_ms, 2)})
                for k, prep in enumerate(preps)]

    def _prediction(self, prep: PreparedInput, probs: np.ndarray, score: float | None,
                    timings: dict[str, float]) -> Prediction:
        label, decision = self.decide(probs)
        reasons = list(prep.reasons)
        limit = None
        if score is not None and self.gate is not None:
            limit = float(self.gate.limit)
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
            backend=self.backend,
            timings_ms=timings,
            warnings=warnings,
            in_scope=in_scope,
            ood_score=score,
            ood_limit=limit,
            scope_reasons=reasons,
            withheld_label=label if withheld else "",
            withheld_decision=decision if withheld else "",
            computed_by=dict(self.engine.computed_by),
        )
