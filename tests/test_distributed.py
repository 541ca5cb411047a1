"""Training and batch scoring on several processes (torchrun, DDP, gloo on CPU), and
resuming from checkpoints. Tiny model, tiny synthetic data, 2 processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from safetensors.numpy import load_file

from medview.core.errors import CancelledError
from medview.core.progress import CancelToken, drain
from medview.training.engine import train
from medview.training.types import TrainConfig
from tests.tiny import write_patch_dataset

# one of the slowest files: `pytest -m "not slow"` leaves it out
pytestmark = pytest.mark.slow

# a transformer test network: no batch norm, so one process with batch 16 and two
# processes with batch 8 each compute the same gradients (batch norm on CPU normalises
# per process; on CUDA medview uses SyncBatchNorm)
SETTINGS = {"base": "timm:test_vit", "strategy": "full", "epochs": 6, "image_size": 64,
            "augment": False, "n_bootstrap": 20, "min_per_class": 5, "patience": 100,
            "lr": 2e-3}

# two processes against one: float summation order only, grown by AdamW's normalised steps
# over 6 epochs (up to 1.5e-4 seen with timm 1.0.31); a wrong effective batch moves the
# weights by ~1e-2
DDP_TOLERANCE = 5e-4


def medview(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "medview", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The data, and the one-process reference run (batch 16)."""
    root = tmp_path_factory.mktemp("ddp")
    data = write_patch_dataset(str(root / "data"), n_per_class=32)

    def config(name: str, batch: int, **extra) -> str:
        path = str(root / f"{name}.json")
        with open(path, "w") as f:
            json.dump({"data": data, "id": name, "batch_size": batch, **SETTINGS, **extra}, f)
        return path

    r = medview("train", "--config", config("single", 16), "--out", str(root / "models"))
    assert r.returncode == 0, r.stderr
    return root, config


def weights(folder: str) -> dict:
    return load_file(os.path.join(folder, "weights.safetensors"))


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


