"""Robust to how a film was made, right for the right reasons: the bundled models against
their previous versions, in one run (part of ``make bench``; ``python
benchmarks/bench_robustness.py [--every K]`` alone).

Films: the test split of the development data (``MEDVIEW_DEV_DATA``, default
``../shared/datasets/pediatric-cxr``; skipped with a note when absent). Every variation
is written as a real file (JPEG at quality 30/50/70, PNG resampled 0.5x and 2x, blurred,
rotated, cropped; 12-bit DICOM without window tags; 12-bit MONOCHROME1 DICOM) and read
back through ``medview.io``, so the numbers are what the app does with such a file.

Per model version it reports: the share in scope (trust gate, content part) for the
unmodified films and each benign variation; the share withheld for every
out-of-distribution category (pydicom's CT/MR/US/NM/SEG/multi-frame files, photographs,
synthetic graphics, films rotated 90 degrees, inverted, cropped to lateral-like
proportions, zoomed out) and for adult proxies (zoomed-out films) in every encoding;
the share of decisions that flip under each benign variation; test AUC and ECE; the AUC
with the central chest, the estimated lung fields, the periphery or all but a 10% frame
replaced by the film's median grey.

The previous models are those of git revision ``MEDVIEW_BASELINE_REF`` (default: the
last commit before the retraining), extracted with ``git archive`` into a temporary
folder; ``MEDVIEW_BASELINE_MODELS`` may name a folder holding them instead.
"""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.bench_trust_gate import DEFAULT_DEV, grey_volume, load_first, non_chest_sets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: the last commit whose bundled models predate the robust recipe
BASELINE_REF = "bed5564"
MODELS = ("cxr-pneumonia", "cxr-pneumonia-type")
TARGET_IN_SCOPE, TARGET_IN_SCOPE_PLAIN, TARGET_WITHHELD = 0.95, 0.97, 0.99
TARGET_FLIPS, TARGET_AUC, TARGET_ECE, TARGET_MASKED = 0.01, 0.99, 0.02, 0.75


def dev_folder() -> str | None:
    path = os.environ.get("MEDVIEW_DEV_DATA", DEFAULT_DEV)
    return path if os.path.isfile(os.path.join(path, "manifest.csv")) else None


def test_films(dev: str, every: int) -> list[dict]:
    with open(os.path.join(dev, "manifest.csv"), newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "test"]
    rows.sort(key=lambda r: r["path"])
    return rows[::every]


