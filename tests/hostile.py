"""Builders of hostile study files, one per class found by the security and fault probe.

Each builder writes its file(s) into a folder and returns the name the loader must list
as skipped (or None when the file must load with a warning instead).
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib

import numpy as np

from tests.factory import make_dataset, write

REGRESSIONS = os.path.join(os.path.dirname(__file__), "data", "regressions")


def fifo(folder) -> str:
    os.mkfifo(os.path.join(folder, "pipe.dcm"))
    return "pipe.dcm"


def parallel_orientation(folder) -> None:
    """Row and column vectors parallel: the image loads, orientation unknown, warned."""
    ds = make_dataset(np.ones((8, 8), np.int16), orientation=(1, 0, 0, 1, 0, 0))
    write(ds, os.path.join(folder, "parallel.dcm"))


def rgb_one_sample(folder) -> str:
    ds = make_dataset(np.ones((8, 8), np.uint8), modality="OT")
    ds.PhotometricInterpretation = "RGB"
    write(ds, os.path.join(folder, "rgb1.dcm"))
    return "rgb1.dcm"


def rle_panic(folder) -> str:
    """A bit-flipped RLE file that makes the Rust decoder raise ``PanicException``."""
    with open(os.path.join(REGRESSIONS, "rle-bitflip-rust-panic.dcm"), "rb") as f:
        data = f.read()
    with open(os.path.join(folder, "rle-panic.dcm"), "wb") as f:
        f.write(data)
    return "rle-panic.dcm"


def nifti(folder, name="vol.nii", *, vox_offset=352.0, dims=(4, 4, 2), datatype=4, bitpix=16,
          data: bytes | None = None, magic=b"n+1\0", gz=False) -> str:
    hdr = bytearray(352)
    struct.pack_into("<i", hdr, 0, 348)
    struct.pack_into("<8h", hdr, 40, len(dims), *dims, *([1] * (7 - len(dims))))
    struct.pack_into("<hh", hdr, 70, datatype, bitpix)
    struct.pack_into("<8f", hdr, 76, 1, 1, 1, 1, 1, 1, 1, 1)
    struct.pack_into("<f", hdr, 108, vox_offset)
    struct.pack_into("<f", hdr, 112, 1.0)
    hdr[344:348] = magic
    n = int(np.prod(dims)) * bitpix // 8
    body = bytes(hdr) + (data if data is not None else bytes(n))
    path = os.path.join(folder, name)
    with open(path, "wb") as f:
        f.write(gzip.compress(body) if gz else body)
    return name


def nifti_nan_offset(folder) -> str:
    return nifti(folder, "nan-offset.nii", vox_offset=float("nan"))


def rle_bomb(folder) -> str:
    """7 KB of RLE declaring 46000 x 46000 pixels."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import RLELossless

    ds = make_dataset(np.zeros((8, 8), np.uint8), modality="OT")
    ds.file_meta.TransferSyntaxUID = RLELossless
    ds.Rows = ds.Columns = 46000
    header = struct.pack("<16I", 1, 64, *([0] * 14))
    ds.PixelData = encapsulate([header + b"\x81\x00" * 3000])
    ds["PixelData"].VR = "OB"
    write(ds, os.path.join(folder, "rle-bomb.dcm"))
    return "rle-bomb.dcm"


