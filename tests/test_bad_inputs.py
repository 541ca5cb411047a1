"""BAD_INPUTS.md items 1-21: typed errors naming file and reason; the rest still loads."""

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from medview.core.errors import (
    CorruptFileError,
    InvalidPixelTagError,
    NotAnImageError,
    TooLargeError,
    UnsupportedTransferSyntaxError,
)
from medview.imaging import modality_slice, render_slice
from medview.io import load
from medview.io.dicom import read_header, read_pixels, tag_rows
from medview.io.itk import read_itk
from medview.io.raster import read_raster
from tests.factory import make_dataset, write, write_series


@pytest.fixture
def good(tmp_path):
    """A folder with one valid 3-slice series; bad files are added next to it."""
    write_series(tmp_path, n=3)
    return tmp_path


def _only_skip(result, name):
    hits = [s for s in result.skipped if os.path.basename(s.path) == name]
    assert len(hits) == 1, result.skipped
    return hits[0].reason


def _assert_rest_loads(result):
    assert [v.n_slices for v in result.volumes] == [3]


def test_01_header_cut_off(good):
    data = (good / sorted(os.listdir(good))[0]).read_bytes()
    (good / "cut.dcm").write_bytes(data[:400])
    result = load([str(good)])
    assert "incomplete: no Pixel Data" in _only_skip(result, "cut.dcm")
    _assert_rest_loads(result)


@pytest.mark.parametrize("delta", [-2, 64])
def test_02_pixel_data_length_mismatch(good, delta):
    ds = make_dataset(np.zeros((16, 16), np.int16))
    ds.PixelData = ds.PixelData[:delta] if delta < 0 else ds.PixelData + b"\0" * delta
    write(ds, good / "bad.dcm")
    result = load([str(good)])
    reason = _only_skip(result, "bad.dcm")
    assert "512" in reason and str(512 + delta) in reason
    _assert_rest_loads(result)


def test_03_length_field_past_end_of_file(good):
    ds = make_dataset(np.zeros((16, 16), np.int16))
    path = write(ds, good / "short.dcm")
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[:-100])
    with pytest.raises(CorruptFileError, match=r"Pixel Data \(7FE0,0010\) runs past the end"):
        read_header(path)
    _assert_rest_loads(load([str(good)]))


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "empty file"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "PNG"),
        (b"PK\x03\x04" + b"\0" * 40, "ZIP archive"),
        (b"%PDF-1.7\n" + b"x" * 40, "PDF document"),
        (b"hello, this is a plain text file\n" * 4, "text file"),
    ],
)
def test_04_non_dicom_named_dcm(good, content, expected):
    (good / "fake.dcm").write_bytes(content)
    result = load([str(good)])
    assert expected.lower() in _only_skip(result, "fake.dcm").lower()
    _assert_rest_loads(result)


def test_05_no_dicm_marker_read_as_raw_dataset_with_warning(tmp_path):
    ds = make_dataset(np.arange(16, dtype=np.int16).reshape(4, 4))
    del ds.file_meta
    path = str(tmp_path / "raw.dcm")
    pydicom.dcmwrite(path, ds, implicit_vr=True, little_endian=True, enforce_file_format=False)
    assert Path(path).read_bytes()[:132][128:132] != b"DICM"
    (vol,) = load([path]).volumes
    np.testing.assert_array_equal(vol.pixels[0], np.arange(16).reshape(4, 4))
    assert any("no DICOM file header" in w for w in vol.warnings)


def test_05_raw_bytes_that_are_not_an_image_are_rejected(tmp_path):
    path = tmp_path / "junk.dcm"
    path.write_bytes(b"\x08\x00" + os.urandom(200))
    result = load([str(path)])
    assert result.volumes == [] and len(result.skipped) == 1


def test_06_executable_preamble_is_flagged(tmp_path):
    path = write(make_dataset(np.zeros((4, 4), np.int16)), tmp_path / "poly.dcm")
    data = bytearray(Path(path).read_bytes())
    data[:4] = b"MZ\x90\x00"
    Path(path).write_bytes(bytes(data))
    (vol,) = load([path]).volumes
    assert any("executable header" in w for w in vol.warnings)


