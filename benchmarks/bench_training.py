"""Training throughput of the engine against a plain PyTorch loop (same model and batch),
and the epoch time of feature extraction with cached features against fine-tuning.

Synthetic 128 px images in a temporary labelled folder; EfficientNet-Lite0 from the
offline ImageNet weights; CPU. Both loops run in this one process, one after the other.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

import numpy as np

try:
    from benchmarks.common import print_table
except ImportError:
    from common import print_table

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

N_PER_CLASS = 48
SIZE = 128
BATCH = 16


def _dataset(root: str) -> str:
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        os.makedirs(os.path.join(root, cls))
        for i in range(N_PER_CLASS):
            img = rng.normal(100 + (30 if cls == "b" else 0), 20, (SIZE, SIZE))
            Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(
                os.path.join(root, cls, f"person{i}_{cls}.png"))
    return root


def _engine_epoch_seconds(data: str, strategy: str, augment: bool) -> tuple[float, float]:
    from medview.training.engine import train
    from medview.training.types import TrainConfig

    cfg = TrainConfig(data=data, base="efficientnet-lite0", strategy=strategy, epochs=2,
                      image_size=SIZE, batch_size=BATCH, augment=augment, n_bootstrap=10,
                      split_fractions=(0.8, 0.1, 0.1), patience=5)
    gen = train(cfg)
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            hist = stop.value.history
            break
    # the second epoch (the first pays one-off costs); images/s as the engine measured it
    return hist[-1]["epoch_seconds"], hist[-1]["images_per_second"]


def _plain_loop_ips(n_images: int) -> float:
    import torch

    from medview.models.pretrained import load_imagenet_base

    torch.manual_seed(0)
    model, _ = load_imagenet_base("efficientnet-lite0", num_classes=2)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x_all = torch.randn(n_images, 3, SIZE, SIZE)
    y_all = torch.randint(0, 2, (n_images,))
    loss_fn = torch.nn.CrossEntropyLoss()

    def epoch():
        for i in range(0, n_images, BATCH):
            loss = loss_fn(model(x_all[i:i + BATCH]), y_all[i:i + BATCH])
            opt.zero_grad()
            loss.backward()
            opt.step()

    epoch()
    t = time.perf_counter()
    epoch()
    return n_images / (time.perf_counter() - t)


def run() -> list[tuple[str, str, str, str]]:
    with tempfile.TemporaryDirectory() as root:
        data = _dataset(os.path.join(root, "data"))
        _, eng_ips = _engine_epoch_seconds(data, "full", augment=False)
        _, eng_aug_ips = _engine_epoch_seconds(data, "full", augment=True)
        n_train = round(2 * N_PER_CLASS * 0.8)
        base_ips = _plain_loop_ips(n_train)
        full_s, _ = _engine_epoch_seconds(data, "full", augment=True)
        feat_s, feat_ips = _engine_epoch_seconds(data, "feature", augment=False)
    # the engine records epoch seconds to 0.1 ms; a cached-feature epoch of a few hundred
    # images can be shorter than that, so the ratio is given as a bound, never divided by
    # a time rounded to zero
    if feat_ips:
        feat_s = n_train / feat_ips
    if feat_s >= 1e-3:
        feat_text, ratio_text = f"{feat_s * 1000:.1f} ms", f"{full_s / feat_s:.0f}x faster"
    else:
        feat_text = "< 1 ms"
        ratio_text = f"> {full_s / 1e-3:.0f}x faster (epoch below 1 ms)"
    r = eng_ips / base_ips
    return [
        ("plain PyTorch loop, full fine-tune", f"{base_ips:.1f} img/s", "(baseline)", ""),
        ("engine, full fine-tune, no augmentation", f"{eng_ips:.1f} img/s",
         f"{r:.2f}x (target >= 0.9x)", "PASS" if r >= 0.9 else "FAIL"),
        ("engine, full fine-tune, with augmentation", f"{eng_aug_ips:.1f} img/s",
         f"{eng_aug_ips / base_ips:.2f}x baseline", ""),
        ("epoch, full fine-tune", f"{full_s:.2f} s", "(reported)", ""),
        ("epoch, feature extraction (cached features)", feat_text, ratio_text, ""),
    ]


if __name__ == "__main__":
    print_table(f"Training throughput (Lite0, {SIZE} px, batch {BATCH}, CPU)", run())
