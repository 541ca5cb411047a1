"""The pure pixel pipeline (PS3.3 C.11) and geometry helpers."""

import numpy as np
import pytest

from medview.core.volume import ImageVolume, VoiLut, WindowPreset
from medview.imaging import (
    apply_modality_lut,
    apply_voi_lut_table,
    apply_window,
    orientation_labels,
    palette_to_rgb,
    render_slice,
    ybr_full_to_rgb,
)
from medview.imaging.geometry import spacing_report
from medview.imaging.window import CT_PRESETS, auto_window, window_presets


def test_modality_lut_rescales_to_hu():
    stored = np.array([[0, 1024, 2048]], dtype=np.int16)
    hu = apply_modality_lut(stored, 1.0, -1024.0)
    assert hu.dtype == np.float32
    np.testing.assert_array_equal(hu, [[-1024, 0, 1024]])
    np.testing.assert_array_equal(apply_modality_lut(stored, 0.5, 10.0), [[10, 522, 1034]])


def test_modality_lut_refuses_nan():
    with pytest.raises(ValueError):
        apply_modality_lut(np.zeros((2, 2)), float("nan"), 0.0)


def test_linear_window_follows_the_standard_formula():
    # C.11.2.1.2.1 with c=40, w=400: below c-0.5-(w-1)/2 -> 0; above c-0.5+(w-1)/2 -> 1
    c, w = 40.0, 400.0
    lo = c - 0.5 - (w - 1) / 2
    hi = c - 0.5 + (w - 1) / 2
    values = np.array([lo - 1, lo, c - 0.5, hi, hi + 1], dtype=np.float32)
    out = apply_window(values, c, w)
    np.testing.assert_allclose(out, [0, 0, 0.5, 1, 1], atol=1e-5)


def test_window_width_below_one_is_clamped():
    out = apply_window(np.array([0.0, 1.0, 2.0]), 1.0, 0.0)
    assert np.all((out >= 0) & (out <= 1))


def test_voi_lut_table_maps_and_clips():
    lut = VoiLut(first_mapped=10, bits=8, table=np.array([0, 128, 255], dtype=np.uint16))
    out = apply_voi_lut_table(np.array([5, 10, 11, 12, 99]), lut)
    np.testing.assert_allclose(out, [0, 0, 128 / 255, 1, 1])


def _vol(pixels, **kw):
    return ImageVolume(pixels=np.asarray(pixels)[np.newaxis], **kw)


def test_monochrome1_renders_low_values_bright():
    pixels = np.array([[0, 100]], dtype=np.uint16)
    win = WindowPreset("w", 50.5, 100)
    m2 = render_slice(_vol(pixels, photometric="MONOCHROME2"), 0, win)
    m1 = render_slice(_vol(pixels, photometric="MONOCHROME1"), 0, win)
    assert m2[0, 0] == 0 and m2[0, 1] == 255
    assert m1[0, 0] == 255 and m1[0, 1] == 0
    # the user's invert flips it back
    m1_inv = render_slice(_vol(pixels, photometric="MONOCHROME1"), 0, win, user_invert=True)
    np.testing.assert_array_equal(m1_inv, m2)


def test_render_uses_voi_lut_when_asked():
    lut = VoiLut(first_mapped=0, bits=8, table=np.array([255, 0], dtype=np.uint16))
    vol = _vol(np.array([[0, 1]], dtype=np.uint16), voi_lut=lut)
    out = render_slice(vol, 0, WindowPreset("w", 0.5, 2), use_voi_lut=True)
    np.testing.assert_array_equal(out, [[255, 0]])


def test_palette_to_rgb_matches_pydicom():
    from pydicom import dcmread
    from pydicom.dataset import FileMetaDataset
    from pydicom.pixels import apply_color_lut
    from pydicom.uid import ImplicitVRLittleEndian

    from tests.testdata import local_file

    ds = dcmread(local_file("OT-PAL-8-face.dcm"), force=True)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    arr = ds.pixel_array
    expected = apply_color_lut(arr, ds)
    _, first, bits = ds.RedPaletteColorLookupTableDescriptor
    luts = [
        np.frombuffer(ds[f"{c}PaletteColorLookupTableData"].value, dtype="<u2" if bits > 8 else
                      np.uint8)
        for c in ("Red", "Green", "Blue")
    ]
    ours = palette_to_rgb(arr, *luts, first, bits)
    exp8 = (expected >> 8).astype(np.uint8) if expected.dtype != np.uint8 else expected
    np.testing.assert_array_equal(ours, exp8)


