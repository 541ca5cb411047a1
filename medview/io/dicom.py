"""DICOM reading: header validation, pixel decoding, per-file metadata.

Headers are read once with large values deferred (``defer_size``), so the Pixel Data length
and file offset are known before a byte of pixels is read. Pixels of uncompressed files are
read straight into the caller's buffer; compressed files go through pydicom's decoder
plug-ins (pylibjpeg, pyjpegls, openjpeg, RLE).

Nothing here trusts pydicom to have validated the file: lengths, pixel tags, sizes and
rescale/window values are all checked explicitly (see BAD_INPUTS.md, items 1-11).
"""

from __future__ import annotations

import functools
import io
import logging
import math
import os
import re
import warnings
import zlib
from dataclasses import dataclass, field

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from medview.core.errors import (
    CorruptFileError,
    InvalidPixelTagError,
    LoadError,
    NoPixelDataError,
    NotAnImageError,
    TooLargeError,
    UnsupportedTransferSyntaxError,
    load_error_from_os,
    must_propagate,
)
from medview.core.limits import (
    COPIES_COMPRESSED_DICOM,
    COPIES_NATIVE_DICOM,
    check_budget,
    memory_budget,
)
from medview.core.safeio import UnsafeFileError, is_regular_file, open_regular
from medview.core.volume import Population, StudyInfo, VoiLut, WindowPreset
from medview.imaging.lut import palette_to_rgb, ybr_full_to_rgb
from medview.io.codestream import check_frames

log = logging.getLogger(__name__)

#: Distances (mm) and times (ms) outside these bounds are treated as unknown, with a warning.
MAX_SPACING_MM = 10_000.0
MIN_SPACING_MM = 1e-6
MAX_POSITION_MM = 1e7
#: Modality values must stay far inside float32 (3.4e38) so that windowing stays exact.
MAX_MODALITY_VALUE = 1e30
MIN_ABS_SLOPE = 1e-12
MAX_WINDOW_VALUE = 1e9
#: Elements larger than this are not read until needed (Pixel Data, huge private tags).
DEFER_SIZE = 64 * 1024

# pydicom checks every value it reads against its VR and, in its default mode, logs each
# invalid one - with the value (a patient's name, an ID) - and warns. medview validates
# what it uses itself and never logs file values, so reading-time validation is off: it
# was also 5-10% of a header's reading time.
pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE

DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"

NATIVE_SYNTAXES = {
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian (inflated on read)
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired)
}
BIG_ENDIAN = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"

#: Which PyPI package decodes which compressed transfer syntax (for error messages).
DECODER_PACKAGES = {
    "1.2.840.10008.1.2.4.50": "pylibjpeg-libjpeg or Pillow",
    "1.2.840.10008.1.2.4.51": "pylibjpeg-libjpeg or Pillow",
    "1.2.840.10008.1.2.4.57": "pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.70": "pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.80": "pyjpegls or pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.81": "pyjpegls or pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.90": "pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.91": "pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.201": "pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.202": "pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.203": "pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.5": "pylibjpeg-rle",
}

_PHOTOMETRICS = {
    "MONOCHROME1",
    "MONOCHROME2",
    "RGB",
    "PALETTE COLOR",
    "YBR_FULL",
    "YBR_FULL_422",
    "YBR_ICT",
    "YBR_RCT",
    "YBR_PARTIAL_420",
}


@dataclass
class DicomHeader:
    """What one DICOM file says about its image, validated; pixels not yet read."""

    path: str
    ds: Dataset
    transfer_syntax: str
    sop_uid: str
    series_uid: str
    study_uid: str
    modality: str
    description: str
    rows: int
    cols: int
    frames: int
    samples: int
    bits_allocated: int
    bits_stored: int
    signed: bool
    photometric: str
    planar: int
    instance_number: int | None
    position: np.ndarray | None
    orientation: np.ndarray | None
    frame_positions: np.ndarray | None
    pixel_spacing: tuple[float, float] | None
    slice_thickness: float | None
    slopes: np.ndarray
    intercepts: np.ndarray
    rescale_type: str
    windows: list[WindowPreset]
    voi_lut: VoiLut | None
    frame_time_ms: float | None
    pixel_offset: int | None
    pixel_length: int | None
    warnings: list[str] = field(default_factory=list)
    patient_orientation: tuple[str, str] | None = None
    localizer: bool = False
    #: what ``pixel_spacing`` measures: "patient", "detector" or "" (none)
    spacing_kind: str = ""
    magnification: float | None = None

    # A series takes its patient, study and population from its first file: these are
    # read from the header when asked, not for every file of the series (a third of the
    # header time of a 120-file CT series; benchmarks/bench_load.py).
    @functools.cached_property
    def population(self) -> Population:
        return population_of(self.ds)

    @functools.cached_property
    def study(self) -> StudyInfo:
        return study_of(self.ds)

    @property
    def compressed(self) -> bool:
        return self.transfer_syntax not in NATIVE_SYNTAXES

    @property
    def expected_bytes(self) -> int:
        bits = self.rows * self.cols * self.frames * self.samples * self.bits_allocated
        return (bits + 7) // 8

    @property
    def orientation_key(self) -> tuple:
        if self.orientation is None:
            return ()
        return tuple(np.round(self.orientation, 3).tolist())

    @property
    def out_dtype(self) -> np.dtype:
        """The numpy dtype of this file's decoded pixels."""
        if self.photometric == "PALETTE COLOR":
            return np.dtype(np.uint8)
        if self.bits_allocated <= 8:
            return np.dtype(np.int8 if self.signed and self.samples == 1 else np.uint8)
        if self.bits_allocated <= 16:
            return np.dtype(np.int16 if self.signed and self.samples == 1 else np.uint16)
        return np.dtype(np.int32 if self.signed and self.samples == 1 else np.uint32)

    @property
    def out_photometric(self) -> str:
        """Photometric interpretation after decoding: colour always becomes RGB."""
        if self.samples == 3 or self.photometric == "PALETTE COLOR":
            return "RGB"
        return self.photometric


