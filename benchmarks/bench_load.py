"""Series loading: medview's validated loader against a plain pydicom read-and-stack loop.

Writes a 300-slice 512x512 int16 CT series with pydicom, then (in this one run) times
both loaders alternately, best of N, and measures each one's peak traced memory (numpy
buffers included) relative to the volume's size.
"""

from __future__ import annotations

import gc
import glob
import os
import statistics
import tempfile
import time
import tracemalloc
import warnings

import numpy as np
import pydicom

try:
    from benchmarks.common import print_table, write_ct_series
except ImportError:  # run as a script
    from common import print_table, write_ct_series

from medview.io import load


def _pydicom_defaults(fn):
    """Run a baseline with pydicom's default settings (medview turns reading-time value
    validation off process-wide; a plain script has it on)."""
    def wrapped(folder: str):
        cfg = pydicom.config.settings
        mode = cfg.reading_validation_mode
        cfg.reading_validation_mode = pydicom.config.WARN
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return fn(folder)
        finally:
            cfg.reading_validation_mode = mode
    wrapped.__name__ = fn.__name__
    return wrapped


@_pydicom_defaults
def plain_loop(folder: str) -> np.ndarray:
    files = sorted(glob.glob(os.path.join(folder, "*.dcm")))
    return np.stack([pydicom.dcmread(f).pixel_array for f in files])


@_pydicom_defaults
def read_sort_stack(folder: str) -> np.ndarray:
    """The bare loop a script would write: read every file, sort by position, stack."""
    dss = [pydicom.dcmread(f) for f in sorted(glob.glob(os.path.join(folder, "*.dcm")))]
    dss.sort(key=lambda d: float(d.ImagePositionPatient[2]))
    return np.stack([d.pixel_array for d in dss])


def ours(folder: str) -> np.ndarray:
    return load([folder]).volumes[0].pixels


def _time(fn, folder: str) -> float:
    gc.collect()
    t = time.perf_counter()
    fn(folder)
    return time.perf_counter() - t


def _peak(fn, folder: str) -> int:
    gc.collect()
    tracemalloc.start()
    out = fn(folder)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del out
    return peak


def run(n: int = 300, repeats: int = 3) -> list[tuple[str, str, str, str]]:
    with tempfile.TemporaryDirectory() as folder:
        write_ct_series(folder, n=n)
        volume_bytes = n * 512 * 512 * 2
        a = plain_loop(folder)
        b = ours(folder)
        assert a.shape == b.shape
        base_t, our_t = [], []
        for _ in range(repeats):
            base_t.append(_time(plain_loop, folder))
            our_t.append(_time(ours, folder))
        base_peak = _peak(plain_loop, folder)
        our_peak = _peak(ours, folder)
    bt, ot = min(base_t), min(our_t)
    speed = bt / ot
    mem = our_peak / volume_bytes
    return [
        ("plain pydicom loop, slices/s", f"{n / bt:.0f}", "(baseline)", ""),
        ("medview loader, slices/s", f"{n / ot:.0f}", f"{speed:.2f}x baseline (target >= 0.8x)",
         "PASS" if speed >= 0.8 else "FAIL"),
        ("plain loop peak memory / volume", f"{base_peak / volume_bytes:.2f}x", "(baseline)", ""),
        ("medview peak memory / volume", f"{mem:.2f}x", "target <= 1.5x",
         "PASS" if mem <= 1.5 else "FAIL"),
    ]


def run_real(n: int = 120, repeats: int = 3,
             matrix: int | None = None) -> list[tuple[str, str, str, str]]:
    """Series made of real scanner files (whole vendor headers kept; see
    ``benchmarks.common.write_real_series``): medview against read-sort-stack. The
    target (>= 1.5x) is the CT's, whose header is 256 elements (179 private); the MR
    headers are small, and there medview's checks cost about what pydicom's parse does."""
    from benchmarks.common import REAL_SOURCES, write_real_series

    rows = []
    with tempfile.TemporaryDirectory() as root, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for k, (name, source) in enumerate(REAL_SOURCES.items()):
            folder = os.path.join(root, str(k))
            write_real_series(folder, source, n, matrix)
            a, b = read_sort_stack(folder), ours(folder)
            assert a.shape == b.shape, (a.shape, b.shape)
            base_t, our_t = [], []
            for _ in range(repeats):
                base_t.append(_time(read_sort_stack, folder))
                our_t.append(_time(ours, folder))
            bt, ot = min(base_t), min(our_t)
            speed = bt / ot
            size = f"{matrix}x{matrix}" if matrix else "as shipped"
            rows.append((f"{name}, {size}, x {n}: medview vs read-sort-stack",
                         f"{n / ot:.0f} vs {n / bt:.0f} files/s (median "
                         f"{n / statistics.median(our_t):.0f} vs "
                         f"{n / statistics.median(base_t):.0f})",
                         *((f"{speed:.2f}x (target >= 1.5x)", "PASS" if speed >= 1.5 else "FAIL")
                           if " CT " in name else (f"{speed:.2f}x (measured)", ""))))
            if k == 0:  # the CT: memory, as a share of the volume's size
                mem = _peak(ours, folder) / b.nbytes
                rows.append((f"{name}: medview peak memory / volume", f"{mem:.2f}x",
                             f"read-sort-stack {_peak(read_sort_stack, folder) / b.nbytes:.2f}x;"
                             " target <= 1.5x", "PASS" if mem <= 1.5 else "FAIL"))
    return rows


if __name__ == "__main__":
    print_table("Series loading (300 x 512 x 512 int16 CT)", run())
    print_table("Series of real scanner files (vendor headers kept)",
                run_real() + run_real(matrix=512))
