"""The training input pipeline: the next batches are made while the model computes this
one.

A training step needs its films gathered, varied (the robust recipe's hospital
variations, lungs pasted or hidden: numpy and PIL), augmented (rotation, scale, shift,
brightness, contrast) and normalised: ~4 ms of CPU per 224 px film, which on one thread
caps a GPU at a few hundred images per second. Here pipeline threads
(:func:`pipeline_workers`) make the batches of an epoch ahead of the training loop, in
order (:class:`medview.core.ahead.InOrder`):

- on the CPU, one thread makes the whole model input (the cores do the steps);
- on a GPU, the threads do what only a CPU can (gathering, the robust variations, the
  random draws) and hand over uint8 films in pinned memory with the drawn augmentation;
  the training loop copies them asynchronously (a quarter of the bytes of the float
  input) and the geometric/brightness augmentation and the normalisation run on the GPU.

Each batch's random draws come from its own generator, seeded by (seed, process,
epoch, step) (:func:`step_generator`): the draws do not depend on how many threads
made the batches or in which order they finished, and a resumed run draws what the
uninterrupted one would have.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from medview.core.ahead import InOrder, threads_beside_device
from medview.inference.batch import on_gpu

if TYPE_CHECKING:
    from torch import Generator, Tensor


@dataclass
class Augmentation:
    """The drawn parameters of one batch's geometric and brightness augmentation."""

    theta: Tensor  # (B, 2, 3) affine matrices (grid_sample convention)
    contrast: Tensor  # (B,) factor around each film's mean
    brightness: Tensor  # (B,) shift, in units of the full range

    def to(self, device) -> Augmentation:
        return Augmentation(self.theta.to(device, non_blocking=True),
                            self.contrast.to(device, non_blocking=True),
                            self.brightness.to(device, non_blocking=True))


def draw_augmentation(b: int, cfg, gen: Generator) -> Augmentation:
    """Radiograph-safe augmentation parameters for ``b`` films: small rotation, scale and
    shift, brightness/contrast; a horizontal flip only if ``cfg.hflip`` (anatomy is
    lateralised)."""
    import math

    import torch

    def u(lo, hi):
        return torch.rand(b, generator=gen) * (hi - lo) + lo

    ang = u(-cfg.rotation_deg, cfg.rotation_deg) * math.pi / 180
    sc = u(*cfg.scale_range)
    tx, ty = u(-cfg.translate, cfg.translate) * 2, u(-cfg.translate, cfg.translate) * 2
    cos, sin = torch.cos(ang) / sc, torch.sin(ang) / sc
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    if cfg.hflip:
        flip = torch.rand(b, generator=gen) < 0.5
        theta[flip, 0, :2] *= -1
    return Augmentation(theta, u(1 - cfg.contrast, 1 + cfg.contrast),
                        u(-cfg.brightness, cfg.brightness))


def apply_augmentation(batch_u8: Tensor, aug: Augmentation) -> Tensor:
    """``aug`` applied to a (B, H, W) batch of 0-255 films on whichever device the batch
    is: float (B, H, W), 0-255."""
    import torch.nn.functional as F

    x = batch_u8.float().div(255.0).unsqueeze(1)
    grid = F.affine_grid(aug.theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * aug.contrast.view(-1, 1, 1, 1) + mean
    x = x + aug.brightness.view(-1, 1, 1, 1)
    return (x.clamp_(0, 1) * 255).squeeze(1)


@dataclass
class StepInput:
    """One training batch as a pipeline thread made it: the model input itself (``x``,
    on the CPU), or the films and their drawn augmentation for the device to finish
    (:meth:`model_input`). ``idx`` are the batch's positions in the training split."""

    idx: Tensor
    x: Tensor | None = None
    films: Tensor | None = None  # uint8 (B, H, W), pinned for a GPU
    augmentation: Augmentation | None = None

    def model_input(self, device, to_input) -> Tensor:
        """The model input on ``device`` (the films copied asynchronously, augmented
        and normalised there when the thread left that to the device)."""
        if self.x is not None:
            return self.x.to(device, non_blocking=True)
        assert self.films is not None
        films = self.films.to(device, non_blocking=True)
        if self.augmentation is not None:
            films = apply_augmentation(films, self.augmentation.to(device))
        return to_input(films)


def make_step_input(idx: Tensor, films: Tensor, aug: Augmentation | None, device: str,
                    to_input) -> StepInput:
    """What a pipeline thread hands over for ``device`` (see the module's description)."""
    if on_gpu(device):
        films = films.contiguous()
        if str(device).startswith("cuda"):
            films = films.pin_memory()
        return StepInput(idx, films=films, augmentation=aug)
    x = to_input(apply_augmentation(films, aug) if aug is not None else films)
    return StepInput(idx, x=x)


def pipeline_workers(device: str) -> int:
    """Threads making training batches: one on the CPU (its cores run the steps), the
    cores less one (at most 12) for a GPU."""
    return threads_beside_device(12) if on_gpu(device) else 1


def step_generator(seed: int, rank: int, epoch: int, step: int) -> Generator:
    """The random generator of one batch: a function of (seed, process, epoch, step)."""
    import torch

    state = np.random.SeedSequence([seed, rank, epoch, step]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)


def batches_ahead(make, order: Tensor, batch_size: int, steps: int, seeds: tuple[int, ...],
                  workers: int) -> InOrder[Any]:
    """``make(idx, generator)`` (a :class:`StepInput`) for each step of an epoch whose
    order is ``order``, made by ``workers`` threads ahead of the training loop, in order;
    ``seeds`` = (seed, process, epoch) for :func:`step_generator`."""

    def one(step: int):
        return make(order[step * batch_size:(step + 1) * batch_size],
                    step_generator(*seeds, step))

    return InOrder(one, range(steps), workers, 2 * workers, "medview-batches")
