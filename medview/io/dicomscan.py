"""Read only the DICOM elements medview uses, and let pydicom parse just those.

A scanner's header holds hundreds of elements (GE CT: 256 at the top level, 179 of them
private); medview reads a few dozen. pydicom's reader builds every element, which was
most of the time spent loading a series. Here the data set is walked at the byte level -
tag, VR, length, skip - and only the elements in :data:`WANTED` (and Pixel Data, whose
position is recorded, not read) are handed to pydicom's own ``read_dataset``; the result
is a ``FileDataset`` like ``dcmread``'s, Pixel Data deferred to the file.

Only the two little-endian syntaxes with a file meta header (explicit VR, which all
compressed syntaxes use, and implicit VR) are walked; anything else - big endian,
deflated, no preamble, an unusual length, a nesting deeper than :data:`MAX_DEPTH`, a
header larger than :data:`MAX_HEADER_BYTES` - returns None and the caller falls back to
pydicom's full reader, so the fast path never accepts a file the full one would refuse.
Every length is checked against the bytes present before it is used.
"""

from __future__ import annotations

import copy
import os
import struct
import threading
from io import BytesIO

from medview.core.safeio import open_regular

#: Little-endian syntaxes walked here (everything else uses pydicom's full reader).
IMPLICIT_LE = "1.2.840.10008.1.2"
BIG_ENDIAN = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
PIXEL_DATA = 0x7FE00010
#: VRs with a 2-byte reserved field and a 4-byte length in explicit VR.
LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR",
            b"UT", b"UV"}
UNDEFINED = 0xFFFFFFFF
ITEM, ITEM_END, SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
MAX_DEPTH = 8
#: The first read; a header longer than this is read whole, up to MAX_HEADER_BYTES.
FIRST_READ = 256 * 1024
MAX_HEADER_BYTES = 64 * 1024 * 1024
#: Elements in a data set (all levels) beyond which the full reader is used instead.
MAX_ELEMENTS = 200_000

#: Every top-level element medview reads from an image file (io/dicom.py, io/series.py,
#: pydicom's pixel decoders and palette/LUT handling). A test loads every DICOM file
#: shipped with pydicom and pydicom-data both ways and requires identical volumes.
WANTED_KEYWORDS = (
    # identity, series planning, study/patient shown
    "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality",
    "SeriesDescription", "StudyDescription", "InstanceNumber", "ImageType", "PatientID",
    "PatientName", "PatientBirthDate", "PatientAge", "PatientSex", "SeriesNumber",
    "StudyDate", "AccessionNumber",
    "BodyPartExamined", "ViewPosition", "PatientOrientation", "SpecificCharacterSet",
    "FrameOfReferenceUID", "AcquisitionNumber", "EchoNumbers", "TemporalPositionIndex",
    # geometry
    "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "ImagerPixelSpacing",
    "SliceThickness", "SpacingBetweenSlices", "GantryDetectorTilt", "SliceLocation",
    "PixelAspectRatio", "NominalScannedPixelSpacing", "PixelSpacingCalibrationType",
    "EstimatedRadiographicMagnificationFactor",
    # multi-frame
    "NumberOfFrames", "FrameTime", "FrameTimeVector", "CineRate", "FrameIncrementPointer",
    "SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence",
    # pixel module
    "Rows", "Columns", "SamplesPerPixel", "PhotometricInterpretation", "PlanarConfiguration",
    "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "PixelPaddingValue",
    "PixelPaddingRangeLimit", "SmallestImagePixelValue", "LargestImagePixelValue",
    "ExtendedOffsetTable", "ExtendedOffsetTableLengths", "FloatPixelData",
    "DoubleFloatPixelData", "BurnedInAnnotation", "LossyImageCompression",
    # modality and VOI transforms
    "RescaleSlope", "RescaleIntercept", "RescaleType", "ModalityLUTSequence",
    "WindowCenter", "WindowWidth", "WindowCenterWidthExplanation", "VOILUTFunction",
    "VOILUTSequence", "PresentationLUTShape",
    # palette colour
    "RedPaletteColorLookupTableDescriptor", "GreenPaletteColorLookupTableDescriptor",
    "BluePaletteColorLookupTableDescriptor", "AlphaPaletteColorLookupTableDescriptor",
    "RedPaletteColorLookupTableData", "GreenPaletteColorLookupTableData",
    "BluePaletteColorLookupTableData", "AlphaPaletteColorLookupTableData",
    "SegmentedRedPaletteColorLookupTableData", "SegmentedGreenPaletteColorLookupTableData",
    "SegmentedBluePaletteColorLookupTableData", "SegmentedAlphaPaletteColorLookupTableData",
    "PaletteColorLookupTableUID",
    # refused or redirected kinds of object
    "DirectoryRecordSequence",
)