def syntax_name(uid: str) -> str:
    try:
        return UID(uid).name or uid
    except Exception:
        return uid


def _as_float(value, default: float | None = None) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return default
    return f


def _multi(value) -> list:
    if value is None:
        return []
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return list(value)
    return [value]


def _text(ds: Dataset, keyword: str) -> str:
    """A DICOM string as plain text: control characters removed, stripped."""
    try:
        value = ds.get(keyword, "")
    except Exception:
        return ""
    text = str(value) if value is not None else ""
    return "".join(ch if ch.isprintable() else " " for ch in text).strip()


_AGE_UNITS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}


def patient_age_years(ds: Dataset) -> float | None:
    """The patient's age at the study in years: Patient's Age (0010,1010) such as ``064Y``
    or ``011M``, else Patient's Birth Date to the Study (or Acquisition/Content) Date.
    None when absent or implausible (negative, over 150 years). ``000Y`` is read as
    unknown: anonymisers write it as a placeholder, and an infant's age is given in
    days, weeks or months."""
    text = _text(ds, "PatientAge").upper()
    age = None
    m = re.fullmatch(r"(\d{1,3})\s*([DWMY])", text)
    if m and not (int(m.group(1)) == 0 and m.group(2) == "Y"):
        age = int(m.group(1)) * _AGE_UNITS[m.group(2)]
    else:
        born = _dicom_date(_text(ds, "PatientBirthDate"))
        seen = next((d for d in (_dicom_date(_text(ds, k)) for k in
                                 ("StudyDate", "AcquisitionDate", "ContentDate", "SeriesDate"))
                     if d is not None), None)
        if born is not None and seen is not None:
            age = (seen - born).days / 365.25
    if age is None or not (0.0 <= age <= 150.0):
        return None
    return round(age, 3)


def _dicom_date(text: str):
    import datetime

    if not re.fullmatch(r"\d{8}", text):
        return None
    try:
        return datetime.date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None


def population_of(ds: Dataset) -> Population:
    """Who and what the image shows, as far as the header says (for the trust gate)."""
    return Population(
        body_part=_text(ds, "BodyPartExamined").upper()[:64],
        view_position=_text(ds, "ViewPosition").upper()[:16],
        age_years=patient_age_years(ds),
    )


def _patient_orientation(ds: Dataset) -> tuple[str, str] | None:
    """Patient Orientation (0020,0020) as two plain strings, e.g. ("L", "F")."""
    try:
        values = _multi(ds.get("PatientOrientation"))
    except Exception:
        return None
    if len(values) != 2:
        return None
    return ("".join(c for c in str(values[0]) if c.isalpha())[:3].upper(),
            "".join(c for c in str(values[1]) if c.isalpha())[:3].upper())


def date_text(date: str) -> str:
    """A DICOM date (DA, ``YYYYMMDD``) as ``YYYY-MM-DD``; anything else as written."""
    return f"{date[:4]}-{date[4:6]}-{date[6:]}" if re.fullmatch(r"\d{8}", date) else date


def person_name_text(name: str) -> str:
    """A DICOM person name (PN, ``Family^Given``) as words."""
    return " ".join(name.replace("^", " ").split())


def study_of(ds: Dataset) -> StudyInfo:
    """The patient and study of a file, as plain text (names with ``^`` as spaces)."""
    date = date_text(_text(ds, "StudyDate"))
    return StudyInfo(
        patient_name=person_name_text(_text(ds, "PatientName"))[:128],
        patient_id=_text(ds, "PatientID")[:64],
        study_uid=_text(ds, "StudyInstanceUID")[:64],
        study_date=date[:32],
        study_description=_text(ds, "StudyDescription")[:128],
        accession=_text(ds, "AccessionNumber")[:32],
        patient_sex=_text(ds, "PatientSex").upper()[:1],
    )


def _int_tag(ds: Dataset, path: str, keyword: str, default: int | None = None) -> int:
    try:
        value = ds.get(keyword, default)
    except Exception as exc:
        raise InvalidPixelTagError(path, keyword, f"unreadable value ({exc})") from exc
    if value is None or value == "":
        if default is None:
            raise InvalidPixelTagError(path, keyword, "missing")
        return default
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise InvalidPixelTagError(path, keyword, f"not an integer: {value!r}") from exc


def _functional_item(ds: Dataset, frame: int | None, seq: str, item_seq: str):
    """Look up a functional-group macro (enhanced multi-frame) per frame, then shared."""
    groups = []
    if frame is not None and "PerFrameFunctionalGroupsSequence" in ds:
        per = ds.PerFrameFunctionalGroupsSequence
        if frame < len(per):
            groups.append(per[frame])
    if "SharedFunctionalGroupsSequence" in ds and len(ds.SharedFunctionalGroupsSequence):
        groups.append(ds.SharedFunctionalGroupsSequence[0])
    for group in groups:
        items = group.get(seq)
        if items:
            item = items[0]
            if item_seq in item:
                return item
    return None


