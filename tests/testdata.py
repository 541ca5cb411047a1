"""pydicom's and pydicom-data's shipped DICOM files, from the local disk only.

``pydicom.data.get_testdata_files()`` also tries to download the files of its online list
that are not installed, which fails or hangs offline; these helpers never do."""

from __future__ import annotations

import os
from pathlib import Path


def local_files() -> list[str]:
    """Every DICOM test file installed with pydicom and pydicom-data."""
    from pydicom.data.data_manager import DATA_ROOT, DataTypes, external_data_sources

    files = [os.fspath(p) for p in (Path(DATA_ROOT) / "test_files").glob("**/*")
             if p.is_file() and p.suffix != ".py"]
    for source in external_data_sources().values():  # installed packages: local paths
        files.extend(os.fspath(p) for p in source.get_paths("**/*", DataTypes.DATASET))
    return sorted({f for f in files if os.path.isfile(f)})


def local_file(name: str) -> str:
    """One installed test file by name (``FileNotFoundError`` if it is not installed)."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)
    if not path or not os.path.isfile(path):
        raise FileNotFoundError(f"{name} is not installed")
    return os.fspath(path)
