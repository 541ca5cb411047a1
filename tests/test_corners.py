"""The corner text: which fields, from which tags, in which corner."""

import numpy as np
import pytest

from medview.core.volume import WindowPreset
from medview.imaging.corners import (
    DEFAULT_LAYOUT,
    corner_lines,
    layout_text,
    parse_layout,
    slice_position,
)
from medview.io.loader import load
from tests.factory import make_dataset, write, write_series


def test_a_dicom_image_fills_every_corner_from_its_tags(tmp_path):
    ds = make_dataset(np.zeros((8, 8), np.uint16))
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "MRN-77"
    ds.PatientSex = "F"
    ds.PatientAge = "042Y"
    ds.StudyDate = "20240131"
    ds.StudyDescription = "CT HEAD"
    ds.SeriesNumber = 3
    ds.SliceThickness = 5
    v = load([write(ds, tmp_path / "a.dcm")]).volumes[0]
    text = corner_lines(DEFAULT_LAYOUT, v, 0, WindowPreset("w", 40, 80), 1.5)
    assert text["top_left"] == "Doe Jane\nID MRN-77\n42 y F"
    assert text["top_right"] == "2024-01-31\nCT HEAD\nSe 3 Synthetic"
    assert text["bottom_left"] == "CT\nIm 1 / 1\nThk 5 mm"  # one slice: no position
    assert text["bottom_right"] == "W 80 L 40\nZoom 1.50x"
    assert corner_lines(DEFAULT_LAYOUT, None, 0, None, None) == dict.fromkeys(DEFAULT_LAYOUT, "")


def test_slice_position_is_the_location_along_the_normal(tmp_path):
    write_series(tmp_path / "s", n=5, size=8, spacing_z=2.5)
    v = load([str(tmp_path / "s")]).volumes[0]
    assert [slice_position(v, k) for k in range(5)] == pytest.approx(
        [k * 2.5 for k in range(5)])
    text = corner_lines({"bottom_left": ["slice", "position"]}, v, 2, None, None)
    assert text["bottom_left"] == "Im 3 / 5\nPos 5.0 mm"


def test_layouts_are_parsed_checked_and_written_back():
    layout = parse_layout("top_left: patient_id, modality\nbottom_right: zoom\n")
    assert layout == {"top_left": ["patient_id", "modality"], "top_right": [],
                      "bottom_left": [], "bottom_right": ["zoom"]}
    assert parse_layout(layout_text(layout)) == layout
    assert parse_layout(layout_text(DEFAULT_LAYOUT)) == DEFAULT_LAYOUT
    with pytest.raises(ValueError, match=r"unknown field.*patient_address"):
        parse_layout("top_left: patient_address")
    with pytest.raises(ValueError, match="unknown corner"):
        parse_layout("middle: zoom")