def _vector(value, n: int, bound: float = MAX_POSITION_MM) -> np.ndarray | None:
    vals = _multi(value)
    if len(vals) != n:
        return None
    try:
        arr = np.array([float(v) for v in vals])
    except (TypeError, ValueError, OverflowError):
        return None
    return arr if np.all(np.isfinite(arr)) and np.all(np.abs(arr) <= bound) else None


_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR",
              b"UT", b"UV"}


def _meta_syntax_and_end(f) -> tuple[str, int, bool]:
    """The Transfer Syntax UID of a Part 10 file's meta group, where the dataset starts,
    and whether the group's end was seen, read element by element (explicit VR little
    endian, PS3.10 7.1)."""
    f.seek(132)
    syntax = ""
    for _ in range(64):
        head = f.read(8)
        if len(head) == 8 and head[:2] != b"\x02\x00":
            return syntax, f.tell() - 8, True
        if len(head) < 8:
            break
        element = int.from_bytes(head[2:4], "little")
        vr = head[4:6]
        if vr in _LONG_VRS:
            extra = f.read(4)
            if len(extra) < 4:
                break
            length = int.from_bytes(extra, "little")
        else:
            length = int.from_bytes(head[6:8], "little")
        if length > 1 << 16:
            break
        value = f.read(length)
        if element == 0x0010:
            syntax = value.rstrip(b"\x00 ").decode("ascii", "replace")
    return syntax, f.tell(), False


def check_deflated_size(path: str, head: bytes | None = None) -> None:
    """Refuse a Deflated Explicit VR Little Endian file that would inflate beyond the
    memory budget. pydicom inflates the whole dataset in memory before reading a tag, so
    a few megabytes of zeros could become gigabytes; the stream is inflated here first
    in bounded chunks, only counting. ``head`` (the file's first bytes, already read by
    the loader) usually holds the whole meta group: then only deflated files are opened."""
    if head is not None:
        syntax, _end, complete = _meta_syntax_and_end(io.BytesIO(head))
        if complete and syntax != DEFLATED:
            return
    with open_regular(path) as f:
        syntax, start, _complete = _meta_syntax_and_end(f)
        if syntax != DEFLATED:
            return
        f.seek(start)
        budget = memory_budget() // COPIES_NATIVE_DICOM
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        total = 0
        try:
            while True:
                chunk = inflater.unconsumed_tail or f.read(1 << 20)
                if not chunk:
                    break
                total += len(inflater.decompress(chunk, 1 << 22))
                if total > budget:
                    check_budget(path, total, COPIES_NATIVE_DICOM, "the inflated dataset")
                if inflater.eof:
                    break
        except zlib.error:
            return  # not a valid stream: pydicom's own read reports it


#: Parse only the elements medview uses (``medview.io.dicomscan``); False reads every
#: element with pydicom (the tests compare the two on every shipped file).
FAST_HEADERS = True


def _fast_dataset(path: str):
    from medview.io.dicomscan import read_wanted

    try:
        return read_wanted(path)
    except (FileNotFoundError, PermissionError):
        raise
    except Exception:  # anything unusual: the full reader decides and explains
        return None


def read_header(path: str, *, raw: bool = False, head: bytes | None = None) -> DicomHeader:
    """Read and validate a DICOM file's header; pixels are deferred.

    Parameters
    ----------
    path
        The file.
    raw
        True for a file without the preamble and ``DICM`` marker; it is accepted only if it
        parses as an image dataset, and a warning says so.
    head
        The file's first bytes if the caller has read them (spares a second open).

    Raises
    ------
    LoadError
        A subclass naming the file and the reason (see :mod:`medview.core.errors`).
    """
    if not raw:
        check_deflated_size(path, head)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # Only the elements medview reads are parsed (dicomscan: a byte-level walk
            # that hands pydicom just those); where that does not apply, pydicom reads
            # the whole header. Elements are converted when first used (in
            # _validated_header, where a malformed one is a clear CorruptFileError):
            # converting every one up front was over half of the load time of real
            # scanner files, whose headers hold hundreds of elements.
            ds = _fast_dataset(path) if not raw and FAST_HEADERS else None
            if ds is None:
                ds = pydicom.dcmread(path, defer_size=DEFER_SIZE, force=raw)
    except (FileNotFoundError, PermissionError) as exc:
        raise load_error_from_os(path, exc) from exc
    except RecursionError as exc:
        raise CorruptFileError(path, "sequences nested too deeply to read") from exc
    except MemoryError as exc:
        raise TooLargeError(path, "an element is too large to read") from exc
    except InvalidDicomError as exc:
        raise NotAnImageError(path, f"not a DICOM file: {exc}") from exc
    except Exception as exc:
        raise CorruptFileError(path, f"unreadable DICOM header: {exc}") from exc
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _validated_header(path, ds, raw)
    except LoadError:
        raise
    except RecursionError as exc:
        raise CorruptFileError(path, "sequences nested too deeply to read") from exc
    except Exception as exc:
        raise CorruptFileError(path, f"malformed DICOM header: {exc}") from exc


