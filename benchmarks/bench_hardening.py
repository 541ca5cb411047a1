"""What the hardening costs and what it bounds.

- Compressed series: the frame pre-checks (each compressed frame's own header compared
  with Rows/Columns/Samples before a decoder runs) against the same loader with them
  switched off, and a plain pydicom read-and-stack loop, in one run, best of N.
- A folder holding a good series next to every hostile file class: ``medview info`` in a
  process of its own, wall time and peak RSS (target: seconds, < 1.5 GB).
"""

from __future__ import annotations

import gc
import glob
import os
import sys
import tempfile
import time

import numpy as np
import pydicom

try:
    from benchmarks.common import print_table
except ImportError:  # run as a script
    from common import print_table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_rle_series(folder: str, n: int = 60, size: int = 512) -> None:
    from pydicom.uid import RLELossless, generate_uid

    from tests.factory import make_dataset, write

    uid = generate_uid()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    body = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size * 0.45) ** 2)
    for k in range(n):
        px = (body * (1064 + k % 50) + rng.integers(0, 20, (size, size))).astype(np.int16)
        ds = make_dataset(px, series_uid=uid, position=(0, 0, k * 1.25), instance=k + 1)
        ds.compress(RLELossless)
        write(ds, os.path.join(folder, f"s{k:04d}.dcm"))


def _best(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        gc.collect()
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def run_precheck(n: int = 60, repeats: int = 3) -> list[tuple[str, str, str, str]]:
    import medview.io.dicom as dicom
    from medview.io import load

    real = dicom.check_frames
    with tempfile.TemporaryDirectory() as folder:
        write_rle_series(folder, n)
        files = sorted(glob.glob(os.path.join(folder, "*.dcm")))

        def plain():
            return np.stack([pydicom.dcmread(f).pixel_array for f in files])

        def ours():
            return load([folder]).volumes[0].pixels

        def ours_unchecked():
            dicom.check_frames = lambda *a, **k: None
            try:
                return ours()
            finally:
                dicom.check_frames = real

        assert plain().shape == ours().shape == ours_unchecked().shape
        times = {"plain": [], "on": [], "off": []}
        for _ in range(repeats):  # alternated, so drift hits all three alike
            times["plain"].append(_best(plain, 1))
            times["on"].append(_best(ours, 1))
            times["off"].append(_best(ours_unchecked, 1))
    p, on, off = (min(times[k]) for k in ("plain", "on", "off"))
    cost = (on - off) / off * 100
    return [
        (f"RLE series ({n} x 512 x 512), plain pydicom loop, slices/s", f"{n / p:.0f}",
         "(baseline)", ""),
        ("medview, frame pre-checks off, slices/s", f"{n / off:.0f}", f"{p / off:.2f}x baseline",
         ""),
        ("medview, frame pre-checks on, slices/s", f"{n / on:.0f}", f"{p / on:.2f}x baseline",
         ""),
        ("cost of the frame pre-checks", f"{cost:+.1f}%", "target <= 5%",
         "PASS" if cost <= 5 else "FAIL"),
    ]


def run_hostile_folder() -> list[tuple[str, str, str, str]]:
    from tests import hostile
    from tests.factory import write_series

    with tempfile.TemporaryDirectory() as tmp:
        folder = os.path.join(tmp, "study")
        write_series(folder, n=3)
        classes = hostile.every_class(folder)
        rc, _out, seconds, peak = hostile.run_info_measured(folder, ROOT, timeout=300)
    ok = rc == 0
    return [
        (f"good series + {len(classes)} hostile files: medview info, s", f"{seconds:.2f}",
         "target: seconds", "PASS" if ok and seconds < 30 else "FAIL"),
        ("  peak RSS of that process (MiB)", f"{peak:.0f}", "target < 1536",
         "PASS" if ok and peak < 1536 else "FAIL"),
    ]


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    print_table("Hardening: pre-check cost and a hostile folder", run_precheck()
                + run_hostile_folder())
