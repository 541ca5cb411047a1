"""Measurements: lengths, angles and regions in millimetres (or pixels), checked against
numbers worked out from the pixels and the spacing by hand, in every geometry."""

import math

import numpy as np
import pytest

from medview.core.volume import ImageVolume
from medview.imaging.measure import (
    Measurement,
    MeasurementStore,
    calibration_of,
    csv_rows,
    image_key,
    measure,
    region_mask,
)
from medview.io.loader import load
from tests.factory import make_dataset, write


def _vol(pixels, spacing=(1.0, 0.5, 0.8), kind="patient", **kw) -> ImageVolume:
    return ImageVolume(np.asarray(pixels)[np.newaxis] if np.ndim(pixels) == 2 else
                       np.asarray(pixels), spacing=spacing, spacing_kind=kind, **kw)


def test_distance_uses_each_axis_spacing_and_pixels_when_there_is_none():
    v = _vol(np.zeros((40, 40)))  # rows 0.5 mm, columns 0.8 mm apart
    r = measure(Measurement("distance", [(2, 3), (12, 23)], "x"), v, 0)
    assert r.unit == "mm" and r.value == pytest.approx(math.hypot(10 * 0.8, 20 * 0.5))
    assert r.caveat == ""
    bare = _vol(np.zeros((40, 40)), spacing=(math.nan,) * 3, kind="")
    r = measure(Measurement("distance", [(2, 3), (12, 23)], "x"), bare, 0)
    assert r.unit == "px" and r.value == pytest.approx(math.hypot(10, 20))
    assert "in pixels" in r.caveat


def test_detector_spacing_says_so_with_the_files_magnification():
    v = _vol(np.zeros((10, 10)), spacing=(math.nan, 0.2, 0.2), kind="detector",
             magnification=1.15)
    r = measure(Measurement("distance", [(0, 0), (0, 5)], "x"), v, 0)
    assert r.value == pytest.approx(1.0) and r.unit == "mm"
    assert "detector" in r.caveat and "1.15x" in r.caveat and "not calibrated" in r.caveat


def test_angles_are_measured_in_millimetres_not_pixels():
    """With 0.5 mm rows and 0.8 mm columns, (0,0)-(5,0)-(5,8) is a right angle in
    pixels but not in the patient; (0,0)-(8,0)... built to be 90 degrees in mm."""
    v = _vol(np.zeros((40, 40)))
    a = measure(Measurement("angle", [(0, 0), (5, 0), (5, 8)], "x"), v, 0)
    assert a.unit == "deg" and a.value == pytest.approx(90.0)  # axis-aligned: 90 in both
    slanted = measure(Measurement("angle", [(0, 0), (10, 10), (20, 0)], "x"), v, 0)
    expect = 2 * math.degrees(math.atan2(10 * 0.8, 10 * 0.5))
    assert slanted.value == pytest.approx(expect)
    assert abs(slanted.value - 90.0) > 10  # in pixels it would be 90


def test_cobb_angle_is_the_acute_angle_between_the_lines_whichever_way_drawn():
    v = _vol(np.zeros((100, 100)), spacing=(1.0, 1.0, 1.0))
    t = math.radians(30)
    line_b = [(50, 50), (50 + 20 * math.cos(t), 50 + 20 * math.sin(t))]
    for a in ([(10, 10), (30, 10)], [(30, 10), (10, 10)]):
        for b in (line_b, line_b[::-1]):
            r = measure(Measurement("cobb", a + b, "x"), v, 0)
            assert r.value == pytest.approx(30.0)