def _validated_header(path: str, ds: Dataset, raw: bool) -> DicomHeader:
    warns: list[str] = []
    if raw:
        warns.append("no DICOM file header (preamble and 'DICM' marker); read as a raw dataset")
    meta = getattr(ds, "file_meta", None)
    sop_class = str(meta.get("MediaStorageSOPClassUID", "")) if meta is not None else ""
    if sop_class == DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds:
        raise NotAnImageError(
            path, "DICOMDIR index: not followed; images are read from the folder itself"
        )
    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise NotAnImageError(path, "float pixel data (parametric map) is not supported")
        if raw and "Rows" not in ds:
            raise NotAnImageError(path, "not an image: no DICOM image attributes found")
        raise NoPixelDataError(path, _text(ds, "Modality")[:16])

    tsyntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    if not tsyntax:
        implicit, little = ds.original_encoding
        if implicit in (None, True):
            tsyntax = "1.2.840.10008.1.2"
        else:
            tsyntax = "1.2.840.10008.1.2.1" if little in (None, True) else BIG_ENDIAN
        warns.append(f"no Transfer Syntax UID; assumed {syntax_name(tsyntax)}")
        if meta is None:
            ds.file_meta = pydicom.dataset.FileMetaDataset()
            meta = ds.file_meta
        meta.TransferSyntaxUID = UID(tsyntax)

    rows = _int_tag(ds, path, "Rows")
    cols = _int_tag(ds, path, "Columns")
    if rows <= 0:
        raise InvalidPixelTagError(path, "Rows", f"{rows}")
    if cols <= 0:
        raise InvalidPixelTagError(path, "Columns", f"{cols}")
    bits_allocated = _int_tag(ds, path, "BitsAllocated")
    if bits_allocated not in (1, 8, 16, 32):
        raise InvalidPixelTagError(
            path, "BitsAllocated", f"{bits_allocated} (must be 1, 8, 16 or 32)"
        )
    bits_stored = _int_tag(ds, path, "BitsStored", bits_allocated)
    if not 1 <= bits_stored <= bits_allocated:
        raise InvalidPixelTagError(
            path, "BitsStored", f"{bits_stored} (BitsAllocated is {bits_allocated})"
        )
    pixrep = _int_tag(ds, path, "PixelRepresentation", 0)
    if pixrep not in (0, 1):
        raise InvalidPixelTagError(path, "PixelRepresentation", f"{pixrep} (must be 0 or 1)")
    samples = _int_tag(ds, path, "SamplesPerPixel", 1)
    if samples not in (1, 3):
        raise InvalidPixelTagError(path, "SamplesPerPixel", f"{samples} (must be 1 or 3)")
    frames = _int_tag(ds, path, "NumberOfFrames", 1) if "NumberOfFrames" in ds else 1
    if frames <= 0:
        raise InvalidPixelTagError(path, "NumberOfFrames", f"{frames}")
    photometric = _text(ds, "PhotometricInterpretation").upper()
    if not photometric:
        photometric = "MONOCHROME2" if samples == 1 else "RGB"
        warns.append(f"no Photometric Interpretation; assumed {photometric}")
    if photometric not in _PHOTOMETRICS:
        raise InvalidPixelTagError(path, "PhotometricInterpretation", repr(photometric))
    need_samples = 1 if photometric in ("MONOCHROME1", "MONOCHROME2", "PALETTE COLOR") else 3
    if samples != need_samples:
        raise InvalidPixelTagError(
            path, "SamplesPerPixel",
            f"{samples}, but Photometric Interpretation {photometric} needs {need_samples}")
    planar = _int_tag(ds, path, "PlanarConfiguration", 0) if samples == 3 else 0
    if planar not in (0, 1):
        raise InvalidPixelTagError(path, "PlanarConfiguration", f"{planar} (must be 0 or 1)")

    decoded = rows * cols * frames * samples * max(bits_allocated, 8) // 8
    if photometric == "PALETTE COLOR":
        decoded *= 3  # expanded to RGB
    native = tsyntax in NATIVE_SYNTAXES
    check_budget(path, decoded, COPIES_NATIVE_DICOM if native else COPIES_COMPRESSED_DICOM,
                 f"the pixel data ({rows}x{cols}, {frames} frame(s))", rows * cols * samples)

    pixel_offset = pixel_length = None
    elem = ds.get_item("PixelData", keep_deferred=True)
    length = getattr(elem, "length", None)
    tell = getattr(elem, "value_tell", None)
    if tsyntax in NATIVE_SYNTAXES:
        expected = (rows * cols * frames * samples * bits_allocated + 7) // 8
        if photometric == "YBR_FULL_422":
            expected = expected * 2 // 3  # two of every three chroma samples are shared
        raw_value = getattr(elem, "value", None)
        if (
            length is not None
            and length != 0xFFFFFFFF
            and isinstance(raw_value, bytes)
            and len(raw_value) < length
        ):
            raise CorruptFileError(
                path,
                f"Pixel Data (7FE0,0010) runs past the end of the file: its length field "
                f"says {length} bytes, the file holds {len(raw_value)}",
            )
        if tsyntax == DEFLATED:
            tell = None  # offsets are into the inflated stream, not the file
        if length is None or length == 0xFFFFFFFF or tell is None:
            value = ds.PixelData
            length = len(value) if value is not None else 0
            tell = None
        if length not in (expected, expected + 1):
            raise CorruptFileError(
                path,
                f"Pixel Data has {length} bytes but Rows x Columns x Frames x Samples x "
                f"Bits ({rows}x{cols}x{frames}x{samples}x{bits_allocated}) needs {expected}",
            )
        if tell is not None:
            size = os.path.getsize(path)
            if tell + expected > size:
                raise CorruptFileError(
                    path,
                    f"Pixel Data (7FE0,0010) runs past the end of the file: needs "
                    f"{expected} bytes from offset {tell}, the file has {size - tell}",
                )
            pixel_offset, pixel_length = tell, expected
    elif (
        length is not None
        and length != 0xFFFFFFFF
        and tell is not None
        and tell + length > os.path.getsize(path)
    ):
        raise CorruptFileError(
            path, "Pixel Data (7FE0,0010) length runs past the end of the file"
        )
    if tsyntax not in NATIVE_SYNTAXES:
        _check_decoder(path, tsyntax)

    modality = _text(ds, "Modality").upper() or "OT"
    stored_lo, stored_hi = stored_range(bits_stored, pixrep == 1)
    slopes, intercepts = _rescale(ds, frames, modality, warns, (stored_lo, stored_hi))
    value_lo = float(np.min([stored_lo * slopes, stored_hi * slopes]) + intercepts.min())
    value_hi = float(np.max([stored_lo * slopes, stored_hi * slopes]) + intercepts.max())
    windows = _windows(ds, warns, (value_lo, value_hi))
    voi_lut = _voi_lut(ds, warns)
    position, orientation, frame_positions = _geometry(ds, frames, warns)
    spacing = _pixel_spacing(ds, warns)
    thickness = _as_float(ds.get("SliceThickness"))
    if thickness is not None and not (math.isfinite(thickness)
                                      and MIN_SPACING_MM <= thickness <= MAX_SPACING_MM):
        thickness = None
    frame_time = _as_float(ds.get("FrameTime"))
    if frame_time is None and "CineRate" in ds:
        rate = _as_float(ds.get("CineRate"))
        frame_time = 1000.0 / rate if rate and math.isfinite(rate) and rate > 0 else None
    if frame_time is not None and not (math.isfinite(frame_time) and 1.0 <= frame_time <= 1e5):
        frame_time = None
    instance = ds.get("InstanceNumber")
    try:
        instance_number = int(instance) if instance not in (None, "") else None
    except (TypeError, ValueError):
        instance_number = None

    return DicomHeader(
        path=path,
        ds=ds,
        transfer_syntax=tsyntax,
        sop_uid=str(ds.get("SOPInstanceUID", "")),
        series_uid=str(ds.get("SeriesInstanceUID", "")),
        study_uid=str(ds.get("StudyInstanceUID", "")),
        modality=modality,
        description=_text(ds, "SeriesDescription") or _text(ds, "StudyDescription"),
        rows=rows,
        cols=cols,
        frames=frames,
        samples=samples,
        bits_allocated=bits_allocated,
        bits_stored=bits_stored,
        signed=pixrep == 1,
        photometric=photometric,
        planar=planar,
        instance_number=instance_number,
        position=position,
        orientation=orientation,
        frame_positions=frame_positions,
        pixel_spacing=spacing,
        slice_thickness=thickness,
        slopes=slopes,
        intercepts=intercepts,
        rescale_type=_text(ds, "RescaleType").upper(),
        windows=windows,
        voi_lut=voi_lut,
        frame_time_ms=frame_time,
        pixel_offset=pixel_offset,
        pixel_length=pixel_length,
        warnings=warns,
        patient_orientation=_patient_orientation(ds),
        localizer=any("LOCALIZER" in str(v).upper() for v in _multi(ds.get("ImageType"))),
        spacing_kind=_spacing_kind(ds, modality) if spacing is not None else "",
        magnification=_magnification(ds),
    )