def wanted_tags() -> frozenset[int]:
    from pydicom.datadict import tag_for_keyword

    tags = {tag_for_keyword(k) for k in WANTED_KEYWORDS}
    if None in tags:
        raise ValueError("an unknown keyword in WANTED_KEYWORDS")
    return frozenset(int(t) for t in tags) | {PIXEL_DATA}


def _ambiguous(tags) -> frozenset[int]:
    """Tags whose VR depends on another element ("US or SS": on Pixel Representation):
    their bytes alone do not fix their value, so they are never taken from the cache."""
    from pydicom.datadict import dictionary_VR

    return frozenset(t for t in tags if t != PIXEL_DATA and " or " in dictionary_VR(t))


_WANTED: frozenset[int] | None = None
_AMBIGUOUS: frozenset[int] = frozenset()


CHARSET = 0x00080005
#: Converted elements by their exact bytes (and the file's character set): the files of
#: a series repeat most header values byte for byte, and pydicom's conversion of a value
#: was a third of a header's reading time. Bounded; sequences are never cached.
_converted: dict[tuple[bool, bytes, bytes], object] = {}
MAX_CACHED = 4096
MAX_CACHED_BYTES = 1024
_cache_lock = threading.Lock()


def _recall(key):
    """The cached element for ``key``, marked as just used (least recently used first
    out: a series' shared values stay while per-file UIDs come and go)."""
    with _cache_lock:
        elem = _converted.pop(key, None)
        if elem is not None:
            _converted[key] = elem
        return elem


def _remember(key, elem) -> None:
    with _cache_lock:
        if len(_converted) >= MAX_CACHED:
            _converted.pop(next(iter(_converted)))  # the least recently used
        _converted[key] = elem


def _fresh(elem):
    """The cached element for a new dataset: the same object when its value is immutable
    (text, numbers, a person name: nothing in medview or pydicom changes a read header
    element in place), a new element with a new list for multi-valued ones, so no
    dataset shares a mutable value with another."""
    from pydicom.dataelem import DataElement
    from pydicom.multival import MultiValue

    value = elem.value
    if not isinstance(value, (MultiValue, list)):
        return elem
    if isinstance(getattr(value, "_list", None), list):  # a new list, same items
        new = MultiValue.__new__(MultiValue)
        new._constructor, new._list = value._constructor, list(value._list)
        value = new
    else:
        value = copy.deepcopy(value)
    return DataElement(elem.tag, elem.VR, value, already_converted=True,
                       validation_mode=elem.validation_mode)


class _All:
    """Every tag (the file meta group is taken whole)."""

    def __contains__(self, _tag) -> bool:
        return True


def _dataset(buf: bytes, found, implicit: bool, charset: bytes):
    """A pydicom Dataset of the ``found`` elements (tag, start, end) of ``buf``: values
    another file already had come from the cache, the rest are parsed by pydicom and
    converted now (a malformed one raises, and the caller falls back to dcmread)."""
    from pydicom.filereader import read_dataset

    known, todo = [], []
    for tag, s, e in found:
        key = (implicit, charset, bytes(buf[s:e]))
        # the character set is always parsed with the new elements: pydicom decodes their
        # text with it (taken from the cache it was missing, and text decoded otherwise)
        elem = None if tag == CHARSET else _recall(key)
        (known if elem is not None else todo).append((tag, key, elem))
    dataset = read_dataset(BytesIO(b"".join(key[2] for _t, key, _e in todo)), implicit, True)
    for _tag, _key, elem in known:
        dataset._dict[elem.tag] = _fresh(elem)
    for tag, key, _elem in todo:
        elem = dataset[tag]
        if (elem.VR != "SQ" and len(key[2]) <= MAX_CACHED_BYTES and tag not in _AMBIGUOUS
                and tag != CHARSET):
            _remember(key, elem)
    return dataset



