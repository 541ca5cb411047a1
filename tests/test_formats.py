"""NIfTI / NRRD / MetaImage through SimpleITK, and PNG/JPEG/TIFF/BMP through Pillow."""

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from medview.imaging import orientation_labels
from medview.io import load


def _ras_image() -> tuple[sitk.Image, np.ndarray]:
    arr = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)  # z, y, x
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.8, 0.9, 2.0))
    # RAS-like storage (as many NIfTI writers do): x towards R, y towards A
    img.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
    return img, arr


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd", ".mha", ".mhd"])
def test_itk_formats_are_reoriented_to_lps(tmp_path, suffix):
    img, arr = _ras_image()
    path = tmp_path / f"vol{suffix}"
    sitk.WriteImage(img, str(path))
    result = load([str(tmp_path)])
    assert result.skipped == [], result.skipped
    (vol,) = result.volumes
    assert vol.shape == (4, 5, 6)
    # after reorientation to LPS both in-plane axes are flipped
    np.testing.assert_array_equal(vol.pixels, arr[:, ::-1, ::-1])
    np.testing.assert_allclose(vol.spacing, (2.0, 0.9, 0.8), rtol=1e-5)
    assert orientation_labels(vol.direction) == {"left": "R", "right": "L", "top": "A",
                                                "bottom": "P"}


def test_nifti_2d_and_4d(tmp_path):
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((7, 9), np.float32)), str(tmp_path / "a.nii"))
    four = sitk.JoinSeries([sitk.GetImageFromArray(np.full((2, 3, 4), t, np.int16))
                            for t in range(3)])
    sitk.WriteImage(four, str(tmp_path / "b.nii.gz"))
    vols = {v.description: v for v in load([str(tmp_path)]).volumes}
    assert vols["a.nii"].shape == (1, 7, 9)
    assert vols["b.nii.gz"].shape == (2, 3, 4)
    assert any("4-D" in w for w in vols["b.nii.gz"].warnings)


@pytest.mark.parametrize(
    ("mode", "dtype", "suffix"),
    [("L", np.uint8, ".png"), ("I;16", np.uint16, ".png"), ("RGB", np.uint8, ".png"),
     ("L", np.uint8, ".jpg"), ("RGB", np.uint8, ".jpg"), ("L", np.uint8, ".bmp"),
     ("I;16", np.uint16, ".tif"), ("RGB", np.uint8, ".tif")],
)
def test_raster_formats(tmp_path, mode, dtype, suffix):
    h, w = 12, 20
    if mode == "RGB":
        arr = np.zeros((h, w, 3), np.uint8)
        arr[..., 1] = 180
        img = Image.fromarray(arr, "RGB")
    elif mode == "I;16":
        arr = (np.arange(h * w).reshape(h, w) * 200).astype(np.uint16)
        img = Image.fromarray(arr)
    else:
        arr = np.tile(np.linspace(0, 255, w).astype(np.uint8), (h, 1))
        img = Image.fromarray(arr, "L")
    path = tmp_path / f"img{suffix}"
    img.save(path)
    (vol,) = load([str(path)]).volumes
    assert vol.pixels.dtype == dtype
    assert vol.is_rgb == (mode == "RGB")
    if suffix != ".jpg":
        np.testing.assert_array_equal(vol.pixels[0], arr)
    else:
        assert np.abs(vol.pixels[0].astype(int) - arr.astype(int)).mean() < 4
    assert all(np.isnan(vol.spacing))


def test_truncated_png_is_rejected(tmp_path):
    arr = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    path = tmp_path / "cut.png"
    Image.fromarray(arr).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    result = load([str(path)])
    assert result.volumes == [] and "corrupt or cut off" in result.skipped[0].reason


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_a_grey_film_saved_as_rgb_is_grey_and_a_colour_one_stays_colour(tmp_path, suffix):
    from medview.imaging.model_input import display_grey

    rng = np.random.default_rng(1)
    grey = rng.integers(0, 256, (16, 24), np.uint8)
    Image.fromarray(np.repeat(grey[..., None], 3, axis=2), "RGB").save(tmp_path / f"g{suffix}")
    colour = np.repeat(grey[..., None], 3, axis=2)
    colour[..., 0] = 255 - colour[..., 0]
    Image.fromarray(colour, "RGB").save(tmp_path / f"c{suffix}")
    (g,) = load([str(tmp_path / f"g{suffix}")]).volumes
    (c,) = load([str(tmp_path / f"c{suffix}")]).volumes
    assert g.photometric == "MONOCHROME2" and g.pixels.shape == (1, 16, 24)
    assert c.is_rgb and c.pixels.shape == (1, 16, 24, 3)
    if suffix == ".png":  # lossless: the one channel is the film, shown as it was
        np.testing.assert_array_equal(g.pixels[0], grey)
        np.testing.assert_array_equal(display_grey(g, 0), grey)
