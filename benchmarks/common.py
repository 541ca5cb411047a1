"""Shared helpers: a realistic CT series written with pydicom, and a table printer."""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write_ct_series(folder: str, n: int = 300, size: int = 512) -> list[str]:
    """Write ``n`` axial 512x512 int16 CT slices (shuffled names) and return the paths."""
    from pydicom.uid import generate_uid

    from tests.factory import make_dataset, write

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


#: Real scanner files shipped with pydicom and pydicom-data, one per vendor: their whole
#: headers (private tags, sequences) are kept when a series is made of them.
REAL_SOURCES = {
    "GE CT (CT_small)": "CT_small.dcm",
    "Philips MR (MR2_UNCR)": "MR2_UNCR.dcm",
    "Siemens MR (MR-SIEMENS-DICOM-WithOverlays)": "MR-SIEMENS-DICOM-WithOverlays.dcm",
    "Toshiba MR (MR_small)": "MR_small.dcm",
}


def write_real_series(folder: str, source: str, n: int = 120,
                      matrix: int | None = None) -> list[str]:
    """A series of ``n`` files made from one real scanner file: every header element kept,
    only the instance UID, instance number and slice position changed (shuffled names).
    With ``matrix``, the image is resampled (nearest) to ``matrix`` x ``matrix`` (Rows and
    Columns follow), for a clinical matrix size under the same vendor header."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    path = get_testdata_file(source, download=False)
    if path is None:
        raise FileNotFoundError(source)
    ds = pydicom.dcmread(path)
    if matrix:
        arr = ds.pixel_array
        idx_r = np.arange(matrix) * arr.shape[0] // matrix
        idx_c = np.arange(matrix) * arr.shape[1] // matrix
        ds.PixelData = np.ascontiguousarray(arr[idx_r][:, idx_c]).tobytes()
        ds.Rows = ds.Columns = matrix
    os.makedirs(folder, exist_ok=True)
    series = generate_uid()
    pos = [float(v) for v in ds.get("ImagePositionPatient", [0.0, 0.0, 0.0])]
    paths = []
    for k in np.random.default_rng(0).permutation(n):
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesInstanceUID = series
        ds.InstanceNumber = int(k) + 1
        ds.ImagePositionPatient = [pos[0], pos[1], pos[2] + 2.0 * float(k)]
        if "SliceLocation" in ds:
            ds.SliceLocation = pos[2] + 2.0 * float(k)
        out = os.path.join(folder, f"im{k:04d}.dcm")
        ds.save_as(out, enforce_file_format=True)
        paths.append(out)
    return paths


def compile_bytecode() -> None:
    """Write medview's bytecode, as installing the package does: start-up times are then
    those of an installed app, not of a source tree run with PYTHONDONTWRITEBYTECODE."""
    import compileall

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    compileall.compile_dir(os.path.join(root, "medview"), quiet=1)
