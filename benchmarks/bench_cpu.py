"""medview against bare scripts on a CPU workstation, measured side by side in one run.

Each comparison runs a baseline written outside medview (``benchmarks/baselines/``: what
a user would write with the same libraries) and medview's own command on the same inputs,
alternated round by round, and reports the minimum and the median of the rounds and the
ratio of the minima. Outputs are checked to be the same (probabilities to 6 decimals).
Bytecode is compiled for both sides first.

- cold one-film ``medview predict`` (whole process) against ``bare_predict.py``;
- a 400-film ``medview predict --csv`` against ``bare_predict.py --batch 8``;
- ``medview train`` (1 epoch, 128 px, full fine-tune, no augmentation, 280/60/60 films by
  the manifest's split) against ``bare_train.py`` (timm + DataLoader) at the same
  settings; medview's time split into its phases (from its progress events).

Films are the pediatric chest X-ray test split when ``../shared`` holds it, else films
synthesised once into a temporary folder.
"""

from __future__ import annotations

import compileall
import csv
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

try:
    from benchmarks.common import compile_bytecode, print_table
except ImportError:
    from common import compile_bytecode, print_table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASELINES = os.path.join(ROOT, "benchmarks", "baselines")
FILMS = os.path.join(ROOT, "..", "shared", "datasets", "pediatric-cxr", "test")
MODEL = os.path.join(ROOT, "models", "cxr-pneumonia")
ROUNDS = 5


def films(n: int, tmp: str) -> tuple[list[str], str]:
    """``n`` chest films (the dev test split) or, without it, ``n`` synthetic JPEGs."""
    files = sorted(glob.glob(os.path.join(FILMS, "*", "*.jpeg")))
    if len(files) >= n:
        return files[:: len(files) // n][:n], f"{n} test-split films"
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for k in range(n):
        yy, xx = np.mgrid[:1024, :1200]
        img = 90 + 60 * np.exp(-((xx - 600) ** 2 / 2e5 + (yy - 500) ** 2 / 3e5))
        img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
        path = os.path.join(tmp, f"film{k:04d}.jpeg")
        Image.fromarray(img).save(path, quality=90)
        out.append(path)
    return out, f"{n} synthetic films"


def _run(cmd: list[str]) -> tuple[float, str]:
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    took = time.perf_counter() - t
    if out.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} failed: {out.stderr[-2000:]}")
    return took, out.stdout


def _probs_of_bare(stdout: str) -> dict[str, tuple[str, ...]]:
    return {row[0]: tuple(row[1:]) for row in csv.reader(stdout.splitlines()) if row}


def _probs_of_medview(text: str) -> dict[str, tuple[str, ...]]:
    rows = list(csv.DictReader(text.splitlines()))
    cols = [c for c in rows[0] if c.startswith("p_")] if rows else []
    return {r["path"]: tuple(r[c] for c in cols) for r in rows}


def _medview() -> str:
    return os.path.join(os.path.dirname(sys.executable), "medview")


def _compare(name: str, bare: list[str], ours: list[str], ours_csv: str | None,
             target: float, what: str) -> list[tuple[str, str, str, str]]:
    times: dict[str, list[float]] = {"bare": [], "medview": []}
    outputs: dict[str, str] = {}
    for _round in range(ROUNDS):
        for side, cmd in (("bare", bare), ("medview", ours)):
            took, out = _run(cmd)
            times[side].append(took)
            if side == "medview" and ours_csv:
                with open(ours_csv, encoding="utf-8") as f:
                    out = f.read()
            outputs[side] = out
    a, b = _probs_of_bare(outputs["bare"]), _probs_of_medview(outputs["medview"])
    same = a == b and len(a) > 0
    lo_b, lo_m = min(times["bare"]), min(times["medview"])
    ratio = lo_m / lo_b
    return [
        (f"{name}: bare ONNX Runtime script ({what})",
         f"min {lo_b:.3f} s, median {statistics.median(times['bare']):.3f} s", "(baseline)",
         ""),
        (f"{name}: medview predict",
         f"min {lo_m:.3f} s, median {statistics.median(times['medview']):.3f} s",
         f"{ratio:.2f}x (target <= {target}x)", "PASS" if ratio <= target else "FAIL"),
        (f"{name}: probabilities identical (6 decimals, {len(a)} films)",
         "yes" if same else "NO", "target: identical", "PASS" if same else "FAIL"),
    ]