def png_bomb(folder) -> str:
    """A PNG header declaring 15000 x 15000 RGBA (under the 250 Mpx cap, 900 MB decoded)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", 15000, 15000, 8, 6, 0, 0, 0)
    row = b"\0" + b"\0" * 15000 * 4
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(200)) + comp.flush()
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND",
                                                                                     b"")
    with open(os.path.join(folder, "bomb.png"), "wb") as f:
        f.write(png)
    return "bomb.png"


def nrrd_gzip_bomb(folder) -> str:
    """A 2 MB-class gzip NRRD whose header declares 5.5 GB of voxels."""
    head = (b"NRRD0004\ntype: short\ndimension: 3\nsizes: 2000 2000 700\n"
            b"spacings: 1 1 1\nendian: little\nencoding: gzip\n\n")
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    body = comp.compress(bytes(1 << 20)) + comp.flush()
    with open(os.path.join(folder, "bomb.nrrd"), "wb") as f:
        f.write(head + body)
    return "bomb.nrrd"


def _text_file(folder, name: str, text: str) -> str:
    with open(os.path.join(folder, name), "w") as f:
        f.write(text)
    return name


def mhd(folder, name: str, data_file: str) -> str:
    """A 64x64 MetaImage header whose pixels are in ``data_file``."""
    return _text_file(folder, name, "ObjectType = Image\nNDims = 2\nDimSize = 64 64\n"
                      "ElementType = MET_UCHAR\nElementSpacing = 1 1\n"
                      f"ElementDataFile = {data_file}\n")


def nrrd_detached(folder, name: str, data_file: str) -> str:
    """A 64x64 NRRD header whose pixels are in ``data_file``."""
    return _text_file(folder, name, "NRRD0004\ntype: uchar\ndimension: 2\nsizes: 64 64\n"
                      f"encoding: raw\ndata file: {data_file}\n\n")


def numeric_nonsense(folder) -> list[str]:
    """Files that load, with a warning, and never show a blank image."""
    names = []
    ramp = (np.arange(16 * 16).reshape(16, 16) % 200).astype(np.int16)
    for tag, kwargs in (("slope-1e308", {"slope": "1e308"}),
                        ("intercept-1e38", {"slope": 1.0, "intercept": "1e38"}),
                        ("slope-denormal", {"slope": "1e-320"}),
                        ("window-1e308", {"window": ("1e308", "1e308")}),
                        ("spacing-1e308", {"spacing": None})):
        ds = make_dataset(ramp, **kwargs)
        if tag == "spacing-1e308":
            ds.PixelSpacing = ["1e308", "1e308"]
        write(ds, os.path.join(folder, f"{tag}.dcm"))
        names.append(f"{tag}.dcm")
    return names


def every_class(folder) -> dict[str, str]:
    """All hostile study classes in one folder; returns {file name: class}."""
    os.makedirs(folder, exist_ok=True)
    out = {
        fifo(folder): "FIFO",
        rgb_one_sample(folder): "RGB with one sample",
        rle_panic(folder): "RLE decoder panic",
        nifti_nan_offset(folder): "NIfTI vox_offset NaN",
        rle_bomb(folder): "RLE size bomb",
        png_bomb(folder): "PNG size bomb",
        nrrd_gzip_bomb(folder): "gzip NRRD bomb",
        mhd(folder, "zero.mhd", "/dev/zero"): "MHD reading /dev/zero",
        mhd(folder, "passwd.mhd", "../../../../../../etc/passwd"): "MHD path escape",
        nrrd_detached(folder, "passwd.nhdr", "../../../../../../etc/passwd"):
            "NRRD path escape",
    }
    os.mkfifo(os.path.join(folder, "fifo.raw"))
    out[mhd(folder, "fifo.mhd", "fifo.raw")] = "MHD data file is a FIFO"
    out["fifo.raw"] = "FIFO"
    parallel_orientation(folder)
    numeric_nonsense(folder)
    return out


def deflate_bomb(folder, inflated_bytes: int) -> str:
    """A Deflated Explicit VR Little Endian file whose dataset inflates to
    ``inflated_bytes`` (a private OB element of zeros): megabytes on disk."""
    import io

    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = make_dataset(np.zeros((8, 8), np.int16))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    data = buf.getvalue()
    # the meta group ends where the deflated stream starts: re-deflate the dataset with a
    # huge private element after it
    meta_len = int.from_bytes(data[140:144], "little")
    start = 144 + meta_len
    body = zlib.decompress(data[start:], -zlib.MAX_WBITS)
    comp = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    n = inflated_bytes - inflated_bytes % 2
    # after Pixel Data (7FE0,0010), a private group 7FE1 keeps the tags in order
    parts = [data[:start], comp.compress(body),
             comp.compress(b"\xe1\x7f\x10\x00LO\x02\x00X "),
             comp.compress(b"\xe1\x7f\x00\x10OB\x00\x00" + n.to_bytes(4, "little"))]
    chunk = bytes(1 << 20)
    for _ in range(n // len(chunk)):
        parts.append(comp.compress(chunk))
    parts.append(comp.compress(bytes(n % len(chunk))))
    parts.append(comp.flush())
    with open(os.path.join(folder, "deflate-bomb.dcm"), "wb") as f:
        f.write(b"".join(parts))
    return "deflate-bomb.dcm"


_MEASURED_INFO = """
import sys
from medview.cli import main
rc = main(["info", sys.argv[1], "--json"])
sys.stdout.flush()
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1]
print("PEAK_KIB", hwm, file=sys.stderr)
sys.exit(rc)
"""


def run_info_measured(folder: str, root: str, timeout: float = 120):
    """``medview info FOLDER --json`` in a new process; returns (returncode, stdout,
    seconds, peak RSS in MiB). The peak is the process's own high-water mark (VmHWM),
    which, unlike a parent's RUSAGE_CHILDREN, does not count the parent's pages."""
    import subprocess
    import sys
    import time

    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _MEASURED_INFO, folder], capture_output=True,
                          text=True, timeout=timeout, cwd=root,
                          env=dict(os.environ, PYTHONPATH=root))
    seconds = time.perf_counter() - t
    peak = [ln for ln in proc.stderr.splitlines() if ln.startswith("PEAK_KIB")]
    peak_mib = int(peak[-1].split()[1]) / 1024 if peak else float("nan")
    return proc.returncode, proc.stdout, seconds, peak_mib