def _check_decoder(path: str, tsyntax: str) -> None:
    from pydicom.pixels import get_decoder

    name = syntax_name(tsyntax)
    package = DECODER_PACKAGES.get(tsyntax, "no known package")
    try:
        decoder = get_decoder(UID(tsyntax))
    except NotImplementedError as exc:
        raise UnsupportedTransferSyntaxError(
            path, name, tsyntax, "no decoder exists for this transfer syntax"
        ) from exc
    if not decoder.is_available:
        raise UnsupportedTransferSyntaxError(
            path, name, tsyntax, f"no decoder installed; install {package}"
        )


def stored_range(bits_stored: int, signed: bool) -> tuple[int, int]:
    """The smallest and largest stored value ``bits_stored`` bits can hold."""
    if signed:
        return -(1 << (bits_stored - 1)), (1 << (bits_stored - 1)) - 1
    return 0, (1 << bits_stored) - 1


def rescale_is_usable(slope: float, intercept: float, lo: float, hi: float) -> bool:
    """Whether ``stored * slope + intercept`` over ``[lo, hi]`` is finite, far inside float32,
    and still tells the stored values apart in float32 (else the image would be blank)."""
    if not (math.isfinite(slope) and math.isfinite(intercept)) or slope == 0:
        return False
    if abs(slope) < MIN_ABS_SLOPE:
        return False
    ends = (lo * slope + intercept, hi * slope + intercept)
    biggest = max(abs(ends[0]), abs(ends[1]))
    if not math.isfinite(biggest) or biggest > MAX_MODALITY_VALUE:
        return False
    span = abs(slope) * max(hi - lo, 1)
    return span > biggest * 1e-6  # float32 keeps ~7 significant digits


def _rescale(
    ds: Dataset, frames: int, modality: str, warns: list[str],
    stored: tuple[int, int] = (0, 65535),
) -> tuple[np.ndarray, np.ndarray]:
    slopes = np.ones(frames)
    intercepts = np.zeros(frames)
    per_frame = "PerFrameFunctionalGroupsSequence" in ds
    bad = False
    missing = False
    for i in range(frames if per_frame else 1):
        item = _functional_item(ds, i if per_frame else None, "PixelValueTransformationSequence",
                                "RescaleSlope")
        src = item if item is not None else ds
        if "RescaleSlope" not in src and "RescaleIntercept" not in src:
            missing = True
            continue
        s = _as_float(src.get("RescaleSlope", 1.0), math.nan)
        b = _as_float(src.get("RescaleIntercept", 0.0), math.nan)
        if not rescale_is_usable(s, b, *stored):
            bad = True
            continue
        if per_frame:
            slopes[i], intercepts[i] = s, b
        else:
            slopes[:], intercepts[:] = s, b
    if bad:
        warns.append(
            "Rescale Slope/Intercept invalid (NaN, infinite, zero, or so large or small that "
            "the image would be lost in rounding); stored values shown unscaled"
        )
    elif missing and modality == "CT":
        warns.append("no Rescale Slope/Intercept in a CT image; values may not be HU")
    return slopes, intercepts


