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
import weakref
from collections.abc import Generator, Iterable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from medview.core.modeling import Prediction
from medview.core.progress import CancelToken, Progress
from medview.core.volume import ImageVolume, SkippedFile
from medview.inference.predictor import NonFiniteOutput, Predictor, PreparedInput
from medview.models.card import ModelCard

#: Prepared images per forward pass when scoring a list: the fastest per image on both
#: backends on a CPU (benchmarks/bench_backends.py; numbers in docs/performance.md), and
#: small enough that the first worklist row appears quickly.
SCORING_BATCH = 8


@dataclass
class ScoredItem:
    """One row of a batch: what was scored and the prediction."""

    volume: ImageVolume
    index: int
    path: str
    prediction: Prediction
    #: the caller's key for this row (the input's position in the caller's list)
    key: int = 0


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
    """Predictors cached by (model id, weights sha256, device, backend); thread-safe."""

    def __init__(self) -> None:
        self._predictors: dict[tuple[str, str, str, str], Predictor] = {}
        #: loads started by :meth:`preload` that have not finished
        self._loading: dict[tuple[str, str, str, str], Future[Predictor]] = {}
        self._lock = threading.Lock()
        #: results worked out ahead of a request (``keep=True``), each handed once to the
        #: same request for the same volume object: {key: (weak ref to volume, result)};
        #: one never asked for does not keep its volume alive
        self._kept: dict[tuple, tuple[weakref.ref, object]] = {}
        #: volumes whose results are being worked out ahead (:meth:`working_ahead`):
        #: {id(volume): (weak ref to volume, set when that work ends)}
        self._ahead: dict[int, tuple[weakref.ref, threading.Event]] = {}

    # ------------------------------------------------------------------ models
    @staticmethod
    def _key(card: ModelCard, device: str, backend: str = "auto") -> tuple[str, str, str, str]:
        return card.id, card.weights_sha256, device, backend

    def is_loaded(self, card: ModelCard, device: str, backend: str = "auto") -> bool:
        return self._key(card, device, backend) in self._predictors

    def is_loading(self, card: ModelCard, device: str, backend: str = "auto") -> bool:
        """Whether :meth:`preload` is loading this model now."""
        with self._lock:
            return self._key(card, device, backend) in self._loading

    def loaded(self) -> list[Predictor]:
        with self._lock:
            return list(self._predictors.values())

    def predictor(self, card: ModelCard, device: str = "auto",
                  backend: str = "auto") -> Predictor:
        """The cached predictor for ``card`` on ``device`` and ``backend`` ("auto", "torch"
        or "onnx"; see :mod:`medview.inference.backends`), loaded (once) if needed. When
        :meth:`preload` is loading it, waits for that load (and raises its error)."""
        key = self._key(card, device, backend)
        with self._lock:
            pred = self._predictors.get(key)
            if pred is not None:
                return pred
            pending = self._loading.get(key)
            if pending is None:
                pred = Predictor(card, device, backend)
                self._predictors[key] = pred
                return pred
        try:
            return pending.result()
        finally:  # a failed load is raised once (to each caller waiting); then retried
            with self._lock:
                if self._loading.get(key) is pending:
                    del self._loading[key]

    def preload(self, card: ModelCard, device: str = "auto", backend: str = "auto") -> None:
        """Start loading the predictor on a background thread (files verified, runtime
        session built) while the caller reads its inputs; :meth:`predictor` then waits
        for it. A failed load is raised by that call, and the next call tries again."""
        key = self._key(card, device, backend)
        with self._lock:
            if key in self._predictors or key in self._loading:
                return
            pending: Future[Predictor] = Future()
            self._loading[key] = pending

        def load() -> None:
            try:
                pred = Predictor(card, device, backend)
            except BaseException as exc:  # kept until a caller of predictor() sees it
                pending.set_exception(exc)
                return
            with self._lock:
                self._predictors[key] = pred
                del self._loading[key]
            pending.set_result(pred)

        threading.Thread(target=load, name="medview-model-load", daemon=True).start()

    def _take(self, key: tuple, volume: ImageVolume):
        """The result kept for ``key`` if it was worked out for this very ``volume``
        object (then forgotten), else None."""
        with self._lock:
            kept = self._kept.pop(key, None)
        return kept[1] if kept is not None and kept[0]() is volume else None

    def _keep(self, key: tuple, volume: ImageVolume, result) -> None:
        with self._lock:
            self._kept[key] = (weakref.ref(volume), result)

    @contextmanager
    def working_ahead(self, volume: ImageVolume) -> Iterator[None]:
        """Marks that results for ``volume`` are being worked out ahead (``keep=True``)
        inside the block. A request for that very volume that finds nothing kept waits
        for the block to end and looks again, so a request that comes early (a slow
        machine) gets the result being made instead of running the model a second time."""
        done = threading.Event()
        with self._lock:
            self._ahead[id(volume)] = (weakref.ref(volume), done)
        try:
            yield
        finally:
            done.set()
            with self._lock:
                held = self._ahead.get(id(volume))
                if held is not None and held[1] is done:
                    del self._ahead[id(volume)]

    def _kept_or_made_ahead(self, key: tuple, volume: ImageVolume,
                            cancel: CancelToken | None):
        """The result kept for ``key`` (see :meth:`_take`), after waiting for work ahead
        on ``volume`` to end (cancellable); None when there is none."""
        kept = self._take(key, volume)
        if kept is not None:
            return kept
        with self._lock:
            held = self._ahead.get(id(volume))
        if held is None or held[0]() is not volume:
            return None
        done = held[1]
        while not done.wait(0.05):
            _check(cancel)
        return self._take(key, volume)

    def _predict_key(self, card: ModelCard, volume: ImageVolume, index: int, device: str,
                     backend: str) -> tuple:
        return ("predict", *self._key(card, device, backend), id(volume), index)

    def predicted_ahead(self, card: ModelCard, volume: ImageVolume, index: int,
                        device: str = "auto", backend: str = "auto"
                        ) -> tuple[Prediction, PreparedInput] | None:
        """What :meth:`predict` would hand this request from work done ahead, if it is
        ready now (then forgotten, as there); never waits and never runs the model."""
        return self._take(self._predict_key(card, volume, index, device, backend), volume)

    # ------------------------------------------------------------------ jobs
    def predict(self, card: ModelCard, volume: ImageVolume, index: int, device: str = "auto",
                cancel: CancelToken | None = None, backend: str = "auto", keep: bool = False
                ) -> Generator[Progress, None, tuple[Prediction, PreparedInput]]:
        """Score one slice; returns the prediction and the prepared input (for saliency).
        With ``keep``, the result is also kept for the next request of the same slice of
        the same volume object (the viewer scores the first image while its window is
        being built), which gets it at once."""
        key = self._predict_key(card, volume, index, device, backend)
        if not keep:
            kept = self._kept_or_made_ahead(key, volume, cancel)
            if kept is not None:
                return kept
        t0 = time.perf_counter()
        yield Progress(0, 3, "loading model")
        pred = self.predictor(card, device, backend)
        _check(cancel)
        yield Progress(1, 3, "preparing")
        t1 = time.perf_counter()
        prep = pred.prepare(volume, index)
        prep_ms = (time.perf_counter() - t1) * 1000
        _check(cancel)
        yield Progress(2, 3, "inference")
        # a graph whose Grad-CAM is its class activation map also hands back its feature
        # maps: the viewer's heat-map then needs no second pass
        graph = card.card.graph
        result = pred.predict_prepared(prep, prep_ms, maps=bool(
            pred.backend == "onnx" and graph and graph.cam_head))
        result.timings_ms["total"] = round((time.perf_counter() - t0) * 1000, 1)
        if keep:
            self._keep(key, volume, (result, prep))
        return result, prep

    def explain(self, card: ModelCard, volume: ImageVolume, index: int, method: str,
                target: str, device: str = "auto", prep: PreparedInput | None = None,
                cancel: CancelToken | None = None, backend: str = "auto", keep: bool = False
                ) -> Generator[Progress, None, np.ndarray]:
        """A saliency map for class ``target``, aligned with the slice (rows, cols).
        ``keep``: as for :meth:`predict`.

        On the graph backend, Grad-CAM of a model whose head is a global average pool and
        a linear layer (verified at export: ``graph.cam_head``) is the class activation
        map of the graph's feature maps, one forward pass and no autograd; every other
        method (and Grad-CAM of other heads) runs captum on the torch model."""
        key = self._explain_key(card, volume, index, method, target, device, backend)
        return (yield from self._ahead_or_make(key, volume, cancel, keep, lambda: self._explain(
            card, volume, index, method, target, device, prep, cancel, backend)))

    def _ahead_or_make(self, key: tuple, volume: ImageVolume, cancel: CancelToken | None,
                       keep: bool, make):
        """What work ahead made for ``key`` (:meth:`_kept_or_made_ahead`), else the result
        of the generator ``make()``; with ``keep`` (work ahead itself) the result made is
        kept for the first identical request."""
        if not keep:
            kept = self._kept_or_made_ahead(key, volume, cancel)
            if kept is not None:
                return kept
        made = yield from make()
        if keep:
            self._keep(key, volume, made)
        return made

    def _explain_key(self, card: ModelCard, volume: ImageVolume, index: int, method: str,
                     target: str, device: str, backend: str, note: bool = False) -> tuple:
        return ("explain", *self._key(card, device, backend), id(volume), index, method,
                target, note)

    def explain_with_note(self, card: ModelCard, volume: ImageVolume, index: int,
                          method: str, target: str, device: str = "auto",
                          prep: PreparedInput | None = None,
                          cancel: CancelToken | None = None, backend: str = "auto",
                          keep: bool = False) -> Generator[Progress, None, tuple[np.ndarray, str]]:
        """:meth:`explain` and the viewer's note on where the map falls
        (:func:`medview.explain.shortcut.note_for_slice`, which renders the slice at full
        size: made here, off the GUI thread); ``keep``: as for :meth:`predict`."""
        key = self._explain_key(card, volume, index, method, target, device, backend, True)

        def make():
            from medview.explain.shortcut import note_for_slice

            sal = yield from self._explain(card, volume, index, method, target, device, prep,
                                           cancel, backend)
            return sal, note_for_slice(volume, index, sal)

        return (yield from self._ahead_or_make(key, volume, cancel, keep, make))

    def explained_ahead(self, card: ModelCard, volume: ImageVolume, index: int, method: str,
                        target: str, device: str = "auto", backend: str = "auto"
                        ) -> tuple[np.ndarray, str] | None:
        """What :meth:`explain_with_note` would hand this request from work done ahead,
        if it is ready now; never waits and never runs the model."""
        return self._take(self._explain_key(card, volume, index, method, target, device,
                                            backend, True), volume)

    def _explain(self, card: ModelCard, volume: ImageVolume, index: int, method: str,
                 target: str, device: str, prep: PreparedInput | None,
                 cancel: CancelToken | None, backend: str
                 ) -> Generator[Progress, None, np.ndarray]:
        yield Progress(0, 2, "loading model")
        pred = self.predictor(card, device, backend)
        if target not in card.classes:
            raise ValueError(f"unknown class {target!r}; classes: {', '.join(card.classes)}")
        p = prep if prep is not None else pred.prepare(volume, index)
        _check(cancel)
        yield Progress(1, 2, "saliency")
        k = card.classes.index(target)
        graph = card.card.graph
        if method == "gradcam" and pred.backend == "onnx" and graph and graph.cam_head:
            return cam_for_slice(pred, p.tensor, k, (volume.rows, volume.cols),
                                 maps=p.feature_maps)
        from medview.explain import saliency_for_slice

        spec = card.preprocessing
        black = [(0.0 - m) / s for m, s in zip(spec.mean, spec.std, strict=True)]
        model = pred.model  # may load the torch twin of a graph-backed model
        with pred.lock:
            return saliency_for_slice(model, p.tensor, k, method, (volume.rows, volume.cols),
                                      black=black, cancel=cancel)

    def batch(self, card: ModelCard, volumes: Iterable[ImageVolume], device: str = "auto",
              cancel: CancelToken | None = None, backend: str = "auto",
              chunk: int | None = None) -> Generator[Progress, None, list[ScoredItem]]:
        """Score the default slice of every volume (already in memory) through
        :func:`score_stream`; returns the rows in input order."""
        volumes = list(volumes)
        yield Progress(0, len(volumes), "loading model")
        pred = self.predictor(card, device, backend)
        rows: list[ScoredItem] = []
        for step in score_stream(pred, enumerate(volumes), len(volumes), cancel, chunk):
            if step.item is not None:
                rows.append(step.item)
            yield step
        return rows


