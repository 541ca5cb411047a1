"""NIfTI, NRRD and MetaImage (MHA/MHD) through SimpleITK, checked before reading.

The header is checked first (dimensions, spacing, data length) so that truncated files,
decompression bombs and invalid spacing are refused or flagged before any pixel is
allocated. Volumes are reoriented to LPS so that every format displays the same way
(radiological convention: patient right on the screen's left, anterior at the top).
"""

from __future__ import annotations

import gzip
import math
import os
import re
import struct
import zlib

import numpy as np

from medview.core.errors import CorruptFileError, LoadError
from medview.core.limits import COPIES_ITK, check_budget
from medview.core.safeio import inside, is_regular_file, open_regular
from medview.core.volume import ImageVolume

#: Spacings outside these bounds (mm) are treated as unknown.
MAX_SPACING_MM = 10_000.0
MIN_SPACING_MM = 1e-6
#: Bytes per component of SimpleITK's pixel types (the largest, 8, when unknown).
_ITK_COMPONENT_BYTES = {
    "8-bit unsigned integer": 1, "8-bit signed integer": 1, "16-bit unsigned integer": 2,
    "16-bit signed integer": 2, "32-bit unsigned integer": 4, "32-bit signed integer": 4,
    "64-bit unsigned integer": 8, "64-bit signed integer": 8, "32-bit float": 4,
    "64-bit float": 8,
}

_NIFTI_BITPIX = {2: 8, 4: 16, 8: 32, 16: 32, 64: 64, 256: 8, 512: 16, 768: 32, 128: 24,
                 1024: 64, 1280: 64, 2304: 32}


def _nifti_header(path: str, gz: bool) -> dict:
    try:
        with open_regular(path) as raw:
            if gz:
                with gzip.GzipFile(fileobj=raw, mode="rb") as f:
                    head = f.read(352)
            else:
                head = raw.read(352)
    except LoadError:
        raise
    except (OSError, EOFError, zlib.error) as exc:
        raise CorruptFileError(path, f"unreadable NIfTI header: {exc}") from exc
    if len(head) < 348:
        raise CorruptFileError(path, "NIfTI header is cut off")
    endian = "<" if struct.unpack("<i", head[:4])[0] == 348 else ">"
    dim = struct.unpack(endian + "8h", head[40:56])
    datatype, bitpix = struct.unpack(endian + "hh", head[70:74])
    pixdim = struct.unpack(endian + "8f", head[76:108])
    vox_offset = struct.unpack(endian + "f", head[108:112])[0]
    qform_code, sform_code = struct.unpack(endian + "hh", head[252:256])
    quatern = struct.unpack(endian + "6f", head[256:280])
    srow = struct.unpack(endian + "12f", head[280:328])
    # NaN or huge values in the orientation make SimpleITK's NIfTI reader loop forever
    # (found by the fuzzer): refuse them before it sees the file
    geometry = (list(quatern) + list(pixdim[:4]) if qform_code > 0 else []) + (
        list(srow) if sform_code > 0 else [])
    if not all(math.isfinite(v) and abs(v) < 1e12 for v in geometry):
        raise CorruptFileError(path, "NIfTI orientation (qform/sform) holds NaN, infinite "
                                     "or absurd values")
    ndim = dim[0]
    if not 1 <= ndim <= 7:
        raise CorruptFileError(path, f"NIfTI dim[0] is {ndim} (must be 1 to 7)")
    sizes = dim[1 : ndim + 1]
    if any(s <= 0 for s in sizes):
        raise CorruptFileError(path, f"NIfTI dimensions must be positive, got {list(sizes)}")
    bits = bitpix or _NIFTI_BITPIX.get(datatype, 0)
    if bits <= 0:
        raise CorruptFileError(path, f"NIfTI datatype {datatype} has no known size")
    if not (math.isfinite(vox_offset) and 0 <= vox_offset < 2**40):
        raise CorruptFileError(path, f"NIfTI vox_offset is {vox_offset} (must be a finite, "
                                     "non-negative byte offset)")
    return {
        "sizes": sizes,
        "spacing": pixdim[1 : min(ndim, 3) + 1],
        "nbytes": int(np.prod(sizes, dtype=np.int64)) * bits // 8,
        "offset": max(int(vox_offset), 352),
        "vox_offset": int(vox_offset),
        "pair": head[344:348] == b"ni1\x00",
    }