# ----------------------------------------------------------------------------- files
def _png(a: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue()


def _jpeg(a: np.ndarray, q: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=q)
    return buf.getvalue()


def _dicom(a: np.ndarray, monochrome1: bool) -> bytes:
    """A 12-bit CR film of a chest AP, age 3, without window tags."""
    from pydicom.uid import generate_uid

    from tests.orthanc import image_dataset

    v = np.rint(a.astype(np.float64) * 4095.0 / 255.0).astype(np.uint16)
    ds = image_dataset(4095 - v if monochrome1 else v, study_uid=generate_uid(),
                       series_uid=generate_uid(), modality="CR", patient_id="BENCH",
                       patient_name="Bench^Film", body_part="CHEST", view="AP", age="003Y")
    if monochrome1:
        ds.PhotometricInterpretation = "MONOCHROME1"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def benign_files() -> dict:
    """name -> (grey film -> file bytes, suffix)."""
    from medview.training import robust

    return {
        "JPEG quality 30": (lambda a: _jpeg(a, 30), ".jpg"),
        "JPEG quality 50": (lambda a: _jpeg(a, 50), ".jpg"),
        "JPEG quality 70": (lambda a: _jpeg(a, 70), ".jpg"),
        "resampled 0.5x": (lambda a: _png(_resize(a, 0.5)), ".png"),
        "resampled 2x": (lambda a: _png(_resize(a, 2.0)), ".png"),
        "blurred (1 px)": (lambda a: _png(robust.blur(a, 1.0)), ".png"),
        "rotated +10 degrees": (lambda a: _png(robust.rotate(a, 10)), ".png"),
        "rotated -10 degrees": (lambda a: _png(robust.rotate(a, -10)), ".png"),
        "cropped 10% per side": (lambda a: _png(_crop(a, 0.1)), ".png"),
        "12-bit DICOM without window": (lambda a: _dicom(a, False), ".dcm"),
        "MONOCHROME1 DICOM": (lambda a: _dicom(a, True), ".dcm"),
    }


def _resize(a: np.ndarray, f: float) -> np.ndarray:
    from medview.imaging.model_input import resize_grey

    return resize_grey(a, (int(a.shape[0] * f), int(a.shape[1] * f)))


def _crop(a: np.ndarray, f: float) -> np.ndarray:
    h, w = a.shape
    return np.ascontiguousarray(a[int(h * f):h - int(h * f), int(w * f):w - int(w * f)])


def adult_files() -> dict:
    """Adult proxies (zoomed-out films) in several encodings: all must be withheld."""
    from medview.training.oodcheck import _zoom_out

    return {
        "adult proxy as PNG": (lambda a: _png(_zoom_out(a)), ".png"),
        "adult proxy as JPEG q70": (lambda a: _jpeg(_zoom_out(a), 70), ".jpg"),
        "adult proxy as JPEG q30": (lambda a: _jpeg(_zoom_out(a), 30), ".jpg"),
        "adult proxy resampled 0.5x": (lambda a: _png(_resize(_zoom_out(a), 0.5)), ".png"),
        "adult proxy as 12-bit DICOM": (lambda a: _dicom(_zoom_out(a), False), ".dcm"),
    }


def write_sets(films: list[np.ndarray], folder: str, makers: dict) -> dict[str, list[str]]:
    from medview.core.safeio import atomic_write_bytes

    out = {}
    for name, (fn, suffix) in makers.items():
        d = os.path.join(folder, name.replace(" ", "_").replace("%", "pc"))
        os.makedirs(d, exist_ok=True)
        out[name] = []
        for k, a in enumerate(films):
            path = os.path.join(d, f"{k:04d}{suffix}")
            atomic_write_bytes(path, fn(a))
            out[name].append(path)
    return out


# ----------------------------------------------------------------------------- scoring
def score(pred, items: list, batch: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities (N, K), in scope (N,) by the content gate) of (volume, slice) items."""
    from medview.inference import scope

    probs, ins = [], []
    for i in range(0, len(items), batch):
        x = np.stack([pred.prepare(v, k).tensor for v, k in items[i:i + batch]])
        feats = pred.forward(x, batch_size=len(x))
        probs.append(pred.probabilities(feats[scope.LOGITS]))
        s = pred.gate_score(feats)
        ins.append(np.ones(len(x), bool) if s is None else s <= pred.gate.limit)
    return np.concatenate(probs), np.concatenate(ins)


def files_items(paths: list[str]) -> list:
    vols = [load_first(p) for p in paths]
    if any(v is None for v in vols):
        raise RuntimeError("a benchmark file could not be read")
    return [(v, v.default_index) for v in vols]


def binary_view(probs: np.ndarray, classes: list[str]) -> np.ndarray:
    """Probability of pneumonia (any kind) for either bundled model."""
    names = [c.lower() for c in classes]
    if "normal" in names:
        return 1.0 - probs[:, names.index("normal")]
    return probs[:, names.index("pneumonia")]


def decisions(pred, probs: np.ndarray) -> np.ndarray:
    if pred.positive is not None and pred.threshold is not None:
        return probs[:, pred.positive] >= pred.threshold
    return probs.argmax(axis=1)


def measure(card, data: dict) -> dict:
    from medview.imaging import lungs
    from medview.inference.predictor import Predictor
    from medview.training import metrics as M

    pred = Predictor(card, "cpu")
    y = data["y_pneumonia"]
    base_p, base_in = score(pred, data["plain"])
    pp = binary_view(base_p, card.classes)
    out = {"in_scope": {"unmodified": float(base_in.mean())}, "flips": {}, "withheld": {},
           "auc": M.roc_auc(y, pp)}
    yk = np.array([card.classes.index(c) if c in card.classes else -1 for c in (
        data["type_names"] if len(card.classes) == 3 else data["binary_names"])])
    out["ece"] = M.expected_calibration_error(base_p, yk)
    if len(card.classes) == 3:
        viral, bact = card.classes.index("viral"), card.classes.index("bacterial")
        sick = yk != card.classes.index("normal")
        out["auc_bacterial_vs_viral"] = M.roc_auc(
            yk[sick] == bact, base_p[sick, bact] / (base_p[sick, bact] + base_p[sick, viral]))
    d0 = decisions(pred, base_p)
    for name, items in data["benign"].items():
        p, ins = score(pred, items)
        out["in_scope"][name] = float(ins.mean())
        out["flips"][name] = float((decisions(pred, p) != d0).mean())
    for name, items in {**data["ood"], **data["adult"]}.items():
        _, ins = score(pred, items)
        out["withheld"][name] = float((~ins).mean())
    films = data["films"]
    box = lungs.box_mask(films[0].shape)
    frame = ~lungs.box_mask(films[0].shape, (0.1, 0.9, 0.08, 0.92))
    masks = {
        "central chest hidden (20-85% x 15-85%)": lambda a: lungs.fill_median(a, box),
        "lung fields hidden (estimate)": lambda a: lungs.fill_median(a, lungs.lung_field(a)[0]),
        "all but a 10% frame hidden": lambda a: lungs.fill_median(a, ~frame),
        "periphery hidden (outer 15%)": lambda a: lungs.fill_median(
            a, lungs.periphery_mask(a.shape)),
    }
    out["masked_auc"] = {}
    for name, fn in masks.items():
        p, _ = score(pred, [(grey_volume(fn(a)), 0) for a in films])
        out["masked_auc"][name] = M.roc_auc(y, binary_view(p, card.classes))
    return out


def gate_parts(card, data: dict, every: int = 4) -> dict[str, dict[str, float]]:
    """Which part of the gate withholds each benign variation: per variation, the share
    of films (every ``every``-th) each part (feature stage or input thumbnail) puts over
    the limit on its own (parts are normalised by their validation mean and spread; the
    gate takes the largest)."""
    import torch

    from medview.inference.predictor import Predictor

    pred = Predictor(card, "cpu", backend="torch")
    gate = pred.gate
    out: dict[str, dict[str, float]] = {}
    for name, every_item in {"unmodified": data["plain"], **data["benign"]}.items():
        items = every_item[::every]
        feats: dict[str, list] = {}
        for i in range(0, len(items), 32):
            x = np.stack([pred.prepare(v, k).tensor for v, k in items[i:i + 32]])
            part = pred.tap.forward(pred.model, torch.from_numpy(x))
            for k, v in part.items():
                feats.setdefault(k, []).append(v)
        parts = gate.normalised_parts({k: np.concatenate(v) for k, v in feats.items()})
        out[name] = {m: float(np.mean(z > gate.limit)) for m, z in parts.items()}
    return out


def prepare_data(dev: str, every: int, tmp: str) -> dict:
    from medview.imaging.model_input import display_grey
    from medview.training import oodcheck

    rows = test_films(dev, every)
    vols = [load_first(os.path.join(dev, r["path"])) for r in rows]
    films = [display_grey(v, 0) for v in vols]
    data = {"films": films, "plain": [(v, 0) for v in vols],
            "y_pneumonia": np.array([r["label"] == "PNEUMONIA" for r in rows]),
            "binary_names": [r["label"] for r in rows],
            "type_names": [{"normal": "normal", "bacteria": "bacterial", "virus": "viral"}[
                r["subtype"]] for r in rows]}
    data["benign"] = {k: files_items(v) for k, v in write_sets(
        films, os.path.join(tmp, "benign"), benign_files()).items()}
    sample = films[::max(1, len(films) // 100)][:100]
    data["adult"] = {k: files_items(v) for k, v in write_sets(
        sample, os.path.join(tmp, "adult"), adult_files()).items()}
    ood = non_chest_sets()
    for key, fn in oodcheck.OUT_TRANSFORMS.items():
        if "adult" not in key:
            ood[key] = [(grey_volume(fn(a)), 0) for a in sample]
    data["ood"] = ood
    return data


def baseline_folder(tmp: str) -> str | None:
    given = os.environ.get("MEDVIEW_BASELINE_MODELS")
    if given:
        return given
    ref = os.environ.get("MEDVIEW_BASELINE_REF", BASELINE_REF)
    out = os.path.join(tmp, "baseline")
    os.makedirs(out, exist_ok=True)
    try:
        tar = subprocess.run(["git", "-C", ROOT, "archive", ref, "models"], check=True,
                             capture_output=True, timeout=300).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        tf.extractall(out, filter="data")
    return os.path.join(out, "models")


def _fmt(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.3f}"


def rows_for(model: str, new: dict, old: dict | None) -> list[tuple]:
    def row(label, key_fn, target, ok):
        nv = key_fn(new)
        ov = key_fn(old) if old is not None else None
        return (f"{model}: {label}", _fmt(nv), f"previous {_fmt(ov)}; target {target}",
                "PASS" if ok(nv) else "FAIL")

    rows = [row("in scope, unmodified test films", lambda r: r["in_scope"]["unmodified"],
                f">= {TARGET_IN_SCOPE_PLAIN}", lambda v: v >= TARGET_IN_SCOPE_PLAIN)]
    for k in new["in_scope"]:
        if k != "unmodified":
            rows.append(row(f"in scope, {k}", lambda r, k=k: r["in_scope"][k],
                            f">= {TARGET_IN_SCOPE}", lambda v: v >= TARGET_IN_SCOPE))
    for k in new["withheld"]:
        rows.append(row(f"withheld, {k}", lambda r, k=k: r["withheld"][k],
                        f">= {TARGET_WITHHELD}", lambda v: v >= TARGET_WITHHELD))
    for k in new["flips"]:
        rows.append(row(f"decision flips, {k}", lambda r, k=k: r["flips"][k],
                        f"<= {TARGET_FLIPS}", lambda v: v <= TARGET_FLIPS))
    rows.append(row("test AUC (pneumonia vs normal)", lambda r: r["auc"], f">= {TARGET_AUC}",
                    lambda v: v >= TARGET_AUC))
    if "auc_bacterial_vs_viral" in new:
        rows.append(row("test AUC bacterial vs viral (pneumonia films)",
                        lambda r: r["auc_bacterial_vs_viral"], "reported", lambda v: True))
    rows.append(row("test ECE", lambda r: r["ece"], f"<= {TARGET_ECE}",
                    lambda v: v <= TARGET_ECE))
    full = new["auc"]
    for k in new["masked_auc"]:
        if "periphery" in k:
            rows.append(row(f"AUC, {k}", lambda r, k=k: r["masked_auc"][k],
                            "within 0.01 of full", lambda v: v >= full - 0.01))
        elif "frame" in k:
            rows.append(row(f"AUC, {k}", lambda r, k=k: r["masked_auc"][k], "low: reported",
                            lambda v: True))
        else:
            rows.append(row(f"AUC, {k}", lambda r, k=k: r["masked_auc"][k],
                            f"aim <= {TARGET_MASKED}", lambda v: v <= TARGET_MASKED))
    return rows


def run(every: int = 1) -> list[tuple]:
    from medview.models.card import read_card

    dev = dev_folder()
    if dev is None:
        return [("robustness benchmark", "skipped", "no development data "
                 "(set MEDVIEW_DEV_DATA)", "")]
    rows: list[tuple] = []
    with tempfile.TemporaryDirectory() as tmp:
        data = prepare_data(dev, every, tmp)
        base = baseline_folder(tmp)
        for model in MODELS:
            new = measure(read_card(os.path.join(ROOT, "models", model)), data)
            old = None
            if base is not None and os.path.isdir(os.path.join(base, model)):
                old = measure(read_card(os.path.join(base, model), "user"), data)
            rows += rows_for(model, new, old)
        # which part of the gate carries the codec signature (cxr-pneumonia, both versions)
        versions = [("now", os.path.join(ROOT, "models", "cxr-pneumonia"), "bundled")]
        if base is not None:
            versions.append(("previous", os.path.join(base, "cxr-pneumonia"), "user"))
        for label, folder, source in versions:
            for name, parts in gate_parts(read_card(folder, source), data).items():
                rows.append((f"gate parts over the limit ({label}), {name}",
                             ", ".join(f"{k} {v:.2f}" for k, v in parts.items()),
                             "share of films each part alone withholds", ""))
    return rows


if __name__ == "__main__":
    import argparse

    from benchmarks.common import print_table

    ap = argparse.ArgumentParser()
    ap.add_argument("--every", type=int, default=1, help="every K-th test film (quick runs)")
    args = ap.parse_args()
    print_table("Robustness and shortcuts: bundled models vs previous (dev test split)",
                run(args.every))
