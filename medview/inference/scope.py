"""Out-of-distribution scores from the embedding the classifier already computes.

Building blocks of the trust gate (a model answers only inside its scope): detectors
fitted on the training images' penultimate embeddings, a limit taken from the
validation split, and the statistics stored as safetensors. Three published scores:

- ``mahalanobis``: the smallest Mahalanobis distance to a class mean under one shared
  covariance (Lee et al., NeurIPS 2018), on the pre-logit features.
- ``knn``: the cosine distance to the k-th nearest training embedding, features
  L2-normalised (Sun et al., ICML 2022).
- ``energy``: ``-T * logsumexp(logits / T)`` (Liu et al., NeurIPS 2020); needs no fitting.

``combined`` normalises each score by its validation mean and spread and takes the
largest, so that what one score misses another can catch.

``multi_depth`` (the default, chosen on measured numbers: docs/trust-gate.md) applies the
Mahalanobis score at several depths of the same forward pass, as Lee et al. do: the
channel means and standard deviations of the last two feature stages (the last one is
what the pre-logit embedding is pooled from) and an 8 x 8 thumbnail of the input
(normalised per film: ``INPUT_LAYOUT_STAGE``), one
Gaussian each, each normalised by its validation mean and spread, and takes the largest.
The stage statistics see what the pooled embedding is trained to ignore (borders,
framing, acquisition), so zoomed-out films and lateral-like crops are caught; the
thumbnail sees the grey-level layout, so inverted films are; the earliest stages are
left out because they also react to JPEG compression and resampling of genuine films.
The pre-logit embedding itself added nothing measurable to that maximum and its
1280 x 1280 precision matrix was most of the gate's cost, so it is not a default part
(``stages`` may still name it).

Features are passed as a dict: ``"pre_logits"`` (N, D), ``"logits"`` (N, K) and one
(N, 2C) array per stage name (channel means then standard deviations). Higher always
means "less like the training images". Pure numpy (the predictor supplies the features).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from medview.models.card import SCOPE_METHODS

DEFAULT_METHOD = "multi_depth"
#: The limit: this percentile of the validation images' scores (see ``fit_gate``).
DEFAULT_PERCENTILE = 99.0
#: How many of the last feature stages ``multi_depth`` uses (besides the thumbnail).
STAGES_USED = 2
PRE_LOGITS = "pre_logits"
#: A pseudo-stage: the model input average-pooled to THUMBNAIL x THUMBNAIL (first channel).
#: Gates fitted before per-film normalisation name it; still scored as they were fitted.
INPUT_STAGE = "input"
#: The same thumbnail, normalised per film to mean 0 and spread 1: the grey-level layout
#: without the window (a re-windowed or 12-bit film keeps it; an inverted one does not).
INPUT_LAYOUT_STAGE = "input_layout"
INPUT_STAGES = (INPUT_STAGE, INPUT_LAYOUT_STAGE)
THUMBNAIL = 8
LOGITS = "logits"


def normalise_thumbnails(t: np.ndarray) -> np.ndarray:
    """Rows of thumbnails (N, D) to mean 0 and standard deviation 1 each (a flat film
    stays 0)."""
    t = np.asarray(t, np.float32)
    centred = t - t.mean(axis=1, keepdims=True)
    return centred / np.maximum(centred.std(axis=1, keepdims=True), 1e-6)


def _normalise_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def fit_mahalanobis(feats: np.ndarray, labels: np.ndarray, ridge: float = 1e-2) -> dict:
    """Class means and the precision of the pooled (shared) covariance, with a ridge of
    ``ridge`` times the mean variance so that it is invertible for few images."""
    feats = np.asarray(feats, np.float64)
    labels = np.asarray(labels)
    classes = np.unique(labels)
    means = np.stack([feats[labels == c].mean(0) for c in classes])
    centred = feats - means[np.searchsorted(classes, labels)]
    cov = centred.T @ centred / max(len(feats) - len(classes), 1)
    cov += np.eye(cov.shape[0]) * ridge * max(float(np.trace(cov)) / cov.shape[0], 1e-12)
    return {"means": means.astype(np.float32),
            "precision": np.linalg.inv(cov).astype(np.float32)}


def mahalanobis_score(stats: dict, feats: np.ndarray) -> np.ndarray:
    """The smallest Mahalanobis distance of each row of ``feats`` to a class mean:
    ``(x-m) P (x-m) = xPx - 2 x.(Pm) + mPm``, so one product with the precision serves
    every class (``stats`` may carry ``Pm``/``mPm`` precomputed)."""
    x = np.asarray(feats, np.float64)
    prec = np.asarray(stats["precision"], np.float64)
    means = np.asarray(stats["means"], np.float64)
    pm = stats.get("Pm")
    if pm is None:
        pm = means @ prec
    mpm = stats.get("mPm")
    if mpm is None:
        mpm = np.sum(pm * means, axis=1)
    xpx = np.sum((x @ prec) * x, axis=1)
    d2 = xpx[:, None] - 2.0 * (x @ pm.T) + mpm[None, :]
    return np.sqrt(np.maximum(np.min(d2, axis=1), 0.0))


def fit_knn(feats: np.ndarray, max_bank: int = 20000, seed: int = 0) -> dict:
    """The normalised training embeddings (a random subset past ``max_bank``)."""
    x = _normalise_rows(feats)
    if len(x) > max_bank:
        x = x[np.random.default_rng(seed).choice(len(x), max_bank, replace=False)]
    return {"bank": x.astype(np.float32)}


def knn_score(stats: dict, feats: np.ndarray, k: int = 10) -> np.ndarray:
    bank = np.asarray(stats["bank"], np.float64)
    sims = _normalise_rows(feats) @ bank.T
    k = min(k, bank.shape[0])
    kth = -np.partition(-sims, k - 1, axis=1)[:, k - 1]
    return 1.0 - kth


def energy_score(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, np.float64) / temperature
    m = z.max(axis=1, keepdims=True)
    return -temperature * (m[:, 0] + np.log(np.exp(z - m).sum(axis=1)))


@dataclass
class ScopeGate:
    """A fitted detector: ``score`` > ``limit`` means out of scope."""

    method: str
    stats: dict[str, np.ndarray] = field(default_factory=dict)
    limit: float = float("inf")
    percentile: float = DEFAULT_PERCENTILE
    in_distribution_pass_rate: float = float("nan")
    k: int = 10
    #: what ``multi_depth`` scores: feature stage module names, one of ``INPUT_STAGES``, and
    #: possibly ``PRE_LOGITS``
    stages: tuple[str, ...] = ()
    _f64: dict = field(default_factory=dict, repr=False, compare=False)

    def _part(self, name: str, feats: dict[str, np.ndarray]) -> np.ndarray:
        """One depth's Mahalanobis score (stats stored under ``name/``)."""
        return mahalanobis_score(self._float64(name), feats[name])

    def _float64(self, name: str) -> dict[str, np.ndarray]:
        """One depth's statistics in float64 with ``Pm``/``mPm`` precomputed, made once."""
        st = self._f64.get(name)
        if st is None:
            means = np.asarray(self.stats[f"{name}/means"], np.float64)
            prec = np.asarray(self.stats[f"{name}/precision"], np.float64)
            pm = means @ prec
            st = {"means": means, "precision": prec, "Pm": pm,
                  "mPm": np.sum(pm * means, axis=1)}
            self._f64[name] = st
        return st

    def raw_scores(self, feats: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {}
        if self.method == "multi_depth":
            for name in self.stages:
                out[name] = self._part(name, feats)
            return out
        if "means" in self.stats:
            out["mahalanobis"] = mahalanobis_score(self.stats, feats[PRE_LOGITS])
        if "bank" in self.stats:
            out["knn"] = knn_score(self.stats, feats[PRE_LOGITS], self.k)
        out["energy"] = energy_score(feats[LOGITS])
        return out

    def normalised_parts(self, feats: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Each part's score normalised by its validation mean and spread (what the
        ``combined`` and ``multi_depth`` scores take the largest of)."""
        return {m: (v - float(self.stats[f"{m}/z_mean"][0]))
                / max(float(self.stats[f"{m}/z_std"][0]), 1e-12)
                for m, v in self.raw_scores(feats).items() if f"{m}/z_mean" in self.stats}

    def score(self, feats: dict[str, np.ndarray]) -> np.ndarray:
        if self.method not in ("combined", "multi_depth"):
            return self.raw_scores(feats)[self.method]
        return np.max(np.stack(list(self.normalised_parts(feats).values())), axis=0)

    def in_scope(self, feats: dict[str, np.ndarray]) -> np.ndarray:
        return self.score(feats) <= self.limit

    # ------------------------------------------------------------------ storage
    def to_bytes(self) -> bytes:
        """The statistics as safetensors bytes (data only; no code, no pickle)."""
        from safetensors.numpy import save

        return save({k: np.ascontiguousarray(v) for k, v in sorted(self.stats.items())},
                    metadata={"method": self.method})

    def sha256(self) -> str:
        return hashlib.sha256(self.to_bytes()).hexdigest()

    @classmethod
    def from_bytes(cls, data: bytes, method: str, limit: float, expected_sha256: str,
                   **kw) -> ScopeGate:
        """Statistics read back; refused unless their sha256 is the card's, and unless
        every array the method needs is there with consistent shapes."""
        from safetensors.numpy import load

        actual = hashlib.sha256(data).hexdigest()
        if actual != expected_sha256:
            raise ValueError(f"scope statistics sha256 {actual[:12]}... does not match the "
                             f"card's {expected_sha256[:12]}...")
        gate = cls(method, dict(load(data)), limit, **kw)
        gate.check()
        return gate

    def check(self) -> None:
        """Every array the method reads is present, finite and shaped consistently."""
        names = ([f"{n}/{p}" for n in self.stages
                  for p in ("means", "precision", "z_mean", "z_std")]
                 if self.method == "multi_depth" else [])
        for name in names:
            if name not in self.stats:
                raise ValueError(f"scope statistics lack {name!r}")
        for name, arr in self.stats.items():
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"scope statistics {name!r} hold NaN or infinity")
            if name.endswith("/precision"):
                means = self.stats.get(name[: -len("precision")] + "means")
                if (arr.ndim != 2 or arr.shape[0] != arr.shape[1] or means is None
                        or means.ndim != 2 or means.shape[1] != arr.shape[0]):
                    raise ValueError(f"scope statistics {name!r} have inconsistent shapes")

    def expected_width(self, name: str) -> int | None:
        """The feature width the statistics for ``name`` expect (None if not used)."""
        arr = self.stats.get(f"{name}/means")
        return int(arr.shape[1]) if arr is not None else None


def fit_gate(method: str, train: dict[str, np.ndarray], train_labels: np.ndarray,
             val: dict[str, np.ndarray], percentile: float = DEFAULT_PERCENTILE,
             stages: tuple[str, ...] = (), k: int = 10) -> ScopeGate:
    """Fit ``method`` on the training features; its limit is the ``percentile`` of the
    validation images' scores (so about ``percentile`` % of in-distribution images pass).
    ``multi_depth`` scores each of ``stages`` (names of ``train``'s arrays; the
    pre-logits may be one, and are then class-conditional)."""
    if method not in SCOPE_METHODS:
        raise ValueError(f"unknown scope method {method!r}; use one of "
                         f"{', '.join(SCOPE_METHODS)}")
    stats: dict[str, np.ndarray] = {}
    labels = np.asarray(train_labels)
    if method == "multi_depth":
        for name in stages:
            # class-conditional on the embedding the classifier reads; one Gaussian for the
            # stage statistics (they describe the image, not the class)
            # (each stage may have its own number of training rows)
            st = fit_mahalanobis(train[name], labels if name == PRE_LOGITS
                                 else np.zeros(len(train[name]), int))
            stats[f"{name}/means"], stats[f"{name}/precision"] = st["means"], st["precision"]
    if method in ("mahalanobis", "combined"):
        stats.update(fit_mahalanobis(train[PRE_LOGITS], labels))
    if method in ("knn", "combined"):
        stats.update(fit_knn(train[PRE_LOGITS]))
    gate = ScopeGate(method, stats, percentile=percentile, k=k,
                     stages=tuple(stages) if method == "multi_depth" else ())
    if method in ("combined", "multi_depth"):
        for m, v in gate.raw_scores(val).items():
            stats[f"{m}/z_mean"] = np.array([float(np.mean(v))], np.float32)
            stats[f"{m}/z_std"] = np.array([float(np.std(v))], np.float32)
    val_scores = gate.score(val)
    gate.limit = float(np.percentile(val_scores, percentile))
    gate.in_distribution_pass_rate = float(np.mean(val_scores <= gate.limit))
    return gate


def auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """AUROC of telling out-of-distribution (positive) from in-distribution by score."""
    s = np.concatenate([in_scores, out_scores])
    y = np.concatenate([np.zeros(len(in_scores)), np.ones(len(out_scores))])
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    ranks[order] = np.arange(1, len(s) + 1)
    # average ranks of ties
    _, inv, counts = np.unique(s, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=ranks)
    ranks = (sums / counts)[inv]
    n1, n0 = len(out_scores), len(in_scores)
    if not n1 or not n0:
        return float("nan")
    return float((ranks[y == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def fpr_at_tpr(in_scores: np.ndarray, out_scores: np.ndarray, tpr: float = 0.95) -> float:
    """Share of out-of-distribution images let through when ``tpr`` of in-distribution
    images pass (FPR at 95% TPR, the OOD literature's usual operating point)."""
    limit = np.percentile(in_scores, 100 * tpr)
    return float(np.mean(np.asarray(out_scores) <= limit))


# ---------------------------------------------------------------------- population
#: View Position terms that mean a lateral or oblique projection (DICOM CID 4010 and
#: common vendor spellings).
_LATERAL = {"LL", "RL", "LAT", "LATERAL", "LLD", "RLD", "LO", "RO", "OBL"}


def _years(age: float) -> str:
    return f"{age:.0f} y" if age >= 2 else f"{age * 12:.0f} months"


def population_reasons(card, volume, index: int) -> list[str]:
    """Why ``volume`` is outside the population ``card`` declares, from what its header
    and shape say: modality, photometric, dimensionality (the card's ``input``), body
    part, view position and patient age (the card's ``scope``). Unknown metadata (PNG,
    JPEG, a tag left empty) is no reason: the content gate decides."""
    import numpy as np

    reasons: list[str] = []
    inp = card.input
    allowed = [m.upper() for m in inp.modalities]
    named = [m for m in allowed if m not in ("OT",)] or allowed
    modality = (volume.modality or "").upper()
    if allowed and modality and modality not in allowed:
        reasons.append(f"modality {modality}, model is for {'/'.join(named)}")
    if volume.is_rgb and "grey" in (inp.photometric or "grey").lower():
        px = volume.pixels[index]
        if not (np.array_equal(px[..., 0], px[..., 1]) and np.array_equal(px[..., 1],
                                                                           px[..., 2])):
            reasons.append("a colour image, model is for grey radiographs")
    if inp.dimensionality.upper() == "2D":
        if volume.multiframe and volume.n_slices > 1:
            reasons.append(f"a {volume.n_slices}-frame image, model is for single films")
        elif volume.n_slices > 1:
            reasons.append(f"a {volume.n_slices}-slice volume, model is for 2-D films")
    scope = card.scope
    pop = volume.population
    if scope is None:
        return reasons
    if scope.body_parts and pop.body_part and pop.body_part not in [
            b.upper() for b in scope.body_parts]:
        reasons.append(f"body part {pop.body_part}, model is for "
                       f"{'/'.join(scope.body_parts)}")
    views = [v.upper() for v in scope.view_positions]
    if views and pop.view_position and pop.view_position not in views:
        kind = " (lateral)" if pop.view_position in _LATERAL else ""
        reasons.append(f"view {pop.view_position}{kind}, model is for {'/'.join(views)}")
    if scope.age_years is not None and pop.age_years is not None:
        lo, hi = scope.age_years
        # whole years, both ends included: [1, 5] is from the 1st to the 6th birthday
        if not lo <= pop.age_years < hi + 1:
            reasons.append(f"patient age {_years(pop.age_years)}, model is for "
                           f"{lo:g}-{hi:g} y")
    return reasons


def content_reason(score: float, limit: float) -> str:
    from medview.core.presentation import score_and_limit

    a, b = score_and_limit(score, limit)
    return f"looks unlike this model's training images: score {a} > limit {b}"