def _count_gzip_bytes(path: str, limit: int) -> int:
    """Decompressed size of a gzip file, reading at most ``limit + 1`` bytes."""
    total = 0
    try:
        with open_regular(path) as raw, gzip.GzipFile(fileobj=raw, mode="rb") as g:
            while total <= limit:
                chunk = g.read(min(1 << 22, limit + 1 - total))
                if not chunk:
                    break
                total += len(chunk)
    except LoadError:
        raise
    except (OSError, EOFError, zlib.error) as exc:
        raise CorruptFileError(path, f"compressed data is corrupt or cut off: {exc}") from exc
    return total


#: Limits of a NRRD or MetaImage text header, checked before a native reader sees the
#: file: SimpleITK's NRRD reader (teem) crashes the process on a field longer than about
#: 1 KiB, so no line may be longer than MAX_HEADER_LINE, and a header has at most
#: MAX_HEADER_LINES lines and MAX_HEADER_BYTES bytes.
MAX_HEADER_LINE = 512
MAX_HEADER_LINES = 128
MAX_HEADER_BYTES = 32 * 1024

#: NRRD's own fields (teem's list); anything else must be a ``key:=value`` pair
NRRD_FIELDS = frozenset({
    "dimension", "type", "encoding", "sizes", "endian", "content", "min", "max",
    "old min", "oldmin", "old max", "oldmax", "spacings", "thicknesses", "axis mins",
    "axismins", "axis maxs", "axismaxs", "centers", "centerings", "labels", "units",
    "kinds", "space", "space dimension", "space directions", "space origin",
    "space units", "measurement frame", "sample units", "sampleunits", "line skip",
    "lineskip", "byte skip", "byteskip", "data file", "datafile", "block size",
    "blocksize", "number",
})
#: the NRRD fields that hold one entry per axis
_PER_AXIS = ("sizes", "spacings", "thicknesses", "axis mins", "axismins", "axis maxs",
             "axismaxs", "centers", "centerings", "labels", "units", "kinds",
             "space directions")
_KEY = re.compile(r"[A-Za-z][A-Za-z0-9 _.-]{0,63}")


def text_header(path: str, fmt: str = "") -> dict[str, str]:
    """Key/value lines of a NRRD or MetaImage header (up to the data), refusing what the
    native readers are known to break on: a line over :data:`MAX_HEADER_LINE` bytes, more
    than :data:`MAX_HEADER_LINES` lines, control characters, keys that are not names,
    and (``fmt`` "nrrd") a field NRRD does not define.

    Raises
    ------
    CorruptFileError
        Naming the limit the header breaks.
    """
    fields: dict[str, str] = {}
    total = 0
    with open_regular(path) as f:
        for n in range(MAX_HEADER_LINES + 1):
            line = f.readline(MAX_HEADER_LINE + 1)
            if not line or line in (b"\n", b"\r\n"):
                break
            if n == MAX_HEADER_LINES:
                raise CorruptFileError(path, f"the text header has more than "
                                             f"{MAX_HEADER_LINES} lines; refused")
            if len(line) > MAX_HEADER_LINE or (not line.endswith(b"\n")
                                               and len(line) == MAX_HEADER_LINE + 1):
                raise CorruptFileError(path, f"a header line is longer than "
                                             f"{MAX_HEADER_LINE} bytes; refused (such "
                                             "fields crash the native reader)")
            total += len(line)
            if total > MAX_HEADER_BYTES:
                raise CorruptFileError(path, "the text header is too large; refused")
            text = line.decode("latin-1").rstrip("\r\n")
            if any(ord(c) < 32 and c != "\t" for c in text):
                raise CorruptFileError(path, "the text header holds control characters")
            text = text.strip()
            if (n == 0 and fmt == "nrrd") or text.startswith("#"):
                continue  # the NRRD magic line; comments
            for sep in (":=", ":", "="):
                if sep in text:
                    key, value = text.split(sep, 1)
                    key = key.strip()
                    if not _KEY.fullmatch(key):
                        raise CorruptFileError(path, "a header key is not a plain name")
                    if fmt == "nrrd" and sep == ":" and key.lower() not in NRRD_FIELDS:
                        raise CorruptFileError(path, f"NRRD field {key[:40]!r} is not one "
                                                     "NRRD defines")
                    fields[key.lower()] = value.strip()
                    break
            if text.lower().startswith("elementdatafile"):
                break
    return fields