def _windows(ds: Dataset, warns: list[str],
             value_range: tuple[float, float] = (-math.inf, math.inf)) -> list[WindowPreset]:
    src: Dataset = ds
    if "WindowCenter" not in ds:
        item = _functional_item(ds, 0, "FrameVOILUTSequence", "WindowCenter")
        if item is not None:
            src = item
    centers = _multi(src.get("WindowCenter"))
    widths = _multi(src.get("WindowWidth"))
    if not centers:
        return []
    names = _multi(src.get("WindowCenterWidthExplanation"))
    out: list[WindowPreset] = []
    invalid = 0
    for k, (c, w) in enumerate(zip(centers, widths, strict=False)):
        cf, wf = _as_float(c, math.nan), _as_float(w, math.nan)
        if (not (math.isfinite(cf) and math.isfinite(wf)) or wf < 1
                or abs(cf) > MAX_WINDOW_VALUE or wf > MAX_WINDOW_VALUE
                or cf + wf / 2 < value_range[0] or cf - wf / 2 > value_range[1]):
            invalid += 1  # NaN, absurd, or entirely outside the values the image can hold
            continue
        if any(p.center == cf and p.width == wf for p in out):
            continue  # the same window repeated (multi-valued tags often repeat one)
        label = "".join(ch for ch in str(names[k]) if ch.isprintable()) if k < len(names) else ""
        out.append(WindowPreset(f"File: {label}" if label else f"File window {len(out) + 1}",
                                cf, wf))
    if invalid or len(centers) != len(widths):
        warns.append("some Window Center/Width values are invalid or outside the image's "
                     "value range; an automatic window is used instead of them")
    return out


def _voi_lut(ds: Dataset, warns: list[str]) -> VoiLut | None:
    if "VOILUTSequence" not in ds or not len(ds.VOILUTSequence):
        return None
    item = ds.VOILUTSequence[0]
    try:
        n, first, bits = (int(v) for v in item.LUTDescriptor)
        n = n or 65536
        data = item.LUTData
        if isinstance(data, bytes):
            table = np.frombuffer(data, dtype="<u2" if bits > 8 else np.uint8)
        else:
            table = np.asarray(_multi(data), dtype=np.uint16)
        table = table[:n]
        if table.size == 0 or not 1 <= bits <= 16:
            raise ValueError("empty table")
    except Exception:
        warns.append("VOI LUT Sequence unreadable; a window is used instead")
        return None
    explanation = "".join(ch for ch in str(item.get("LUTExplanation", "")) if ch.isprintable())
    return VoiLut(first_mapped=first, bits=bits, table=table, explanation=explanation)


def _geometry(ds: Dataset, frames: int, warns: list[str] | None = None):
    orientation = _vector(ds.get("ImageOrientationPatient"), 6)
    position = _vector(ds.get("ImagePositionPatient"), 3)
    frame_positions = None
    if "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds:
        item = _functional_item(ds, 0, "PlaneOrientationSequence", "ImageOrientationPatient")
        if orientation is None and item is not None:
            orientation = _vector(item.ImageOrientationPatient, 6)
        positions = []
        for i in range(frames):
            pitem = _functional_item(ds, i, "PlanePositionSequence", "ImagePositionPatient")
            vec = _vector(pitem.ImagePositionPatient, 3) if pitem is not None else None
            if vec is None:
                positions = []
                break
            positions.append(vec)
        if positions:
            frame_positions = np.array(positions)
            position = frame_positions[0]
    if orientation is not None:
        r, c = orientation[:3], orientation[3:]
        if (abs(np.linalg.norm(r) - 1) > 0.05 or abs(np.linalg.norm(c) - 1) > 0.05
                or abs(float(np.dot(r, c))) > 0.05):
            orientation = None  # not two unit vectors at right angles
            if warns is not None:
                warns.append("Image Orientation (Patient) is invalid (row and column vectors "
                             "not perpendicular unit vectors); orientation unknown")
    return position, orientation, frame_positions


#: modalities whose images are projections (the spacing can be at the detector)
PROJECTION_MODALITIES = frozenset({"CR", "DX", "MG", "RF", "XA", "IO", "PX", "RG", "DF"})


def _spacing_kind(ds: Dataset, modality: str) -> str:
    """What the spacing :func:`_pixel_spacing` chose measures (PS3.3 10.7.1.1-3): Pixel
    Spacing is at the patient, except on a projection film where it only repeats the
    Imager Pixel Spacing with no calibration type (then it is the detector's, as is
    Imager Pixel Spacing alone)."""
    pixel = _vector(ds.get("PixelSpacing"), 2)
    if pixel is None:
        item = _functional_item(ds, 0, "PixelMeasuresSequence", "PixelSpacing")
        pixel = _vector(item.PixelSpacing, 2) if item is not None else None
    if pixel is None:
        return "detector"  # Imager Pixel Spacing was used
    imager = _vector(ds.get("ImagerPixelSpacing"), 2)
    if (modality in PROJECTION_MODALITIES and imager is not None
            and not _text(ds, "PixelSpacingCalibrationType")
            and np.allclose(pixel, imager, rtol=1e-6, atol=0)):
        return "detector"
    return "patient"