def _prepare() -> None:
    compile_bytecode()
    compileall.compile_dir(BASELINES, quiet=1)


def run_cold() -> list[tuple[str, str, str, str]]:
    _prepare()
    with tempfile.TemporaryDirectory() as tmp:
        (film,), what = films(1, tmp)
        bare = [sys.executable, os.path.join(BASELINES, "bare_predict.py"), MODEL, film]
        ours = [_medview(), "predict", "--model", "cxr-pneumonia", "--device", "cpu", film]
        rows = _compare("cold one-film predict", bare, ours, None, 1.2, what)
        rows.append(_imports_row(ours))
    return rows


def _imports_row(cmd: list[str]) -> tuple[str, str, str, str]:
    """The packages a one-JPEG predict imports that the input does not need."""
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "medview", *cmd[1:]],
                         capture_output=True, text=True, timeout=300)
    top = {line.split("|")[2].strip().split(".")[0] for line in out.stderr.splitlines()
           if line.startswith("import time:") and line.count("|") == 2}
    needless = sorted(top & {"pydicom", "SimpleITK", "torch", "torchvision", "timm", "captum",
                             "tqdm", "pynetdicom", "highdicom", "PySide6"})
    return ("one-JPEG predict imports pydicom/SimpleITK/torch/tqdm/Qt...",
            ", ".join(needless) or "none of them", "target: none",
            "FAIL" if needless else "PASS")


def run_batch(n: int = 400) -> list[tuple[str, str, str, str]]:
    _prepare()
    with tempfile.TemporaryDirectory() as tmp:
        paths, what = films(n, tmp)
        out_csv = os.path.join(tmp, "out.csv")
        bare = [sys.executable, os.path.join(BASELINES, "bare_predict.py"), MODEL, "--batch",
                "8", *paths]
        # every probability written, out-of-scope films' too, so that all are compared
        ours = [_medview(), "predict", "--model", "cxr-pneumonia", "--device", "cpu", "--csv",
                out_csv, "--score-out-of-scope", *paths]
        return _compare(f"{n}-film predict", bare, ours, out_csv, 1.1, what)


def _training_set(root: str) -> tuple[str, str]:
    """A manifest of 280/60/60 films (train/val/test, the dev set's own patient-disjoint
    splits) copied under ``root``, or synthetic films with two classes."""
    import shutil

    source = os.path.join(ROOT, "..", "shared", "datasets", "pediatric-cxr")
    rows: list[dict] = []
    manifest = os.path.join(source, "manifest.csv")
    if os.path.isfile(manifest):
        with open(manifest, newline="") as f:
            every = list(csv.DictReader(f))
        for split, n in (("train", 280), ("val", 60), ("test", 60)):
            picked = [r for r in every if r["split"] == split]
            for r in picked[:: len(picked) // n][:n]:
                os.makedirs(os.path.join(root, os.path.dirname(r["path"])), exist_ok=True)
                shutil.copyfile(os.path.join(source, r["path"]), os.path.join(root, r["path"]))
                rows.append({k: r[k] for k in ("path", "label", "patient_id", "split")})
        what = "280/60/60 dev films"
    else:
        from PIL import Image

        rng = np.random.default_rng(0)
        for k in range(400):
            label = ("NORMAL", "PNEUMONIA")[k % 2]
            img = rng.normal(100 + 30 * (k % 2), 25, (224, 224)).clip(0, 255)
            path = f"{label}/film{k:04d}.png"
            os.makedirs(os.path.join(root, label), exist_ok=True)
            Image.fromarray(img.astype(np.uint8)).save(os.path.join(root, path))
            split = "train" if k < 280 else ("val" if k < 340 else "test")
            rows.append({"path": path, "label": label, "patient_id": f"p{k}", "split": split})
        what = "400 synthetic films"
    path = os.path.join(root, "manifest.csv")
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "label", "patient_id", "split"])
        w.writeheader()
        w.writerows(rows)
    return path, what


