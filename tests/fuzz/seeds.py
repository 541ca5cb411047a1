"""Seed files for the fuzzer: small synthetic images of every format, and the small DICOM
files that ship inside pydicom's own package (read from its folder on disk; nothing is
downloaded)."""

from __future__ import annotations

import gzip
import io
import os

import numpy as np

#: pydicom's shipped test files used as seeds (all under 60 kB; compressed syntaxes included)
PYDICOM_SEEDS = (
    "CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm",
    "SC_rgb_rle.dcm", "SC_rgb_rle_16bit_2frame.dcm", "SC_rgb_jpeg_dcmtk.dcm",
    "SC_rgb_small_odd_jpeg.dcm", "SC_ybr_full_422_uncompressed.dcm", "JPEG2000.dcm",
    "JPGExtended.dcm", "JPEGLSNearLossless_08.dcm", "rtdose_1frame.dcm", "image_dfl.dcm",
    "liver_1frame.dcm", "no_meta.dcm", "ExplVR_BigEnd.dcm", "SC_rgb_small_odd.dcm",
)


def _dicom(pixels, **kw) -> bytes:
    from tests.factory import make_dataset

    ds = make_dataset(pixels, **kw)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _nifti(gz: bool) -> bytes:
    import tempfile

    from tests.hostile import nifti

    with tempfile.TemporaryDirectory() as d:
        data = (np.arange(6 * 5 * 3) % 100).astype("<i2").tobytes()
        name = nifti(d, "v.nii.gz" if gz else "v.nii", dims=(6, 5, 3), data=data, gz=gz)
        with open(os.path.join(d, name), "rb") as f:
            return f.read()


def _raster(fmt: str, mode: str = "L") -> bytes:
    from PIL import Image

    arr = (np.arange(24 * 20).reshape(24, 20) % 256).astype(np.uint8)
    img = Image.fromarray(arr, "L") if mode == "L" else Image.fromarray(
        np.stack([arr, arr[::-1], arr[:, ::-1]], -1), "RGB")
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def seeds() -> list[tuple[str, bytes]]:
    """``(file name, bytes)`` pairs; the name's suffix tells the reader nothing (content
    decides), but NIfTI-gz and MetaImage detection also look at it, as real files do."""
    import pydicom.data

    out: list[tuple[str, bytes]] = []
    ramp = (np.arange(16 * 16).reshape(16, 16) % 200).astype(np.int16)
    out.append(("ct.dcm", _dicom(ramp, window=(40, 400))))
    out.append(("mf.dcm", _dicom(np.stack([ramp, ramp + 5, ramp + 9]).astype(np.int16))))
    out.append(("mono1.dcm", _dicom(ramp.astype(np.uint16), photometric="MONOCHROME1",
                                    modality="CR")))
    rgb = np.stack([ramp, ramp, ramp], -1).astype(np.uint8)
    out.append(("rgb.dcm", _dicom(rgb, photometric="RGB", modality="OT")))
    folder = os.path.join(os.path.dirname(pydicom.data.__file__), "test_files")
    for name in PYDICOM_SEEDS:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            with open(path, "rb") as f:
                out.append((name, f.read()))
    out.append(("v.nii", _nifti(False)))
    out.append(("v.nii.gz", _nifti(True)))
    data = (np.arange(8 * 6 * 2) % 50).astype("<i2").tobytes()
    out.append(("v.nrrd", b"NRRD0004\ntype: short\ndimension: 3\nsizes: 8 6 2\n"
                          b"spacings: 0.5 0.5 2\nendian: little\nencoding: raw\n\n" + data))
    out.append(("g.nrrd", b"NRRD0004\ntype: short\ndimension: 3\nsizes: 8 6 2\n"
                          b"space directions: (1,0,0) (0,1,0) (0,0,2)\nendian: little\n"
                          b"encoding: gzip\n\n" + gzip.compress(data)))
    out.append(("v.mha", b"ObjectType = Image\nNDims = 3\nDimSize = 8 6 2\n"
                         b"ElementType = MET_SHORT\nElementSpacing = 0.5 0.5 2\n"
                         b"ElementByteOrderMSB = False\nElementDataFile = LOCAL\n" + data))
    out.append(("a.png", _raster("PNG")))
    out.append(("c.png", _raster("PNG", "RGB")))
    out.append(("a.jpg", _raster("JPEG")))
    out.append(("a.tif", _raster("TIFF")))
    out.append(("a.bmp", _raster("BMP")))
    return out
