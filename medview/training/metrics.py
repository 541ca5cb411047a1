"""Classification metrics with bootstrap confidence intervals, calibration, thresholds.

Pure numpy. Bootstrap resamples patients (clusters) when patient ids are given, so images
of one patient never count as independent evidence.
"""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np

from medview.models.card import MAX_TEMPERATURE, MIN_TEMPERATURE


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def roc_auc(y_true: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with ties averaged); NaN if one class."""
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(score, np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    cum = np.cumsum(counts)
    ranks = (cum - (counts - 1) / 2.0)[inverse]  # 1-based ranks, ties averaged
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_curve(y_true: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate, thresholds), thresholds descending."""
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(score, np.float64)
    thr = np.r_[np.inf, np.unique(s)[::-1]]
    tpr = np.array([(s[y] >= t).mean() if y.any() else np.nan for t in thr])
    fpr = np.array([(s[~y] >= t).mean() if (~y).any() else np.nan for t in thr])
    return fpr, tpr, thr


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """ECE of the top-class confidence, equal-width bins."""
    probs = np.asarray(probs)
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(y)
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in itertools.pairwise(edges):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def calibration_curve(prob_pos: np.ndarray, y_pos: np.ndarray, bins: int = 10):
    """(mean predicted, observed frequency, count) per bin for one class."""
    edges = np.linspace(0, 1, bins + 1)
    pred, obs, cnt = [], [], []
    for lo, hi in itertools.pairwise(edges):
        m = (prob_pos >= lo) & (prob_pos < hi if hi < 1 else prob_pos <= hi)
        if m.any():
            pred.append(float(prob_pos[m].mean()))
            obs.append(float(np.asarray(y_pos)[m].mean()))
            cnt.append(int(m.sum()))
    return np.array(pred), np.array(obs), np.array(cnt)


#: The temperature search interval; a fit at either end is not a calibration.
TEMPERATURE_BOUNDS = (MIN_TEMPERATURE, MAX_TEMPERATURE)  # what a card may hold


def at_temperature_bound(t: float) -> bool:
    """Whether a fitted temperature sits at the search interval's end (the likelihood
    kept improving: a small or perfectly separated validation set)."""
    lo, hi = TEMPERATURE_BOUNDS
    return t <= lo * 1.02 or t >= hi / 1.02


