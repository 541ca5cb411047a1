"""Training and batch scoring on many processes and machines, on PyTorch's own stack:
``torchrun`` (the elastic agent) starts the workers, ``torch.distributed`` connects them
(gloo on CPU, NCCL on CUDA) and DistributedDataParallel averages the gradients.

- ``medview train ... --nproc N`` and ``medview predict ... --nproc N`` launch N local
  workers through torchrun's launcher (:func:`launch`).
- On a cluster: ``torchrun --nnodes ... -m medview.training.distributed train --config
  train.json --out DIR`` (or ``predict ...``) runs the same worker on every node; the
  wizard and ``medview train --cluster-script DIR`` write ready torchrun and SLURM scripts.

:class:`medview.training.comm.Comm` is what the engine sees; this module launches and
runs the workers.
"""

from __future__ import annotations

import json
import os
import sys

from medview.training.comm import connect


def launch(nproc: int, worker_args: list[str], max_restarts: int = 3) -> int:
    """Run ``python -m medview.training.distributed WORKER_ARGS`` on ``nproc`` local
    processes through torchrun's launcher (its elastic agent restarts the workers, up
    to ``max_restarts`` times, when one dies). Returns 0 when every worker succeeded."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    args = get_args_parser().parse_args([
        "--standalone", f"--nproc-per-node={nproc}", f"--max-restarts={max_restarts}",
        "--monitor-interval=0.5", "-m", __name__, *worker_args])
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    try:
        run(args)
    except ChildFailedError as exc:
        print(f"error: a worker failed after {max_restarts} restart(s): "
              f"{type(exc).__name__}", file=sys.stderr)
        return 1
    return 0


def write_worker_config(cfg, path: str) -> str:
    """The run's settings as the JSON file the workers read (``--config``)."""
    from dataclasses import asdict

    from medview.core.safeio import atomic_write_bytes

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    doc = {k: v for k, v in asdict(cfg).items() if k != "out"}
    atomic_write_bytes(path, (json.dumps(doc, indent=2, default=list) + "\n").encode())
    return path


TORCHRUN_SCRIPT = """#!/bin/sh
# medview training across machines with torchrun: run this same script on every node
# (the data, this folder and OUT on a shared file system). Set NNODES, NPROC_PER_NODE
# (processes per node; default: one per CUDA GPU of the node, else 1), MASTER_ADDR (the
# first node) and MASTER_PORT.
NPROC_PER_NODE="${{NPROC_PER_NODE:-$(python -m medview.training.placement)}}"
exec torchrun --nnodes="${{NNODES:-1}}" --nproc-per-node="$NPROC_PER_NODE" \\
  --rdzv-backend=c10d --rdzv-endpoint="${{MASTER_ADDR:-localhost}}:${{MASTER_PORT:-29500}}" \\
  --rdzv-id="${{RDZV_ID:-medview-train}}" --max-restarts=3 \\
  -m medview.training.distributed train --config {config} --out "${{OUT:-{out}}}"
"""

SLURM_SCRIPT = """#!/bin/bash
# medview training on a SLURM cluster: sbatch {name}
# One torchrun per node; torchrun starts a worker per GPU and restarts them from the
# last checkpoint if one dies. Adjust nodes, GPUs and time to your cluster.
#SBATCH --job-name=medview-train
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --time=12:00:00
head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
srun torchrun --nnodes="$SLURM_NNODES" \\
  --nproc-per-node="${{SLURM_GPUS_PER_NODE:-$(python -m medview.training.placement)}}" \\
  --rdzv-backend=c10d --rdzv-endpoint="$head:29500" --rdzv-id="$SLURM_JOB_ID" \\
  --max-restarts=3 \\
  -m medview.training.distributed train --config {config} --out {out}
"""


