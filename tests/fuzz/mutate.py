"""Mutations: blind byte-level ones for every format, and structure-aware ones for DICOM
(length inflation, tag duplication, transfer-syntax swaps, semantic edits of the pixel
and geometry tags) and for the NIfTI, NRRD/MetaImage and PNG headers."""

from __future__ import annotations

import io
import random
import re
import struct
import warnings
import zlib

EXTREME_INTS = (0, 1, 2, 3, 7, 8, 15, 16, 17, 31, 32, 33, 255, 256, 4096, 32767, 32768,
                65535, 46000, 100000, -1, -32768, 2**31 - 1)
EXTREME_FLOATS = ("0", "-0", "1e308", "-1e308", "1e38", "1e-320", "1e-45", "nan", "inf",
                  "-inf", "3.4e39", "abc", "", "1\\2\\3", "1e6")
SYNTAXES = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2",
            "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51",
            "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80",
            "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.5",
            "1.2.840.10008.1.2.4.100", "9.9.9")
PHOTOMETRICS = ("MONOCHROME1", "MONOCHROME2", "RGB", "PALETTE COLOR", "YBR_FULL",
                "YBR_FULL_422", "YBR_RCT", "HSV", "")
LONG_VRS = (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"UC", b"UR", b"OD", b"OL")


# ------------------------------------------------------------------ byte level
def bit_flips(rng: random.Random, data: bytes) -> bytes:
    d = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 4, 16))):
        if d:
            d[rng.randrange(len(d))] ^= 1 << rng.randrange(8)
    return bytes(d)


def byte_sets(rng: random.Random, data: bytes) -> bytes:
    d = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if d:
            pos = rng.randrange(len(d))
            val = rng.choice((b"\x00", b"\xff", b"\x7f", b"\x80", b"\xff\xff\xff\xff",
                              b"\x00\x00\x00\x00", b"\xff\xff\xff\x7f"))
            d[pos:pos + len(val)] = val
    return bytes(d)


def truncate(rng: random.Random, data: bytes) -> bytes:
    if len(data) < 2:
        return data
    return data[:rng.randrange(1, len(data))]


def splice(rng: random.Random, data: bytes) -> bytes:
    """Copy a run of bytes elsewhere (duplicates elements, sequences, chunks)."""
    if len(data) < 16:
        return data
    a = rng.randrange(len(data) - 8)
    b = min(len(data), a + rng.randint(8, 256))
    at = rng.randrange(len(data))
    return data[:at] + data[a:b] + data[at:]


# ------------------------------------------------------------------ DICOM
def _explicit_elements(data: bytes) -> list[tuple[int, bool]]:
    """Offsets of plausible explicit-VR element headers: (offset, long_form)."""
    out = []
    for m in re.finditer(rb"[\x00-\xff]{4}([A-Z]{2})", data[132:] if len(data) > 132 else b""):
        pos = m.start() + 132
        vr = m.group(1)
        out.append((pos, vr in LONG_VRS))
        if len(out) > 400:
            break
    return out


def length_inflation(rng: random.Random, data: bytes) -> bytes:
    elems = _explicit_elements(data)
    if not elems:
        return byte_sets(rng, data)
    pos, long_form = rng.choice(elems)
    d = bytearray(data)
    if long_form and pos + 12 <= len(d):
        d[pos + 8:pos + 12] = struct.pack("<I", rng.choice((0xFFFFFFF0, 0x7FFFFFFF, 2**24,
                                                           len(d) * 2, 0xFFFFFFFF)))
    elif pos + 8 <= len(d):
        d[pos + 6:pos + 8] = struct.pack("<H", rng.choice((0xFFFF, 0xFFF0, len(d) % 65536)))
    return bytes(d)


def tag_duplication(rng: random.Random, data: bytes) -> bytes:
    elems = _explicit_elements(data)
    if len(elems) < 2:
        return splice(rng, data)
    k = rng.randrange(len(elems) - 1)
    a, b = elems[k][0], elems[k + 1][0]
    at = rng.choice(elems)[0]
    return data[:at] + data[a:b] + data[at:]


