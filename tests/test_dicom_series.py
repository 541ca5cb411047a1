"""DICOM series discovery, ordering, spacing, splitting and multi-frame."""

import math
import os
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from medview.imaging import modality_slice
from medview.io import load
from tests.factory import make_dataset, write, write_series


def test_series_sorted_by_position_not_instance_number(tmp_path):
    _, expected = write_series(tmp_path, n=8, shuffle=True)
    result = load([str(tmp_path)])
    assert result.skipped == []
    (vol,) = result.volumes
    assert vol.shape == (8, 16, 16)
    np.testing.assert_array_equal(vol.pixels, expected)
    assert vol.spacing == (2.5, 0.5, 0.5)
    assert vol.warnings == []
    # modality LUT gives HU
    np.testing.assert_array_equal(modality_slice(vol, 1), expected[1].astype(np.float32) - 1024)
    assert vol.direction is not None
    np.testing.assert_allclose(vol.direction[2], [0, 0, 1])


def test_gap_is_reported_and_not_resampled(tmp_path):
    _, expected = write_series(tmp_path, n=8, skip=(4,))
    (vol,) = load([str(tmp_path)]).volumes
    assert vol.n_slices == 7
    np.testing.assert_array_equal(vol.pixels, expected)
    assert vol.spacing[0] == 2.5
    assert any(w.startswith("gap at slice 4") for w in vol.warnings)


def test_irregular_spacing_is_reported(tmp_path):
    uid = generate_uid()
    for k, z in enumerate([0.0, 2.0, 4.6, 6.0, 8.0]):
        ds = make_dataset(np.full((4, 4), k, np.int16), series_uid=uid, position=(0, 0, z))
        write(ds, tmp_path / f"{k}.dcm")
    (vol,) = load([str(tmp_path)]).volumes
    assert any("irregular slice spacing" in w for w in vol.warnings)
    assert [int(vol.pixels[i, 0, 0]) for i in range(5)] == [0, 1, 2, 3, 4]


def test_several_series_in_one_folder_are_split(tmp_path):
    write_series(tmp_path, n=3, prefix="a", description="A")
    write_series(tmp_path, n=5, prefix="b", description="B")
    result = load([str(tmp_path)])
    assert sorted(v.n_slices for v in result.volumes) == [3, 5]
    assert {v.description for v in result.volumes} == {"A", "B"}


def test_mixed_sizes_in_one_series_are_split_with_warning(tmp_path):
    uid = generate_uid()
    write(make_dataset(np.zeros((4, 4), np.int16), series_uid=uid), tmp_path / "a.dcm")
    write(make_dataset(np.zeros((6, 6), np.int16), series_uid=uid), tmp_path / "b.dcm")
    result = load([str(tmp_path)])
    assert len(result.volumes) == 2
    assert all(any("series split" in w for w in v.warnings) for v in result.volumes)


def test_duplicate_sop_instance_uid_is_reported(tmp_path):
    paths, _ = write_series(tmp_path, n=3, shuffle=False)
    dup = tmp_path / "copy.dcm"
    dup.write_bytes(Path(paths[0]).read_bytes())
    result = load([str(tmp_path)])
    (vol,) = result.volumes
    assert vol.n_slices == 3
    assert len(result.skipped) == 1
    assert "duplicate SOP Instance UID" in result.skipped[0].reason
    assert any("duplicate" in w for w in vol.warnings)


def test_one_corrupt_file_in_series_loads_the_rest(tmp_path):
    paths, expected = write_series(tmp_path, n=6, shuffle=False)
    data = Path(paths[2]).read_bytes()
    Path(paths[2]).write_bytes(data[:-100])  # pixel data cut short
    result = load([str(tmp_path)])
    (vol,) = result.volumes
    assert vol.n_slices == 5
    assert [s.path for s in result.skipped] == [paths[2]]
    assert "Pixel Data" in result.skipped[0].reason
    np.testing.assert_array_equal(vol.pixels, np.delete(expected, 2, axis=0))
    assert any("gap at slice 2" in w for w in vol.warnings)


