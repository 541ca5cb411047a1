"""Where commands run: the device and process-count rules (CPU only; GPU counts are
given or mocked)."""

import numpy as np
import pytest

from medview import cli
from medview.training import placement
from medview.training.placement import PlacementError, plan

CUDA = ["cuda", "cpu"]


def test_auto_picks_cuda_then_mps_then_cpu_and_one_process_per_gpu():
    assert plan("train", "auto", gpus=2, available=CUDA).device == "cuda"
    assert plan("train", "auto", gpus=0, available=["mps", "cpu"]).device == "mps"
    assert plan("train", None, gpus=0, available=["cpu"]).device == "cpu"
    # --nproc left out: one process per GPU on CUDA, one elsewhere
    assert plan("train", "auto", gpus=4, available=CUDA).nproc == 4
    assert plan("predict", "auto", gpus=1, available=CUDA).nproc == 1
    assert plan("train", "cpu", gpus=4, available=CUDA).nproc == 1
    assert plan("train", "auto", gpus=0, available=["cpu"]).nproc == 1


def test_training_with_more_processes_than_gpus_stops_with_one_line():
    with pytest.raises(PlacementError) as exc:
        plan("train", "cuda", 2, gpus=1, available=CUDA)
    msg = str(exc.value)
    assert "\n" not in msg and "--nproc 2" in msg and "1 CUDA GPU" in msg
    assert "--nproc 1" in msg and "--device cpu" in msg
    assert plan("train", "cuda", 2, gpus=2, available=CUDA).backend == "nccl"
    assert plan("train", "cpu", 4, gpus=1, available=CUDA).backend == "gloo"
    with pytest.raises(PlacementError, match="MPS"):
        plan("train", "mps", 2, gpus=0, available=["mps", "cpu"])


def test_scoring_shares_gpus_round_robin_over_gloo():
    p = plan("predict", "cuda", 5, gpus=2, available=CUDA)
    assert p.shares_gpus and p.backend == "gloo"
    assert [p.device_of(k) for k in range(5)] == ["cuda:0", "cuda:1", "cuda:0", "cuda:1",
                                                  "cuda:0"]
    assert "5 processes, sharing 2 GPUs" in p.describe()
    assert plan("predict", "cpu", 3, gpus=2, available=CUDA).device_of(2) == "cpu"


def test_unavailable_or_nonsense_requests_are_refused_in_one_line():
    with pytest.raises(PlacementError, match="no CUDA device"):
        plan("train", "cuda", gpus=0, available=["cpu"])
    with pytest.raises(PlacementError, match="at least 1"):
        plan("predict", "cpu", 0, gpus=0, available=["cpu"])
    with pytest.raises(PlacementError, match="unknown device"):
        plan("train", "tpu", gpus=0, available=["cpu"])


def test_a_torchrun_process_without_a_gpu_of_its_own_stops_at_once():
    placement.check_local_rank("cuda", 0, gpus=1)
    placement.check_local_rank("cpu", 7, gpus=0)
    with pytest.raises(PlacementError, match="no GPU of its own"):
        placement.check_local_rank("cuda", 1, gpus=1)


@pytest.fixture
def one_gpu(monkeypatch):
    """This machine, as if it had one CUDA GPU."""
    import medview.inference.devices as devices

    monkeypatch.setattr(devices, "available_devices", lambda: list(CUDA))
    monkeypatch.setattr(placement, "cuda_gpu_count", lambda: 1)


@pytest.fixture
def launched(monkeypatch):
    from medview.training import distributed

    calls = []
    monkeypatch.setattr(distributed, "launch",
                        lambda n, worker, **kw: calls.append((n, worker)) or 0)
    return calls


