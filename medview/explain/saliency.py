"""captum wrappers: (model, input, target class, method) -> map aligned with the image.

Methods: ``gradcam`` (target layer found automatically: the block producing the final
spatial feature map), ``ig`` (Integrated Gradients from a blurred copy of the image: a
black baseline credits every bright pixel, while a blurred one keeps brightness and
removes only the structure the model could use), ``smoothgrad``
(noise-averaged gradients) and ``occlusion`` (a grey patch slid over the image). Each map
is non-negative, scaled to [0, 1] at the model's input size, then resized back to the
slice's own size (the preprocessing resize is undone), so it overlays the displayed image
pixel for pixel.
"""

from __future__ import annotations

import contextlib

import numpy as np

from medview.core.progress import CancelToken, Progress
from medview.imaging.model_input import resize_map

METHODS = {
    "gradcam": "Grad-CAM",
    "ig": "Integrated Gradients",
    "smoothgrad": "SmoothGrad",
    "occlusion": "Occlusion",
}


def find_target_layer(model, input_size: tuple[int, int] = (64, 64)):
    """The module that outputs the network's final spatial feature map.

    A forward pass of ``forward_features`` on a dummy input records, in execution order,
    every module whose output is a 4-D tensor of the final feature shape; the last one to
    finish is the whole block producing it (for timm EfficientNets: ``bn2``, i.e. after
    the activation), which is the standard Grad-CAM target. Models without
    ``forward_features`` fall back to the last ``Conv2d``.
    """
    import torch

    cached = getattr(model, "_medview_cam_layer", None)
    if cached is not None:
        return cached
    if not hasattr(model, "forward_features"):
        convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
        if not convs:
            raise ValueError("Grad-CAM needs a convolutional model")
        return convs[-1]
    seen: list[tuple[torch.nn.Module, tuple]] = []
    hooks = [m.register_forward_hook(
        lambda mod, _inp, out: seen.append((mod, tuple(out.shape)))
        if isinstance(out, torch.Tensor) and out.dim() == 4 else None)
        for m in model.modules() if m is not model]
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            feats = model.forward_features(torch.zeros(1, 3, *input_size, device=device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    final = [m for m, shape in seen if shape == tuple(feats.shape)]
    if not final:
        raise ValueError("could not find the layer producing the final feature map")
    # found once per model (the search costs a forward pass)
    object.__setattr__(model, "_medview_cam_layer", final[-1])
    return final[-1]


def gaussian_blur(x, sigma: float):
    """Separable Gaussian blur of a (N, C, H, W) tensor with edge replication."""
    import torch
    import torch.nn.functional as F

    radius = max(1, round(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    g = torch.exp(-(t**2) / (2 * sigma**2))
    g = g / g.sum()
    c = x.shape[1]
    y = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"),
                 g.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(F.pad(y, (0, 0, radius, radius), mode="replicate"),
                    g.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def normalise_map(attr: np.ndarray) -> np.ndarray:
    a = np.nan_to_num(np.asarray(attr, np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    a = np.maximum(a, 0.0)
    hi = np.percentile(a, 99.5) if a.size else 0.0
    if hi <= 0:
        hi = a.max() if a.size and a.max() > 0 else 1.0
    return np.clip(a / hi, 0.0, 1.0).astype(np.float32)


@contextlib.contextmanager
def cancel_points(model, cancel: CancelToken | None, expected_forwards: int = 0):
    """Make every module's forward pass a cancel point: captum runs many forwards (one per
    occlusion window batch, IG step batch, noise sample batch) inside one call that cannot
    yield, so a cancelled job stops at the next module instead of after tens of seconds.
    Each forward of the whole model is also reported as progress (``cancel.report``)
    against ``expected_forwards``."""
    if cancel is None:
        yield
        return

    def check(_module, _inputs):
        cancel.raise_if_cancelled()

    done = [0]

    def count(_module, _inputs):
        done[0] += 1
        total = max(expected_forwards, done[0])
        cancel.report(Progress(done[0], total, "saliency"))

    handles = [m.register_forward_pre_hook(check) for m in model.modules()]
    handles.append(model.register_forward_pre_hook(count))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


#: Integrated Gradients' steps per forward pass (captum's ``internal_batch_size``): the
#: method is allocation-bound on a CPU, and 4 steps per pass was the fastest choice
#: (benchmarks/bench_backends.py; docs/performance.md), the maps equal to all-at-once
#: within 4e-7. Each pass is also a cancel point.
IG_INTERNAL_BATCH = 4


def expected_forwards(method: str, shape: tuple[int, int], ig_steps: int = 24,
                      smooth_samples: int = 12) -> int:
    """How many forward passes of the whole model a method runs (for progress)."""
    if method == "ig":
        return -(-ig_steps // min(IG_INTERNAL_BATCH, ig_steps))
    if method == "smoothgrad":
        return -(-smooth_samples // min(4, smooth_samples))
    if method == "occlusion":
        h, w = shape
        k = max(4, min(h, w) // 8)
        stride = max(2, k // 2)
        windows = ((h - k) // stride + 1) * ((w - k) // stride + 1)
        return 1 + -(-windows // 16)
    return 1


def explain(model, tensor: np.ndarray, target: int, method: str, *, black: np.ndarray | None = None,
            ig_steps: int = 24, smooth_samples: int = 12, smooth_std: float = 0.15,
            cancel: CancelToken | None = None) -> np.ndarray:
    """Saliency for one prepared input ``tensor`` (C, H, W) -> (H, W) map in [0, 1].

    ``black`` is the normalised value of a black pixel per channel (the occlusion fill);
    it defaults to zeros. With ``cancel``, a cancelled token stops the computation at the
    next forward step of any module (:class:`~medview.core.errors.CancelledError`).
    """
    import torch
    from captum.attr import (
        IntegratedGradients,
        LayerAttribution,
        LayerGradCam,
        NoiseTunnel,
        Occlusion,
        Saliency,
    )

    if method not in METHODS:
        raise ValueError(f"unknown saliency method {method!r}; use one of {', '.join(METHODS)}")
    model.eval()
    device = next(model.parameters()).device
    x = torch.from_numpy(np.ascontiguousarray(tensor))[None].to(device)
    if method != "gradcam":  # Grad-CAM needs gradients at the layer only, not the input
        x.requires_grad_(True)
    c = x.shape[1]
    base_vals = torch.zeros(c) if black is None else torch.as_tensor(black, dtype=torch.float32)
    baseline = base_vals.view(1, c, 1, 1).expand_as(x).to(device).contiguous()
    expected = expected_forwards(method, tuple(x.shape[-2:]), ig_steps, smooth_samples)
    with torch.enable_grad(), cancel_points(model, cancel, expected):
        if method == "gradcam":
            cam = LayerGradCam(model, find_target_layer(model, tuple(x.shape[-2:])))
            attr = cam.attribute(x, target=target, relu_attributions=True)
            attr = LayerAttribution.interpolate(attr, tuple(x.shape[-2:]), "bilinear")
            out = attr[0, 0]
        elif method == "ig":
            ig = IntegratedGradients(model)
            sigma = max(2.0, min(x.shape[-2:]) / 32)
            blurred = gaussian_blur(x.detach(), sigma)
            # steps in chunks (IG_INTERNAL_BATCH): faster than one batch of all steps on
            # a CPU (smaller allocations), and each chunk is a cancel point
            attr = ig.attribute(x, baselines=blurred, target=target, n_steps=ig_steps,
                                internal_batch_size=min(IG_INTERNAL_BATCH, ig_steps))
            out = attr[0].abs().sum(0)
        elif method == "smoothgrad":
            nt = NoiseTunnel(Saliency(model))
            attr = nt.attribute(x, nt_type="smoothgrad", nt_samples=smooth_samples,
                                stdevs=smooth_std, target=target, abs=True,
                                nt_samples_batch_size=min(4, smooth_samples))
            out = attr[0].sum(0)
        else:
            h, w = x.shape[-2:]
            k = max(4, min(h, w) // 8)
            occ = Occlusion(model)
            attr = occ.attribute(x, sliding_window_shapes=(c, k, k),
                                 strides=(c, max(2, k // 2), max(2, k // 2)),
                                 baselines=baseline, target=target, perturbations_per_eval=16)
            out = attr[0].sum(0)
    return normalise_map(out.detach().float().cpu().numpy())


def saliency_for_slice(model, tensor: np.ndarray, target: int, method: str,
                       shape: tuple[int, int], **kw) -> np.ndarray:
    """:func:`explain`, resized back to the slice's ``shape`` = (rows, cols)."""
    return np.clip(resize_map(explain(model, tensor, target, method, **kw), shape), 0, 1)
