"""medview against bare scripts on a CPU workstation, measured side by side in one run.

Each comparison runs a baseline written outside medview (``benchmarks/baselines/``: what
a user would write with the same libraries) and medview's own command on the same inputs,
alternated round by round, and reports the minimum and the median of the rounds and the
ratio of the minima. Outputs are checked to be the same (probabilities to 6 decimals).
Bytecode is compiled for both sides first.

- cold one-film ``medview predict`` (whole process) against ``bare_predict.py``;
- a 400-film ``medview predict --csv`` against ``bare_predict.py --batch 8``.

Films are the pediatric chest X-ray test split when ``../shared`` holds it, else films
synthesised once into a temporary folder.
"""

from __future__ import annotations

import compileall
import csv
import glob
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


if __name__ == "__main__":
    which = sys.argv[1:] or ["cold", "batch"]
    if "cold" in which:
        print_table("Cold one-film predict: medview vs a bare script (whole process)",
                    run_cold())
    if "batch" in which:
        print_table("Batch predict: medview vs a bare script (whole process)", run_batch())