def write_cluster_scripts(cfg, folder: str, out: str) -> list[str]:
    """``train.json``, ``run_torchrun.sh`` and ``run_slurm.sh`` in ``folder``: the same
    training for a GPU server or a cluster."""
    import shlex
    import stat

    from medview.core.safeio import atomic_write_bytes

    config = write_worker_config(cfg, os.path.join(folder, "train.json"))
    written = [config]
    for name, text in (("run_torchrun.sh", TORCHRUN_SCRIPT), ("run_slurm.sh", SLURM_SCRIPT)):
        path = os.path.join(folder, name)
        atomic_write_bytes(path, text.format(config=shlex.quote(os.path.abspath(config)),
                                             out=shlex.quote(os.path.abspath(out)),
                                             name=name).encode())
        os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR | stat.S_IXGRP)
        written.append(path)
    return written


# ------------------------------------------------------------------------- workers
def _train_worker(argv: list[str]) -> int:
    import argparse

    from medview.core.progress import drain
    from medview.training.engine import checkpoint_dir_for, print_event, train
    from medview.training.types import TrainConfig

    p = argparse.ArgumentParser(prog="medview.training.distributed train")
    p.add_argument("--config", required=True, help="the run's settings (JSON)")
    p.add_argument("--out", help="folder the model folder is written into")
    p.add_argument("--events-json", action="store_true", dest="events_json")
    p.add_argument("--result-json", dest="result_json")
    args = p.parse_args(argv)
    cfg = TrainConfig.from_file(args.config, out=args.out)
    if cfg.device in ("auto", "", None):  # a cluster script's config: this node decides
        from medview.inference.devices import choose_device

        cfg.device = choose_device("auto")
    comm = connect(cfg.device)  # NCCL and a GPU per process on CUDA
    try:
        out = cfg.out or _user_models_dir()
        ckpt = checkpoint_dir_for(cfg, out)
        show = (lambda ev: print_event(ev, args.events_json)) if comm.is_main else None
        result = drain(train(cfg, comm=comm, checkpoint_dir=ckpt), show)
        if comm.is_main:  # the others are done: rank 0 evaluates and exports alone
            finish_training(result, out, ckpt, args.events_json, args.result_json)
    finally:
        comm.close()
    return 0


def _user_models_dir() -> str:
    from medview.models.registry import user_models_dir

    return user_models_dir()


def finish_training(result, out: str, ckpt: str | None, events_json: bool,
                    result_json: str | None = None) -> str:
    """Export the model (rank 0), drop the run's checkpoint, print the summary. With
    ``result_json``, also write what the wizard's results page needs beyond the model
    folder (validation and test probabilities and labels, warnings)."""
    from medview.core.safeio import atomic_write_bytes
    from medview.training.save import save_trained

    folder = save_trained(result, out, checkpoint_dir=ckpt)
    if result_json:
        doc = {"val_probs": result.val_probs.tolist(), "val_y": result.val_y.tolist(),
               "test_probs": result.test_probs.tolist(), "test_y": result.test_y.tolist(),
               "warnings": list(result.warnings), "folder": folder}
        atomic_write_bytes(result_json, json.dumps(doc).encode())
    if events_json:
        print(json.dumps({"stage": "saved", "folder": folder}), flush=True)
    else:
        print(f"saved {folder}", flush=True)
    return folder


def can_launch() -> bool:
    """Whether worker processes can be started here (a Python installation: the
    one-folder app bundle cannot run ``python -m``)."""
    return not getattr(sys, "frozen", False)


