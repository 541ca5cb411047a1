"""Tiny synthetic datasets and models for tests (no real data, seconds on a CPU)."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

# rows, cols of the deciding patch in 64 x 64 images: the top-right quadrant, which is one
# cell of the 2 x 2 final feature map of timm's test_efficientnet at this size
PATCH = (slice(0, 32), slice(32, 64))


def write_patch_dataset(root: str, n_per_class: int = 24, size: int = 64, seed: int = 0,
                        patients: bool = True) -> str:
    """Two classes: ``patch`` (a checkerboard texture at PATCH) and ``plain`` (none).

    Two images per patient (file names ``pNNN_k.png``) when ``patients``.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    checker = np.where(((yy // 2) + (xx // 2)) % 2 == 0, 1.0, -1.0)
    for cls in ("patch", "plain"):
        os.makedirs(os.path.join(root, cls), exist_ok=True)
        for i in range(n_per_class):
            # brightness carries no information (random level, the texture has the
            # background's mean); only the fine texture inside PATCH decides the class
            bg = rng.uniform(80, 140)
            img = rng.normal(bg, 8, (size, size))
            if cls == "patch":
                img[PATCH] = bg + rng.uniform(50, 70) * checker[PATCH]
            img = img.clip(0, 255).astype(np.uint8)
            pid = i // 2 if patients else i
            name = f"person{pid + (1000 if cls == 'plain' else 0)}_{i % 2}.png"
            Image.fromarray(img).save(os.path.join(root, cls, name))
    return root


def train_tiny(data: str, out: str, model_id: str = "tiny-patch", **kw) -> str:
    """Train the tiny timm test network on ``data`` and export it into ``out``."""
    from medview.core.progress import drain
    from medview.training.engine import train
    from medview.training.export import export_model
    from medview.training.types import TrainConfig

    args = dict(data=data, base="timm:test_efficientnet", strategy="full", epochs=8,
                image_size=64, batch_size=8, lr=2e-3, augment=False, n_bootstrap=50,
                min_per_class=5, id=model_id, patience=6)
    args.update(kw)
    result = drain(train(TrainConfig(**args)))
    return export_model(result.model, result.card, out, gate=result.gate,
                        graph=result.graph)