def _brute_force(kind, points, rows, cols):
    """Pixel centres inside the region, one pixel at a time."""
    (xa, ya), (xb, yb) = points[0], points[1]
    out = np.zeros((rows, cols), bool)
    for r in range(rows):
        for c in range(cols):
            x, y = c + 0.5, r + 0.5
            if kind == "rect":
                out[r, c] = min(xa, xb) <= x <= max(xa, xb) and min(ya, yb) <= y <= max(ya, yb)
            elif kind == "ellipse":
                cx, cy, a, b = (xa + xb) / 2, (ya + yb) / 2, abs(xb - xa) / 2, abs(yb - ya) / 2
                out[r, c] = ((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 <= 1
            else:  # freehand: a triangle, by barycentric signs
                (x0, y0), (x1, y1), (x2, y2) = points
                s = [(qx - px) * (y - py) - (qy - py) * (x - px)
                     for px, py, qx, qy in ((x0, y0, x1, y1), (x1, y1, x2, y2),
                                            (x2, y2, x0, y0))]
                out[r, c] = all(v > 0 for v in s) or all(v < 0 for v in s)
    return out


@pytest.mark.parametrize("kind,points", [
    ("rect", [(3.2, 4.7), (17.9, 11.1)]),
    ("ellipse", [(2.0, 3.0), (19.5, 16.2)]),
    ("freehand", [(2.0, 2.0), (18.3, 5.1), (7.7, 17.4)]),
])
def test_region_statistics_are_those_of_the_pixels_inside_in_hounsfield_units(kind, points):
    """A CT slice with slope 2 and intercept -1024: the region's mean, SD, min and max
    are those of slope * stored + intercept over the pixel centres inside it."""
    rng = np.random.default_rng(3)
    stored = rng.integers(0, 2000, (24, 22)).astype(np.int16)
    v = _vol(stored, spacing=(1.0, 0.7, 0.9), modality="CT", rescale_type="HU",
             rescale_slope=np.array([2.0]), rescale_intercept=np.array([-1024.0]))
    m = Measurement(kind, points, "x")
    r = measure(m, v, 0)
    inside = _brute_force(kind, points, 24, 22)
    hu = stored.astype(np.float64) * 2 - 1024
    assert r.value_unit == "HU" and r.stats["n"] == inside.sum() > 10
    assert r.stats["mean"] == pytest.approx(hu[inside].mean())
    assert r.stats["sd"] == pytest.approx(hu[inside].std())
    assert r.stats["min"] == hu[inside].min() and r.stats["max"] == hu[inside].max()
    mask, (r0, c0) = region_mask(kind, points, 24, 22)
    full = np.zeros((24, 22), bool)
    full[r0:r0 + mask.shape[0], c0:c0 + mask.shape[1]] = mask
    np.testing.assert_array_equal(full, inside)
    # the area is the shape's, in mm2 with each axis' spacing
    (xa, ya), (xb, yb) = points[:2]
    if kind == "rect":
        assert r.value == pytest.approx(abs(xb - xa) * 0.9 * abs(yb - ya) * 0.7)
    elif kind == "ellipse":
        assert r.value == pytest.approx(math.pi * abs(xb - xa) / 2 * 0.9 * abs(yb - ya) / 2 * 0.7)
    else:
        (x0, y0), (x1, y1), (x2, y2) = points
        px2 = abs((x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)) / 2
        assert r.value == pytest.approx(px2 * 0.9 * 0.7)
    assert r.unit == "mm2"


def test_a_region_off_the_image_has_no_pixels_and_says_so():
    v = _vol(np.ones((10, 10)))
    r = measure(Measurement("rect", [(20, 20), (30, 30)], "x"), v, 0)
    assert r.stats["n"] == 0 and "no pixel centre inside" in r.text()


def test_bad_measurements_are_refused():
    with pytest.raises(ValueError):
        Measurement("distance", [(0, 0)], "x")
    with pytest.raises(ValueError):
        Measurement("freehand", [(0, 0), (1, 1)], "x")
    with pytest.raises(ValueError):
        Measurement("distance", [(0, 0), (math.nan, 1)], "x")
    with pytest.raises(ValueError):
        Measurement("volume", [(0, 0), (1, 1)], "x")


def test_dicom_spacing_kinds_follow_the_standard(tmp_path):
    """Pixel Spacing of a CT is at the patient; a CR with only Imager Pixel Spacing, or a
    Pixel Spacing that repeats it with no calibration type, is at the detector; a
    calibrated CR is at the patient; no spacing at all is unknown."""
    px = np.zeros((8, 8), np.uint16)

    def kind_of(name, modality="CT", **tags):
        ds = make_dataset(px, modality=modality, spacing=tags.pop("spacing", (0.5, 0.5)))
        for k, val in tags.items():
            setattr(ds, k, val)
        path = write(ds, tmp_path / f"{name}.dcm")
        v = load([path]).volumes[0]
        return v.spacing_kind, v.magnification, calibration_of(v).known

    assert kind_of("ct") == ("patient", None, True)
    assert kind_of("cr1", "CR", spacing=None, ImagerPixelSpacing=[0.2, 0.2],
                   EstimatedRadiographicMagnificationFactor=1.12) == ("detector", 1.12, True)
    assert kind_of("cr2", "CR", spacing=(0.2, 0.2), ImagerPixelSpacing=[0.2, 0.2])[0] == \
        "detector"
    assert kind_of("cr3", "CR", spacing=(0.18, 0.18), ImagerPixelSpacing=[0.2, 0.2],
                   PixelSpacingCalibrationType="GEOMETRY")[0] == "patient"
    assert kind_of("none", spacing=None) == ("", None, False)


def test_measurements_belong_to_an_instance_and_frame(tmp_path):
    """Each slice of a series is its own SOP instance; each frame of a multi-frame
    instance is its own image; a file without UIDs keys by series and slice."""
    from tests.factory import write_series

    write_series(tmp_path / "s", n=3, size=8)
    series = load([str(tmp_path / "s")]).volumes[0]
    keys = [image_key(series, k) for k in range(3)]
    assert len({k[0] for k in keys}) == 3 and all(k[1] == 0 for k in keys)
    assert keys[0][0] == series.instance_uids[0] and keys[0][0][0].isdigit()
    mf = make_dataset(np.zeros((4, 8, 8), np.uint16), sop_uid="1.2.3.4")
    multi = load([write(mf, tmp_path / "mf.dcm")]).volumes[0]
    assert [image_key(multi, k) for k in range(4)] == [("1.2.3.4", k) for k in range(4)]
    store = MeasurementStore()
    a = store.add(Measurement("distance", [(0, 0), (1, 1)], *image_key(multi, 2)))
    b = store.add(Measurement("distance", [(0, 0), (2, 2)], *image_key(multi, 3)))
    c = store.add(Measurement("rect", [(0, 0), (2, 2)], *keys[1]))
    assert (a.number, b.number, c.number) == (1, 2, 3)
    assert store.on("1.2.3.4", 2) == [a] and store.on(*keys[1]) == [c]
    store.remove(a)
    assert store.on("1.2.3.4", 2) == [] and store.all() == [b, c]
    store.clear({"1.2.3.4"})
    assert store.all() == [c]


def test_csv_rows_hold_numbers_and_uids_never_names_or_paths(tmp_path):
    ds = make_dataset(np.arange(64, dtype=np.uint16).reshape(8, 8), sop_uid="1.2.9")
    v = load([write(ds, tmp_path / "Smith_John.dcm")]).volumes[0]
    png = _vol(np.ones((8, 8)), spacing=(math.nan,) * 3, kind="",
               series_uid="file:Smith_John.png")
    m1 = Measurement("rect", [(0, 0), (4, 4)], *image_key(v, 0), number=1)
    m2 = Measurement("distance", [(0, 0), (3, 4)], *image_key(png, 0), number=2)
    rows = csv_rows([(m1, v, 0), (m2, png, 0)])
    assert rows[0]["instance"] == "1.2.9" and rows[0]["unit"] == "mm2"
    assert float(rows[0]["mean"]) == pytest.approx(
        (np.arange(64).reshape(8, 8)[:4, :4] - 1024).mean())
    assert rows[1]["instance"] == "#0" and rows[1]["value"] == "5.000"
    assert rows[1]["unit"] == "px"
    text = repr(rows)
    assert "Smith" not in text and str(tmp_path) not in text
