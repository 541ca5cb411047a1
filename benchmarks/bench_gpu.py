"""The GPU workstation (``make bench-gpu``): medview against a plain PyTorch baseline
written in this file (a DataLoader with workers + timm, as a user would write it), both
measured in the same run on one CUDA GPU. Without CUDA it prints a note and stops.

Rows (one GPU; the GPU is named in the table):
- scoring, steady state: films per second through medview's batch scorer
  (``inference.batch.iter_score_stream``: reader threads, 64-film passes, pinned memory,
  full float32) and through the plain loop (DataLoader with 8 workers, pinned memory,
  torch's default numerics: TF32 convolutions). Target >= 3,000 films/s and >= 0.9x.
- training: images per second of one epoch of EfficientNet-Lite0 at 224 px (the bundled
  model, fine-tuned whole: no ImageNet weights package needed on a GPU server), bfloat16
  autocast, channels_last - medview's engine against the plain loop, both without
  augmentation. Target >= 0.9x and >= 2,000 img/s. Then medview with its default
  (robust) augmentation, reported; with how long the steps waited for their input.
- a cold one-film ``medview predict --device cuda`` (whole process) and where its time
  goes (imports, CUDA context, model build, first kernel), measured in a child process.
- CPU vs CUDA: max |dp| of medview's probabilities over the same films, and whether the
  labels and in-scope decisions are identical (target max |dp| <= 1e-4).

Films: the pediatric dev set (``../shared``, or ``--films DIR``) when present, else
synthetic JPEG films like its films (224 x 224 px, ~6 KB; written once into a temporary
folder). Whole run: under
5 minutes on one H100/H200-class GPU. ``--cpu-dry-run`` runs every row on the CPU with a
few films, to check the code without a GPU (its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

try:
    from benchmarks.common import print_table
except ImportError:
    from common import print_table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEV = os.path.join(ROOT, "..", "shared", "datasets", "pediatric-cxr")
MODEL = os.path.join(ROOT, "models", "cxr-pneumonia")


# ----------------------------------------------------------------------------- films
def films(n: int, folder: str, dev: str = DEV) -> tuple[list[str], str]:
    """``n`` chest films: the dev set's (``dev``), or synthetic JPEGs like them (224 x 224,
    ~6 KB each) written into ``folder``."""
    found = sorted(glob.glob(os.path.join(dev, "*", "*", "*.jpeg")))
    if len(found) >= n:
        return found[:: max(1, len(found) // n)][:n], "pediatric dev films (224 px JPEG)"
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    os.makedirs(folder, exist_ok=True)
    unique = min(n, 256)  # then linked under more names: decoding is what is measured
    for k in range(n):
        path = os.path.join(folder, f"film{k:05d}.jpeg")
        if k < unique:
            h = w = 224  # as the dev set's films
            yy, xx = np.ogrid[:h, :w]
            body = 90 + 60 * np.exp(-(((yy - h / 2) / (h / 3)) ** 2
                                      + ((xx - w / 2) / (w / 3.5)) ** 2))
            img = (body + rng.normal(0, 12, (h, w))).clip(0, 255).astype(np.uint8)
            Image.fromarray(img).save(path, quality=75)
        else:
            os.link(out[k % unique], path)
        out.append(path)
    return out, f"synthetic 224 px JPEG films ({unique} drawn, no dev set here)"


def manifest(paths: list[str], folder: str) -> str:
    """A training manifest over ``paths`` (two classes, alternating; patient = film)."""
    import csv

    path = os.path.join(folder, "manifest.csv")
    n = len(paths)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "patient_id", "split"])
        for k, p in enumerate(paths):
            label = ("NORMAL", "PNEUMONIA")[("PNEUMONIA" in p) if "pediatric" in p
                                            else k % 2]
            split = "train" if k < 0.8 * n else ("val" if k < 0.9 * n else "test")
            w.writerow([os.path.abspath(p), label, f"p{k}", split])
    return path


# ----------------------------------------------------------------------------- the plain loop
class Films:
    """The plain baseline's Dataset: decode with Pillow, resize, normalise (0.5, 0.5)."""

    def __init__(self, paths, size, labels=None):
        self.paths, self.size, self.labels = paths, size, labels

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        import torch
        from PIL import Image

        img = Image.open(self.paths[i]).convert("L").resize((self.size, self.size),
                                                            Image.Resampling.BILINEAR)
        x = (np.asarray(img, np.float32) / 255.0 - 0.5) / 0.5
        x = torch.from_numpy(x)[None].repeat(3, 1, 1)
        return (x, 0 if self.labels is None else self.labels[i])


