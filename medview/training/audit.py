"""The shortcut audit: what a trained model relies on, measured on held-out films.

Part of every evaluation (``TrainConfig.audit``). On the test split (the validation
split when there is none) it measures:

- the AUC with the lungs hidden - the central chest box (20-85% of the height, 15-85%
  of the width) and, separately, the lung-field estimate
  (:func:`medview.imaging.lungs.lung_field`) replaced by the film's median grey. A
  model that reads the lungs falls towards 0.5 (chance); one that still separates the
  classes decides from something else (edges, markers, body size);
- the AUC with the periphery hidden (the outer 15% of each side) and with burned-in
  markers and text removed: a model that reads the lungs keeps its AUC;
- the share of decisions that flip when the same films are re-encoded, resampled,
  blurred, rotated, cropped or shown through another window
  (:data:`medview.training.robust.NUISANCE_TESTS`).

The findings are stored in the card (``reliance``) and put in words for clinicians by
:func:`medview.models.card.reliance_lines`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from medview.imaging import lungs
from medview.training import metrics as M
from medview.training.robust import NUISANCE_TESTS

#: AUC with the lungs hidden at or above this: "still decides without the lungs"
WITHOUT_LUNGS_AUC = 0.75
#: an AUC lost by hiding the periphery or removing markers beyond this is reliance on them
EDGE_LOSS = 0.02
#: a decision flip rate above this under a benign variation is reported
MAX_FLIPS = 0.02

HIDDEN_BOX = "lungs hidden (central chest box)"
HIDDEN_LUNGS = "lungs hidden (lung-field estimate)"
HIDDEN_EDGES = "periphery hidden (outer 15%)"
NO_MARKERS = "markers and text removed"


def _auc(y: np.ndarray, probs: np.ndarray, classes: list[str], positive: int | None) -> float:
    if positive is not None:
        return M.roc_auc(y == positive, probs[:, positive])
    return M.point_metrics(y, probs, classes, None, None)["auc_macro"]


def _decide(probs: np.ndarray, positive: int | None, threshold: float | None) -> np.ndarray:
    if positive is not None and threshold is not None:
        return probs[:, positive] >= threshold
    return probs.argmax(axis=1)


def _r(v: float) -> float | None:
    return None if v is None or math.isnan(v) else round(float(v), 4)


#: what a predictor given to :func:`shortcut_audit` returns for uint8 films: the
#: calibrated probabilities (N, K) and, when the trust gate is known, its in-scope
#: decision per film (else None)
Scored = tuple[np.ndarray, np.ndarray | None]


def shortcut_audit(predict: Callable[[np.ndarray], Scored], images: np.ndarray,
                   y: np.ndarray, classes: list[str], positive: int | None,
                   threshold: float | None, split: str, cancel=None,
                   films: Scored | None = None) -> dict:
    """The card's ``reliance`` section for ``images`` (uint8 (N, H, W)) with labels ``y``.
    ``predict`` scores such an array (:data:`Scored`); ``films``, when given, is its
    result for ``images`` themselves (a pass the caller already ran). With the gate's
    decisions, the section also has the share of each variation's films in scope
    (``in_scope``: the trust gate's benign-variation check, from the same passes)."""
    images = np.asarray(images, np.uint8)
    y = np.asarray(y)

    def check():
        if cancel is not None:
            cancel.raise_if_cancelled()

    base, _in = films if films is not None else predict(images)
    auc = _auc(y, base, classes, positive)
    decided = _decide(base, positive, threshold)
    estimates = [lungs.lung_field(a) for a in images]
    check()
    box = lungs.box_mask(images.shape[1:])
    edges = lungs.periphery_mask(images.shape[1:])
    variants = {
        HIDDEN_BOX: np.stack([lungs.fill_median(a, box) for a in images]),
        HIDDEN_LUNGS: np.stack([lungs.fill_median(a, est[0])
                                for a, est in zip(images, estimates, strict=True)]),
        HIDDEN_EDGES: np.stack([lungs.fill_median(a, edges) for a in images]),
        NO_MARKERS: np.stack([lungs.remove_markers(a) for a in images]),
    }
    masked = {}
    for name, arr in variants.items():
        check()
        masked[name] = _r(_auc(y, predict(arr)[0], classes, positive))
    flips = {}
    in_scope = {}
    for name, fn in NUISANCE_TESTS.items():
        check()
        changed, inside = predict(np.stack([fn(a) for a in images]))
        flips[name] = round(float((_decide(changed, positive, threshold) != decided).mean()), 4)
        if inside is not None:
            in_scope[name] = round(float(np.mean(inside)), 4)
    estimated = float(np.mean([ok for _, ok in estimates]))
    area = [float(m.mean()) for m, ok in estimates if ok]
    out = {"split": split, "n": len(images), "auc": _r(auc), "masked_auc": masked,
           "flip_rate": flips,
           "lung_estimate": {"estimated_share": round(estimated, 4),
                             "mean_area": round(float(np.mean(area)), 4) if area else None,
                             "method": "dark regions inside the central chest box, convex "
                                       "hull per lung, mirrored and dilated; the box when "
                                       "not two plausible lungs"}}
    if in_scope:
        out["in_scope"] = in_scope
    out["warnings"] = audit_warnings(out)
    return out


def audit_warnings(r: dict) -> list[str]:
    """Plain-language warnings for an audit result (empty when nothing was found)."""
    out = []
    auc = r.get("auc")
    m = r.get("masked_auc", {})
    hidden = [v for v in (m.get(HIDDEN_BOX), m.get(HIDDEN_LUNGS)) if v is not None]
    if hidden and max(hidden) >= WITHOUT_LUNGS_AUC:
        out.append(f"The model still decides without the lungs: with them hidden it still "
                   f"separates the classes (AUC {max(hidden):.2f}; 0.50 is chance). It may "
                   "be using the film's edges, markers or body size rather than the lungs.")
    if auc is not None:
        for key, what in ((HIDDEN_EDGES, "the edges of the film"),
                          (NO_MARKERS, "burned-in markers or text")):
            v = m.get(key)
            if v is not None and auc - v > EDGE_LOSS:
                out.append(f"The model relies on {what}: hiding them lowers its AUC from "
                           f"{auc:.3f} to {v:.3f}.")
    worst = {k: v for k, v in r.get("flip_rate", {}).items() if v > MAX_FLIPS}
    if worst:
        out.append("Its decision changes on more than "
                   f"{MAX_FLIPS:.0%} of films re-encoded or resized: "
                   + ", ".join(f"{k} {v:.1%}" for k, v in worst.items()) + ".")
    return out