def test_07_compressed_without_decoder_names_syntax_and_package(monkeypatch):
    import pydicom.pixels

    from tests.testdata import local_file

    class _Missing:
        is_available = False

    monkeypatch.setattr(pydicom.pixels, "get_decoder", lambda uid: _Missing())
    with pytest.raises(UnsupportedTransferSyntaxError) as info:
        read_header(local_file("MR_small_jp2klossless.dcm"))
    assert "JPEG 2000" in str(info.value) and "pylibjpeg-openjpeg" in str(info.value)


@pytest.mark.parametrize(
    ("tag", "value"),
    [("BitsAllocated", 12), ("BitsAllocated", 0), ("PixelRepresentation", 5), ("Rows", 0)],
)
def test_08_invalid_pixel_tags_are_named(tmp_path, tag, value):
    ds = make_dataset(np.zeros((4, 4), np.int16))
    setattr(ds, tag, value)
    path = write(ds, tmp_path / "bad.dcm")
    with pytest.raises(InvalidPixelTagError) as info:
        read_header(path)
    assert info.value.tag == tag and path in str(info.value)


def test_09_nan_rescale_and_window_fall_back_with_warning(tmp_path):
    pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
    try:
        ds = make_dataset(np.full((4, 4), 100, np.int16), slope="NaN", intercept="inf",
                          window=("NaN", "400"))
        path = write(ds, tmp_path / "nan.dcm")
    finally:
        pydicom.config.settings.writing_validation_mode = pydicom.config.WARN
    (vol,) = load([path]).volumes
    values = modality_slice(vol, 0)
    assert np.all(np.isfinite(values)) and float(values[0, 0]) == 100.0
    assert any("Rescale" in w for w in vol.warnings)
    assert vol.windows == [] and any("Window" in w for w in vol.warnings)
    assert render_slice(vol, 0, None).dtype == np.uint8


def test_10_insane_header_size_refused_before_allocating(tmp_path):
    ds = make_dataset(np.zeros((2, 2), np.int16))
    ds.Rows = ds.Columns = 65535
    ds.NumberOfFrames = 100000
    path = write(ds, tmp_path / "huge.dcm")
    with pytest.raises(TooLargeError, match="GiB"):
        read_header(path)


def test_11_deep_sequences_and_huge_private_tag_do_not_crash(tmp_path):
    ds = make_dataset(np.zeros((4, 4), np.int16))
    inner = Dataset()
    inner.PatientComments = "leaf"
    for _ in range(40):
        outer = Dataset()
        outer.ReferencedImageSequence = Sequence([inner])
        inner = outer
    ds.ReferencedImageSequence = Sequence([inner])
    ds.add_new(0x00091010, "LO", "PRIVATE")
    ds.add_new(0x00091011, "OB", b"\x01" * (8 * 1024 * 1024))
    path = write(ds, tmp_path / "deep.dcm")
    (vol,) = load([path]).volumes
    assert vol.shape == (1, 4, 4)
    rows = tag_rows(path)
    assert any(r[3] == f"<{8 * 1024 * 1024} bytes>" for r in rows)


def test_11_recursion_error_becomes_typed(monkeypatch, tmp_path):
    path = write(make_dataset(np.zeros((4, 4), np.int16)), tmp_path / "a.dcm")

    def boom(*a, **k):
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(pydicom, "dcmread", boom)
    # the fast header path (only the used elements) meets it first, then the full reader
    monkeypatch.setattr(pydicom.filereader, "read_dataset", boom)
    with pytest.raises(CorruptFileError, match="nested too deeply"):
        read_header(path)


def test_16_control_characters_and_markup_are_plain_text(tmp_path):
    ds = make_dataset(np.zeros((4, 4), np.int16), description="<b>CT</b>\x1b[31m\x07 chest")
    path = write(ds, tmp_path / "m.dcm")
    (vol,) = load([path]).volumes
    assert vol.description == "<b>CT</b> [31m  chest"
    assert all(ch.isprintable() for r in tag_rows(path) for ch in r[3])