def test_train_with_two_processes_on_one_gpu_stops_before_launching(
        tmp_path, one_gpu, launched, capsys):
    data = tmp_path / "data"
    data.mkdir()
    code = cli.main(["train", str(data), "--nproc", "2", "--device", "cuda",
                     "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and launched == []
    assert len(err) == 1 and err[0].startswith("error: --nproc 2 asks for 2 training")
    assert "Traceback" not in "".join(err)


def test_train_defaults_to_the_gpus_and_says_where_it_runs(tmp_path, monkeypatch, launched,
                                                          capsys):
    import medview.inference.devices as devices

    monkeypatch.setattr(devices, "available_devices", lambda: list(CUDA))
    monkeypatch.setattr(placement, "cuda_gpu_count", lambda: 2)
    data = tmp_path / "data"
    data.mkdir()
    assert cli.main(["train", str(data), "--out", str(tmp_path / "out")]) == 0
    assert launched and launched[0][0] == 2  # one process per GPU
    assert "training on CUDA (2 GPUs visible), 2 processes" in capsys.readouterr().err
    import json

    config = launched[0][1][launched[0][1].index("--config") + 1]
    with open(config) as f:
        assert json.load(f)["device"] == "cuda"  # the workers connect with NCCL


def test_predict_shares_one_gpu_between_processes(tmp_path, one_gpu, launched, capsys):
    code = cli.main(["predict", str(tmp_path), "--model", "m", "--csv",
                     str(tmp_path / "out.csv"), "--nproc", "3", "--device", "cuda"])
    assert code == 0 and launched[0][0] == 3
    worker = launched[0][1]
    assert worker[worker.index("--device") + 1] == "cuda"
    assert "3 processes, sharing 1 GPU" in capsys.readouterr().err


def _gpus(monkeypatch, n):
    import medview.inference.backends as backends
    import medview.inference.devices as devices

    monkeypatch.setattr(devices, "available_devices",
                        lambda: list(CUDA) if n else ["cpu"])
    monkeypatch.setattr(placement, "cuda_gpu_count", lambda: n)
    monkeypatch.setattr(backends, "gpu_may_be_present", lambda: n > 0)


def test_predict_to_a_csv_defaults_to_one_process_per_gpu(tmp_path, monkeypatch, launched,
                                                          capsys):
    _gpus(monkeypatch, 2)
    out = str(tmp_path / "out.csv")
    assert cli.main(["predict", str(tmp_path), "--model", "m", "--csv", out]) == 0
    assert launched and launched[0][0] == 2
    worker = launched[0][1]
    assert worker[worker.index("--device") + 1] == "cuda"
    assert "scoring on CUDA (2 GPUs visible), 2 processes" in capsys.readouterr().err


def test_predict_without_a_csv_or_without_gpus_scores_in_this_process(tmp_path,
                                                                      monkeypatch,
                                                                      launched):
    """One GPU, the CPU, or output that one process writes (JSON, stdout): nothing is
    launched (the model lookup fails here, after the decision, for want of a model)."""
    out = str(tmp_path / "out.csv")
    for gpus, argv in ((1, ["--csv", out]), (0, ["--csv", out]), (2, ["--json"]),
                       (2, []), (2, ["--csv", out, "--device", "cpu"])):
        _gpus(monkeypatch, gpus)
        assert cli.main(["predict", str(tmp_path), "--model", "no-such-model", *argv]) == 2
        assert launched == [], (gpus, argv)


def test_train_on_the_cpu_names_the_cpu(tmp_path, monkeypatch, capsys):
    """Without a GPU the training runs here, and its first line says where."""
    import medview.inference.devices as devices
    from medview.training import engine

    monkeypatch.setattr(devices, "available_devices", lambda: ["cpu"])

    def stop(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "train", stop)
    data = tmp_path / "data"
    data.mkdir()
    assert cli.main(["train", str(data), "--out", str(tmp_path / "out")]) == 130
    assert capsys.readouterr().err.splitlines()[0] == "training on the CPU"


def test_training_precision_rules():
    from medview.training.engine import training_precision

    warns: list[str] = []
    assert training_precision("auto", "cuda", True, warns) == "bfloat16"
    assert training_precision("auto", "cuda", False, warns) == "float32"
    assert training_precision("auto", "cpu", True, warns) == "float32"
    assert training_precision("float32", "cuda", True, warns) == "float32"
    assert warns == []
    assert training_precision("bfloat16", "mps", False, warns) == "float32"
    assert len(warns) == 1 and "float32" in warns[0]


def test_a_bfloat16_run_trains_its_steps_in_bfloat16_and_says_so(tmp_path):
    """Asked for bfloat16 (here on the CPU, as on a GPU by default), the training steps'
    forward passes run under autocast (the logits come out in bfloat16), evaluation does
    not (the card's probabilities are float), and the card records it."""
    import torch

    from medview.core.progress import drain
    from medview.training import engine, strategies
    from medview.training.types import TrainConfig
    from tests.tiny import write_patch_dataset

    seen = []
    real = strategies.Strategy.train_logits

    def spy(self, run, idx):
        out = real(self, run, idx)
        seen.append(out.dtype)
        return out

    data = write_patch_dataset(str(tmp_path / "data"), n_per_class=12)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(strategies.Strategy, "train_logits", spy)
        result = drain(engine.train(TrainConfig(
            data=data, base="timm:test_efficientnet", strategy="full", epochs=1,
            image_size=32, batch_size=8, augment=False, n_bootstrap=20, min_per_class=5,
            id="bf16", precision="bfloat16", audit=False)))
    assert seen and set(seen) == {torch.bfloat16}
    assert result.card.training["numerics"]["precision"].startswith("bfloat16 autocast")
    assert "precision" not in {k for k in result.card.training if k != "numerics"}
    assert result.test_probs.dtype.kind == "f" and np.isfinite(result.test_probs).all()


def test_cuda_inference_is_full_float32():
    """The switch that keeps CUDA results within 1e-4 of the CPU's turns TF32 off for
    convolutions and matrix products (flags only: no GPU needed to set them)."""
    import torch

    from medview.inference.devices import full_precision_cuda

    conv = torch.backends.cudnn.conv
    before = (conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision)
    try:
        conv.fp32_precision = "tf32"
        assert full_precision_cuda() == "float32 (TF32 off)"
        assert conv.fp32_precision == "ieee"
        assert torch.backends.cuda.matmul.fp32_precision == "ieee"
    finally:
        conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision = before
