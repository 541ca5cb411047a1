"""Every file shipped with pydicom and pydicom-data either loads or gets a typed reason."""

import contextlib
import os

import numpy as np
import pytest

from medview.io import load
from medview.io.dicom import DECODER_PACKAGES
from tests.testdata import local_file, local_files

# one of the slowest files: `pytest -m "not slow"` leaves it out
pytestmark = pytest.mark.slow

FILES = sorted(f for f in local_files() if os.path.isfile(f))

# Files that pydicom itself cannot decode (broken on purpose) or that are not images.
KNOWN_UNDECODABLE = {"JPEG-lossy.dcm", "JPEG2000-embedded-sequence-delimiter.dcm"}


def test_there_are_many_shipped_files():
    assert len(FILES) > 150
    assert any("data_store" in f for f in FILES), "pydicom-data is not installed"


@pytest.mark.parametrize("path", FILES, ids=os.path.basename)
def test_each_shipped_file_loads_or_is_skipped_with_reason(path):
    result = load([path])
    assert len(result.volumes) + len(result.skipped) >= 1
    for vol in result.volumes:
        assert vol.pixels.size > 0
        assert vol.pixels.dtype.kind in "uif"
        assert np.all(np.isfinite(vol.rescale_slope)) and np.all(np.isfinite(vol.rescale_intercept))
    for s in result.skipped:
        assert s.path == path and s.reason.strip()
    if os.path.basename(path) in KNOWN_UNDECODABLE:
        # refused by the decoder, or before it by the frame pre-check
        assert any(k in result.skipped[0].reason for k in ("cannot decode", "compressed frame"))


def test_every_compressed_syntax_decodes():
    from pydicom import dcmread

    decoded = set()
    for path in FILES:
        if load([path]).volumes:
            meta = dcmread(path, stop_before_pixels=True, force=True).file_meta
            decoded.add(str(meta.get("TransferSyntaxUID", "")))
    needed = {
        "1.2.840.10008.1.2.4.50",  # JPEG baseline
        "1.2.840.10008.1.2.4.51",  # JPEG extended
        "1.2.840.10008.1.2.4.70",  # JPEG lossless SV1
        "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
        "1.2.840.10008.1.2.4.81",  # JPEG-LS near-lossless
        "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
        "1.2.840.10008.1.2.4.91",  # JPEG 2000
        "1.2.840.10008.1.2.5",  # RLE
        "1.2.840.10008.1.2.1.99",  # deflate
    }
    assert needed <= decoded, needed - decoded
    assert needed - {"1.2.840.10008.1.2.1.99"} <= set(DECODER_PACKAGES)


def test_cr_chest_sample_is_monochrome1_and_displays_lungs_dark():
    from medview.imaging import render_slice
    from medview.io.samples import sample_path

    (vol,) = load([sample_path("cr-chest")]).volumes
    assert vol.photometric == "MONOCHROME1" and vol.modality == "CR"
    shown = render_slice(vol, 0, None)
    # MONOCHROME1: the smallest stored value is white, the largest black
    lo = np.unravel_index(np.argmin(vol.pixels[0]), vol.pixels[0].shape)
    hi = np.unravel_index(np.argmax(vol.pixels[0]), vol.pixels[0].shape)
    assert shown[lo] > shown[hi]
    # lungs (upper-middle of each half) are darker than the spine/mediastinum band
    h, w = shown.shape
    lungs = np.r_[shown[h // 3 : h // 2, w // 5 : w // 3].ravel(),
                  shown[h // 3 : h // 2, 2 * w // 3 : 4 * w // 5].ravel()]
    spine = shown[h // 3 : h // 2, w // 2 - w // 40 : w // 2 + w // 40]
    assert lungs.mean() < spine.mean() - 30


def test_multiframe_ultrasound_loads_all_frames():
    (vol,) = load([local_file("color3d_jpeg_baseline.dcm")]).volumes
    assert vol.multiframe and vol.n_slices == 120 and vol.is_rgb


def _volume_facts(result) -> list:
    from dataclasses import fields

    facts = []
    for v in result.volumes:
        row = {}
        for f in fields(v):
            value = getattr(v, f.name)
            if isinstance(value, np.ndarray):
                row[f.name] = (value.shape, str(value.dtype), value.tobytes())
            else:
                row[f.name] = repr(value)  # NaN spacing compares equal as text
        facts.append(row)
    return facts + [(s.path, s.reason) for s in result.skipped]


def test_reading_only_the_used_elements_changes_nothing(monkeypatch):
    """The fast header path (medview.io.dicomscan: only the elements medview uses reach
    pydicom) gives exactly the volumes, warnings and refusals of pydicom's full reader on
    every shipped file."""
    import medview.io.dicom as dicom
    from medview.io.dicomscan import read_wanted

    fast_used = 0
    for path in FILES:
        monkeypatch.setattr(dicom, "FAST_HEADERS", True)
        fast = _volume_facts(load([path]))
        monkeypatch.setattr(dicom, "FAST_HEADERS", False)
        full = _volume_facts(load([path]))
        assert fast == full, os.path.basename(path)
        with contextlib.suppress(Exception):
            fast_used += read_wanted(path) is not None
    assert fast_used > 100  # the fast path really ran on most files