def _axis_items(key: str, value: str) -> int:
    """How many per-axis entries a NRRD field value holds."""
    if key in ("labels", "units"):
        return value.count('"') // 2
    if key == "space directions":
        return len(re.findall(r"\(|\bnone\b", value))
    return len(value.split())


def _data_file_reference(path: str, fmt: str, fields: dict[str, str]) -> str | None:
    """The detached data file a header names (relative to its folder), or None."""
    if fmt == "meta":
        value = fields.get("elementdatafile", "")
        return None if not value or value.upper() == "LOCAL" else value
    if fmt == "nrrd":
        value = fields.get("data file", fields.get("datafile", ""))
        return value or None
    if fmt == "nifti" and _nifti_header(path, False)["pair"]:
        base, ext = os.path.splitext(path)
        return os.path.basename(base) + (".IMG" if ext.isupper() else ".img")
    return None


def detached_data_files(path: str, fmt: str, fields: dict[str, str] | None = None
                        ) -> list[str]:
    """The data files a NRRD / MetaImage / NIfTI-pair header points to, each checked.

    A header may name its pixel data in another file (NRRD ``data file:``, MetaImage
    ``ElementDataFile``, the ``.img`` of a NIfTI pair). That file must be a regular file
    inside the header's own folder: ``../../etc/passwd``, absolute paths, links out of the
    folder, FIFOs and devices are refused before the reader can open them. File lists and
    numbered patterns are not supported. ``fields``: the text header if already read.

    Raises
    ------
    LoadError
        Naming the header and what was wrong with its data file.
    """
    if fields is None:
        fields = text_header(path, fmt) if fmt in ("meta", "nrrd") else {}
    ref = _data_file_reference(path, fmt, fields)
    if ref is None:
        return []
    if ref.upper().startswith("LIST") or "%" in ref or " " in ref.strip():
        raise LoadError(path, "pixel data split over a list or pattern of files is not "
                              "supported")
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isabs(ref) or os.path.splitdrive(ref)[0]:
        raise LoadError(path, "the header names a data file by absolute path; only files "
                              "in the header's own folder are read")
    target = os.path.normpath(os.path.join(folder, ref))
    if not inside(target, folder):
        raise LoadError(path, "the header's data file lies outside its folder; refused")
    if not os.path.lexists(target):
        raise CorruptFileError(path, "the header's data file is missing")
    if not is_regular_file(target):
        raise LoadError(path, "the header's data file is not a regular file (FIFO, device "
                              "or socket?); refused")
    return [target]


#: Geometry fields of NRRD and MetaImage headers; their numbers must be finite.
_GEOMETRY_KEYS = ("space directions", "spacings", "space origin", "thicknesses", "axis mins",
                  "axis maxs", "elementspacing", "elementsize", "offset", "origin", "position",
                  "transformmatrix", "rotation", "orientation", "centerofrotation")
_NUMBER = re.compile(r"(?i)[-+]?(?:nan|inf(?:inity)?|(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?)")
_NRRD_ENCODINGS = {"raw", "gzip", "gz", "bzip2", "bz2", "ascii", "text", "txt", "hex"}


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split()]
    except ValueError:
        return []


