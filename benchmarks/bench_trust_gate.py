"""Trust gate: out-of-distribution benchmark and cost (part of ``make bench``).

In-distribution: the test split of the development data the bundled model was trained
on (``MEDVIEW_DEV_DATA``, default ``../shared/datasets/pediatric-cxr``; that part is
skipped with a note when absent). Out of distribution, all from this machine: the CT,
MR, US, NM, SEG and multi-frame DICOMs shipped with pydicom and pydicom-data,
scikit-image's sample photographs, synthetic graphics, and test films rotated,
inverted, cropped to lateral-like proportions or zoomed out (adult proxy); benign
variations of the same films (brightness, gamma, JPEG, crop, upscale, 5 degree turn)
should stay in scope. Per category: withheld share, AUROC and FPR at 95% TPR.

Cost: a prediction with the gate (one forward giving embedding and stage statistics,
plus the scoring) against the bare forward ``model(x)`` of the same model, same run.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from medview.core.volume import ImageVolume
from medview.inference import scope

DEFAULT_DEV = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "shared", "datasets", "pediatric-cxr")
NON_CHEST = ("CT", "MR", "US", "NM", "SEG", "multi-frame", "photo", "synthetic")


def dev_folder() -> str | None:
    path = os.environ.get("MEDVIEW_DEV_DATA", DEFAULT_DEV)
    return path if os.path.isdir(os.path.join(path, "test")) else None


def folder_images(root: str, every: int = 1) -> tuple[list[str], list[int]]:
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    paths, labels = [], []
    for k, c in enumerate(classes):
        names = sorted(os.listdir(os.path.join(root, c)))[::every]
        paths += [os.path.join(root, c, n) for n in names]
        labels += [k] * len(names)
    return paths, labels


def load_first(path: str) -> ImageVolume | None:
    from medview.io import load

    vols = load([path]).volumes
    return vols[0] if vols else None


def grey_volume(arr: np.ndarray) -> ImageVolume:
    arr = np.asarray(arr, np.uint8)
    if arr.ndim == 3:
        return ImageVolume(arr[np.newaxis], photometric="RGB")
    return ImageVolume(arr[np.newaxis])


def embed(pred, tap, items: list[tuple[ImageVolume, int]], batch: int = 32
          ) -> dict[str, np.ndarray]:
    """Features of each (volume, slice) through the prediction pipeline (one forward)."""
    import torch

    parts = []
    for i in range(0, len(items), batch):
        x = np.stack([pred.prepare(v, k).tensor for v, k in items[i:i + batch]])
        parts.append(tap.forward(pred.model, torch.from_numpy(x)))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def non_chest_sets() -> dict[str, list]:
    """Out-of-distribution inputs from this machine: the non-radiograph DICOMs shipped
    with pydicom and pydicom-data (by modality, multi-frame apart), scikit-image's
    photographs and synthetic graphics; name -> [(volume, slice)]."""
    import skimage.data as skd
    from PIL import Image

    from medview.training import oodcheck
    from tests.testdata import local_files

    out: dict[str, list] = {}
    for path in local_files():
        v = load_first(path)
        if v is None or v.modality in ("CR", "DX", "OT", "SC") or min(v.rows, v.cols) < 32:
            continue
        out.setdefault("multi-frame" if v.multiframe else v.modality, []).append(
            (v, v.default_index))
    folder = os.path.dirname(skd.__file__)
    for name in sorted(os.listdir(folder)):
        if name.endswith((".png", ".jpg")):
            img = Image.open(os.path.join(folder, name)).convert("RGB")
            out.setdefault("photo", []).append((grey_volume(np.asarray(img)), 0))
    out["synthetic"] = [(grey_volume(a), 0) for a in oodcheck.synthetic_images()]
    return out


def proxy_sets(test_paths: list[str], every: int = 6) -> tuple[dict, dict]:
    """(out-of-distribution sets, benign sets): name -> [(volume, slice)]."""
    from medview.imaging.model_input import display_grey
    from medview.training import oodcheck

    out = non_chest_sets()
    films = [f for f in (load_first(p) for p in test_paths[::every]) if f is not None]
    shown = [display_grey(f, 0) for f in films]
    for key, fn in oodcheck.OUT_TRANSFORMS.items():
        out[key] = [(grey_volume(fn(a)), 0) for a in shown]
    benign = {key: [(grey_volume(fn(a)), 0) for a in shown]
              for key, fn in oodcheck.BENIGN_TRANSFORMS.items()}
    return out, benign


def dev_features(pred, tap, dev: str, train_every: int = 1) -> dict:
    """Features, labels and paths of the dev split (train every ``train_every``-th)."""
    sets = {}
    for split, every in (("train", train_every), ("val", 1), ("test", 1)):
        paths, labels = folder_images(os.path.join(dev, split), every)
        items = [(load_first(p), 0) for p in paths]
        sets[split] = (embed(pred, tap, items), np.array(labels), paths)
    return sets


def benchmark(gate: scope.ScopeGate, test: dict, test_y: np.ndarray, test_probs: np.ndarray,
              ood: dict, benign: dict, positive: int = 1) -> dict:
    """The gate's numbers per category (see the module docstring)."""
    from medview.training.metrics import roc_auc

    s_in = gate.score(test)
    keep = s_in <= gate.limit
    report = {"internal_test": {"n": len(s_in), "in_scope": round(float(keep.mean()), 4)}}
    if test_probs is not None:  # None: the folder's classes are not the model's
        yt = test_y == positive
        report["internal_test"].update(
            auc_all=round(float(roc_auc(yt, test_probs[:, positive])), 4),
            auc_in_scope=round(float(roc_auc(yt[keep], test_probs[keep, positive])), 4))
    cats = {}
    for name, feats in ood.items():
        s = gate.score(feats)
        cats[name] = {"n": len(s), "withheld": round(float(np.mean(~(s <= gate.limit))), 4),
                      "auroc": round(scope.auroc(s_in, s), 4),
                      "fpr_at_95_tpr": round(scope.fpr_at_tpr(s_in, s), 4)}
    report["ood_benchmark"] = cats
    everything = [gate.score(f) for k, f in ood.items() if "adult" not in k]
    allout = np.concatenate(everything)
    report["ood_all_but_adult_proxy_withheld"] = round(float(np.mean(~(allout <= gate.limit))),
                                                       4)
    report["benign_variations"] = {
        name: {"n": len(gate.score(f)),
               "in_scope": round(float(np.mean(gate.score(f) <= gate.limit)), 4)}
        for name, f in benign.items()}
    return report


