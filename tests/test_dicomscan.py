"""The fast header path on hostile bytes: it never reads past what is there, never
recurses without bound, and hands anything unusual to pydicom's full reader (which
then gives the same answer as without the fast path)."""

import struct
from pathlib import Path

import numpy as np
import pytest

import medview.io.dicom as dicom
from medview.io import load
from medview.io.dicomscan import read_wanted
from tests.factory import make_dataset, write


def _file(tmp_path, name="a.dcm", **kw) -> str:
    ds = make_dataset(np.arange(64 * 64, dtype=np.int16).reshape(64, 64), **kw)
    ds.add_new(0x00091010, "LO", "private")
    return write(ds, tmp_path / name)


def _same_both_ways(path, monkeypatch):
    monkeypatch.setattr(dicom, "FAST_HEADERS", True)
    fast = load([path])
    monkeypatch.setattr(dicom, "FAST_HEADERS", False)
    full = load([path])
    assert [s.reason for s in fast.skipped] == [s.reason for s in full.skipped]
    assert len(fast.volumes) == len(full.volumes)
    for a, b in zip(fast.volumes, full.volumes, strict=True):
        np.testing.assert_array_equal(a.pixels, b.pixels)
    return fast


def test_only_wanted_elements_reach_pydicom(tmp_path):
    ds = read_wanted(_file(tmp_path))
    assert ds is not None and "Rows" in ds and 0x00091010 not in ds
    assert ds.get_item("PixelData", keep_deferred=True).value is None  # deferred
    assert ds.PixelData[:2] == b"\x00\x00"


def _patch(path, find: bytes, new: bytes) -> None:
    data = bytearray(Path(path).read_bytes())
    k = data.find(find)
    assert k > 0
    data[k:k + len(new)] = new
    Path(path).write_bytes(bytes(data))


def test_a_length_past_the_end_falls_back(tmp_path, monkeypatch):
    path = _file(tmp_path)
    # the private element's 2-byte length -> as large as it gets
    _patch(path, b"\x09\x00\x10\x10LO", b"\x09\x00\x10\x10LO\xff\xff")
    assert read_wanted(path) is None
    _same_both_ways(path, monkeypatch)


def test_deep_nesting_stops_the_walk():
    """Sequences of undefined length inside items of undefined length, 40 deep: the walk
    descends at most MAX_DEPTH levels, then gives up (the full reader decides)."""
    from medview.io import dicomscan as scan

    def nested(depth: int) -> bytes:
        head = struct.pack("<HH2sHI", 0x0008, 0x1140, b"SQ", 0, 0xFFFFFFFF)
        item = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
        body = nested(depth - 1) if depth else b""
        end = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
        return head + item + body + end

    shallow = nested(3)
    end, found, _pixel = scan._walk(shallow, 0, False, frozenset({0x00081140}), 0, [0],
                                   complete=True)
    assert end == len(shallow) and found == [(0x00081140, 0, len(shallow))]
    with pytest.raises(scan._Unusual):
        scan._walk(nested(40), 0, False, frozenset(), 0, [0], complete=True)
    with pytest.raises(scan._NeedMore):  # cut short: asks for more bytes, never overreads
        scan._walk(shallow[:-5], 0, False, frozenset(), 0, [0], complete=False)


@pytest.mark.parametrize("cut", [140, 300, 600])
def test_truncated_files_are_judged_by_the_full_reader(tmp_path, monkeypatch, cut):
    path = _file(tmp_path)
    Path(path).write_bytes(Path(path).read_bytes()[:cut])
    result = _same_both_ways(path, monkeypatch)
    assert not result.volumes and result.skipped


def test_implicit_vr_files_take_the_fast_path(tmp_path, monkeypatch):
    from pydicom import dcmread

    path = _file(tmp_path)
    from pydicom.uid import ImplicitVRLittleEndian

    ds = dcmread(path)
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    out = str(tmp_path / "implicit.dcm")
    ds.save_as(out, implicit_vr=True, little_endian=True, enforce_file_format=True)
    assert read_wanted(out) is not None
    result = _same_both_ways(out, monkeypatch)
    assert result.volumes and result.volumes[0].pixels.shape == (1, 64, 64)


def _with_tail(tmp_path, name: str, tail: bytes) -> str:
    ds = make_dataset(np.zeros((8, 8), np.uint16), modality="CT")
    ds.PatientName = "GOOD^PATIENT"
    path = write(ds, tmp_path / name)
    with open(path, "ab") as f:
        f.write(tail)
    return path


def _elem(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    if vr in (b"OB", b"OW", b"UN", b"SQ", b"UT"):
        return struct.pack("<HH", group, element) + vr + b"\0\0" + struct.pack(
            "<I", len(value)) + value
    return struct.pack("<HH", group, element) + vr + struct.pack("<H", len(value)) + value


@pytest.mark.parametrize(("name", "tail", "fast"), [
    ("other-patient", _elem(0x0010, 0x0010, b"PN", b"OTHER^PATIENT "), False),
    ("second-pixels", _elem(0x7FE0, 0x0010, b"OW", b"\x01\x02" * 8), False),
    ("window", _elem(0x0028, 0x1050, b"DS", b"1234"), False),
    ("zeros", b"\0" * 64, True),
    ("padding", _elem(0xFFFC, 0xFFFC, b"OB", b"\0" * 16), True),
])
def test_what_follows_pixel_data_never_makes_two_patients(tmp_path, name, tail, fast):
    """The fast walk stops at Pixel Data; pydicom reads on. Anything after it but trailing
    padding sends the file to the full reader, so medview, a PACS and the de-identifier
    all see one patient."""
    from pydicom import dcmread

    from tests.fuzz.differential import disagreement

    path = _with_tail(tmp_path, f"{name}.dcm", tail)
    assert (read_wanted(path) is not None) == fast
    assert disagreement(path) == ""
    result = load([path])
    if result.volumes:  # the name shown is the one every other reader sees
        assert result.volumes[0].study.patient_name == dicom.person_name_text(
            str(dcmread(path, force=True).PatientName))
    else:  # a second Pixel Data of the wrong size: the full reader's refusal
        assert result.skipped and result.skipped[0].reason


def test_the_fast_and_full_readers_agree_on_every_fuzzer_mutant(tmp_path):
    """The differential check on a fixed sample of the fuzzer's DICOM mutants (``make
    fuzz`` runs it on every mutant): a disagreement is a finding."""
    import random

    from tests.fuzz.differential import disagreement
    from tests.fuzz.mutate import mutate
    from tests.fuzz.seeds import seeds

    rng = random.Random(2026)
    pool = [(n, d) for n, d in seeds() if n.endswith(".dcm")]
    found = []
    for k in range(300):
        name, data = rng.choice(pool)
        mutant, ops = mutate(rng, name, data)
        path = tmp_path / f"m{k}.dcm"
        path.write_bytes(mutant)
        why = disagreement(str(path))
        if why:
            found.append((ops, why))
    assert found == []