def iter_train_processes(cfg, nproc: int, work_dir: str, cancel=None):
    """Train ``cfg`` on ``nproc`` local processes from a program that must not block (the
    wizard): runs ``medview train --nproc`` as a child, turns its JSON event lines into
    :class:`~medview.training.engine.TrainEvent` and returns a
    :class:`~medview.training.engine.TrainResult` read back from the exported model.
    Cancel stops the child (torchrun stops its workers); the checkpoint stays, so the
    same run resumes."""
    import queue
    import signal
    import subprocess
    import threading

    import numpy as np

    from medview.core.errors import CancelledError
    from medview.models.card import read_card
    from medview.models.loading import load_model
    from medview.training import data as tdata
    from medview.training.types import TrainEvent, TrainingError, TrainResult

    os.makedirs(work_dir, exist_ok=True)
    config = write_worker_config(cfg, os.path.join(work_dir, "train.json"))
    out = os.path.join(work_dir, "models")
    result_json = os.path.join(work_dir, "result.json")
    cmd = [sys.executable, "-m", "medview", "train", "--config", config, "--out", out,
           "--nproc", str(nproc), "--events-json", "--result-json", result_json]
    log_path = os.path.join(work_dir, "train.log")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log,
                                start_new_session=True)
        lines: queue.Queue = queue.Queue()
        # a reader thread, so a cancel is seen within 0.2 s even while the workers print
        # nothing (reading images, rank 0 fitting the trust gate)
        reader = threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout]
                                  + [lines.put(None)], daemon=True)
        reader.start()
        try:
            while True:
                if cancel is not None and cancel.cancelled:
                    raise CancelledError("cancelled by the user")
                try:
                    raw = lines.get(timeout=0.2)
                except queue.Empty:
                    continue
                if raw is None:
                    break
                try:
                    doc = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(doc, dict) and doc.get("stage") not in (None, "saved"):
                    yield TrainEvent(**{k: doc.get(k) for k in (
                        "stage", "epoch", "epochs", "step", "steps", "loss", "message")
                        if doc.get(k) is not None}, metrics=doc.get("metrics") or {})
            proc.wait()
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait()
    if proc.returncode != 0:
        with open(log_path, "rb") as f:
            tail = f.read()[-600:].decode("utf-8", "replace")
        raise TrainingError(f"training on {nproc} processes failed: {tail.strip()}")
    with open(result_json) as f:
        doc = json.load(f)
    model_card = read_card(doc["folder"], source="path")
    from medview.inference.predictor import load_gate

    ds = tdata.open_dataset(cfg.data, cfg.label_column, cfg.label_map)
    splits = tdata.assign_splits(ds, cfg.split_fractions, cfg.seed)
    card = model_card.card
    return TrainResult(load_model(model_card), cfg, model_card.classes, card,
                       card.training.get("history", []), np.array(doc["val_probs"]),
                       np.array(doc["val_y"], dtype=int), np.array(doc["test_probs"]),
                       np.array(doc["test_y"], dtype=int), doc["warnings"], ds, splits,
                       load_gate(model_card))


def _predict_worker(argv: list[str]) -> int:
    import argparse

    from medview.inference.batch import score_shard

    p = argparse.ArgumentParser(prog="medview.training.distributed predict")
    p.add_argument("paths", nargs="+")
    p.add_argument("--model", required=True)
    p.add_argument("--csv", required=True)
    p.add_argument("--device", default="auto")
    p.add_argument("--score-out-of-scope", action="store_true", dest="score_out_of_scope")
    p.add_argument("--backend", default="auto")
    args = p.parse_args(argv)
    # scoring processes exchange only a barrier and their part files: gloo, so that
    # several may share one GPU (process k on GPU k mod the GPU count)
    comm = connect(args.device, backend="gloo")
    if args.device == "cuda":
        import torch

        from medview.training.placement import plan

        torch.cuda.set_device(torch.device(plan("predict", "cuda", comm.world).device_of(
            comm.local_rank)))
    try:
        return score_shard(args.paths, args.model, args.csv, comm, args.device,
                           args.score_out_of_scope, args.backend)
    finally:
        comm.close()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("train", "predict"):
        print("usage: python -m medview.training.distributed train|predict ...",
              file=sys.stderr)
        return 2
    worker = _train_worker if argv[0] == "train" else _predict_worker
    return worker(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