def calibration_problem(logits: np.ndarray, t: float) -> str:
    """Why temperature ``t`` fitted on these validation logits is not a calibration
    (empty if it is one): it sits at the search bound, or every calibrated output is
    saturated (0/1), which is what a small or perfectly separated set produces."""
    if at_temperature_bound(t):
        return f"the fitted temperature ({t:.3g}) hit the end of its search range"
    p = softmax(np.asarray(logits, np.float64), t).max(axis=1)
    if len(p) and bool(np.all(p >= 1 - 1e-6)):
        return (f"at the fitted temperature ({t:.3g}) every validation output is saturated "
                "to 0 or 1")
    return ""


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """Temperature minimising the validation negative log-likelihood (golden section)."""
    logits = np.asarray(logits, np.float64)
    y = np.asarray(y)

    def nll(log_t: float) -> float:
        p = softmax(logits, math.exp(log_t))
        return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, 1.0))))

    lo, hi = (math.log(b) for b in TEMPERATURE_BOUNDS)
    g = (math.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = nll(a), nll(b)
    for _ in range(80):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = nll(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = nll(b)
    return float(math.exp((lo + hi) / 2))


def choose_threshold(y_pos: np.ndarray, prob_pos: np.ndarray, min_sensitivity: float) -> float:
    """The highest threshold whose sensitivity on these data is at least ``min_sensitivity``
    (so specificity is as high as that sensitivity allows)."""
    y = np.asarray(y_pos).astype(bool)
    s = np.asarray(prob_pos, np.float64)
    if not y.any():
        return 0.5
    candidates = np.unique(s[y])[::-1]
    for t in candidates:
        if (s[y] >= t).mean() >= min_sensitivity:
            # halfway to the next lower score, so the rule is not tied to one image
            below = s[s < t]
            return float((t + below.max()) / 2) if below.size else float(t)
    return float(candidates[-1])


def binary_at(y_pos: np.ndarray, prob_pos: np.ndarray, threshold: float) -> dict[str, float]:
    y = np.asarray(y_pos).astype(bool)
    pred = np.asarray(prob_pos) >= threshold
    tp = int((pred & y).sum())
    tn = int((~pred & ~y).sum())
    fp = int((pred & ~y).sum())
    fn = int((~pred & y).sum())
    sens = tp / (tp + fn) if tp + fn else float("nan")
    spec = tn / (tn + fp) if tn + fp else float("nan")
    prec = tp / (tp + fp) if tp + fp else float("nan")
    f1 = 2 * prec * sens / (prec + sens) if tp else 0.0
    return {"sensitivity": sens, "specificity": spec, "precision": prec, "f1": f1,
            "tp": tp, "tn": tn, "fp": fp, "fn": fn}


def confusion_matrix(y: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    cm = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(cm, (np.asarray(y), np.asarray(pred)), 1)
    return cm


def point_metrics(y: np.ndarray, probs: np.ndarray, classes: list[str],
                  positive: int | None, threshold: float | None) -> dict[str, float]:
    """AUC per class and macro, accuracy, macro F1, ECE; sensitivity/specificity at the
    threshold for the positive class (binary) or macro one-vs-rest at argmax."""
    y = np.asarray(y)
    out: dict[str, float] = {}
    aucs = []
    for k, name in enumerate(classes):
        a = roc_auc(y == k, probs[:, k])
        out[f"auc_{name}"] = a
        aucs.append(a)
    out["auc_macro"] = float(np.nanmean(aucs)) if not all(math.isnan(a) for a in aucs) else (
        float("nan"))
    if positive is not None and threshold is not None:
        pred = np.where(probs[:, positive] >= threshold, positive, 1 - positive)
        b = binary_at(y == positive, probs[:, positive], threshold)
        out.update(auc=out[f"auc_{classes[positive]}"], sensitivity=b["sensitivity"],
                   specificity=b["specificity"], f1=b["f1"])
    else:
        pred = probs.argmax(axis=1)
        sens, spec, f1s = [], [], []
        for k in range(len(classes)):
            b = binary_at(y == k, (pred == k).astype(float), 0.5)
            sens.append(b["sensitivity"])
            spec.append(b["specificity"])
            f1s.append(b["f1"])
        out.update(auc=out["auc_macro"], sensitivity=float(np.nanmean(sens)),
                   specificity=float(np.nanmean(spec)), f1=float(np.nanmean(f1s)))
    out["accuracy"] = float((pred == y).mean())
    out["ece"] = expected_calibration_error(probs, y)
    return out


def weighted_point_metrics(y: np.ndarray, probs: np.ndarray, classes: list[str],
                           positive: int | None, threshold: float | None,
                           weights: np.ndarray) -> dict[str, np.ndarray]:
    """:func:`point_metrics` of many resamples at once: row b of ``weights`` (B, N) says
    how many times each film is in resample b, and entry b of each returned array is
    ``point_metrics`` of the films repeated that many times (equal up to float rounding
    in the last bits; AUCs and counts exactly). A 1,000-replicate bootstrap takes
    milliseconds instead of half a second."""
    y = np.asarray(y)
    probs = np.asarray(probs, np.float64)
    w = np.asarray(weights, np.float64)
    total = w.sum(axis=1)
    out: dict[str, np.ndarray] = {}
    aucs = []
    for k, name in enumerate(classes):
        a = _weighted_auc(y == k, probs[:, k], w)
        out[f"auc_{name}"] = a
        aucs.append(a)
    with warnings.catch_warnings():  # a resample without a class: NaN, as point_metrics
        warnings.simplefilter("ignore", RuntimeWarning)
        out["auc_macro"] = np.nanmean(np.stack(aucs, axis=1), axis=1)
    if positive is not None and threshold is not None:
        pred = np.where(probs[:, positive] >= threshold, positive, 1 - positive)
        b = _weighted_binary(y == positive, probs[:, positive] >= threshold, w)
        out.update(auc=out[f"auc_{classes[positive]}"], sensitivity=b["sensitivity"],
                   specificity=b["specificity"], f1=b["f1"])
    else:
        pred = probs.argmax(axis=1)
        per = [_weighted_binary(y == k, pred == k, w) for k in range(len(classes))]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            out.update(auc=out["auc_macro"],
                       sensitivity=np.nanmean(np.stack([b["sensitivity"] for b in per], 1),
                                              axis=1),
                       specificity=np.nanmean(np.stack([b["specificity"] for b in per], 1),
                                              axis=1),
                       f1=np.nanmean(np.stack([b["f1"] for b in per], 1), axis=1))
    out["accuracy"] = w @ (pred == y).astype(np.float64) / total
    out["ece"] = _weighted_ece(probs, y, w, total)
    return out


def _weighted_auc(y: np.ndarray, score: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The Mann-Whitney AUC (ties count a half) of each weighted resample; NaN where a
    resample lacks a class. Sums of halves and whole counts: exact in float64."""
    y = np.asarray(y, bool)
    pos, neg = score[y], score[~y]
    wp, wn = w[:, y], w[:, ~y]
    n_pos, n_neg = wp.sum(axis=1), wn.sum(axis=1)
    if not (len(pos) and len(neg)):
        return np.full(len(w), np.nan)
    wins = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    u = ((wp @ wins) * wn).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg), np.nan)


def _weighted_binary(y: np.ndarray, pred: np.ndarray, w: np.ndarray) -> dict[str, np.ndarray]:
    """:func:`binary_at`'s sensitivity, specificity and F1 of each weighted resample."""
    y, pred = np.asarray(y, bool), np.asarray(pred, bool)
    tp, tn = w @ (pred & y), w @ (~pred & ~y)
    fp, fn = w @ (pred & ~y), w @ (~pred & y)
    with np.errstate(invalid="ignore", divide="ignore"):
        sens = np.where(tp + fn > 0, tp / (tp + fn), np.nan)
        spec = np.where(tn + fp > 0, tn / (tn + fp), np.nan)
        prec = np.where(tp + fp > 0, tp / (tp + fp), np.nan)
        f1 = np.where(tp > 0, 2 * prec * sens / (prec + sens), 0.0)
    return {"sensitivity": sens, "specificity": spec, "f1": f1}


def _weighted_ece(probs: np.ndarray, y: np.ndarray, w: np.ndarray, total: np.ndarray,
                  bins: int = 15) -> np.ndarray:
    """:func:`expected_calibration_error` of each weighted resample."""
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == np.asarray(y)).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = np.zeros(len(w))
    for lo, hi in itertools.pairwise(edges):
        m = ((conf > lo) & (conf <= hi)).astype(np.float64)
        if not m.any():
            continue
        n = w @ m
        with np.errstate(invalid="ignore", divide="ignore"):
            gap = np.abs(w @ (m * correct) / n - w @ (m * conf) / n)
        ece += np.where(n > 0, n / total * gap, 0.0)
    return ece


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion: never collapses to a point, even at
    0/n or n/n (12 of 12 correct gives 0.76-1.00, not 1.00-1.00)."""
    if n <= 0:
        return float("nan"), float("nan")
    p = successes / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, centre - half), min(1.0, centre + half)


def auc_interval(auc: float, n_pos: int, n_neg: int, z: float = 1.96) -> tuple[float, float]:
    """A score-type 95% interval for an AUC (Newcombe 2006, method 5): the values of
    theta with ``(auc - theta)^2 <= z^2 V(theta)``, where V is the Hanley-McNeil variance
    with N* = (n_pos + n_neg)/2 - 1. Unlike the bootstrap and Hanley-McNeil at the
    estimate, it does not collapse to 1.0-1.0 on a small, perfectly separated set."""
    if not (n_pos and n_neg) or not math.isfinite(auc):
        return float("nan"), float("nan")
    n_star = (n_pos + n_neg) / 2 - 1

    def excess(theta: float) -> float:
        v = theta * (1 - theta) / (n_pos * n_neg) * (
            1 + (n_star - 1) * ((1 - theta) / (2 - theta) + theta / (1 + theta)))
        return (auc - theta) ** 2 - z * z * max(v, 0.0)

    def solve(lo: float, hi: float) -> float:  # excess(lo) and excess(hi) differ in sign
        for _ in range(60):
            mid = (lo + hi) / 2
            if (excess(mid) > 0) == (excess(lo) > 0):
                lo = mid
            else:
                hi = mid
        return (lo + hi) / 2

    lower = 0.0 if excess(0.0) <= 0 else solve(0.0, auc)
    upper = 1.0 if excess(1.0) <= 0 else solve(auc, 1.0)
    return lower, upper


def _widen(ci: list, other: tuple[float, float]) -> list:
    """The union of two intervals (either may be missing)."""
    lo, hi = other
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return ci
    if ci[0] is None:
        return [lo, hi]
    return [min(ci[0], lo), max(ci[1], hi)]


def evaluate(y: np.ndarray, probs: np.ndarray, classes: list[str], positive: int | None,
             threshold: float | None, groups: np.ndarray | None = None, n_boot: int = 1000,
             seed: int = 0) -> dict:
    """Point metrics with 95% CIs: the patient-level percentile bootstrap (when
    ``groups``), widened to include the Wilson interval for proportions (sensitivity,
    specificity, accuracy) and the Newcombe score interval for AUCs, so that neither
    clustering by patient nor a small set makes an interval too narrow."""
    y = np.asarray(y)
    probs = np.asarray(probs)
    point = point_metrics(y, probs, classes, positive, threshold)
    rng = np.random.default_rng(seed)
    if groups is not None:
        uniq, inv = np.unique(np.asarray(groups), return_inverse=True)
        members = [np.flatnonzero(inv == g) for g in range(len(uniq))]
    else:
        members = [np.array([i]) for i in range(len(y))]
    # each replicate draws patients with replacement (the same draws, in the same order,
    # as one call per replicate); a film's weight is how often its patient was drawn
    group_of = np.empty(len(y), np.int64)
    for g, m in enumerate(members):
        group_of[m] = g
    weights = np.empty((n_boot, len(y)), np.float64)
    for b in range(n_boot):
        drawn = np.bincount(rng.integers(0, len(members), len(members)),
                            minlength=len(members))
        weights[b] = drawn[group_of]
    samples = weighted_point_metrics(y, probs, classes, positive, threshold, weights)
    result = {"n": len(y), "n_patients": len(members),
              "counts": {c: int((y == k).sum()) for k, c in enumerate(classes)}}
    pred = (np.where(probs[:, positive] >= threshold, positive, 1 - positive)
            if positive is not None and threshold is not None else probs.argmax(axis=1))
    exact: dict[str, tuple[float, float]] = {
        "accuracy": wilson_interval(int((pred == y).sum()), len(y))}
    per_class = {}
    for k, c in enumerate(classes):
        per_class[c] = auc_interval(point[f"auc_{c}"], int((y == k).sum()),
                                    int((y != k).sum()))
        exact[f"auc_{c}"] = per_class[c]
    if positive is not None and threshold is not None:
        pos = y == positive
        exact["sensitivity"] = wilson_interval(int((pred[pos] == positive).sum()),
                                               int(pos.sum()))
        exact["specificity"] = wilson_interval(int((pred[~pos] != positive).sum()),
                                               int((~pos).sum()))
        exact["auc"] = per_class[classes[positive]]
    finite = [v for v in per_class.values() if all(math.isfinite(b) for b in v)]
    if finite:
        macro = (float(np.mean([v[0] for v in finite])), float(np.mean([v[1] for v in finite])))
        exact["auc_macro"] = macro
        exact.setdefault("auc", macro)
    for k, v in point.items():
        arr = np.asarray(samples[k], np.float64)
        arr = arr[np.isfinite(arr)]
        ci = [float(np.percentile(arr, 2.5)), float(np.percentile(arr, 97.5))] if arr.size else (
            [None, None])
        if k in exact:
            ci = _widen(ci, exact[k])
        result[k] = {"value": None if math.isnan(v) else round(float(v), 4),
                     "ci95": [None if c is None else round(c, 4) for c in ci]}
    result["ci_method"] = ("patient-level percentile bootstrap, widened to the Wilson "
                           "interval (proportions) and the Newcombe score interval (AUC)")
    result["confusion_matrix"] = confusion_matrix(y, pred, len(classes)).tolist()
    return result
