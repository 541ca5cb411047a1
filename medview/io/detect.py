"""Detect a file's format from its first bytes, never from its name alone."""

from __future__ import annotations

import gzip
import os
import struct

from medview.core.errors import LoadError, NotAnImageError, load_error_from_os
from medview.core.safeio import open_regular

# Executable signatures that must never sit in a DICOM preamble (PS3.10 7.5 allows any
# bytes there, which "polyglot" malware abuses).
EXECUTABLE_SIGNATURES = (b"MZ", b"\x7fELF", b"#!", b"\xfe\xed\xfa", b"\xcf\xfa\xed\xfe")

_OTHER = (
    (b"PK\x03\x04", "ZIP archive"),
    (b"%PDF", "PDF document"),
    (b"\x7fELF", "executable program"),
    (b"MZ", "Windows executable"),
    (b"GIF8", "GIF image"),
    (b"<?xml", "XML document"),
    (b"{", "JSON or text document"),
)


def _nifti_magic(head: bytes) -> bool:
    if len(head) < 348:
        return False
    size_le = struct.unpack("<i", head[:4])[0]
    size_be = struct.unpack(">i", head[:4])[0]
    return (348 in (size_le, size_be)) and head[344:348] in (b"n+1\x00", b"ni1\x00")


#: Bytes read once per file: enough for every magic number, the DICOM preamble and, in
#: ordinary files, the whole DICOM file meta group (its transfer syntax).
HEAD_BYTES = 4096


def detect_format(path: str) -> str:
    """Return one of ``dicom``, ``dicom-raw``, ``nifti``, ``nifti-gz``, ``nrrd``, ``meta``,
    ``raster``, or raise :class:`NotAnImageError` naming what the file is.

    ``dicom-raw`` is a file without the 128-byte preamble and ``DICM`` marker; it is only
    accepted later if it parses as a real image dataset.
    """
    return sniff(path)[0]


def sniff(path: str) -> tuple[str, bytes]:
    """:func:`detect_format` and the file's first :data:`HEAD_BYTES` bytes (one read, so
    the loader need not open the file again for the preamble or the transfer syntax)."""
    try:
        with open_regular(path) as f:  # never blocks: a FIFO or device is refused
            size = os.fstat(f.fileno()).st_size
            head = f.read(HEAD_BYTES)
    except LoadError:
        raise
    except OSError as exc:
        raise load_error_from_os(path, exc) from exc
    return _format_of(path, head, size), head


def _format_of(path: str, head: bytes, size: int) -> str:
    if size == 0:
        raise NotAnImageError(path, "empty file")
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(b"\x89PNG\r\n\x1a\n") or head.startswith(b"\xff\xd8\xff"):
        return "raster"
    if head[:4] in (b"II*\x00", b"MM\x00*") or head.startswith(b"BM"):
        return "raster"
    if head.startswith(b"NRRD"):
        return "nrrd"
    if _nifti_magic(head):
        return "nifti"
    lower = path.lower()
    if head.startswith(b"\x1f\x8b"):
        if lower.endswith((".nii.gz", ".nii")):
            try:
                with open_regular(path) as raw, gzip.GzipFile(fileobj=raw, mode="rb") as g:
                    inner = g.read(352)
            except (OSError, EOFError) as exc:
                raise LoadError(path, f"corrupt gzip stream: {exc}") from exc
            if _nifti_magic(inner):
                return "nifti-gz"
        raise NotAnImageError(path, "gzip archive that is not a NIfTI image")
    text = head.lstrip()
    if text.startswith((b"ObjectType", b"NDims")) and lower.endswith((".mha", ".mhd")):
        return "meta"
    for magic, what in _OTHER:
        if head.startswith(magic):
            raise NotAnImageError(path, f"not an image: {what}")
    if _looks_like_raw_dicom(head):
        return "dicom-raw"
    if all(32 <= b < 127 or b in (9, 10, 13) for b in head[:256]):
        raise NotAnImageError(path, "not an image: text file")
    raise NotAnImageError(path, "not an image format medview recognises")


def _looks_like_raw_dicom(head: bytes) -> bool:
    """A dataset without file meta usually starts with a group 0008 (or 0002) element."""
    if len(head) < 8:
        return False
    group_le = struct.unpack("<H", head[:2])[0]
    group_be = struct.unpack(">H", head[:2])[0]
    return group_le in (0x0002, 0x0008) or group_be in (0x0002, 0x0008)


def preamble_warning(head: bytes) -> str | None:
    """A warning if the 128-byte DICOM preamble (the start of ``head``) begins with an
    executable header."""
    pre = head[:128]
    for sig in EXECUTABLE_SIGNATURES:
        if pre.startswith(sig):
            return (
                "the file's 128-byte preamble holds an executable header "
                "(possible DICOM/executable polyglot); treat the file with care"
            )
    return None
