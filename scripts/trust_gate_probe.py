"""Measure the out-of-distribution scores of :mod:`medview.inference.scope` on a model's
own data and on offline out-of-distribution proxies, per category.

    python scripts/trust_gate_probe.py DEV_FOLDER [--model cxr-pneumonia] [--out FILE.json]

DEV_FOLDER holds ``train/``, ``val/``, ``test/`` with one subfolder per class (the
development split the bundled model was trained on). Fit: every 3rd training image;
limit: the validation split; in-distribution: the test split. Out-of-distribution
proxies, all from this machine: CT/MR/US/NM/PET/multi-frame DICOMs shipped with pydicom
and pydicom-data, scikit-image sample photographs, synthetic gradients/noise/text,
and transformed test films (rotated, inverted, half-width crops that look like laterals,
zoomed out with a border as a stand-in for adult proportions). Prints one table per
method and writes everything to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from medview.core.volume import ImageVolume
from medview.inference import scope


def embed(predictor, volumes: list[tuple[ImageVolume, int]], batch: int = 32):
    """(penultimate features, logits) of each (volume, slice), through the same input
    pipeline as a prediction; one forward gives both."""
    import torch

    model = predictor.model
    feats, logits = [], []
    for i in range(0, len(volumes), batch):
        x = np.stack([predictor.prepare(v, k).tensor for v, k in volumes[i:i + batch]])
        with torch.inference_mode():
            f = model.forward_head(model.forward_features(torch.from_numpy(x)),
                                   pre_logits=True)
            z = model.get_classifier()(f)
        feats.append(f.float().numpy())
        logits.append(z.float().numpy())
    return np.concatenate(feats), np.concatenate(logits)


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


def grey(arr: np.ndarray) -> ImageVolume:
    arr = np.asarray(arr)
    if arr.ndim == 3:
        return ImageVolume(arr[np.newaxis].astype(np.uint8), photometric="RGB")
    return ImageVolume(arr[np.newaxis].astype(np.uint8))


def proxies(test_paths: list[str]) -> dict[str, list[tuple[ImageVolume, int]]]:
    from PIL import Image

    out: dict[str, list] = {}
    # DICOMs of other modalities shipped with pydicom and pydicom-data
    from tests.testdata import local_files

    for path in local_files():
        v = load_first(path)
        if v is None or v.modality in ("CR", "DX", "OT", "SC") or min(v.rows, v.cols) < 32:
            continue
        key = "multi-frame" if v.multiframe else v.modality
        out.setdefault(key, []).append((v, v.default_index))
    # photographs
    import skimage.data as skd

    folder = os.path.dirname(skd.__file__)
    for name in sorted(os.listdir(folder)):
        if name.endswith((".png", ".jpg")):
            img = Image.open(os.path.join(folder, name)).convert("RGB")
            out.setdefault("photo", []).append((grey(np.asarray(img)), 0))
    # synthetic graphics
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:256, :256]
    synth = [xx.astype(np.uint8), yy.astype(np.uint8), ((xx + yy) // 2).astype(np.uint8),
             np.full((256, 256), 128, np.uint8)]
    synth += [rng.integers(0, 256, (256, 256)).astype(np.uint8) for _ in range(8)]
    synth += [(rng.random((256, 256)) > 0.5).astype(np.uint8) * 255 for _ in range(4)]
    for k in range(8):
        img = Image.new("L", (256, 256), 255 if k % 2 else 0)
        from PIL import ImageDraw

        d = ImageDraw.Draw(img)
        for j in range(12):
            d.text((10, 10 + 20 * j), f"Report line {j} {k}", fill=0 if k % 2 else 255)
        synth.append(np.asarray(img))
    out["synthetic"] = [(grey(a), 0) for a in synth]
    # transformed chest films from the test split
    films = [load_first(p) for p in test_paths[::6]]
    films = [f for f in films if f is not None]
    for key, fn in (
        ("rotated 90", lambda a: np.rot90(a).copy()),
        ("inverted", lambda a: 255 - a),
        ("lateral-like crop", lambda a: a[:, : a.shape[1] // 2].copy()),
        ("zoomed out (adult proxy)", lambda a: np.pad(
            np.asarray(Image.fromarray(a).resize((a.shape[1] * 2 // 3, a.shape[0] * 2 // 3))),
            ((a.shape[0] // 6,) * 2, (a.shape[1] // 6,) * 2), mode="constant",
            constant_values=int(np.median(a[:8])))),
    ):
        vols = []
        for f in films:
            from medview.imaging.model_input import display_grey

            vols.append((grey(fn(display_grey(f, 0))), 0))
        out[key] = vols
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("dev")
    ap.add_argument("--model", default="cxr-pneumonia")
    ap.add_argument("--out")
    ap.add_argument("--percentile", type=float, default=97.5)
    args = ap.parse_args(argv)

    from medview.inference.predictor import Predictor
    from medview.models.registry import discover_models

    t0 = time.time()
    pred = Predictor(discover_models().get(args.model), "cpu")
    sets = {}
    for split, every in (("train", 3), ("val", 1), ("test", 1)):
        paths, labels = folder_images(os.path.join(args.dev, split), every)
        vols = [(load_first(p), 0) for p in paths]
        sets[split] = (*embed(pred, vols), np.array(labels), paths)
        print(f"{split}: {len(paths)} images embedded ({time.time() - t0:.0f} s)", flush=True)
    ood = {k: embed(pred, v) for k, v in proxies(sets["test"][3]).items() if v}
    print(f"proxies: {', '.join(f'{k} {len(v[0])}' for k, v in ood.items())}", flush=True)
    report = {"model": args.model, "percentile": args.percentile, "methods": {}}
    tf, _tl, ty, _ = sets["train"]
    vf, vl, _, _ = sets["val"]
    sf, sl, sy, _ = sets["test"]
    for method in scope.METHODS:
        gate = scope.fit_gate(method, tf, ty, vf, vl, args.percentile)
        s_in = gate.score(sf, sl)
        rows = {"pediatric test in scope": float(np.mean(s_in <= gate.limit))}
        # AUC on the in-scope test images (must not drop)
        from medview.training.metrics import roc_auc

        p = np.exp(sl - sl.max(1, keepdims=True))
        p = p[:, 1] / p.sum(1)
        keep = s_in <= gate.limit
        rows["test AUC all / in scope"] = [round(float(roc_auc(sy == 1, p)), 4),
                                           round(float(roc_auc(sy[keep] == 1, p[keep])), 4)]
        cats = {}
        for k, (f, lg) in ood.items():
            s_out = gate.score(f, lg)
            cats[k] = {"n": len(s_out), "withheld": round(float(np.mean(s_out > gate.limit)), 3),
                       "auroc": round(scope.auroc(s_in, s_out), 3),
                       "fpr@95tpr": round(scope.fpr_at_tpr(s_in, s_out), 3)}
        everything = np.concatenate([gate.score(f, lg) for k, (f, lg) in ood.items()
                                     if k != "zoomed out (adult proxy)"])
        rows["all non-chest/transformed withheld"] = round(float(np.mean(
            everything > gate.limit)), 3)
        report["methods"][method] = {"limit": gate.limit,
                                     "val pass rate": gate.in_distribution_pass_rate,
                                     **rows, "categories": cats}
        print(f"\n{method}: limit {gate.limit:.4g}; " + "; ".join(
            f"{k} {v}" for k, v in rows.items()))
        for k, c in cats.items():
            print(f"  {k:28s} n={c['n']:4d} withheld {c['withheld']:.3f} AUROC "
                  f"{c['auroc']:.3f} FPR@95TPR {c['fpr@95tpr']:.3f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
