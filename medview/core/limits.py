"""One memory budget for decoding untrusted images, checked from headers before decoding.

Every reader computes what decoding an image will cost (decoded bytes times the number of
full-size copies its decoder makes on the way) from the header alone and refuses the
image with :class:`~medview.core.errors.TooLargeError` when the cost exceeds the budget.
The same budget bounds a whole series in memory.

The default, 2 GiB, is safe on an 8 GB workstation with the viewer, a model and the
operating system running; ``MEDVIEW_MAX_IMAGE_MEMORY`` (bytes, or with a K/M/G suffix,
e.g. ``6G``) raises or lowers it.
"""

from __future__ import annotations

import os

from medview.core.errors import TooLargeError

ENV_VAR = "MEDVIEW_MAX_IMAGE_MEMORY"
DEFAULT_BUDGET = 2 * 1024**3
_MIN_BUDGET = 16 * 1024**2

#: Full-size copies a decoder makes, per reader (measured: see docs/reliability.md).
COPIES_NATIVE_DICOM = 2  # read from the file, copied into the series array
COPIES_COMPRESSED_DICOM = 3  # decoder's output buffer, pydicom's array, the series array
COPIES_RASTER = 4  # Pillow's image, a mode conversion, numpy's view copy, the stacked pages
COPIES_ITK = 4  # ITK's buffer, reorientation, numpy's copy, a float check
#: Showing (or scoring) one slice makes float32 copies of it: modality values, the
#: windowed image, an inversion; bytes per sample of the slice.
DISPLAY_BYTES_PER_SAMPLE = 12


def parse_size(text: str) -> int:
    """``"2G"`` -> 2147483648; plain numbers are bytes."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = 1
    if t and t[-1] in "KMGT":
        mult = 1024 ** ("KMGT".index(t[-1]) + 1)
        t = t[:-1]
    value = float(t)
    if not value > 0:
        raise ValueError("must be positive")
    return int(value * mult)


def memory_budget() -> int:
    """The budget in bytes (``MEDVIEW_MAX_IMAGE_MEMORY`` or the 2 GiB default)."""
    raw = os.environ.get(ENV_VAR, "")
    if raw:
        try:
            return max(parse_size(raw), _MIN_BUDGET)
        except ValueError:
            pass
    return DEFAULT_BUDGET


def fmt_bytes(n: float) -> str:
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} bytes"


def check_budget(path: str, decoded_bytes: int, copies: int, what: str = "the image",
                 slice_samples: int = 0) -> None:
    """Raise :class:`TooLargeError` when decoding ``decoded_bytes`` with ``copies`` full-size
    copies, and then showing one slice of ``slice_samples`` samples, would exceed the
    budget."""
    budget = memory_budget()
    cost = (int(decoded_bytes) * max(int(copies), 1)
            + int(slice_samples) * DISPLAY_BYTES_PER_SAMPLE)
    if cost > budget:
        raise TooLargeError(
            path,
            f"{what} would take {fmt_bytes(decoded_bytes)} decoded ({fmt_bytes(cost)} while "
            f"decoding); refused before decoding: the memory limit is {fmt_bytes(budget)} "
            f"(set {ENV_VAR} to change it)",
        )