def _file_meta(buf: bytes):
    """(FileMetaDataset, offset of the data set) from the bytes after the preamble: the
    group is explicit VR little endian and starts with its length; anything else is
    unusual (pydicom's reader copes with files that lie about it)."""
    from pydicom.dataset import FileMetaDataset

    group, elem = struct.unpack_from("<HH", buf, 132)
    if (group, elem) != (0x0002, 0x0000) or buf[136:138] != b"UL":
        raise _Unusual("no file meta group length")
    (length,) = struct.unpack_from("<I", buf, 140)
    end = 144 + length
    if end + 4 > len(buf):
        raise _NeedMore
    if struct.unpack_from("<H", buf, end)[0] == 0x0002:
        raise _Unusual("the meta group is longer than its length says")
    head = bytes(buf[:end])
    _pos, found, _pixel = _walk(head, 132, False, _All(), 0, [0], complete=True)
    if any(tag >> 16 != 0x0002 for tag, _s, _e in found):
        raise _Unusual("a non-meta element inside the meta group")
    return FileMetaDataset(_dataset(head, found, False, b"")), end


class _NeedMore(Exception):
    """The walk reached the end of the bytes read so far."""


class _Unusual(Exception):
    """Something the fast path does not handle: use the full reader."""


def _skip_undefined(buf: bytes, pos: int, implicit: bool, depth: int, count: list) -> int:
    """The position after an undefined-length value starting at ``pos``: a sequence of
    items (each of defined length, or a data set up to its item delimiter) ending with a
    sequence delimiter. Encapsulated pixel data has the same shape (fragments)."""
    if depth > MAX_DEPTH:
        raise _Unusual("nested too deeply")
    n = len(buf)
    while True:
        if pos + 8 > n:
            raise _NeedMore
        group, elem, length = struct.unpack_from("<HHI", buf, pos)
        tag = (group << 16) | elem
        pos += 8
        if tag == SEQ_END:
            return pos
        if tag != ITEM:
            raise _Unusual("not an item inside a sequence")
        count[0] += 1
        if count[0] > MAX_ELEMENTS:
            raise _Unusual("too many elements")
        if length == UNDEFINED:
            pos = _walk(buf, pos, implicit, None, depth + 1, count, until_item_end=True)[0]
        else:
            pos += length
            if pos > n:
                raise _NeedMore


def _walk(buf: bytes, pos: int, implicit: bool, wanted: frozenset[int] | None, depth: int,
          count: list, until_item_end: bool = False, complete: bool = False):
    """Walk a data set from ``pos``. Returns (end position, [(tag, start, end)] of the
    wanted elements, Pixel Data (tag start, value start, length, VR) or None)."""
    n = len(buf)
    found: list[tuple[int, int, int]] = []
    last = -1
    while True:
        if pos == n and complete and not until_item_end and depth == 0:
            return pos, found, None  # end of the file, no Pixel Data
        if pos + 8 > n:
            raise _NeedMore
        start = pos
        group, elem = struct.unpack_from("<HH", buf, pos)
        tag = (group << 16) | elem
        if tag == ITEM_END:
            if not until_item_end:
                raise _Unusual("item delimiter outside an item")
            return pos + 8, found, None
        if tag <= last and depth == 0:
            raise _Unusual("elements out of order")
        last = tag
        count[0] += 1
        if count[0] > MAX_ELEMENTS:
            raise _Unusual("too many elements")
        if implicit:
            (length,) = struct.unpack_from("<I", buf, pos + 4)
            vr = None
            pos += 8
        else:
            vr = bytes(buf[pos + 4:pos + 6])
            if vr in LONG_VRS:
                if pos + 12 > n:
                    raise _NeedMore
                (length,) = struct.unpack_from("<I", buf, pos + 8)
                pos += 12
            elif vr.isalpha() and vr.isupper():
                (length,) = struct.unpack_from("<H", buf, pos + 6)
                pos += 8
            else:
                raise _Unusual("not explicit VR")
        if depth == 0 and tag == PIXEL_DATA:
            return pos, found, (start, pos, length, vr)
        if length == UNDEFINED:
            # a sequence, or (explicit VR) UN whose contents are implicit VR
            inner = implicit or vr == b"UN"
            if not implicit and vr not in (b"SQ", b"UN"):
                raise _Unusual("undefined length on a non-sequence")
            pos = _skip_undefined(buf, pos, inner, depth, count)
        else:
            pos += length
            if pos > n:
                raise _NeedMore
        if wanted is not None and tag in wanted:
            found.append((tag, start, pos))