def _phases(events: str) -> dict[str, float]:
    """Seconds per phase of a ``medview train --events-json`` run, from the arrival
    times the reader stamped on each line ("t<TAB>json")."""
    import json

    spans: dict[str, float] = {}
    last_t, last_name = 0.0, "start-up, reading the films"
    for line in events.splitlines():
        t, _tab, text = line.partition("\t")
        try:
            ev = json.loads(text)
        except ValueError:
            continue
        name = ev.get("message") or ev.get("stage", "")
        if ev.get("stage") == "train":
            name = "training epoch"
        elif ev.get("stage") == "epoch":
            name = "validation pass"
        if name != last_name:
            spans[last_name] = spans.get(last_name, 0.0) + float(t) - last_t
            last_t, last_name = float(t), name
    return spans


TRAIN_STAMP = ("import sys, time\nt0 = time.perf_counter()\nfor line in sys.stdin:\n"
               "    print(f'{time.perf_counter() - t0:.3f}\\t{line}', end='')\n")


def run_training(rounds: int = 3) -> list[tuple[str, str, str, str]]:
    _prepare()
    settings = {"base": "efficientnet-lite0", "strategy": "full", "epochs": 1,
                "image_size": 128, "batch_size": 32, "augment": False}
    with tempfile.TemporaryDirectory() as tmp:
        manifest, what = _training_set(os.path.join(tmp, "data"))
        cfg = os.path.join(tmp, "train.json")
        with open(cfg, "w") as f:
            json.dump(settings, f)
        no_audit = os.path.join(tmp, "train-no-audit.json")
        with open(no_audit, "w") as f:
            json.dump({**settings, "audit": False}, f)
        bare = [sys.executable, os.path.join(BASELINES, "bare_train.py"), manifest,
                "--epochs", "1", "--image-size", "128", "--batch", "32"]
        times: dict[str, list[float]] = {"bare": [], "medview": [], "no audit": []}
        phases: dict[str, float] = {}
        for k in range(rounds):
            times["bare"].append(_run(bare)[0])
            out = os.path.join(tmp, f"plain{k}")
            os.makedirs(out)
            times["no audit"].append(_run([_medview(), "train", manifest, "--config",
                                           no_audit, "--out", out])[0])
            out = os.path.join(tmp, f"out{k}")
            os.makedirs(out)
            t = time.perf_counter()
            proc = subprocess.run(
                f"{_medview()} train {manifest} --config {cfg} --out {out} --events-json "
                f"| {sys.executable} -c \"{TRAIN_STAMP}\"", shell=True, capture_output=True,
                text=True, timeout=1800)
            took = time.perf_counter() - t
            if proc.returncode != 0:
                raise RuntimeError(proc.stderr[-2000:])
            times["medview"].append(took)
            if took <= min(times["medview"]):
                phases = _phases(proc.stdout)
    lo_b, lo_m = min(times["bare"]), min(times["medview"])
    ratio = lo_m / lo_b
    rows = [
        (f"training: plain timm + DataLoader script ({what})",
         f"min {lo_b:.1f} s, median {statistics.median(times['bare']):.1f} s", "(baseline)",
         ""),
        ("training: medview train (card, calibration, CIs, audit, gate, graph)",
         f"min {lo_m:.1f} s, median {statistics.median(times['medview']):.1f} s",
         f"{ratio:.2f}x (target <= 1.3x)", "PASS" if ratio <= 1.3 else "FAIL"),
    ]
    rows += [(f"  medview phase: {name}", f"{s:.1f} s", f"{s / lo_m:.0%} of its run", "")
             for name, s in phases.items()]
    lo_n = min(times["no audit"])
    rows.append(("training: medview train without the shortcut audit (audit: false)",
                 f"min {lo_n:.1f} s, median {statistics.median(times['no audit']):.1f} s",
                 f"{lo_n / lo_b:.2f}x the plain loop (reported)", ""))
    return rows


if __name__ == "__main__":
    which = sys.argv[1:] or ["cold", "batch", "training"]
    if "cold" in which:
        print_table("Cold one-film predict: medview vs a bare script (whole process)",
                    run_cold())
    if "batch" in which:
        print_table("Batch predict: medview vs a bare script (whole process)", run_batch())
    if "training" in which:
        print_table("Training: medview vs a plain loop (whole process, CPU)", run_training())