def _element(tag: int, vr: bytes, value: bytes, implicit: bool) -> bytes:
    if len(value) % 2:
        value += b" " if vr not in (b"OB", b"UN", b"OW") else b"\0"
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
    if implicit:
        return head + struct.pack("<I", len(value)) + value
    if vr in LONG_VRS:
        return head + vr + b"\0\0" + struct.pack("<I", len(value)) + value
    return head + vr + struct.pack("<H", len(value)) + value


def append_after_pixels(rng: random.Random, data: bytes) -> bytes:
    """Elements after Pixel Data, where one reader stops and another reads on: another
    patient's name and ID, a second window, a second Pixel Data, or padding."""
    implicit = b"1.2.840.10008.1.2\0" in data[:1024] or b"1.2.840.10008.1.2 " in data[:1024]
    choices = (
        [_element(0x00100010, b"PN", b"OTHER^PATIENT", implicit),
         _element(0x00100020, b"LO", b"OTHER-ID", implicit)],
        [_element(0x00281050, b"DS", b"1234", implicit),
         _element(0x00281051, b"DS", b"1", implicit)],
        [_element(0x7FE00010, b"OW", b"\x01\x02" * 32, implicit)],
        [_element(0x00080018, b"UI", b"1.2.3.4.5", implicit)],
        [_element(0xFFFCFFFC, b"OB", b"\0" * 16, implicit)],  # trailing padding
        [b"\0" * rng.choice((1, 2, 16, 200))],
    )
    return data + b"".join(rng.choice(choices))


def swap_elements(rng: random.Random, data: bytes) -> bytes:
    """Two neighbouring elements' bytes exchanged (out of order, or a value moved)."""
    elems = _explicit_elements(data)
    if len(elems) < 3:
        return splice(rng, data)
    k = rng.randrange(len(elems) - 2)
    a, b, c = elems[k][0], elems[k + 1][0], elems[k + 2][0]
    return data[:a] + data[b:c] + data[a:b] + data[c:]


def _edit_dataset(rng: random.Random, data: bytes, edit) -> bytes:
    import pydicom

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
            edit(ds)
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=False)
            return buf.getvalue()
        except Exception:
            return bit_flips(rng, data)


def syntax_swap(rng: random.Random, data: bytes) -> bytes:
    def edit(ds):
        from pydicom.dataset import FileMetaDataset
        from pydicom.uid import UID

        if getattr(ds, "file_meta", None) is None:
            ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = UID(rng.choice(SYNTAXES))

    return _edit_dataset(rng, data, edit)


def semantic_edit(rng: random.Random, data: bytes) -> bytes:
    def edit(ds):
        for _ in range(rng.randint(1, 3)):
            key = rng.choice(("Rows", "Columns", "NumberOfFrames", "SamplesPerPixel",
                              "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
                              "PlanarConfiguration", "PhotometricInterpretation",
                              "PixelSpacing", "ImageOrientationPatient",
                              "ImagePositionPatient", "RescaleSlope", "RescaleIntercept",
                              "WindowCenter", "WindowWidth", "SliceThickness", "FrameTime"))
            if key == "PhotometricInterpretation":
                ds.PhotometricInterpretation = rng.choice(PHOTOMETRICS)
            elif key in ("Rows", "Columns", "NumberOfFrames", "SamplesPerPixel",
                         "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
                         "PlanarConfiguration"):
                v = rng.choice(EXTREME_INTS)
                if key == "NumberOfFrames":
                    ds.NumberOfFrames = str(v)
                else:
                    ds[key] = pydicom_elem(key, v & 0xFFFF)
            elif key == "ImageOrientationPatient":
                ds.ImageOrientationPatient = rng.choice(
                    ([1, 0, 0, 1, 0, 0], [0, 0, 0, 0, 0, 0], [1e308, 0, 0, 0, 1, 0],
                     ["nan", 0, 0, 0, 1, 0], [1, 0, 0], [1, 0, 0, 0, -1, 0]))
            elif key == "ImagePositionPatient":
                ds.ImagePositionPatient = [rng.choice(EXTREME_FLOATS[:10]) for _ in range(3)]
            elif key == "PixelSpacing":
                ds.PixelSpacing = [rng.choice(EXTREME_FLOATS), rng.choice(EXTREME_FLOATS)]
            else:
                ds[key] = pydicom_elem(key, rng.choice(EXTREME_FLOATS))

    return _edit_dataset(rng, data, edit)