def _magnification(ds: Dataset) -> float | None:
    m = _as_float(ds.get("EstimatedRadiographicMagnificationFactor"))
    return m if m is not None and math.isfinite(m) and 1.0 <= m <= 3.0 else None


def _pixel_spacing(ds: Dataset, warns: list[str] | None = None) -> tuple[float, float] | None:
    vec = _vector(ds.get("PixelSpacing"), 2)
    if vec is None:
        item = _functional_item(ds, 0, "PixelMeasuresSequence", "PixelSpacing")
        if item is not None:
            vec = _vector(item.PixelSpacing, 2)
    if vec is None:
        vec = _vector(ds.get("ImagerPixelSpacing"), 2)
    if vec is None:
        return None
    if np.any(vec < MIN_SPACING_MM) or np.any(vec > MAX_SPACING_MM):
        if warns is not None:
            warns.append("Pixel Spacing is zero, negative or implausible; distances are in "
                         "pixels")
        return None
    return float(vec[0]), float(vec[1])


def _native_pixels(h: DicomHeader) -> np.ndarray:
    """Uncompressed pixels read straight from the file (or the inflated dataset)."""
    if h.bits_allocated == 1:
        raise ValueError("1-bit data goes through pydicom")
    dtype = _stored_dtype(h)
    order = dtype.byteorder
    count = h.rows * h.cols * h.frames * h.samples
    if h.pixel_offset is not None:
        with open_regular(h.path) as f:
            f.seek(h.pixel_offset)
            arr = np.fromfile(f, dtype=dtype, count=count)
        if arr.size != count:
            raise CorruptFileError(h.path, "Pixel Data ended early while reading")
    else:
        arr = np.frombuffer(h.ds.PixelData, dtype=dtype, count=count)
    if order == ">":
        arr = arr.astype(dtype.newbyteorder("="))
    if h.samples == 1:
        arr = arr.reshape(h.frames, h.rows, h.cols)
    elif h.planar == 1:
        arr = arr.reshape(h.frames, 3, h.rows, h.cols).transpose(0, 2, 3, 1)
    else:
        arr = arr.reshape(h.frames, h.rows, h.cols, 3)
    if h.bits_stored < h.bits_allocated:
        arr = _mask_bits(arr, h.bits_stored, h.signed and h.samples == 1)
    return arr


def _stored_dtype(h: DicomHeader) -> np.dtype:
    """The dtype of the file's native pixel values (8/16/32 bits, signed grey, the
    transfer syntax's byte order)."""
    base = {8: "u1", 16: "u2", 32: "u4"}[h.bits_allocated]
    if h.signed and h.samples == 1:
        base = base.replace("u", "i")
    return np.dtype((">" if h.transfer_syntax == BIG_ENDIAN else "<") + base)


def read_pixels_into(h: DicomHeader, out: np.ndarray) -> bool:
    """Read the pixels of a plain file - native little-endian grey, of ``out``'s dtype,
    Pixel Data in the file - straight into ``out`` (its ``(frames, rows, cols)`` slot of
    the series array): no intermediate copy. Returns False, reading nothing, for any
    other file (the caller uses :func:`read_pixels`)."""
    if (h.compressed or h.transfer_syntax == BIG_ENDIAN or h.samples != 1
            or h.pixel_offset is None or h.bits_allocated not in (8, 16, 32)
            or h.photometric not in ("MONOCHROME1", "MONOCHROME2")
            or out.dtype != _stored_dtype(h) or out.shape != (h.frames, h.rows, h.cols)
            or not out.flags.c_contiguous):
        return False
    try:
        with open_regular(h.path) as f:
            f.seek(h.pixel_offset)
            got = f.readinto(memoryview(out).cast("B"))
    except OSError as exc:
        raise LoadError(h.path, f"cannot read pixel data: {exc.strerror or exc}") from exc
    if got != out.nbytes:
        raise CorruptFileError(h.path, "Pixel Data ended early while reading")
    if h.bits_stored < h.bits_allocated:
        masked = _mask_bits(out, h.bits_stored, h.signed)
        if masked is not out:
            out[...] = masked
    return True


def _mask_bits(arr: np.ndarray, bits_stored: int, signed: bool) -> np.ndarray:
    """Keep the low ``bits_stored`` bits; sign-extend when signed (C.7.6.3.1.1)."""
    shift = arr.dtype.itemsize * 8 - bits_stored
    if signed:
        return (arr << shift) >> shift
    mask = (1 << bits_stored) - 1
    if arr.size and int(arr.max()) <= mask:
        return arr
    return arr & arr.dtype.type(mask)


def _pydicom_pixels(h: DicomHeader) -> np.ndarray:
    """Decode through pydicom's plug-ins (compressed syntaxes, 1-bit, subsampled YBR)."""
    from pydicom.pixels import pixel_array

    try:
        if h.compressed:
            # the decoders size their buffers from each frame's own header: check those
            # against the DICOM header first, so no decoder is asked for more memory than
            # the budget already allowed
            check_frames(h.path, h.ds, h.transfer_syntax, h.rows, h.cols, h.frames,
                         h.samples)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = pixel_array(h.ds)
    except LoadError:
        raise
    except BaseException as exc:  # native plug-ins may raise BaseException (Rust panics)
        if must_propagate(exc):
            raise
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if not isinstance(exc, Exception):  # e.g. a Rust panic inside the decoder
            detail = f"the decoder crashed: {type(exc).__name__}: {detail}"
        if h.compressed:
            raise UnsupportedTransferSyntaxError(
                h.path, syntax_name(h.transfer_syntax), h.transfer_syntax,
                f"the decoder failed ({detail[:200]})",
            ) from exc
        raise CorruptFileError(h.path, f"pixel data could not be decoded: {detail[:200]}") from exc
    finally:
        # The encoded bytes were read into the dataset; the decoded array is all we keep.
        if "PixelData" in h.ds:
            del h.ds.PixelData
    if arr.size != h.frames * h.rows * h.cols * h.samples:
        raise CorruptFileError(h.path, f"decoded pixel data has {arr.size} values, the header "
                                       f"describes {h.frames * h.rows * h.cols * h.samples}")
    if h.samples == 1:
        arr = arr.reshape(h.frames, h.rows, h.cols)
    else:
        arr = arr.reshape(h.frames, h.rows, h.cols, 3)
    return arr


