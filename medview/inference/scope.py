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
largest, so that what one score misses another can catch. Higher always means "less
like the training images". Pure numpy (the embeddings come from the predictor).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

METHODS = ("mahalanobis", "knn", "energy", "combined")


def _normalise_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def fit_mahalanobis(feats: np.ndarray, labels: np.ndarray, ridge: float = 1e-3) -> dict:
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
    x = np.asarray(feats, np.float64)
    prec = np.asarray(stats["precision"], np.float64)
    d = [np.einsum("ij,jk,ik->i", x - m, prec, x - m) for m in np.asarray(stats["means"],
                                                                         np.float64)]
    return np.sqrt(np.maximum(np.min(np.stack(d), axis=0), 0.0))


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
    percentile: float = 97.5
    in_distribution_pass_rate: float = float("nan")
    k: int = 10

    def raw_scores(self, feats: np.ndarray, logits: np.ndarray) -> dict[str, np.ndarray]:
        out = {}
        if "means" in self.stats:
            out["mahalanobis"] = mahalanobis_score(self.stats, feats)
        if "bank" in self.stats:
            out["knn"] = knn_score(self.stats, feats, self.k)
        out["energy"] = energy_score(logits)
        return out

    def score(self, feats: np.ndarray, logits: np.ndarray) -> np.ndarray:
        raw = self.raw_scores(feats, logits)
        if self.method != "combined":
            return raw[self.method]
        parts = [(raw[m] - float(self.stats[f"{m}_mean"][0]))
                 / max(float(self.stats[f"{m}_std"][0]), 1e-12)
                 for m in ("mahalanobis", "knn", "energy") if f"{m}_mean" in self.stats]
        return np.max(np.stack(parts), axis=0)

    def in_scope(self, feats: np.ndarray, logits: np.ndarray) -> np.ndarray:
        return self.score(feats, logits) <= self.limit

    # ------------------------------------------------------------------ storage
    def to_bytes(self) -> bytes:
        """The statistics as safetensors bytes (data only; no code, no pickle)."""
        from safetensors.numpy import save

        return save({k: np.ascontiguousarray(v) for k, v in self.stats.items()},
                    metadata={"method": self.method})

    def sha256(self) -> str:
        return hashlib.sha256(self.to_bytes()).hexdigest()

    @classmethod
    def from_bytes(cls, data: bytes, method: str, limit: float, expected_sha256: str,
                   **kw) -> ScopeGate:
        """Statistics read back; refused unless their sha256 is the card's."""
        from safetensors.numpy import load

        actual = hashlib.sha256(data).hexdigest()
        if actual != expected_sha256:
            raise ValueError(f"scope statistics sha256 {actual[:12]}... does not match the "
                             f"card's {expected_sha256[:12]}...")
        return cls(method, dict(load(data)), limit, **kw)


def fit_gate(method: str, train_feats: np.ndarray, train_labels: np.ndarray,
             val_feats: np.ndarray, val_logits: np.ndarray, percentile: float = 97.5,
             k: int = 10) -> ScopeGate:
    """Fit ``method`` on the training embeddings; its limit is the ``percentile`` of the
    validation images' scores (so about ``percentile`` % of in-distribution images pass)."""
    if method not in METHODS:
        raise ValueError(f"unknown scope method {method!r}; use one of {', '.join(METHODS)}")
    stats: dict[str, np.ndarray] = {}
    if method in ("mahalanobis", "combined"):
        stats.update(fit_mahalanobis(train_feats, train_labels))
    if method in ("knn", "combined"):
        stats.update(fit_knn(train_feats))
    gate = ScopeGate(method, stats, percentile=percentile, k=k)
    if method == "combined":
        raw = gate.raw_scores(val_feats, val_logits)
        for m, v in raw.items():
            stats[f"{m}_mean"] = np.array([float(np.mean(v))], np.float32)
            stats[f"{m}_std"] = np.array([float(np.std(v))], np.float32)
    val_scores = gate.score(val_feats, val_logits)
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