def test_instance_number_fallback_without_positions(tmp_path):
    uid = generate_uid()
    for k in (3, 1, 2):
        ds = make_dataset(np.full((4, 4), k, np.int16), series_uid=uid, position=None,
                          orientation=None, instance=k)
        write(ds, tmp_path / f"{k}.dcm")
    (vol,) = load([str(tmp_path)]).volumes
    assert [int(vol.pixels[i, 0, 0]) for i in range(3)] == [1, 2, 3]
    assert math.isnan(vol.spacing[0])
    assert any("Instance Number" in w for w in vol.warnings)


def test_signed_12_bit_values_are_sign_extended(tmp_path):
    stored = np.array([[-2048, -1], [0, 2047]], dtype=np.int16)
    raw = stored.copy()
    raw[raw < 0] &= 0x0FFF  # as a 12-bit scanner writes them: no sign extension
    raw |= np.int16(0x7000) * (stored < 0)  # garbage in the unused high bits
    ds = make_dataset(raw, bits_stored=12)
    write(ds, tmp_path / "a.dcm")
    (vol,) = load([str(tmp_path / "a.dcm")]).volumes
    np.testing.assert_array_equal(vol.pixels[0], stored)


def _enhanced_multiframe(frames: int = 4) -> Dataset:
    pixels = np.stack([np.full((6, 6), 100 * k, np.int16) for k in range(frames)])
    ds = make_dataset(pixels, position=None, orientation=None, spacing=None, slope=None,
                      intercept=None)
    shared = Dataset()
    po = Dataset()
    po.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    shared.PlaneOrientationSequence = Sequence([po])
    pm = Dataset()
    pm.PixelSpacing = [0.7, 0.7]
    pm.SliceThickness = 3.0
    shared.PixelMeasuresSequence = Sequence([pm])
    pvt = Dataset()
    pvt.RescaleSlope = 2
    pvt.RescaleIntercept = -10
    pvt.RescaleType = "HU"
    shared.PixelValueTransformationSequence = Sequence([pvt])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per = []
    for k in range(frames):
        item = Dataset()
        pp = Dataset()
        pp.ImagePositionPatient = [0, 0, 3.0 * k]
        item.PlanePositionSequence = Sequence([pp])
        per.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per)
    return ds


def test_enhanced_multiframe_uses_functional_groups(tmp_path):
    write(_enhanced_multiframe(4), tmp_path / "mf.dcm")
    (vol,) = load([str(tmp_path)]).volumes
    assert vol.multiframe and vol.n_slices == 4
    assert vol.spacing == (3.0, 0.7, 0.7)
    assert float(vol.rescale_slope[0]) == 2.0
    np.testing.assert_array_equal(modality_slice(vol, 2), np.full((6, 6), 390, np.float32))


def test_rgb_dicom_loads_as_rgb(tmp_path):
    rgb = np.zeros((5, 7, 3), np.uint8)
    rgb[..., 0] = 200
    ds = make_dataset(rgb, photometric="RGB", modality="OT", slope=None, intercept=None)
    write(ds, tmp_path / "rgb.dcm")
    (vol,) = load([str(tmp_path)]).volumes
    assert vol.is_rgb and vol.shape == (1, 5, 7, 3)
    assert vol.pixels[0, 0, 0].tolist() == [200, 0, 0]


def test_windows_from_tags_including_multiple_values(tmp_path):
    ds = make_dataset(np.zeros((4, 4), np.int16), window=([40, -600], [400, 1500]))
    ds.WindowCenterWidthExplanation = ["SOFT", "LUNG"]
    write(ds, tmp_path / "w.dcm")
    (vol,) = load([str(tmp_path)]).volumes
    assert [(w.center, w.width) for w in vol.windows] == [(40, 400), (-600, 1500)]
    assert "LUNG" in vol.windows[1].name


@pytest.mark.parametrize(
    "name",
    ["MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm",
     "MR_small_bigendian.dcm", "MR_small_implicit.dcm", "MR_small_expb.dcm"],
)
def test_compressed_and_other_syntaxes_match_reference(name):
    from tests.testdata import local_file

    ref = load([local_file("MR_small.dcm")]).volumes[0]
    result = load([local_file(name)])
    assert result.skipped == [], result.skipped
    np.testing.assert_array_equal(result.volumes[0].pixels, ref.pixels)