def read_pixels(h: DicomHeader) -> np.ndarray:
    """Decoded pixels of one file: ``(frames, rows, cols)`` or ``(frames, rows, cols, 3)`` RGB.

    Raises
    ------
    LoadError
        Naming the file: corrupt data, or compressed data that could not be decoded.
    """
    native_ok = (
        not h.compressed
        and h.bits_allocated in (8, 16, 32)
        and h.photometric in ("MONOCHROME1", "MONOCHROME2", "RGB", "PALETTE COLOR", "YBR_FULL")
    )
    try:
        arr = _native_pixels(h) if native_ok else _pydicom_pixels(h)
    except OSError as exc:
        raise LoadError(h.path, f"cannot read pixel data: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise CorruptFileError(h.path, f"pixel data could not be read: {exc}") from exc
    if h.photometric == "PALETTE COLOR":
        return _apply_palette(h, arr)
    if h.samples == 3 and h.photometric == "YBR_FULL" and native_ok:
        return ybr_full_to_rgb(arr, h.bits_allocated)
    return arr


def _apply_palette(h: DicomHeader, arr: np.ndarray) -> np.ndarray:
    ds = h.ds
    try:
        luts = []
        first = bits = 0
        for colour in ("Red", "Green", "Blue"):
            desc = ds[f"{colour}PaletteColorLookupTableDescriptor"].value
            n, first, bits = (int(v) for v in desc)
            raw = ds[f"{colour}PaletteColorLookupTableData"].value
            table = np.frombuffer(raw, dtype="<u2" if bits > 8 else np.uint8)
            luts.append(table[: (n or 65536)])
    except KeyError:
        try:
            from pydicom.pixels import apply_color_lut

            rgb = apply_color_lut(arr, ds)
        except Exception as exc:
            raise CorruptFileError(h.path, f"palette colour tables unreadable: {exc}") from exc
        if rgb.dtype != np.uint8:
            rgb = (rgb >> 8).astype(np.uint8)
        return rgb.reshape(h.frames, h.rows, h.cols, 3)
    return palette_to_rgb(arr, luts[0], luts[1], luts[2], first, bits)


def _tag_name(tag) -> str:
    from pydicom.datadict import dictionary_description

    try:
        return dictionary_description(tag) or "Unknown"
    except KeyError:
        return "Private tag" if tag.group % 2 else "Unknown"


def tag_rows(path: str, max_value_chars: int = 256) -> list[tuple[str, str, str, str]]:
    """Every element of a DICOM file as plain text: ``(tag, name, VR, value)``.

    Sequences are flattened with indented names; bulk values (pixels, large private tags)
    are summarised by their length. Control characters are removed, so nothing in a file
    can inject markup into the viewer.
    """
    if not is_regular_file(path):  # the tag browser runs on the GUI thread: never block
        raise UnsafeFileError(path, "not a regular file (FIFO, device or socket?)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, defer_size=DEFER_SIZE, force=True)
    except LoadError:
        raise
    except Exception as exc:
        raise CorruptFileError(path, f"unreadable DICOM header: {exc}") from exc
    rows: list[tuple[str, str, str, str]] = []

    def clean(text: str) -> str:
        text = "".join(ch if ch.isprintable() else " " for ch in text)
        return text if len(text) <= max_value_chars else text[:max_value_chars] + "..."

    def walk(dataset: Dataset, depth: int) -> None:
        if depth > 8 or len(rows) > 20000:
            return
        for key in list(dataset.keys()):
            # bulk values (pixels...) are summarised from the raw element, never read:
            # the tag browser runs on the GUI thread
            raw = dataset.get_item(key, keep_deferred=True)
            vr = str(getattr(raw, "VR", "") or "")
            tag = f"({key.group:04X},{key.element:04X})"
            if key == 0x7FE00010 or vr in ("OB", "OW", "OF", "OD", "OL", "UN"):
                length = getattr(raw, "length", None)
                if length is None or length == 0xFFFFFFFF:
                    value = dataset[key].value
                    length = len(value) if value is not None else 0
                name = _tag_name(key)
                rows.append((tag, ("  " * depth) + name, vr, f"<{length} bytes>"))
                continue
            elem = dataset[key]
            name = ("  " * depth) + (elem.name or elem.keyword or "Unknown")
            vr = str(elem.VR)
            if vr == "SQ":
                rows.append((tag, name, vr, f"{len(elem.value)} item(s)"))
                for k, item in enumerate(elem.value):
                    rows.append(("", ("  " * (depth + 1)) + f"Item {k + 1}", "", ""))
                    walk(item, depth + 2)
                continue
            try:
                value = elem.value
                text = str(value) if value is not None else ""
            except Exception:
                text = "<unreadable>"
            rows.append((tag, name, vr, clean(text)))

    if getattr(ds, "file_meta", None) is not None:
        walk(ds.file_meta, 0)
    walk(ds, 0)
    return rows