def plain_scoring(paths, device: str, workers: int, batch: int = 64) -> float:
    """Films per second of the plain loop, steady state (the first batch excluded)."""
    import torch

    from medview.models.card import read_card
    from medview.models.loading import load_model

    model = load_model(read_card(MODEL)).to(device).eval()
    model = model.to(memory_format=torch.channels_last)
    loader = torch.utils.data.DataLoader(Films(paths, 224), batch_size=batch,
                                         num_workers=workers, pin_memory=device != "cpu")
    seen, t0 = 0, None
    with torch.inference_mode():
        for x, _y in loader:
            p = model(x.to(device, non_blocking=True).contiguous(
                memory_format=torch.channels_last)).softmax(1).cpu()
            if t0 is None:
                t0 = time.perf_counter()
                continue
            seen += len(p)
    return seen / (time.perf_counter() - t0)


def plain_training(paths, labels, device: str, workers: int, batch: int = 64) -> float:
    """Images per second of one epoch of the plain loop (the first 3 steps excluded):
    the bundled Lite0 model fine-tuned whole, AdamW, bfloat16 autocast, channels_last."""
    import torch

    from medview.models.card import read_card
    from medview.models.loading import load_model

    model = load_model(read_card(MODEL)).to(device).to(memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    loader = torch.utils.data.DataLoader(Films(paths, 224, labels), batch_size=batch,
                                         shuffle=True, num_workers=workers,
                                         pin_memory=device != "cpu", drop_last=True,
                                         persistent_workers=workers > 0)
    kind = device.split(":")[0]
    seen, t0 = 0, None
    for step, (x, y) in enumerate(loader):
        x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        y = y.to(device, non_blocking=True)
        with torch.autocast(kind, dtype=torch.bfloat16):
            loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step == 2:
            _sync(device)
            t0 = time.perf_counter()
        elif step > 2:
            seen += len(x)
    _sync(device)
    return seen / (time.perf_counter() - t0) if t0 and seen else float("nan")


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------- medview
def medview_scoring(paths, device: str) -> tuple[float, list]:
    """Films per second through medview's batch scorer (steady state: from the first
    row), and the predictions."""
    from medview.core.progress import drain
    from medview.inference.batch import iter_score_stream
    from medview.inference.session import InferenceSession
    from medview.models.registry import discover_models

    card = discover_models().get("cxr-pneumonia")
    rows: list = []
    first = [None]

    def step(s) -> None:
        item = getattr(s, "item", None)
        if item is None:
            return
        if first[0] is None:
            first[0] = time.perf_counter()
        else:
            rows.append(item.prediction)

    drain(iter_score_stream(InferenceSession(), card, paths, device, backend="torch"), step)
    took = time.perf_counter() - first[0]
    return len(rows) / took, rows


def medview_training(manifest_path: str, device: str, batch: int = 64, epochs: int = 1,
                     augment: bool = False) -> tuple[float, dict, float]:
    """Images per second of medview's training epoch (from its own step events), the
    card's numerics, and the seconds its steps waited for their input (the pipeline)."""
    from medview.core.progress import drain
    from medview.training.engine import train
    from medview.training.types import TrainConfig

    cfg = TrainConfig(data=manifest_path, base=MODEL, strategy="full",
                      epochs=epochs, image_size=224, batch_size=batch, augment=augment,
                      robust=augment, device=device, n_bootstrap=100, audit=False,
                      min_per_class=2, id="bench-gpu")
    marks: list[tuple[float, int]] = []

    def on(ev) -> None:
        if ev.stage == "train":
            marks.append((time.perf_counter(), ev.step))

    result = drain(train(cfg), on)
    (t0, s0), (t1, s1) = marks[1], marks[-1]  # from the second report (warmed up)
    waited = sum(r.get("input_wait_seconds", 0.0) for r in result.history)
    return (s1 - s0) * cfg.batch_size / (t1 - t0), result.card.training["numerics"], waited


COLD = r"""
import json, sys, time
t0 = time.perf_counter()
import torch
from medview.models.card import read_card
from medview.models.loading import load_model
t1 = time.perf_counter()
torch.cuda.init(); torch.zeros(1, device="cuda"); torch.cuda.synchronize()
t2 = time.perf_counter()
model = load_model(read_card(sys.argv[1])).to("cuda").eval()
torch.cuda.synchronize()
t3 = time.perf_counter()
with torch.inference_mode():
    model(torch.zeros(1, 3, 224, 224, device="cuda")).cpu()
t4 = time.perf_counter()
print(json.dumps({"imports": t1 - t0, "cuda context": t2 - t1, "model build": t3 - t2,
                  "first kernel": t4 - t3}))
"""


def cold_predict(film: str, device: str) -> tuple[float, dict]:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "medview", "predict", film, "--model",
                    "cxr-pneumonia", "--device", device, "--json"], check=True,
                   capture_output=True, timeout=300)
    whole = time.perf_counter() - t
    phases: dict = {}
    if device == "cuda":
        out = subprocess.run([sys.executable, "-c", COLD, MODEL], check=True,
                             capture_output=True, text=True, timeout=300)
        phases = json.loads(out.stdout.strip().splitlines()[-1])
    return whole, phases


