"""Several processes (part of ``make bench``): training and batch scoring on 1 vs 2 local
processes (torchrun, gloo on CPU), the communication cost of one training step, and the
memory of streaming batch scoring against the number of inputs.

- Training: EfficientNet-Lite0 (random init), 128 px, 256 synthetic images, strategy
  full, effective batch 16 (16 on one process, 8 + 8 on two); images/s of the second
  epoch from the card's history.
- Communication: in a 2-process gloo job, the all-reduce of a Lite0-sized gradient
  (what DDP sends every step) against one forward + backward of a batch of 8.
- Scoring: ``medview predict --csv`` of 200 PNGs with cxr-pneumonia on 1 vs 2 processes;
  peak memory of one process scoring 20 vs 200 inputs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _images(folder: str, n: int, size: int = 128) -> str:
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        os.makedirs(os.path.join(folder, cls), exist_ok=True)
    for k in range(n):
        cls = "ab"[k % 2]
        img = rng.normal(120 + (20 if cls == "b" else 0), 30, (size, size)).clip(0, 255)
        Image.fromarray(img.astype(np.uint8)).save(
            os.path.join(folder, cls, f"p{k // 2}_{k % 2}.png"))
    return folder


def _medview(*args) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "medview", *args], capture_output=True,
                       text=True, cwd=ROOT)
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-2000:])
    return time.perf_counter() - t0, r


def run_training(root: str) -> list[tuple[str, str, str, str]]:
    data = _images(os.path.join(root, "train-data"), 256)
    rates = {}
    for nproc, batch in ((1, 16), (2, 8)):
        cfg = os.path.join(root, f"cfg{nproc}.json")
        with open(cfg, "w") as f:
            json.dump({"data": data, "base": "efficientnet-lite0", "strategy": "scratch",
                       "epochs": 2, "image_size": 128, "batch_size": batch,
                       "augment": False, "n_bootstrap": 20, "id": f"bench{nproc}",
                       "patience": 9}, f)
        _medview("train", "--config", cfg, "--out", os.path.join(root, "models"),
                 "--nproc", str(nproc))
        with open(os.path.join(root, "models", f"bench{nproc}", "card.json")) as f:
            rates[nproc] = json.load(f)["training"]["history"][-1]["images_per_second"]
    return [
        ("training, 1 process (batch 16)", f"{rates[1]:.1f} img/s", "baseline", "-"),
        ("training, 2 processes (DDP, 8 + 8)", f"{rates[2]:.1f} img/s",
         f"{rates[2] / rates[1]:.2f}x one process (2 cores: expect little)", "info"),
    ]


def run_communication(root: str) -> list[tuple[str, str, str, str]]:
    from torch.distributed.run import get_args_parser, run

    out = os.path.join(root, "comm.json")
    args = get_args_parser().parse_args([
        "--standalone", "--nproc-per-node=2", "-m", "benchmarks.bench_distributed",
        "--comm-worker", out])
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        run(args)
    finally:
        os.chdir(cwd)
    with open(out) as f:
        r = json.load(f)
    return [
        ("all-reduce of the Lite0 gradient (gloo, 2 processes)",
         f"{r['allreduce_ms']:.1f} ms ({r['megabytes']:.1f} MB)", "per training step", "info"),
        ("forward + backward, batch 8, 128 px", f"{r['step_ms']:.1f} ms",
         f"communication = {100 * r['allreduce_ms'] / r['step_ms']:.0f}% of a step", "info"),
    ]


def _comm_worker(out: str) -> None:
    import timm
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    model = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=2)
    flat = torch.zeros(sum(p.numel() for p in model.parameters()))
    x = torch.randn(8, 3, 128, 128)
    y = torch.randint(0, 2, (8,))
    times_ar, times_step = [], []
    for k in range(12):
        dist.barrier()
        t0 = time.perf_counter()
        dist.all_reduce(flat)
        t1 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        t2 = time.perf_counter()
        if k >= 2:
            times_ar.append(t1 - t0)
            times_step.append(t2 - t1)
    if dist.get_rank() == 0:
        with open(out, "w") as f:
            json.dump({"allreduce_ms": 1000 * float(np.median(times_ar)),
                       "step_ms": 1000 * float(np.median(times_step)),
                       "megabytes": flat.numel() * 4 / 1e6}, f)
    dist.destroy_process_group()


def run_scoring(root: str) -> list[tuple[str, str, str, str]]:
    data = _images(os.path.join(root, "score-data"), 200, size=256)
    few = os.path.join(root, "few")
    os.makedirs(os.path.join(few, "a"))
    for name in sorted(os.listdir(os.path.join(data, "a")))[:20]:
        shutil.copy(os.path.join(data, "a", name), os.path.join(few, "a", name))
    rows = []
    times = {}
    for nproc in (1, 2):
        csv = os.path.join(root, f"scores{nproc}.csv")
        times[nproc], _ = _medview("predict", data, "--model", "cxr-pneumonia", "--csv", csv,
                                   "--nproc", str(nproc))
    rows.append(("scoring 200 films, 1 process (whole command)",
                 f"{200 / times[1]:.1f} img/s", "baseline", "-"))
    rows.append(("scoring 200 films, 2 processes (torchrun)", f"{200 / times[2]:.1f} img/s",
                 f"{times[1] / times[2]:.2f}x (2 cores)", "info"))
    peaks = {}
    for name, folder in (("20", few), ("200", data)):
        script = ("import resource, subprocess, sys; subprocess.run([sys.executable, '-m', "
                  f"'medview', 'predict', {folder!r}, '--model', 'cxr-pneumonia', '--csv', "
                  f"{os.path.join(root, 'p.csv')!r}], check=True, capture_output=True); "
                  "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             cwd=ROOT, check=True).stdout
        peaks[name] = int(out.strip()) / 1024
    growth = peaks["200"] / peaks["20"]
    rows.append(("peak memory scoring 20 / 200 films (one process)",
                 f"{peaks['20']:.0f} / {peaks['200']:.0f} MiB",
                 f"{growth:.2f}x for 10x the inputs (target: flat)",
                 "PASS" if growth < 1.1 else "FAIL"))
    return rows


def run() -> list[tuple[str, str, str, str]]:
    root = tempfile.mkdtemp(prefix="medview-bench-ddp-")
    try:
        return run_training(root) + run_communication(root) + run_scoring(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--comm-worker":
        _comm_worker(sys.argv[2])
        sys.exit(0)
    from benchmarks.common import print_table

    print_table("Several processes (torchrun, gloo, this machine's 2 cores)", run())