def test_two_processes_train_the_same_weights_as_one_with_the_same_effective_batch(runs):
    root, config = runs
    r = medview("train", "--config", config("ddp", 8), "--out", str(root / "models"),
                "--nproc", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    ddp = os.path.join(root, "models", "ddp")
    diff = max_difference(weights(ddp), weights(os.path.join(root, "models", "single")))
    assert diff < DDP_TOLERANCE, diff
    with open(os.path.join(ddp, "card.json")) as f:
        training = json.load(f)["training"]
    assert (training["world_size"], training["effective_batch_size"]) == (2, 16)
    assert training["distributed"] == "DistributedDataParallel, gloo, 2 processes"
    assert not os.path.exists(os.path.join(root, "models", ".medview-checkpoints"))
    # every epoch's loss and validation AUC agree with the one-process run
    with open(os.path.join(root, "models", "single", "card.json")) as f:
        single = json.load(f)["training"]["history"]
    assert [round(h["loss"], 4) for h in training["history"]] == \
        [round(h["loss"], 4) for h in single]


def _workers(out: str) -> list[int]:
    """The training workers writing into ``out`` (torchrun's children)."""
    pids = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read().split(b"\0")
            except OSError:
                continue
            if b"medview.training.distributed" in cmd and out.encode() in cmd:
                pids.append(int(pid))
    return pids


def test_a_killed_worker_is_restarted_and_the_run_finishes_from_its_checkpoint(runs):
    root, config = runs
    out = str(root / "killed-models")
    cfg = config("killme", 8)
    log_path = str(root / "killed.log")
    log = open(log_path, "w")  # noqa: SIM115  (a file, not a pipe: nothing can block)
    # a restarted gloo rendezvous now and then hangs; fail it fast so torchrun retries
    env = dict(os.environ, MEDVIEW_DIST_TIMEOUT_S="20")
    proc = subprocess.Popen([sys.executable, "-m", "medview", "train", "--config", cfg,
                             "--out", out, "--nproc", "2"], stdout=log,
                            stderr=subprocess.STDOUT, text=True, env=env)
    killed = None
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline and killed is None:
        for folder, _dirs, files in os.walk(out):
            if "state.json" in files:
                try:
                    with open(os.path.join(folder, "state.json")) as f:
                        epoch = json.load(f)["epoch"]
                except (OSError, ValueError):
                    continue
                pids = _workers(out)
                if epoch >= 2 and pids:
                    os.kill(max(pids), signal.SIGKILL)  # one rank dies mid-run
                    killed = epoch
        time.sleep(0.01)
    proc.wait(timeout=300)
    log.close()
    with open(log_path) as f:
        output = f.read()
    assert killed is not None, "the run ended before a worker could be killed"
    assert proc.returncode == 0, output[-3000:]
    assert "resuming after epoch" in output
    resumed_at = int(output.split("resuming after epoch ")[1].split()[0])
    assert resumed_at >= killed  # from the checkpoint, not from zero
    assert "epoch 1/6" not in output.split("resuming after epoch")[1]
    diff = max_difference(weights(os.path.join(out, "killme")),
                          weights(os.path.join(root, "models", "single")))
    assert diff < DDP_TOLERANCE, diff


def test_one_process_run_resumes_where_it_was_cancelled(tmp_path):
    data = write_patch_dataset(str(tmp_path / "data"), n_per_class=16)
    settings = dict(data=data, base="timm:test_efficientnet", strategy="full", epochs=4,
                    image_size=64, batch_size=8, augment=True, n_bootstrap=20,
                    min_per_class=5, patience=100, id="resume")
    ckpt = str(tmp_path / "ckpt")
    token = CancelToken()
    gen = train(TrainConfig(**settings), token, checkpoint_dir=ckpt)
    with pytest.raises(CancelledError):
        for ev in gen:
            if ev.stage == "epoch" and ev.epoch == 2:
                token.cancel()
    events = []
    result = drain(train(TrainConfig(**settings), checkpoint_dir=ckpt), events.append)
    assert [e.epoch for e in events if e.stage == "resume"] == [2]
    assert [e.epoch for e in events if e.stage == "epoch"] == [3, 4]
    reference = drain(train(TrainConfig(**settings)))
    a, b = result.model.state_dict(), reference.model.state_dict()
    assert max(float((a[k].float() - b[k].float()).abs().max()) for k in a) == 0.0
    # a checkpoint of other settings is not used
    other = train(TrainConfig(**{**settings, "lr": 5e-4}), checkpoint_dir=ckpt)
    assert not [e for e in other if getattr(e, "stage", "") == "resume"]


def test_prediction_on_two_processes_writes_the_same_csv_as_one(tiny_model, tmp_path):
    import shutil

    from tests.orthanc import write_study

    model, data = tiny_model
    inputs = tmp_path / "inputs"
    for cls in ("patch", "plain"):
        (inputs / cls).mkdir(parents=True)
        for name in sorted(os.listdir(os.path.join(data, cls)))[:4]:
            shutil.copy(os.path.join(data, cls, name), inputs / cls / name)
    write_study(str(inputs / "dicom"), modality="CT", n=3, size=32)
    (inputs / "broken.png").write_bytes(b"not a png")
    one, two = str(tmp_path / "one.csv"), str(tmp_path / "two.csv")
    env = dict(os.environ, MEDVIEW_AUDIT_DIR=str(tmp_path / "audit"))
    r1 = medview("predict", str(inputs), "--model", model, "--csv", one, env=env)
    assert r1.returncode == 0, r1.stderr
    r2 = medview("predict", str(inputs), "--model", model, "--csv", two, "--nproc", "2",
                 env=env)
    assert r2.returncode == 0, r2.stderr[-3000:]
    # every row of both runs is in one intact audit chain; the workers say their rank
    from medview.core import audit

    entries = [e for _f, _n, e in audit.iter_entries(str(tmp_path / "audit"))]
    assert len(entries) == 18 and {e.get("rank") for e in entries[9:]} == {0, 1}
    assert audit.verify(str(tmp_path / "audit")).ok
    with open(one, "rb") as f1, open(two, "rb") as f2:
        a, b = f1.read(), f2.read()
    assert a == b
    assert a.count(b"\n") == 1 + 8 + 1  # header, 8 images, one CT series
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]  # no part files left


def test_cluster_scripts_are_written_and_valid_shell(tmp_path):
    data = write_patch_dataset(str(tmp_path / "data"), n_per_class=6)
    r = medview("train", data, "--base", "timm:test_efficientnet", "--strategy", "full",
                "--cluster-script", str(tmp_path / "cluster"), "--out", str(tmp_path / "m"))
    assert r.returncode == 0, r.stderr
    folder = tmp_path / "cluster"
    cfg = json.loads((folder / "train.json").read_text())
    assert cfg["data"] == data and cfg["strategy"] == "full"
    for name in ("run_torchrun.sh", "run_slurm.sh"):
        text = (folder / name).read_text()
        assert "-m medview.training.distributed train --config" in text
        assert "--max-restarts=3" in text and str(folder / "train.json") in text
        assert os.access(folder / name, os.X_OK)
        assert subprocess.run(["bash", "-n", str(folder / name)]).returncode == 0
    assert "#SBATCH --nodes" in (folder / "run_slurm.sh").read_text()
    assert not os.path.exists(tmp_path / "m")  # nothing trained