def pydicom_elem(keyword: str, value):
    from pydicom.datadict import dictionary_VR, tag_for_keyword
    from pydicom.dataelem import DataElement

    tag = tag_for_keyword(keyword)
    return DataElement(tag, dictionary_VR(tag), value)


# ------------------------------------------------------------------ other headers
NIFTI_FIELDS = ((40, "<8h"), (70, "<h"), (72, "<h"), (76, "<8f"), (108, "<f"), (112, "<f"),
                (252, "<h"), (254, "<h"), (344, "4s"))


def nifti_header(rng: random.Random, data: bytes) -> bytes:
    gz = data[:2] == b"\x1f\x8b"
    raw = zlib.decompress(data, 31) if gz else data
    d = bytearray(raw)
    off, fmt = rng.choice(NIFTI_FIELDS)
    n = struct.calcsize(fmt)
    if off + n <= len(d):
        if fmt.endswith("f"):
            vals = [float(rng.choice(("nan", "inf", "-1", "0", "1e30", "1e-30", "352",
                                      "3e9"))) for _ in range(n // 4)]
            struct.pack_into(fmt, d, off, *vals)
        elif fmt.endswith("h"):
            vals = [rng.choice(EXTREME_INTS) for _ in range(n // 2)]
            vals = [max(-32768, min(32767, v)) for v in vals]
            struct.pack_into(fmt, d, off, *vals)
        else:
            d[off:off + n] = rng.choice((b"ni1\0", b"n+2\0", b"xxxx"))
    if gz:
        return zlib.compress(bytes(d)) if rng.random() < 0.2 else _gzip(bytes(d))
    return bytes(d)


def _gzip(b: bytes) -> bytes:
    import gzip

    return gzip.compress(b)


TEXT_VALUES = (b"0", b"-1", b"65535 65535 65535", b"100000 100000", b"nan", b"1e308",
               b"0 0 0", b"abc", b"", b"../../../../etc/passwd", b"/dev/zero", b"LIST",
               b"gzip", b"bzip2", b"raw", b"double", b"MET_DOUBLE", b"7", b"1 1 1 1 1 1 1")


def text_header(rng: random.Random, data: bytes) -> bytes:
    end = data.find(b"\n\n")
    if end < 0:
        end = data.find(b"ElementDataFile")
        end = data.find(b"\n", end) + 1 if end >= 0 else min(len(data), 400)
    head, body = data[:end], data[end:]
    lines = head.split(b"\n")
    k = rng.randrange(len(lines))
    line = lines[k]
    for sep in (b": ", b" = ", b"="):
        if sep in line:
            key = line.split(sep, 1)[0]
            lines[k] = key + sep + rng.choice(TEXT_VALUES)
            break
    else:
        lines.insert(k, rng.choice((b"data file: /dev/zero", b"ElementDataFile = /dev/zero",
                                    b"sizes: 100000 100000 100000")))
    return b"\n".join(lines) + body


def _split_header(data: bytes) -> tuple[list[bytes], bytes]:
    end = data.find(b"\n\n")
    if end < 0:
        end = data.find(b"ElementDataFile")
        end = data.find(b"\n", end) + 1 if end >= 0 else min(len(data), 400)
    return data[:end].split(b"\n"), data[end:]


#: the lengths the long-field strategy tries: around the native readers' fixed buffers
#: (a NRRD field of about 1 KiB crashed SimpleITK's reader) and far past them
LONG_LENGTHS = (255, 256, 511, 512, 513, 1023, 1024, 1025, 1030, 2048, 4097, 65537)


def text_long_field(rng: random.Random, data: bytes) -> bytes:
    """One header value made very long (a real field, or a new one)."""
    lines, body = _split_header(data)
    k = rng.randrange(1, max(2, len(lines)))
    filler = rng.choice((b"x", b"1 ", b"(1,0,0) ", b'"a" ', b"left-", b"\t"))
    value = (filler * (rng.choice(LONG_LENGTHS) // len(filler) + 1))
    key = rng.choice((b"space", b"content", b"labels", b"space directions", b"kinds",
                      b"Comment", b"AnatomicalOrientation", b"sizes"))
    if k < len(lines) and b":" in lines[k] and rng.random() < 0.5:
        key = lines[k].split(b":", 1)[0]
    sep = b"=" if b" = " in data[:200] else b": "
    lines.insert(k, key + sep + value)
    return b"\n".join(lines) + body


def text_many_fields(rng: random.Random, data: bytes) -> bytes:
    """Hundreds or thousands of header lines (fields, key/value pairs, comments) or
    per-axis fields with far more entries than axes."""
    lines, body = _split_header(data)
    n = rng.choice((100, 127, 128, 129, 300, 3000))
    kind = rng.randrange(3)
    if kind == 0:
        extra = [b"key%d:=value%d" % (i, i) for i in range(n)]
    elif kind == 1:
        extra = [b"# comment %d" % i for i in range(n)]
    else:
        extra = [rng.choice((b"labels: ", b"units: ", b"kinds: ", b"spacings: "))
                 + b" ".join([b'"a"'] * n)]
    k = rng.randrange(1, max(2, len(lines)))
    return b"\n".join(lines[:k] + extra + lines[k:]) + body


def text_deep_nesting(rng: random.Random, data: bytes) -> bytes:
    """Deeply nested or unbalanced brackets and quotes in a structured field."""
    lines, body = _split_header(data)
    depth = rng.choice((50, 500, 5000))
    value = rng.choice((b"(" * depth + b"1" + b")" * depth, b"(" * depth,
                        b'"' * depth, b"[" * depth + b"]"))
    key = rng.choice((b"space directions", b"measurement frame", b"space origin",
                      b"TransformMatrix", b"Offset"))
    sep = b" = " if b" = " in data[:200] else b": "
    lines.insert(rng.randrange(1, max(2, len(lines))), key + sep + value)
    return b"\n".join(lines) + body


def png_header(rng: random.Random, data: bytes) -> bytes:
    if data[:8] != b"\x89PNG\r\n\x1a\n" or len(data) < 33:
        return bit_flips(rng, data)
    d = bytearray(data)
    w = rng.choice((0, 1, 15000, 65535, 2**31 - 1, 100000))
    h = rng.choice((0, 1, 15000, 65535, 2**31 - 1, 100000))
    struct.pack_into(">II", d, 16, w, h)
    d[24] = rng.choice((1, 2, 4, 8, 16, 3))
    d[25] = rng.choice((0, 2, 3, 4, 6, 7))
    if rng.random() < 0.8:  # a correct CRC, so the header is believed
        struct.pack_into(">I", d, 29, zlib.crc32(bytes(d[12:29])) & 0xFFFFFFFF)
    return bytes(d)


BLIND = (bit_flips, byte_sets, truncate, splice)
DICOM = (length_inflation, tag_duplication, syntax_swap, semantic_edit, semantic_edit,
         append_after_pixels, swap_elements)


def mutators_for(name: str, data: bytes):
    if data[128:132] == b"DICM" or name.endswith(".dcm"):
        return BLIND + DICOM
    if name.endswith((".nii", ".nii.gz")):
        return (*BLIND, nifti_header, nifti_header)
    if name.endswith((".nrrd", ".mha", ".mhd", ".nhdr")):
        return (*BLIND, text_header, text_header, text_long_field, text_many_fields,
                text_deep_nesting)
    if name.endswith(".png"):
        return (*BLIND, png_header)
    return BLIND


def mutate(rng: random.Random, name: str, data: bytes) -> tuple[bytes, str]:
    """One mutant of a seed: one to three stacked mutations."""
    ops = mutators_for(name, data)
    names = []
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        op = rng.choice(ops)
        try:
            data = op(rng, data)
        except Exception:  # an earlier mutation broke the structure this one parses
            op = bit_flips
            data = op(rng, data)
        names.append(op.__name__)
    return data, "+".join(names)
