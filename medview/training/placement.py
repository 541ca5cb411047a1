"""Where a command runs: the device and the number of processes, decided once, up front.

The rules (``medview train`` and ``medview predict``, the wizard, the cluster scripts):

- ``--device auto`` (the default everywhere) is CUDA when a CUDA GPU is visible, else
  Apple's MPS, else the CPU.
- ``--nproc`` left out is one process per CUDA GPU on CUDA, one process otherwise, for
  training, the cluster scripts and ``medview predict --csv`` (predict's other outputs,
  JSON, stdout, SR, secondary captures, PACS, are written by one process).
- Training with more processes than CUDA GPUs stops at once with one line saying so:
  every DDP training process needs a GPU of its own (NCCL cannot put two ranks on one
  device). Training on MPS runs in one process.
- Scoring with more processes than GPUs shares them: process k scores on GPU
  k mod (number of GPUs), and the processes talk over gloo (they only exchange a
  barrier and their part files), so nothing needs a GPU per process.

Imports torch only to count GPUs, and only when the caller did not say how many there are
(tests pass them).
"""

from __future__ import annotations

from dataclasses import dataclass

from medview.core.errors import MedviewError

TASKS = ("train", "predict")


class PlacementError(MedviewError, ValueError):
    """A device or process count this machine cannot honour."""


@dataclass(frozen=True)
class Placement:
    task: str
    device: str  # "cuda", "mps" or "cpu": resolved, never "auto"
    nproc: int
    gpus: int  # CUDA GPUs visible to this process

    @property
    def shares_gpus(self) -> bool:
        """More processes than GPUs (scoring only)."""
        return self.device == "cuda" and self.nproc > self.gpus

    @property
    def backend(self) -> str:
        """The processes' communication: NCCL for training on CUDA, gloo otherwise."""
        return "nccl" if self.task == "train" and self.device == "cuda" else "gloo"

    def device_of(self, local_rank: int) -> str:
        """The device process ``local_rank`` computes on (``cuda:k`` on CUDA)."""
        if self.device != "cuda":
            return self.device
        return f"cuda:{local_rank % max(1, self.gpus)}"

    def describe(self) -> str:
        """One line for the user: what runs where."""
        what = {"cuda": f"CUDA ({self.gpus} GPU{'s' if self.gpus != 1 else ''} visible)",
                "mps": "Apple MPS", "cpu": "the CPU"}[self.device]
        verb = "training" if self.task == "train" else "scoring"
        if self.nproc == 1:
            return f"{verb} on {what}"
        share = (f", sharing {self.gpus} GPU{'s' if self.gpus != 1 else ''}"
                 if self.shares_gpus else "")
        return f"{verb} on {what}, {self.nproc} processes{share}"


def cuda_gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def plan(task: str, device: str | None = "auto", nproc: int | None = None, *,
         gpus: int | None = None, available: list[str] | None = None) -> Placement:
    """The placement of ``task`` for the requested ``device`` and ``nproc`` (None: the
    default). ``gpus`` / ``available``: the CUDA GPU count and available devices (found
    out when not given). Raises :class:`PlacementError` with one line a user can act
    on."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}")
    if available is None:
        from medview.inference.devices import available_devices

        available = available_devices()
    if gpus is None:
        gpus = cuda_gpu_count() if "cuda" in available else 0
    from medview.inference.devices import auto_device

    requested = device or "auto"
    if requested == "auto":
        resolved = auto_device(available)
    elif requested in available:
        resolved = requested
    elif requested in ("cuda", "mps", "cpu"):
        raise PlacementError(f"--device {requested} was asked for, but this machine has "
                             f"no {requested.upper()} device (available: "
                             f"{', '.join(available)})")
    else:
        raise PlacementError(f"unknown device {requested!r}; use auto, cuda, mps or cpu")
    if nproc is None:
        nproc = max(1, gpus) if resolved == "cuda" else 1
    if nproc < 1:
        raise PlacementError(f"--nproc must be at least 1 (got {nproc})")
    if task == "train" and resolved == "cuda" and nproc > gpus:
        raise PlacementError(
            f"--nproc {nproc} asks for {nproc} training processes, but this machine has "
            f"{gpus} CUDA GPU{'s' if gpus != 1 else ''}: each training process needs a GPU "
            f"of its own. Use --nproc {gpus} (the default), or --device cpu to train on "
            f"{nproc} CPU processes.")
    if task == "train" and resolved == "mps" and nproc > 1:
        raise PlacementError("training on several processes needs CUDA GPUs or the CPU; "
                             "on Apple MPS use --nproc 1, or --device cpu")
    return Placement(task, resolved, nproc, gpus)


def check_local_rank(device: str, local_rank: int, gpus: int | None = None) -> None:
    """Inside a training process started by torchrun (the cluster scripts): stop at once,
    in one line, when this process has no GPU of its own (before NCCL fails with "invalid
    device ordinal", and before torchrun retries)."""
    if not str(device).startswith("cuda"):
        return
    gpus = cuda_gpu_count() if gpus is None else gpus
    if local_rank >= gpus:
        raise PlacementError(
            f"training process {local_rank} has no GPU of its own: {gpus} CUDA "
            f"GPU{'s' if gpus != 1 else ''} visible on this node. Start at most {gpus} "
            "processes per node (torchrun --nproc-per-node).")


def main() -> int:
    """``python -m medview.training.placement``: the default number of processes on
    this machine (one per CUDA GPU, else 1), for the cluster scripts."""
    print(plan("train").nproc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