#: Volumes waiting to be scored together may hold at most this many pixel bytes (a batch
#: of chest films is a few MB; a batch of CT series is scored as it comes).
MAX_PENDING_BYTES = 256 * 1024**2


def score_stream(pred: Predictor, volumes: Iterable[tuple[int, ImageVolume | None]],
                 total: int, cancel: CancelToken | None = None, chunk: int | None = None,
                 failed: list[SkippedFile] | None = None
                 ) -> Generator[ScoredProgress, None, None]:
    """The one batch scorer (the CLI, the worklist and the torchrun workers all use it).

    ``volumes`` yields ``(key, volume)`` lazily (a None volume: an input that could not
    be read; it counts as done), or ``(key, volume, prepared)`` when it was prepared
    already (:func:`medview.inference.batch.iter_score_stream`'s reader threads). The
    default slice of each is prepared as it arrives (unless it was) and scored ``chunk``
    (:data:`SCORING_BATCH`) at a time, never holding more than
    :data:`MAX_PENDING_BYTES` of pixels; each row is yielded as a :class:`ScoredProgress`
    step (``done`` of ``total``) and nothing is kept after it. Every input is a cancel
    point. An image the model gives no finite output for is no row: it goes to
    ``failed`` with the reason, and the rest of its chunk is scored one by one."""
    size = chunk or SCORING_BATCH
    pending: list[tuple[int, ImageVolume, PreparedInput]] = []
    done = 0

    def one_by_one() -> list[Prediction | None]:
        out: list[Prediction | None] = []
        for _k, volume, prep in pending:
            try:
                out.append(pred.predict_many([prep])[0])
            except NonFiniteOutput as exc:
                out.append(None)
                if failed is not None:
                    failed.append(SkippedFile(volume.source_of(volume.default_index),
                                              str(exc)))
        return out

    def flush() -> Generator[ScoredProgress, None, None]:
        nonlocal done
        try:
            predictions: list[Prediction | None] = list(
                pred.predict_many([p for _k, _v, p in pending]))
        except NonFiniteOutput:
            predictions = one_by_one()
        for (k, volume, _p), prediction in zip(pending, predictions, strict=True):
            _check(cancel)
            i = volume.default_index
            done += 1
            item = (None if prediction is None else
                    ScoredItem(volume, i, volume.source_of(i), prediction, k))
            yield ScoredProgress(done, total, "scoring", item)
        pending.clear()

    for entry in volumes:
        _check(cancel)
        k, volume = entry[0], entry[1]
        if volume is None:
            done += 1
            continue
        prep = entry[2] if len(entry) > 2 else pred.prepare(volume, volume.default_index)
        pending.append((k, volume, prep))
        if len(pending) >= size or sum(v.pixels.nbytes for _k, v, _p in pending) \
                > MAX_PENDING_BYTES:
            yield from flush()
    if pending:
        yield from flush()


def cam_for_slice(pred: Predictor, tensor: np.ndarray, target: int,
                  shape: tuple[int, int], maps: np.ndarray | None = None) -> np.ndarray:
    """Grad-CAM on the graph backend: the class activation map of the graph's feature
    maps and the linear head, normalised like :func:`medview.explain.saliency.explain`
    and resized back to the slice's ``shape`` = (rows, cols). ``maps``: the feature maps
    (C, h, w) of ``tensor`` from the pass that scored it (else a pass is run here)."""
    from medview.explain.saliency import normalise_map
    from medview.imaging.model_input import resize_map
    from medview.inference.backends import OnnxBackend, class_activation_map

    engine = pred.engine
    if not isinstance(engine, OnnxBackend):
        raise ValueError("a class activation map from the graph needs the graph backend")
    if maps is None:
        maps = pred.forward(tensor[np.newaxis], maps=True)["feature_maps"][0]
    weight = engine.head()
    cam = class_activation_map(maps, weight, target, tensor.shape[-2:])
    return np.clip(resize_map(normalise_map(cam), shape), 0, 1)