def check_text_header(path: str, fmt: str, fields: dict[str, str]) -> None:
    """Validate a NRRD or MetaImage header's dimensions and encoding ourselves before
    SimpleITK parses it: its MetaImage reader loops forever on ``NDims = -1``, for one.

    Raises
    ------
    CorruptFileError
        Naming the field that is missing or impossible.
    """
    if fmt == "meta":
        ndims = _ints(fields.get("ndims", ""))
        sizes = _ints(fields.get("dimsize", ""))
        if len(ndims) != 1 or not 1 <= ndims[0] <= 4:
            raise CorruptFileError(path, "MetaImage NDims must be 1 to 4")
        if "elementdatafile" not in fields:
            raise CorruptFileError(path, "MetaImage header has no ElementDataFile line")
        channels = _ints(fields.get("elementnumberofchannels", "1"))
        if len(channels) != 1 or not 1 <= channels[0] <= 4:
            raise CorruptFileError(path, "MetaImage ElementNumberOfChannels must be 1 to 4")
        header_size = fields.get("headersize")
        if header_size is not None and (len(_ints(header_size)) != 1
                                        or _ints(header_size)[0] < -1):
            raise CorruptFileError(path, "MetaImage HeaderSize is invalid")
        n = ndims[0]
    else:
        ndims = _ints(fields.get("dimension", ""))
        sizes = _ints(fields.get("sizes", ""))
        if len(ndims) != 1 or not 1 <= ndims[0] <= 5:
            raise CorruptFileError(path, "NRRD dimension must be 1 to 5")
        encoding = fields.get("encoding", "").lower()
        if encoding not in _NRRD_ENCODINGS:
            raise CorruptFileError(path, f"NRRD encoding {encoding[:20]!r} is not supported")
        if not fields.get("type"):
            raise CorruptFileError(path, "NRRD header has no type")
        n = ndims[0]
        for key in _PER_AXIS:
            if key in fields and _axis_items(key, fields[key]) > n:
                raise CorruptFileError(path, f"NRRD field {key!r} has more entries than "
                                             f"the image has axes ({n})")
        space_dim = fields.get("space dimension")
        if space_dim is not None and _ints(space_dim) not in ([1], [2], [3], [4]):
            raise CorruptFileError(path, "NRRD space dimension must be 1 to 4")
    if len(sizes) != n or any(not 0 < v < 2**31 for v in sizes):
        raise CorruptFileError(path, f"image sizes must be {n} positive numbers")
    for key in _GEOMETRY_KEYS:
        for token in _NUMBER.findall(fields.get(key, "")):
            value = float(token)
            if not (math.isfinite(value) and abs(value) < 1e12):
                raise CorruptFileError(path, f"header field {key!r} holds NaN, infinite or "
                                             "absurd values")


def read_itk(path: str, fmt: str, data_files: list[str] | None = None) -> ImageVolume:
    """Read a NIfTI / NRRD / MetaImage file into an LPS-oriented :class:`ImageVolume`, in
    a child process where that is possible (:mod:`medview.io.isolate`: a native crash
    costs this file only).

    ``data_files``: the header's checked detached data files, if the caller has them
    (:func:`detached_data_files`)."""
    from medview.io import isolate

    if isolate.enabled():
        volume: ImageVolume = isolate.run(path, __name__, "read_itk_here", path, fmt,
                                          data_files)
        return volume
    return read_itk_here(path, fmt, data_files)


