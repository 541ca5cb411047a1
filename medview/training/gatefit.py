"""Fit the trust gate when a model is trained (the wizard and ``medview train``).

The gate's statistics come from the training split's features, its limit from the
validation split (the ``DEFAULT_PERCENTILE`` of the validation scores), and the card
records how it did on the test split and on a quick out-of-distribution check built
from the model's own films (:mod:`medview.training.oodcheck`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from medview.imaging.model_input import resize_grey
from medview.inference import scope
from medview.inference.features import StageTap, gate_stages
from medview.inference.features import thumbnails as input_thumbnails
from medview.training import metrics as M
from medview.training import oodcheck, robust

#: At most this many training images feed the statistics (a covariance needs a few
#: thousand; more only costs time).
MAX_FIT_IMAGES = 4000
#: Films per ONNX Runtime call in the passes on the graph: 8 ran 13% faster per film
#: than 32 on a 2-core CPU at 128 px (smaller activations stay in cache), and a small
#: batch spreads a set of films over the cores (:meth:`FinalPasses.use_graph`)
GRAPH_BATCH = 8


def _features(model, tap: StageTap, images: np.ndarray, to_input: Callable, batch: int,
              cancel=None) -> dict[str, np.ndarray]:
    model.eval()
    device = next(model.parameters()).device
    parts = []
    for i in range(0, len(images), batch):
        if cancel is not None:
            cancel.raise_if_cancelled()
        parts.append(tap.forward(model, to_input(images[i:i + batch]).to(device)))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def gate_variation(a: np.ndarray, rng: np.random.Generator,
                   p: dict[str, float] | None = None) -> np.ndarray:
    """A film as another site might send it (:func:`robust.hospital_variation`), 30% of
    the time with a tighter field of view (:func:`zoomed_in`) and 30% of the time
    rotated by up to 12 degrees."""
    a = robust.hospital_variation(a, rng, p)
    if rng.random() < 0.3:
        a = zoomed_in(a, rng)
    if rng.random() < 0.3:
        a = robust.rotate(a, rng.uniform(-12, 12))
    return a


def zoomed_in(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The film cropped by the same 4-14% on every side and resized back (a tighter
    field of view)."""
    return robust.tighter_view(a, rng.uniform(0.04, 0.14))


def thumbnails(images: np.ndarray, to_input: Callable, stage: str,
               batch: int = 256) -> np.ndarray:
    """The gate's input part ``stage`` (:data:`scope.INPUT_STAGES`) of uint8 films, as
    :class:`StageTap` computes it, without running the network."""
    out = []
    for i in range(0, len(images), batch):
        x = to_input(np.ascontiguousarray(images[i:i + batch]))
        out.append(input_thumbnails(x, stage).numpy())
    return np.concatenate(out)


def _square(a: np.ndarray, size: int) -> np.ndarray:
    return resize_grey(np.asarray(a, np.uint8), (size, size))


