"""Sample studies that ship with medview's dependencies (pydicom and pydicom-data)."""

from __future__ import annotations

import os

SAMPLES = {
    # A real computed radiography chest film, MONOCHROME1, 1955 x 1841 (pydicom-data).
    "cr-chest": "RG1_UNCR.dcm",
    # A small real CT slice (pydicom).
    "ct": "CT_small.dcm",
    # A small real MR slice (pydicom).
    "mr": "MR_small.dcm",
}


def sample_path(name: str = "cr-chest") -> str:
    """Path of a bundled sample study; raises ``FileNotFoundError`` if it is missing."""
    from pydicom.data import get_testdata_file

    filename = SAMPLES[name]
    path = get_testdata_file(filename, download=False)
    if not path or not os.path.isfile(path):
        raise FileNotFoundError(f"sample {name!r} ({filename}) is not installed")
    return str(path)