def _nifti_bytes(shape=(4, 5, 6), pixdim=(1.0, 1.0, 1.0), truncate=0, dims=None) -> bytes:
    hdr = bytearray(348)
    struct.pack_into("<i", hdr, 0, 348)
    d = dims or shape
    struct.pack_into("<8h", hdr, 40, len(d), *d, *([1] * (7 - len(d))))
    struct.pack_into("<hh", hdr, 70, 4, 16)  # int16
    struct.pack_into("<8f", hdr, 76, 1.0, *pixdim, 0, 0, 0, 0)
    struct.pack_into("<f", hdr, 108, 352.0)
    struct.pack_into("<f", hdr, 112, 1.0)  # scl_slope
    struct.pack_into("<h", hdr, 252, 1)  # qform_code
    struct.pack_into("<h", hdr, 254, 0)
    hdr[344:348] = b"n+1\x00"
    data = np.arange(int(np.prod(shape)), dtype="<i2").tobytes()
    out = bytes(hdr) + b"\0" * 4 + data
    return out[: len(out) - truncate] if truncate else out


def test_18_nifti_shorter_than_header(tmp_path):
    path = tmp_path / "short.nii"
    path.write_bytes(_nifti_bytes(truncate=20))
    result = load([str(path)])
    assert result.volumes == []
    assert "shorter than its header" in result.skipped[0].reason


def test_18_truncated_gzip(tmp_path):
    path = tmp_path / "short.nii.gz"
    path.write_bytes(gzip.compress(_nifti_bytes())[:-30])
    result = load([str(path)])
    assert result.volumes == [] and result.skipped


def test_19_zero_spacing_is_never_silently_one_mm(tmp_path):
    path = tmp_path / "zero.nii"
    path.write_bytes(_nifti_bytes(pixdim=(0.0, 1.0, 1.0)))
    vol = read_itk(str(path), "nifti")
    assert all(math.isnan(s) for s in vol.spacing)
    assert any("spacing" in w for w in vol.warnings)


def test_19_negative_dimension_rejected(tmp_path):
    path = tmp_path / "neg.nii"
    path.write_bytes(_nifti_bytes(dims=(4, -5, 6)))
    with pytest.raises(CorruptFileError, match="positive"):
        read_itk(str(path), "nifti")


def test_20_nifti_gz_bomb_refused_from_header(tmp_path):
    path = tmp_path / "bomb.nii.gz"
    path.write_bytes(gzip.compress(_nifti_bytes(dims=(30000, 30000, 3000))[:400]))
    with pytest.raises(TooLargeError):
        read_itk(str(path), "nifti-gz")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def test_20_png_bomb_refused_from_header(tmp_path):
    ihdr = struct.pack(">IIBBBBB", 100000, 100000, 8, 0, 0, 0, 0)
    png = (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
           + _png_chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + _png_chunk(b"IEND", b""))
    path = tmp_path / "bomb.png"
    path.write_bytes(png)
    with pytest.raises(TooLargeError):
        read_raster(str(path))


def test_21_unicode_and_long_paths(tmp_path):
    folder = tmp_path / "études ñ 漢字" / ("x" * 120) / ("y" * 120)
    _, expected = write_series(folder, n=2)
    (vol,) = load([str(tmp_path)]).volumes
    np.testing.assert_array_equal(vol.pixels, expected)


def test_21_file_deleted_mid_scan(tmp_path):
    from medview.io import iter_load

    paths, _ = write_series(tmp_path, n=4, shuffle=False)
    gen = iter_load([str(tmp_path)])
    next(gen)  # first file scanned
    os.remove(paths[3])
    try:
        while True:
            next(gen)
    except StopIteration as stop:
        result = stop.value
    assert [v.n_slices for v in result.volumes] == [3]
    assert "not found" in _only_skip(result, os.path.basename(paths[3]))


def test_pixel_read_error_is_typed_when_file_changes_after_scan(tmp_path):
    # 256 x 256 x 2 bytes is above the defer size: pixels are read from the file later
    path = write(make_dataset(np.zeros((256, 256), np.int16)), tmp_path / "a.dcm")
    header = read_header(path)
    assert header.pixel_offset is not None
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[:-50])
    with pytest.raises(CorruptFileError):
        read_pixels(header)


def test_not_an_image_errors_name_the_file(tmp_path):
    path = tmp_path / "notes.dcm"
    path.write_bytes(b"%PDF-1.4 fake")
    from medview.io.detect import detect_format

    with pytest.raises(NotAnImageError) as info:
        detect_format(str(path))
    assert info.value.path == str(path)
