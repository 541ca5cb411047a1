"""Measurements to a DICOM SR (TID 1500, highdicom) and back: the same shapes on the same
images, and a report dcmtk reads."""

import io
import shutil
import subprocess

import numpy as np
import pytest
from pydicom import dcmread, dcmwrite

from medview.imaging.measure import Measurement, image_key
from medview.io.loader import load
from medview.reports.dicom_results import read_source
from medview.reports.measurement_sr import measurement_report, read_measurements
from tests.factory import make_dataset, write, write_series

SHAPES = [
    ("distance", [(1.5, 2.0), (10.25, 12.0)]),
    ("angle", [(1.0, 1.0), (6.0, 6.0), (12.0, 2.0)]),
    ("cobb", [(1.0, 3.0), (12.0, 4.0), (2.0, 10.0), (13.0, 14.0)]),
    ("rect", [(2.0, 3.0), (9.5, 11.0)]),
    ("ellipse", [(3.0, 2.0), (13.0, 8.0)]),
    ("freehand", [(2.0, 2.0), (12.0, 3.0), (8.0, 12.0), (3.0, 9.0)]),
]


def _report(tmp_path):
    write_series(tmp_path / "s", n=3, size=16)
    series = load([str(tmp_path / "s")]).volumes[0]
    mf = make_dataset(np.zeros((4, 16, 16), np.uint16), sop_uid="1.2.826.0.1.3680043.8.498.5",
                      series_uid="1.2.826.0.1.3680043.8.498.6")
    multi = load([write(mf, tmp_path / "mf.dcm")]).volumes[0]
    items = []
    for k, (kind, pts) in enumerate(SHAPES):
        vol, index = (series, k % 3) if k < 4 else (multi, k - 2)
        m = Measurement(kind, pts, *image_key(vol, index), number=k + 1)
        items.append((m, read_source(vol.source_of(index)), vol, index))
    return items, measurement_report(items)


def test_every_kind_of_measurement_comes_back_from_its_report(tmp_path):
    items, sr = _report(tmp_path)
    buf = io.BytesIO()
    dcmwrite(buf, sr, enforce_file_format=True)
    back = read_measurements(dcmread(io.BytesIO(buf.getvalue())))
    assert len(back) == len(items)
    for (m, _src, _v, _k), got in zip(items, back, strict=True):
        assert (got.kind, got.instance, got.frame) == (m.kind, m.instance, m.frame)
        want = np.array(m.points)
        if m.kind in ("rect", "ellipse"):  # kept as the box's corners
            want = np.array([want.min(axis=0), want.max(axis=0)])
        np.testing.assert_allclose(np.array(got.points), want, atol=1e-4)
    assert items[4][0].frame == 2 and back[4].frame == 2  # the multi-frame's frame 3
    assert sr.Modality == "SR" and sr.VerificationFlag == "UNVERIFIED"
    assert sr.StudyInstanceUID == items[0][1].StudyInstanceUID


def test_the_report_is_tid_1500_with_codes_dcmtk_reads(tmp_path):
    if shutil.which("dsrdump") is None:
        pytest.skip("dcmtk not installed")
    _items, sr = _report(tmp_path)
    path = tmp_path / "m.dcm"
    dcmwrite(path, sr, enforce_file_format=True)
    out = subprocess.run(["dsrdump", "+Pc", str(path)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "Imaging Measurement Report" in text
    for meaning in ("Length", "Angle", "Cobb angle", "Area", "Mean", "Standard Deviation"):
        assert meaning in text, meaning
    assert "SCOORD" in text and "ELLIPSE" in text and "mm" in text


def test_reports_span_one_study_and_need_measurements(tmp_path):
    items, _ = _report(tmp_path)
    other = make_dataset(np.zeros((8, 8), np.uint16))
    other.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.99"
    vol = load([write(other, tmp_path / "o.dcm")]).volumes[0]
    m = Measurement("distance", [(0, 0), (3, 4)], *image_key(vol, 0))
    with pytest.raises(ValueError, match="one report per study"):
        measurement_report([*items, (m, read_source(vol.source_of(0)), vol, 0)])
    with pytest.raises(ValueError, match="no measurements"):
        measurement_report([])


def test_a_damaged_or_oversized_report_restores_nothing_and_never_raises(tmp_path):
    from medview.reports import measurement_sr

    _items, sr = _report(tmp_path)
    buf = io.BytesIO()
    dcmwrite(buf, sr, enforce_file_format=True)
    data = bytearray(buf.getvalue())
    rng = np.random.default_rng(7)
    path = tmp_path / "fuzz.dcm"
    for _ in range(150):
        mutated = bytearray(data)
        for at in rng.integers(128, len(data), 8):
            mutated[at] = int(rng.integers(0, 256))
        path.write_bytes(bytes(mutated))
        got = measurement_sr.read_report_file(str(path))
        assert isinstance(got, list)
        for m in got:
            assert m.kind in ("distance", "angle", "cobb", "rect", "ellipse", "freehand")
    big = tmp_path / "big.dcm"
    big.write_bytes(bytes(data) + b"\0" * (measurement_sr.MAX_REPORT_BYTES + 1))
    assert measurement_sr.read_report_file(str(big)) == []
    assert len(measurement_sr.read_report_file(_write(tmp_path, data))) == 6


def _write(tmp_path, data) -> str:
    path = tmp_path / "ok.dcm"
    path.write_bytes(bytes(data))
    return str(path)
