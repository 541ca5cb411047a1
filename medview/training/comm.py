"""What the training engine sees of the other processes: rank, world size, the few
collectives it needs, and how to wrap a module for training. The single-process
:class:`Comm` does nothing, so one code path trains on one process or many;
:class:`TorchComm` is a worker of a torchrun job (:mod:`medview.training.distributed`
launches them).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

#: what torchrun sets in every worker's environment
_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
#: seconds a collective (or the connection at start) may wait for the other processes
ENV_TIMEOUT = "MEDVIEW_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 300.0


@dataclass
class Comm:
    """One process: every collective is the identity."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str = ""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, items):
        """This process's share of ``items`` (every ``world``-th, from ``rank``)."""
        return items[self.rank::self.world]

    def sum(self, values: list[float]) -> list[float]:
        return list(values)

    def gather_strided(self, local: np.ndarray, n: int) -> np.ndarray:
        """Reassemble rows computed by each rank on :meth:`shard` of ``n`` items, in the
        items' order, on every rank."""
        return local

    def broadcast(self, values: list[float]) -> list[float]:
        """Rank 0's values on every rank (one decision)."""
        return list(values)

    def barrier(self) -> None:
        return None

    def wrap(self, module):
        """The module to train with (DDP on many processes)."""
        return module

    def close(self) -> None:
        return None


class TorchComm(Comm):
    """A process of a torchrun job, connected by ``torch.distributed``."""

    def _device(self):
        import torch

        return (torch.device("cuda", self.local_rank) if self.backend == "nccl"
                else torch.device("cpu"))

    def sum(self, values: list[float]) -> list[float]:
        import torch
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self._device())
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.cpu().tolist()

    def gather_strided(self, local: np.ndarray, n: int) -> np.ndarray:
        import torch
        import torch.distributed as dist

        per = -(-n // self.world)
        width = local.shape[1:] if local.ndim > 1 else ()
        pad = np.zeros((per, *width), dtype=np.float64)
        pad[:len(local)] = local
        t = torch.from_numpy(pad).to(self._device())
        parts = [torch.empty_like(t) for _ in range(self.world)]
        dist.all_gather(parts, t)
        out = np.zeros((n, *width), dtype=np.float64)
        for r, part in enumerate(parts):
            count = len(range(r, n, self.world))
            out[r::self.world] = part.cpu().numpy()[:count]
        return out.astype(local.dtype if local.size else np.float64)

    def broadcast(self, values: list[float]) -> list[float]:
        import torch
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self._device())
        dist.broadcast(t, src=0)
        return t.cpu().tolist()

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier()

    def wrap(self, module):
        """DDP around ``module``. On CUDA (NCCL) batch norm becomes SyncBatchNorm, so
        trained batch-norm layers see the statistics of the whole effective batch as on
        one process; gloo on CPU has no SyncBatchNorm, so there each process normalises
        with its own batch (frozen batch norm, in eval mode, is unaffected)."""
        from torch.nn import SyncBatchNorm
        from torch.nn.parallel import DistributedDataParallel

        if self.backend == "nccl":
            module = SyncBatchNorm.convert_sync_batchnorm(module)
            return DistributedDataParallel(module, device_ids=[self.local_rank])
        return DistributedDataParallel(module)

    def close(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def in_torchrun() -> bool:
    return all(k in os.environ for k in _ENV) and int(os.environ["WORLD_SIZE"]) > 1


def backend_for(device: str) -> str:
    """NCCL for CUDA training, gloo otherwise."""
    return "nccl" if str(device).startswith("cuda") else "gloo"


def connect(device: str = "cpu", backend: str | None = None) -> Comm:
    """The communicator of this process: torchrun's environment, or a single process.
    ``backend``: NCCL for CUDA training (one GPU per process: a process without one
    stops at once, :func:`placement.check_local_rank`), gloo otherwise (given as gloo by
    scoring, whose processes may share a GPU)."""
    if not in_torchrun():
        return Comm()
    import datetime

    import torch.distributed as dist

    backend = backend or backend_for(device)
    local_rank = int(os.environ["LOCAL_RANK"])
    if backend == "nccl":
        import torch

        from medview.training.placement import check_local_rank

        check_local_rank(device, local_rank)
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        # Collectives run every step; the longest wait is for rank 0 writing a checkpoint.
        # A rendezvous that hangs (seen now and then on gloo after torchrun restarted the
        # workers) fails after this and torchrun tries again.
        timeout_s = float(os.environ.get(ENV_TIMEOUT, DEFAULT_TIMEOUT_S))
        timeout = datetime.timedelta(seconds=timeout_s)
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        # the process group's keys live under this run's and this restart's own prefix,
        # so a restarted worker can never read an address a dead one left behind
        store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                              world, is_master=rank == 0 and os.environ.get(
                                  "TORCHELASTIC_USE_AGENT_STORE", "").lower() != "true",
                              timeout=timeout)
        prefix = (f"medview/{os.environ.get('TORCHELASTIC_RUN_ID', 'run')}/"
                  f"{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}")
        dist.init_process_group(backend, store=dist.PrefixStore(prefix, store), rank=rank,
                                world_size=world, timeout=timeout)
    return TorchComm(dist.get_rank(), dist.get_world_size(), local_rank, backend)