def gate_cost(pred, repeats: int = 30) -> list[tuple]:
    """Median time of one image: bare ``model(x)`` vs forward with features + gate score."""
    import torch

    batch = pred.prepare(grey_volume(np.full((256, 256), 100, np.uint8)), 0).tensor[np.newaxis]

    def bare():  # the plain forward a prediction without the gate would run
        with torch.inference_mode():
            pred.model(torch.from_numpy(batch)).numpy()

    def gated():  # what a prediction runs: one forward with the features and the score
        pred.gate_score(pred.forward(batch))

    for fn in (bare, gated):
        fn()
    times = {"bare": [], "gated": []}
    for _ in range(repeats):  # interleaved, so drift hits both alike
        for name, fn in (("bare", bare), ("gated", gated)):
            t = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t) * 1000)
    b, g = np.median(times["bare"]), np.median(times["gated"])
    from medview.io import load
    from medview.io.samples import sample_path

    film = load([sample_path("cr-chest")]).volumes[0]
    whole = []
    for _ in range(max(5, repeats // 6)):
        t = time.perf_counter()
        pred.predict(film, 0)
        whole.append((time.perf_counter() - t) * 1000)
    w = float(np.median(whole))
    return [("bare forward model(x) -> logits, 1 image", f"{b:.1f} ms", "baseline", ""),
            ("forward + trust gate, 1 image", f"{g:.1f} ms",
             f"{g / b:.3f}x (target <= 1.05x)", "PASS" if g / b <= 1.05 else "FAIL"),
            (f"whole prediction, sample CR film {film.rows}x{film.cols}", f"{w:.1f} ms",
             f"gate = {100 * (g - b) / w:.1f}% of it", "")]


def run() -> list[tuple]:
    from medview.inference.predictor import Predictor
    from medview.models.registry import discover_models

    pred = Predictor(discover_models().get("cxr-pneumonia"), "cpu")
    rows = gate_cost(pred)
    dev = dev_folder()
    if dev is None:
        rows.append(("OOD benchmark", "skipped", "no development data "
                     "(set MEDVIEW_DEV_DATA)", ""))
        return rows
    test_paths, test_y = folder_images(os.path.join(dev, "test"))
    test = embed(pred, pred.tap, [(load_first(p), 0) for p in test_paths])
    probs = pred.probabilities(test[scope.LOGITS])
    ood_items, benign_items = proxy_sets(test_paths)
    ood = {k: embed(pred, pred.tap, v) for k, v in ood_items.items() if v}
    benign = {k: embed(pred, pred.tap, v) for k, v in benign_items.items()}
    rep = benchmark(pred.gate, test, np.array(test_y), probs, ood, benign)
    it = rep["internal_test"]
    rows.append(("pediatric test films in scope", f"{it['in_scope']:.3f} (n={it['n']})",
                 "target >= 0.95", "PASS" if it["in_scope"] >= 0.95 else "FAIL"))
    rows.append(("test AUC all / in scope", f"{it['auc_all']:.4f} / {it['auc_in_scope']:.4f}",
                 "in scope not lower", "PASS" if it["auc_in_scope"] >= it["auc_all"] - 1e-4
                 else "FAIL"))
    allw = rep["ood_all_but_adult_proxy_withheld"]
    rows.append(("OOD withheld (all but adult proxy)", f"{allw:.3f}", "target >= 0.99",
                  "PASS" if allw >= 0.99 else "FAIL"))
    for k, c in rep["ood_benchmark"].items():
        rows.append((f"  {k} withheld (n={c['n']})", f"{c['withheld']:.2f}",
                     f"AUROC {c['auroc']:.3f}, FPR@95%TPR {c['fpr_at_95_tpr']:.3f}", ""))
    for k, c in rep["benign_variations"].items():
        rows.append((f"  benign: {k} in scope", f"{c['in_scope']:.2f}", "should stay high", ""))
    return rows


if __name__ == "__main__":
    from benchmarks.common import print_table

    print_table("Trust gate (cxr-pneumonia, CPU)", run())