class FinalPasses:
    """The trained model's passes after training: eval mode, the gate's stage tap on.
    Before the gate is fitted a pass gives the logits and the gate's features; after
    (:meth:`fitted`), the logits and the gate's in-scope decision per film. Evaluation,
    the shortcut audit and the gate's checks share these passes: the gate costs only the
    passes over the training films its statistics need."""

    def __init__(self, model, to_input: Callable, batch: int, cancel=None,
                 prepare: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        """``to_input`` makes a torch uint8 batch (B, H, W) the model's input tensor;
        ``prepare``, when given, makes a numpy uint8 batch the same input as a (B, C, H, W)
        float32 array for the graph (else the tensor is converted)."""
        import torch

        self.model = model
        self.stages = gate_stages(model)
        self.tap = StageTap(model, self.stages)
        self.batch = batch
        self.cancel = cancel
        self.gate: scope.ScopeGate | None = None
        self._to_input = lambda b: to_input(torch.from_numpy(b))
        self._prepare = prepare or (lambda b: np.ascontiguousarray(self._to_input(b).numpy()))
        self._session = None
        self._pool = None
        #: on the graph: the stages it outputs, and those computed from its input
        self._graph_stages = tuple(s for s in self.stages if s not in scope.INPUT_STAGES)
        self._input_stages = tuple(s for s in self.stages if s in scope.INPUT_STAGES)

    def use_graph(self, data: bytes, sample: np.ndarray, tolerance: float = 1e-4) -> bool:
        """Run the passes on ONNX Runtime with the model's exported graph (``data``,
        exported from this model) when it gives the torch model's probabilities within
        ``tolerance`` on ``sample`` films: 1.6x faster than torch on a CPU. Returns
        whether it is used."""
        from concurrent.futures import ThreadPoolExecutor

        from medview.inference.backends import cpu_threads, ort_session

        sample = np.asarray(sample, np.uint8)
        torch_logits = self.features(sample)[scope.LOGITS]
        # one runtime thread per call and one call per core: batches run side by side
        # (and their inputs are prepared side by side), 5-25% more films per second
        # than one call at a time on two runtime threads here
        self._session = ort_session(data, threads=1)
        self._pool = ThreadPoolExecutor(cpu_threads(), thread_name_prefix="medview-passes")
        graph_logits = self.features(sample)[scope.LOGITS]
        worst = float(np.abs(M.softmax(torch_logits) - M.softmax(graph_logits)).max())
        if not worst <= tolerance:
            self._session = None
        return self._session is not None

    def features(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Logits (``scope.LOGITS``) and the gate's features of uint8 films (N, H, W)."""
        images = np.asarray(images, np.uint8)
        if self._session is None:
            return _features(self.model, self.tap, images, self._to_input, self.batch,
                             self.cancel)
        from medview.inference.backends import graph_features

        session = self._session

        def one(start: int) -> dict[str, np.ndarray]:
            if self.cancel is not None:
                self.cancel.raise_if_cancelled()
            x = self._prepare(np.ascontiguousarray(images[start:start + GRAPH_BATCH]))
            return graph_features(session, x, self._graph_stages, self._input_stages,
                                  GRAPH_BATCH)

        assert self._pool is not None
        parts = list(self._pool.map(one, range(0, len(images), GRAPH_BATCH)))
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def thumbnails(self, images: np.ndarray, stage: str) -> np.ndarray:
        return thumbnails(np.asarray(images, np.uint8), self._to_input, stage)

    def fitted(self, gate: scope.ScopeGate) -> None:
        self.gate = gate

    def scored(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(logits, in scope) of uint8 films, by the fitted gate."""
        if self.gate is None:
            raise ValueError("the gate is not fitted yet")
        if not len(images):
            return np.zeros((0, 0), np.float32), np.zeros(0, bool)
        feats = self.features(images)
        return feats[scope.LOGITS], self.gate.in_scope(feats)

    def close(self) -> None:
        self.tap.remove()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def fit_gate(passes: FinalPasses, imgs: np.ndarray, y: np.ndarray, train_idx,
             val_features: dict[str, np.ndarray], seed: int = 0,
             vary: bool = True) -> tuple[scope.ScopeGate, dict]:
    """The gate fitted on the training films (at most :data:`MAX_FIT_IMAGES`) and
    ``val_features`` (the validation films' pass), and the card's ``fitted_on``.

    With ``vary`` the feature-stage statistics also see one hospital variation of every
    film (:func:`gate_variation`) and the input thumbnail one layout-keeping variation
    (:data:`robust.LAYOUT_KEEPING`) and one tighter field of view (:func:`zoomed_in`),
    so that re-encoded, resampled, blurred, slightly rotated or cropped and re-windowed
    films of the same population stay in scope while inverted ones do not; the
    normalisation and the limit come from the validation films as they are."""
    train_idx = np.asarray(train_idx)
    if len(train_idx) > MAX_FIT_IMAGES:
        train_idx = np.sort(np.random.default_rng(seed).choice(train_idx, MAX_FIT_IMAGES,
                                                               replace=False))
    stages = passes.stages
    rng = np.random.default_rng(seed + 11)
    train_imgs = imgs[train_idx]
    # the films and, after them, one hospital variation of each: what other sites do to
    # a film must not take it out of scope
    fit_imgs = (np.concatenate([train_imgs, np.stack([gate_variation(a, rng)
                                                      for a in train_imgs])])
                if vary else train_imgs)
    train_f = passes.features(fit_imgs)
    y_fit = np.concatenate([y[train_idx]] * (2 if vary else 1))
    thumb = next((s for s in stages if s in scope.INPUT_STAGES), None)
    if vary and thumb is not None:
        # the thumbnail sees the grey-level layout: it learns the films, their
        # layout-keeping variations and tighter fields of view only (measured: fitted on
        # every variation, it let 65% of inverted films through; without the zoomed
        # films it withheld 7% of films cropped by 10% per side)
        layout = np.stack([gate_variation(a, rng, robust.LAYOUT_KEEPING) for a in train_imgs])
        zoomed = np.stack([zoomed_in(a, rng) for a in train_imgs])
        train_f[thumb] = np.concatenate([train_f[thumb][:len(train_imgs)],
                                         *(passes.thumbnails(v, thumb)
                                           for v in (layout, zoomed))])
    # normalisation and limit from the validation films as they are: the spread of the
    # varied films would loosen every part's scale
    gate = scope.fit_gate(scope.DEFAULT_METHOD, train_f, y_fit, val_features,
                          scope.DEFAULT_PERCENTILE, stages)
    fitted_on = {"train_images": len(train_idx),
                 "validation_images": len(val_features[scope.LOGITS]),
                 "with_hospital_variations": bool(vary)}
    return gate, fitted_on


def gate_checks(passes: FinalPasses, films: np.ndarray, films_in: np.ndarray | None,
                y_films: np.ndarray, positive: int | None, probs: np.ndarray | None,
                variations: dict[str, float] | None = None) -> dict:
    """The card's ``checked`` entries of a fitted gate (``passes.gate``), beyond
    ``fitted_on``: the test films in scope (``films_in``, from the caller's pass) and the
    AUC among them; a quick out-of-distribution check (synthetic graphics, and up to 100
    of ``films`` made into what the model was not built for); and the share in scope of
    benign variations of the films: ``variations`` when the caller measured them in its
    own passes (the shortcut audit's), else the hospital variations of the audit
    (:data:`robust.NUISANCE_TESTS`) on the same 100 films."""
    size = films.shape[-1]
    checked: dict = {}
    if films_in is not None:
        internal = {"n": len(films_in), "in_scope": round(float(films_in.mean()), 4)}
        if positive is not None and probs is not None and len(probs):
            yt = y_films == positive
            pp = probs[:, positive]
            internal["auc_all"] = round(float(M.roc_auc(yt, pp)), 4)
            if films_in.any():
                internal["auc_in_scope"] = round(float(M.roc_auc(yt[films_in],
                                                                 pp[films_in])), 4)
        checked["internal_test"] = internal
    sample = films[:: max(1, len(films) // 100)][:100]
    quick = {"synthetic graphics": np.stack([_square(a, size) for a in
                                             oodcheck.synthetic_images(size)])}
    for name, fn in oodcheck.OUT_TRANSFORMS.items():
        quick[name] = np.stack([_square(fn(a), size) for a in sample])
    checked["quick_check"] = {
        name: {"n": len(arr), "withheld": round(float((~passes.scored(arr)[1]).mean()), 4)}
        for name, arr in quick.items()}
    if variations is not None:
        checked["benign_variations"] = {name: {"n": len(films), "in_scope": v}
                                        for name, v in variations.items()}
    else:
        checked["benign_variations"] = {
            name: {"n": len(sample), "in_scope": round(float(passes.scored(np.stack(
                [_square(fn(a), size) for a in sample]))[1].mean()), 4)}
            for name, fn in robust.NUISANCE_TESTS.items()}
    return checked


def scope_spec(gate: scope.ScopeGate, checked: dict) -> dict:
    """The card's ``scope`` fields of a fitted gate (sha256 filled in at export)."""
    return {"method": gate.method, "file": "scope.safetensors", "sha256": "0" * 64,
            "limit": round(gate.limit, 6), "percentile": gate.percentile,
            "in_distribution_pass_rate": round(gate.in_distribution_pass_rate, 4),
            "stages": list(gate.stages), "checked": checked}


def fit_trust_gate(model, images, y: np.ndarray, train_idx, val_idx, test_idx,
                   to_input: Callable, batch: int, positive: int | None,
                   test_probs: np.ndarray | None, seed: int = 0, cancel=None,
                   vary: bool = True) -> tuple[scope.ScopeGate, dict]:
    """The fitted gate and the card's ``scope`` fields, with passes of its own (refitting
    a saved model's gate; training shares its passes: :class:`FinalPasses`). ``images``
    are the films as uint8 (N, H, W) (numpy or torch)."""
    import torch

    imgs = images.cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    passes = FinalPasses(model, to_input, batch, cancel)
    try:
        gate, fitted_on = fit_gate(passes, imgs, y, train_idx,
                                   passes.features(imgs[np.asarray(val_idx)]), seed, vary)
        passes.fitted(gate)
        films_idx = np.asarray(test_idx) if len(test_idx) else np.asarray(val_idx)
        films = imgs[films_idx]
        films_in = passes.scored(films)[1] if len(test_idx) else None
        checked = {"fitted_on": fitted_on,
                   **gate_checks(passes, films, films_in, y[films_idx], positive,
                                 test_probs)}
    finally:
        passes.close()
    return gate, scope_spec(gate, checked)