def test_dicomdir_tree_never_leaves_the_chosen_folder(tmp_path):
    inner = tmp_path / "study"
    write_series(inner, n=2)
    outside = tmp_path / "outside"
    write_series(outside, n=3, prefix="secret")
    os.symlink(outside / "secret000.dcm", inner / "link.dcm")
    os.symlink("../outside", inner / "dirlink")
    result = load([str(inner)])
    assert [v.n_slices for v in result.volumes] == [2]
    reasons = {os.path.basename(s.path): s.reason for s in result.skipped}
    assert "outside the chosen folder" in reasons["link.dcm"]
    assert "not followed" in reasons["dirlink"]


def test_deflated_transfer_syntax_loads():
    from pydicom import dcmread

    from tests.testdata import local_file

    path = local_file("image_dfl.dcm")
    assert dcmread(path).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1.99"
    result = load([path])
    assert result.skipped == []
    np.testing.assert_array_equal(result.volumes[0].pixels[0], dcmread(path).pixel_array)


def _series(folder, zs, thickness, tilt_y=0.0, tag_tilt=None):
    """A series at positions ``zs`` (mm) with per-slice thicknesses; ``tilt_y`` shifts
    each slice along y by tan(tilt) * z, as a tilted gantry does."""
    import math as _m

    uid = generate_uid()
    os.makedirs(folder, exist_ok=True)
    for k, z in enumerate(zs):
        y = _m.tan(_m.radians(tilt_y)) * z
        ds = make_dataset(np.full((4, 4), k, np.int16), series_uid=uid, position=(0, y, z))
        ds.SliceThickness = thickness[k] if isinstance(thickness, list) else thickness
        if tag_tilt is not None:
            ds.GantryDetectorTilt = tag_tilt
        write(ds, folder / f"{k}.dcm")
    (vol,) = load([str(folder)]).volumes
    return vol


def test_a_thickness_change_is_one_protocol_message_not_gaps(tmp_path):
    zs = [4.0 * k for k in range(14)] + [52 + 7.0 * k for k in range(1, 14)]
    thick = [4.0] * 14 + [7.0] * 13
    vol = _series(tmp_path, zs, thick)
    assert not any(w.startswith("gap") for w in vol.warnings)
    assert [w.split(":")[0] for w in vol.warnings] == [
        "slice thickness changes from 4 to 7 mm at slice 15"]
    assert "protocol change" in vol.warnings[0]


def test_a_contiguous_thickness_change_is_named_not_irregular_spacing(tmp_path):
    """4 mm slices then 7 mm slices, contiguous: centre to centre the step at the change
    is 5.5 mm. That is the protocol change, said once, not "irregular spacing"."""
    zs = [4.0 * k for k in range(10)] + [36 + 5.5 + 7.0 * k for k in range(8)]
    thick = [4.0] * 10 + [7.0] * 8
    vol = _series(tmp_path, zs, thick)
    assert vol.warnings == [
        "slice thickness changes from 4 to 7 mm at slice 11: a protocol change, not a gap "
        "(shown with the median spacing 4 mm)"]


def test_a_step_beyond_the_thickness_is_a_gap(tmp_path):
    zs = [0.0, 2.5, 5.0, 7.5, 15.0, 17.5, 20.0]  # one missing stretch, thickness 2.5
    vol = _series(tmp_path, zs, 2.5)
    gaps = [w for w in vol.warnings if w.startswith("gap")]
    assert gaps == ["gap at slice 4: 7.5 mm to the next slice, slice thickness 2.5 mm: 5 mm "
                    "not imaged"]


def test_gantry_tilt_is_reported_in_warnings_info_and_json(tmp_path, capsys):
    import json

    from medview.cli import main

    vol = _series(tmp_path / "tilted", [2.5 * k for k in range(6)], 2.5, tilt_y=15.0)
    assert vol.tilt_deg == pytest.approx(15.0, abs=0.2)
    assert any(w.startswith("gantry/detector tilt 15.0 degrees") for w in vol.warnings)
    assert main(["info", str(tmp_path / "tilted"), "--json"]) == 0
    (series,) = json.loads(capsys.readouterr().out)["series"]
    assert series["tilt_deg"] == pytest.approx(15.0, abs=0.2)
    assert main(["info", str(tmp_path / "tilted")]) == 0
    assert "tilt: 15.0 degrees" in capsys.readouterr().out
    flat = _series(tmp_path / "flat", [2.5 * k for k in range(6)], 2.5)
    assert flat.tilt_deg == 0.0 and not any("tilt" in w for w in flat.warnings)
