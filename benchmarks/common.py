"""Shared helpers: a realistic CT series written with pydicom, and a table printer."""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.factory import make_dataset, write


def write_ct_series(folder: str, n: int = 300, size: int = 512) -> list[str]:
    """Write ``n`` axial 512x512 int16 CT slices (shuffled names) and return the paths."""
    from pydicom.uid import generate_uid

    os.makedirs(folder, exist_ok=True)
    uid = generate_uid()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    body = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size * 0.45) ** 2)
    paths = []
    for k in rng.permutation(n):
        pixels = (body * (1024 + 40 + (k % 50)) + rng.integers(0, 20, (size, size))).astype(
            np.int16
        )
        ds = make_dataset(pixels, series_uid=uid, position=(-250, -250, float(k) * 1.25),
                          instance=int(k) + 1, spacing=(0.98, 0.98))
        paths.append(write(ds, os.path.join(folder, f"slice{k:04d}.dcm")))
    return paths


def print_table(title: str, rows: list[tuple[str, str, str, str]]) -> None:
    header = ("measure", "value", "baseline / target", "verdict")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(4)]
    print(f"\n{title}")
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    print(line)
    print("-" * len(line))
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)))
