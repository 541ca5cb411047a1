"""Pre-checks of compressed DICOM frames before any decoder sees them.

The native decoders (libjpeg, CharLS, OpenJPEG, the Rust RLE decoder) allocate their output
from each frame's *own* header (JPEG SOF, JPEG-LS SOF55, JPEG 2000 SIZ, the RLE segment
table), not from the DICOM Rows/Columns that the memory budget was checked against. A
7 KB file whose codestream claims 60000 x 60000 pixels would make a decoder allocate
gigabytes, and a failed allocation in native code aborts the whole process. Reading those
few header bytes first, and refusing a frame whose codestream disagrees with the DICOM
header, makes that abort impossible; it costs microseconds per frame (see the load
benchmark). Corrupt data past the header can still make a decoder fail; those failures,
Rust panics included, are caught per file by the caller.
"""

from __future__ import annotations

import itertools
import struct

from medview.core.errors import CorruptFileError

JPEG_SYNTAXES = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
                 "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"}
J2K_SYNTAXES = {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.201",
                "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"}
RLE_SYNTAX = "1.2.840.10008.1.2.5"
#: SOFn markers (baseline, extended, progressive, lossless; not DHT/JPG/DAC) and JPEG-LS SOF55.
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7}


def jpeg_frame_size(buf: bytes) -> tuple[int, int, int] | None:
    """(rows, columns, components) from a JPEG / JPEG-LS frame header, or None if absent."""
    if len(buf) < 4 or buf[0] != 0xFF or buf[1] != 0xD8:
        raise ValueError("does not start with a JPEG SOI marker")
    i = 2
    n = len(buf)
    while i + 4 <= n:
        if buf[i] != 0xFF:
            raise ValueError("malformed JPEG marker sequence")
        marker = buf[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # no length
            i += 2
            continue
        (length,) = struct.unpack(">H", buf[i + 2:i + 4])
        if length < 2:
            raise ValueError("malformed JPEG segment length")
        if marker in _SOF:
            if i + 10 > n:
                raise ValueError("JPEG frame header cut off")
            rows, cols = struct.unpack(">HH", buf[i + 5:i + 9])
            return rows, cols, buf[i + 9]
        if marker == 0xDA:  # start of scan before any frame header
            raise ValueError("JPEG scan without a frame header")
        i += 2 + length
    return None


def j2k_frame_size(buf: bytes) -> tuple[int, int, int]:
    """(rows, columns, components) from a JPEG 2000 SIZ marker (raw codestream or JP2)."""
    start = buf.find(b"\xff\x4f\xff\x51", 0, 4096)
    if start < 0:
        raise ValueError("no JPEG 2000 codestream header")
    siz = buf[start + 4:start + 4 + 38]
    if len(siz) < 38:
        raise ValueError("JPEG 2000 header cut off")
    xsiz, ysiz, xo, yo = struct.unpack(">IIII", siz[4:20])
    (comps,) = struct.unpack(">H", siz[36:38])
    if xo > xsiz or yo > ysiz:
        raise ValueError("JPEG 2000 image offsets exceed its size")
    return ysiz - yo, xsiz - xo, comps


def rle_check(buf: bytes, segments_needed: int) -> None:
    """The RLE header (PS3.5 G.5): segment count and increasing offsets inside the frame."""
    if len(buf) < 64:
        raise ValueError("RLE header cut off")
    vals = struct.unpack("<16I", buf[:64])
    count = vals[0]
    if count != segments_needed:
        raise ValueError(f"RLE frame has {count} segments, the header implies "
                         f"{segments_needed}")
    offsets = vals[1:1 + count]
    if (not offsets or offsets[0] != 64 or any(b <= a for a, b in itertools.pairwise(offsets))
            or offsets[-1] >= len(buf)):
        raise ValueError("RLE segment offsets are invalid")


def check_frames(path: str, ds, syntax: str, rows: int, cols: int, frames: int,
                 samples: int, bits_allocated: int = 16) -> None:
    """Refuse a compressed file whose frames' own headers disagree with Rows/Columns/
    Samples per Pixel, before any decoder runs.

    Raises
    ------
    CorruptFileError
        Naming the first frame that disagrees or whose header cannot be read.
    """
    if syntax not in JPEG_SYNTAXES and syntax not in J2K_SYNTAXES and syntax != RLE_SYNTAX:
        return
    from pydicom.encaps import generate_frames

    bits = int(ds.get("BitsAllocated", bits_allocated) or bits_allocated)
    try:
        data = ds.PixelData
        for k, frame in enumerate(generate_frames(data, number_of_frames=frames)):
            if k >= frames:
                break
            head = bytes(frame[:65536])
            try:
                if syntax == RLE_SYNTAX:
                    rle_check(frame, samples * max(bits // 8, 1))
                    continue
                if syntax in J2K_SYNTAXES:
                    size = j2k_frame_size(head)
                else:
                    size = jpeg_frame_size(head)
                    if size is None:
                        raise ValueError("no JPEG frame header")
            except (ValueError, struct.error) as exc:
                raise CorruptFileError(path, f"compressed frame {k + 1}: {exc}") from exc
            f_rows, f_cols, comps = size
            if (f_rows not in (0, rows)) or f_cols != cols or comps != samples:
                raise CorruptFileError(
                    path,
                    f"compressed frame {k + 1} declares {f_rows}x{f_cols} with {comps} "
                    f"component(s); the header says {rows}x{cols} with {samples}")
    except CorruptFileError:
        raise
    except Exception as exc:
        raise CorruptFileError(path, f"encapsulated pixel data unreadable: "
                                     f"{str(exc)[:160] or type(exc).__name__}") from exc