def test_ybr_full_to_rgb_matches_pydicom():
    from pydicom.pixels import convert_color_space

    rng = np.random.default_rng(1)
    ybr = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    expected = convert_color_space(ybr.copy(), "YBR_FULL", "RGB")
    ours = ybr_full_to_rgb(ybr)
    assert np.max(np.abs(ours.astype(int) - expected.astype(int))) <= 1


def test_orientation_labels_axial_and_coronal():
    axial = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], float)
    assert orientation_labels(axial) == {"left": "R", "right": "L", "top": "A", "bottom": "P"}
    coronal = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], float)
    assert orientation_labels(coronal) == {"left": "R", "right": "L", "top": "H", "bottom": "F"}
    assert orientation_labels(None)["left"] == ""


def test_spacing_report_finds_gaps_irregular_and_duplicates():
    z, warns = spacing_report(np.array([0, 2.5, 5, 7.5, 15, 17.5]))
    assert z == 2.5
    assert any("gap at slice 4" in w for w in warns)
    z, warns = spacing_report(np.array([0, 2.5, 5.4, 7.5, 10]))
    assert any("irregular" in w for w in warns)
    _, warns = spacing_report(np.array([0, 0, 2.5]))
    assert any("share a position" in w for w in warns)
    z, warns = spacing_report(np.array([0.0, 1.0, 2.0]))
    assert z == 1.0 and warns == []


def test_ct_presets_and_auto_window():
    vol = _vol(np.zeros((4, 4), np.int16), modality="CT")
    values = np.linspace(-1000, 1000, 16, dtype=np.float32).reshape(4, 4)
    names = [p.name for p in window_presets(vol, values)]
    for p in CT_PRESETS:
        assert p.name in names
    assert "Auto" in names and "Full range" in names
    auto = auto_window(values)
    assert -1000 < auto.center - auto.width / 2 < -900


def test_8bit_images_open_at_full_scale():
    from medview.imaging.window import default_window

    vol = _vol(np.array([[0, 128, 255]], np.uint8), source_format="raster")
    w = default_window(vol, vol.pixels[0].astype(np.float32))
    np.testing.assert_array_equal(render_slice(vol, 0, w), [[0, 128, 255]])


def test_shortcut_note_flags_edge_and_marker_heavy_maps():
    from medview.explain.shortcut import shortcut_note

    shown = np.full((100, 100), 100, np.uint8)
    central = np.zeros((100, 100))
    central[30:70, 30:70] = 1
    assert shortcut_note(shown, central) == ""
    edge = np.zeros((100, 100))
    edge[:, :10] = 1  # the left border
    note = shortcut_note(shown, edge)
    assert note.startswith("Possible shortcut: 100% of this map lies outside the central")
    marked = shown.copy()
    marked[40:46, 40:44] = 255  # a burned-in "R" inside the central region
    on_marker = np.zeros((100, 100))
    on_marker[40:46, 40:44] = 1
    on_marker[50:60, 50:60] = 0.05
    assert "on burned-in text or markers" in shortcut_note(marked, on_marker)


@pytest.mark.parametrize(("kw", "window", "ready"), [
    ({}, None, True),
    ({}, WindowPreset("Full scale", 128.0, 256.0), True),
    ({}, WindowPreset("narrow", 100.0, 50.0), False),
    ({"photometric": "MONOCHROME1"}, None, False),
    ({"windows": [WindowPreset("file", 90.0, 120.0)]}, None, False),
    ({"rescale_slope": np.array([2.0])}, None, False),
])
def test_8bit_grey_films_skip_only_the_identity_window(monkeypatch, kw, window, ready):
    """A PNG/JPEG film is shown as stored without the float window, which computes the
    same bytes; any other case still goes through the window."""
    from medview.imaging import render

    pixels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    vol = _vol(pixels, **kw)
    expected = render_slice(vol, 0, window)
    calls = []
    real = render.apply_window
    monkeypatch.setattr(render, "apply_window", lambda *a: calls.append(1) or real(*a))
    out = render_slice(vol, 0, window)
    np.testing.assert_array_equal(out, expected)
    assert (not calls) == ready
    if ready:
        from medview.imaging.lut import to_uint8

        window_of_8bit = to_uint8(real(pixels.astype(np.float32), 128.0, 256.0))
        np.testing.assert_array_equal(window_of_8bit, pixels)  # the window it skips
        np.testing.assert_array_equal(out, pixels)
        out[0, 0] = 99  # a copy: the volume is untouched
        assert vol.pixels[0, 0, 0] == 0
