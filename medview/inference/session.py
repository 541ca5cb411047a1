"""The one Qt-free inference session that the command line and the AI panel both call.

It owns the predictor cache (each model loaded once per device) and exposes prediction,
saliency and batch scoring as generators: every ``yield`` reports progress and is a
point where a cancel takes effect (the GUI's worker thread checks its token there; the
CLI drains them). Saliency is cancellable inside captum's long loops too (every module's
forward pass is a cancel point), so a cancelled Integrated Gradients or Occlusion run
releases the model within one forward step.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Generator, Iterable
from dataclasses import dataclass

import numpy as np

from medview.core.modeling import Prediction
from medview.core.progress import CancelToken, Progress
from medview.core.volume import ImageVolume
from medview.inference.predictor import Predictor, PreparedInput
from medview.models.card import ModelCard


@dataclass
class ScoredItem:
    """One row of a batch: what was scored and the prediction."""

    volume: ImageVolume
    index: int
    path: str
    prediction: Prediction


@dataclass(frozen=True)
class ScoredProgress(Progress):
    """A batch step that carries the row just scored, so a worklist fills as it goes
    (a milestone: never thinned away)."""

    item: ScoredItem | None = None

    @property
    def milestone(self) -> bool:
        return self.item is not None


def _check(cancel: CancelToken | None) -> None:
    if cancel is not None:
        cancel.raise_if_cancelled()


class InferenceSession:
    """Predictors cached by (model id, weights sha256, device); thread-safe."""

    def __init__(self) -> None:
        self._predictors: dict[tuple[str, str, str], Predictor] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ models
    @staticmethod
    def _key(card: ModelCard, device: str) -> tuple[str, str, str]:
        return card.id, card.weights_sha256, device

    def is_loaded(self, card: ModelCard, device: str) -> bool:
        return self._key(card, device) in self._predictors

    def loaded(self) -> list[Predictor]:
        with self._lock:
            return list(self._predictors.values())

    def predictor(self, card: ModelCard, device: str = "auto") -> Predictor:
        """The cached predictor for ``card`` on ``device``, loaded (once) if needed."""
        key = self._key(card, device)
        with self._lock:
            pred = self._predictors.get(key)
            if pred is None:
                pred = Predictor(card, device)
                self._predictors[key] = pred
            return pred

    # ------------------------------------------------------------------ jobs
    def predict(self, card: ModelCard, volume: ImageVolume, index: int, device: str = "auto",
                cancel: CancelToken | None = None
                ) -> Generator[Progress, None, tuple[Prediction, PreparedInput]]:
        """Score one slice; returns the prediction and the prepared input (for saliency)."""
        t0 = time.perf_counter()
        yield Progress(0, 3, "loading model")
        pred = self.predictor(card, device)
        _check(cancel)
        yield Progress(1, 3, "preparing")
        t1 = time.perf_counter()
        prep = pred.prepare(volume, index)
        prep_ms = (time.perf_counter() - t1) * 1000
        _check(cancel)
        yield Progress(2, 3, "inference")
        result = pred.predict_prepared(prep, prep_ms)
        result.timings_ms["total"] = round((time.perf_counter() - t0) * 1000, 1)
        return result, prep

    def explain(self, card: ModelCard, volume: ImageVolume, index: int, method: str,
                target: str, device: str = "auto", prep: PreparedInput | None = None,
                cancel: CancelToken | None = None) -> Generator[Progress, None, np.ndarray]:
        """A saliency map for class ``target``, aligned with the slice (rows, cols)."""
        from medview.explain import saliency_for_slice

        yield Progress(0, 2, "loading model")
        pred = self.predictor(card, device)
        if target not in card.classes:
            raise ValueError(f"unknown class {target!r}; classes: {', '.join(card.classes)}")
        p = prep if prep is not None else pred.prepare(volume, index)
        _check(cancel)
        yield Progress(1, 2, "saliency")
        spec = card.preprocessing
        black = [(0.0 - m) / s for m, s in zip(spec.mean, spec.std, strict=True)]
        with pred.lock:
            return saliency_for_slice(pred.model, p.tensor, card.classes.index(target),
                                      method, (volume.rows, volume.cols), black=black,
                                      cancel=cancel)

    def batch(self, card: ModelCard, volumes: Iterable[ImageVolume], device: str = "auto",
              cancel: CancelToken | None = None
              ) -> Generator[Progress, None, list[ScoredItem]]:
        """Score the default slice of every volume, one at a time (on this CPU batching did
        not make a single image faster); each image is a progress step and a cancel point."""
        volumes = list(volumes)
        yield Progress(0, len(volumes), "loading model")
        pred = self.predictor(card, device)
        rows: list[ScoredItem] = []
        for k, v in enumerate(volumes):
            _check(cancel)
            i = v.default_index
            item = ScoredItem(v, i, v.source_of(i), pred.predict(v, i))
            rows.append(item)
            yield ScoredProgress(k + 1, len(volumes), "scoring", item)
        return rows