def read_itk_here(path: str, fmt: str, data_files: list[str] | None = None) -> ImageVolume:
    """:func:`read_itk` in this process (header checks, then SimpleITK)."""
    warns: list[str] = []
    spacing_known = [True, True, True]
    fields = text_header(path, fmt) if fmt in ("meta", "nrrd") else {}
    if fmt in ("meta", "nrrd"):
        check_text_header(path, fmt, fields)
    if data_files is None:
        data_files = detached_data_files(path, fmt, fields)
    if fmt in ("nifti", "nifti-gz"):
        info = _nifti_header(path, fmt == "nifti-gz")
        sizes = info["sizes"]
        check_budget(path, info["nbytes"], COPIES_ITK, "the voxels",
                     int(sizes[0]) * int(sizes[1] if len(sizes) > 1 else 1))
        if data_files:  # a .hdr/.img pair: the voxels start at the .img's first byte
            need = info["vox_offset"] + info["nbytes"]
            have = os.path.getsize(data_files[0])
        else:
            need = info["offset"] + info["nbytes"]
            have = os.path.getsize(path) if fmt == "nifti" else _count_gzip_bytes(path, need)
        if have < need:
            raise CorruptFileError(
                path, f"file is shorter than its header implies ({have} of {need} bytes)"
            )
        for k, s in enumerate(info["spacing"]):
            if not (math.isfinite(s) and MIN_SPACING_MM <= s <= MAX_SPACING_MM):
                spacing_known[k] = False
    else:
        keys = ("spacings", "space directions") if fmt == "nrrd" else ("elementspacing",
                                                                        "elementsize")
        if not any(k in fields for k in keys):
            spacing_known = [False, False, False]
            warns.append("no voxel spacing in the header: distances are in voxels")

    import SimpleITK as sitk  # slow to import: only when such a file is opened

    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise CorruptFileError(path, f"unreadable header: {_itk_message(exc)}") from exc
    size = reader.GetSize()
    if any(s <= 0 for s in size):
        raise CorruptFileError(path, f"dimensions must be positive, got {list(size)}")
    comps = reader.GetNumberOfComponents()
    component = _ITK_COMPONENT_BYTES.get(sitk.GetPixelIDValueAsString(reader.GetPixelID())
                                         .replace("vector of ", ""), 8)
    nbytes = int(np.prod(size, dtype=np.int64)) * max(comps, 1) * component
    check_budget(path, nbytes, COPIES_ITK, "the voxels",
                 int(size[0]) * int(size[1] if len(size) > 1 else 1) * max(comps, 1))
    for k, s in enumerate(reader.GetSpacing()[:3]):
        if not (math.isfinite(s) and MIN_SPACING_MM <= s <= MAX_SPACING_MM):
            spacing_known[k] = False
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise CorruptFileError(path, f"pixel data unreadable: {_itk_message(exc)}") from exc

    if image.GetDimension() == 4:
        t = image.GetSize()[3]
        image = sitk.Extract(image, [*image.GetSize()[:3], 0], [0, 0, 0, 0])
        warns.append(f"4-D image: showing the first of {t} volumes")
    elif image.GetDimension() > 4:
        raise LoadError(path, f"{image.GetDimension()}-D images are not supported")
    if image.GetDimension() == 3:
        try:
            image = sitk.DICOMOrient(image, "LPS")
        except RuntimeError:
            warns.append("orientation could not be normalised; shown in file order")
    arr = sitk.GetArrayFromImage(image)
    if image.GetDimension() == 2:
        arr = arr[np.newaxis]
    rgb = image.GetNumberOfComponentsPerPixel() == 3
    if image.GetNumberOfComponentsPerPixel() not in (1, 3):
        raise LoadError(
            path, f"{image.GetNumberOfComponentsPerPixel()} components per voxel not supported"
        )
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        raise CorruptFileError(path, f"{bad} voxel(s) are NaN or infinite")
    sp = list(image.GetSpacing()) + [math.nan] * (3 - image.GetDimension())
    sx, sy, sz = sp[:3]
    if not all(spacing_known[: image.GetDimension()]):
        # Axes may have been permuted by the reorientation: treat all spacing as unknown.
        sx = sy = sz = math.nan
        if not any("spacing" in w for w in warns):
            warns.append("voxel spacing is zero, negative or missing: distances are in voxels")
    direction = None
    if image.GetDimension() == 3:
        d = np.array(image.GetDirection()).reshape(3, 3)
        direction = d.T.copy()  # rows: directions of x, y, z index axes
    origin = tuple(float(v) for v in image.GetOrigin())[:3]
    name = os.path.basename(path)
    return ImageVolume(
        pixels=arr,
        modality="OT",
        photometric="RGB" if rgb else "MONOCHROME2",
        spacing=(sz, sy, sx),
        origin=origin if len(origin) == 3 else None,
        direction=direction,
        description=name,
        series_uid=f"file:{name}",
        source_format={"nifti": "nifti", "nifti-gz": "nifti", "nrrd": "nrrd"}.get(fmt, "meta"),
        source_paths=[path],
        warnings=warns,
        spacing_kind="header" if math.isfinite(sx) and math.isfinite(sy) else "",
    )


def _itk_message(exc: RuntimeError) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.lower().startswith("description:"):
            return ln.split(":", 1)[1].strip()[:200]
    return (lines[-1] if lines else "unknown error")[:200]