#: The most bytes after Pixel Data that are checked to be padding (more: full reader).
MAX_TRAILER = 1024 * 1024
PADDING = 0xFFFCFFFC


def _only_padding_after(path: str, end: int, size: int, implicit: bool) -> bool:
    """Whether the bytes after Pixel Data (``end`` to ``size``) are trailing padding
    only: nothing, zero bytes, or one Data Set Trailing Padding element (FFFC,FFFC)
    reaching exactly to the end of the file."""
    if end >= size:
        return True
    if size - end > MAX_TRAILER:
        return False
    with open_regular(path) as f:
        f.seek(end)
        tail = f.read(size - end)
    if len(tail) != size - end:
        return False
    if not tail.strip(b"\0"):
        return True
    if len(tail) < 8 or struct.unpack_from("<HH", tail, 0) != (0xFFFC, 0xFFFC):
        return False
    if implicit:
        length, head = struct.unpack_from("<I", tail, 4)[0], 8
    elif tail[4:6] == b"OB" and len(tail) >= 12:
        length, head = struct.unpack_from("<I", tail, 8)[0], 12
    else:
        return False
    return head + length == len(tail)


def read_wanted(path: str, size: int | None = None):
    """The image file's ``FileDataset`` holding only the wanted elements (Pixel Data
    deferred), or None when the fast path does not apply (the caller uses dcmread)."""
    from pydicom.dataelem import RawDataElement
    from pydicom.dataset import FileDataset
    from pydicom.tag import Tag

    global _WANTED, _AMBIGUOUS
    if _WANTED is None:
        _AMBIGUOUS = _ambiguous(wanted_tags())
        _WANTED = wanted_tags()
    with open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size if size is None else size
        buf = f.read(min(size, FIRST_READ))
        if len(buf) < 132 or buf[128:132] != b"DICM":
            return None
        try:
            meta, start = _file_meta(buf)
        except (_Unusual, _NeedMore, struct.error):
            return None
        syntax = str(meta.get("TransferSyntaxUID", ""))
        if not syntax or syntax in (BIG_ENDIAN, DEFLATED):
            return None
        implicit = syntax == IMPLICIT_LE
        while True:
            try:
                _end, found, pixel = _walk(buf, start, implicit, _WANTED, 0, [0],
                                           complete=len(buf) >= size)
                break
            except _NeedMore:
                if len(buf) >= min(size, MAX_HEADER_BYTES):
                    return None  # truncated, or a header too large: the full reader decides
                buf += f.read(min(size, MAX_HEADER_BYTES) - len(buf))
            except _Unusual:
                return None
    if pixel is not None and pixel[2] == UNDEFINED:
        # encapsulated (compressed) pixel data: decoding dominates there, and pydicom's
        # reader checks the fragments' framing as it reads them
        return None
    if pixel is not None and not _only_padding_after(path, pixel[1] + pixel[2], size,
                                                     implicit):
        # elements after Pixel Data: the full reader reads on where this walk stopped
        # (another patient's name there would be one file with two patients)
        return None
    charset = next((bytes(buf[s:e]) for tag, s, e in found if tag == CHARSET), b"")
    dataset = _dataset(buf, found, implicit, charset)
    if pixel is not None:
        _start, value_tell, length, vr = pixel
        vr_text = vr.decode() if vr else "OW"
        dataset._dict[Tag(PIXEL_DATA)] = RawDataElement(
            Tag(PIXEL_DATA), None if implicit else vr_text, length, None, value_tell,
            implicit, True, True)
        if value_tell + length > size:
            return None  # runs past the end of the file: the full reader reports it
    ds = FileDataset(path, dataset, buf[:128], meta, implicit, True)
    ds.set_original_encoding(implicit, True, dataset._character_set)
    return ds