def cpu_vs_gpu(cpu_rows, gpu_rows) -> tuple[float, bool, bool]:
    a = np.array([p.probabilities for p in cpu_rows])
    b = np.array([p.probabilities for p in gpu_rows])
    same_labels = [p.withheld_label or p.label for p in cpu_rows] == \
        [p.withheld_label or p.label for p in gpu_rows]
    same_scope = [p.in_scope for p in cpu_rows] == [p.in_scope for p in gpu_rows]
    return float(np.abs(a - b).max()), same_labels, same_scope


# ----------------------------------------------------------------------------- run
def run(dry: bool = False, dev: str = DEV) -> list[tuple[str, str, str, str]]:
    import torch

    if not dry and not torch.cuda.is_available():
        return [("GPU benchmark", "skipped", "no CUDA GPU on this machine", "SKIP")]
    device = "cpu" if dry else "cuda"
    gpu = "CPU dry run (numbers mean nothing)" if dry else torch.cuda.get_device_name(0)
    workers = 0 if dry else min(8, (os.cpu_count() or 2) - 1)
    n_score, n_train, n_cmp = (24, 64, 8) if dry else (4096, 4096, 512)
    batch = 8 if dry else 64
    rows: list[tuple[str, str, str, str]] = [("device", gpu, "", "")]
    with tempfile.TemporaryDirectory() as tmp:
        paths, what = films(max(n_score, n_train), os.path.join(tmp, "films"), dev)
        rows.append(("films", f"{what}", "", ""))
        score_paths = paths[:n_score]
        # scoring: warm the page cache and CUDA first, then measure both
        plain_scoring(score_paths[:64], device, workers, batch)
        plain = plain_scoring(score_paths, device, workers, batch)
        ours, gpu_rows = medview_scoring(score_paths, device)
        ok = ours >= 0.9 * plain and (dry or ours >= 3000)
        rows += [("scoring: plain DataLoader + timm (TF32 default)", f"{plain:,.0f} films/s",
                  "(baseline)", ""),
                 ("scoring: medview batch scorer (float32)", f"{ours:,.0f} films/s",
                  f"{ours / plain:.2f}x (>= 0.9x, >= 3,000/s)", "PASS" if ok else "FAIL")]
        # CPU vs CUDA on the same films
        _cpu_rate, cpu_rows = medview_scoring(score_paths[:n_cmp], "cpu")
        dp, same_labels, same_scope = cpu_vs_gpu(cpu_rows, gpu_rows[:len(cpu_rows)]) if (
            len(gpu_rows) >= len(cpu_rows)) else (float("nan"), False, False)
        rows.append(("CPU vs CUDA: max |dp|, labels, in-scope", f"{dp:.2g}, "
                     f"{'same' if same_labels else 'DIFFER'}, "
                     f"{'same' if same_scope else 'DIFFER'}", f"<= 1e-4 over {n_cmp} films",
                     "PASS" if dp <= 1e-4 and same_labels and same_scope else "FAIL"))
        # training
        train_paths = paths[:n_train]
        labels = [int("PNEUMONIA" in p) if "pediatric" in what else k % 2
                  for k, p in enumerate(train_paths)]
        plain_t = plain_training(train_paths, labels, device, workers, batch)
        train_manifest = manifest(train_paths, tmp)
        ours_t, numerics, waited = medview_training(train_manifest, device, batch)
        ok = ours_t >= 0.9 * plain_t and (dry or ours_t >= 2000)
        rows += [("training: plain loop (Lite0 224 px, bf16 autocast, 8 workers)",
                  f"{plain_t:,.0f} img/s", "(baseline)", ""),
                 ("training: medview engine", f"{ours_t:,.0f} img/s",
                  f"{ours_t / plain_t:.2f}x (>= 0.9x, >= 2,000/s)", "PASS" if ok else "FAIL"),
                 ("  its steps waited for input", f"{waited:.2f} s", "(reported)", ""),
                 ("training: the card's numerics", numerics.get("precision", "?"), "", "")]
        # the default recipe: robust variations on pipeline threads, augmentation on the
        # GPU (the plain loop has no equivalent: reported, no target)
        robust_t, _n, waited = medview_training(train_manifest, device, batch, augment=True)
        rows += [("training: medview, default robust augmentation", f"{robust_t:,.0f} img/s",
                  f"{robust_t / plain_t:.2f}x of the unaugmented plain loop", ""),
                 ("  its steps waited for input", f"{waited:.2f} s", "(reported)", "")]
        # cold one-film predict
        whole, phases = cold_predict(score_paths[0], device)
        rows.append(("cold one-film medview predict (whole process)", f"{whole:.2f} s",
                     "(reported)", ""))
        rows += [(f"  child process: {k}", f"{v:.2f} s", "", "") for k, v in phases.items()]
    return rows


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu-dry-run", action="store_true",
                    help="run every row on the CPU with a few films (checks the code only)")
    ap.add_argument("--films", default=DEV,
                    help="the dev set's folder (CLASS/SPLIT/*.jpeg inside), if elsewhere")
    args = ap.parse_args()
    print_table("GPU: medview vs a plain PyTorch loop (same run, one GPU)",
                run(dry=args.cpu_dry_run, dev=args.films))
