"""Reformats and slabs: every reformatted pixel lies where the series' own geometry puts
the voxel it shows; slabs are the projections of the slices within the thickness."""

import dataclasses
import math

import numpy as np
import pytest

from medview.core.volume import ImageVolume
from medview.imaging.geometry import orientation_labels
from medview.imaging.mpr import (
    MprError,
    acquired_plane,
    reformat,
    slab,
    slab_indices,
)
from medview.imaging.render import modality_slice


def _axial(n=9, rows=6, cols=7, spacing=(2.5, 0.7, 0.9), seed=0, **kw) -> ImageVolume:
    """An axial series (LPS: columns to the left, rows to the back, slices to the head),
    random stored values, slope 1 intercept -1024."""
    pixels = np.random.default_rng(seed).integers(0, 3000, (n, rows, cols)).astype(np.int16)
    return ImageVolume(pixels, modality="CT", spacing=spacing, origin=(-10.0, -20.0, 30.0),
                       direction=np.eye(3), rescale_slope=np.ones(n),
                       rescale_intercept=np.full(n, -1024.0), **kw)


def _position(v: ImageVolume, k, r, c) -> np.ndarray:
    d, (sz, sy, sx) = np.asarray(v.direction), v.spacing
    return np.asarray(v.origin) + c * sx * d[0] + r * sy * d[1] + k * sz * d[2]


@pytest.mark.parametrize("plane", ["coronal", "sagittal"])
def test_every_reformatted_pixel_is_the_voxel_at_its_position(plane):
    v = _axial()
    r = reformat(v, plane)
    assert acquired_plane(v) == "axial" and acquired_plane(r) == plane
    src = {tuple(np.round(_position(v, k, i, j), 6)): v.pixels[k, i, j]
           for k in range(v.n_slices) for i in range(v.rows) for j in range(v.cols)}
    for k in range(r.n_slices):
        for i in range(r.rows):
            for j in range(r.cols):
                assert r.pixels[k, i, j] == src[tuple(np.round(_position(r, k, i, j), 6))]
    # head up: the top of a coronal or sagittal image is the head
    assert orientation_labels(r.direction)["top"].startswith("H")  # head
    assert r.pixels.base is not None  # a view of the series' pixels, no copy
    # the aspect comes from the slice spacing: rows are slices 2.5 mm apart
    assert r.spacing[1] == 2.5
    assert reformat(v, "axial") is v


def test_a_reformat_of_a_series_with_a_gap_or_tilt_says_it_is_not_faithful():
    v = _axial(warnings=["gap at slice 4: 5.0 mm not imaged"])
    assert reformat(v, "coronal").warnings[0].startswith("this reformat is not faithful")
    tilted = _axial(tilt_deg=12.0)
    assert "tilt 12.0" in reformat(tilted, "sagittal").warnings[0]
    assert reformat(_axial(), "coronal").warnings == []


@pytest.mark.parametrize("change,why", [
    ({"pixels": np.zeros((2, 4, 4), np.int16)}, "at least 3 slices"),
    ({"spacing": (math.nan, 0.7, 0.9)}, "spacing is unknown"),
    ({"direction": None}, "no slice orientation"),
    ({"rescale_slope": np.array([1.0] * 8 + [2.0])}, "changes from slice to slice"),
])
def test_series_that_cannot_be_reformatted_say_why(change, why):
    v = dataclasses.replace(_axial(), **change)
    if "pixels" in change:
        v = dataclasses.replace(v, rescale_slope=np.ones(2), rescale_intercept=np.zeros(2))
    with pytest.raises(MprError, match=why):
        reformat(v, "coronal")


@pytest.mark.parametrize("mode,reduce", [("mip", np.max), ("minip", np.min),
                                         ("mean", np.mean)])
def test_a_slab_is_the_projection_of_the_slices_within_its_thickness(mode, reduce):
    v = _axial(n=12, spacing=(2.0, 0.7, 0.9))
    assert list(slab_indices(v, 5, 6.0)) == [4, 5, 6]
    assert list(slab_indices(v, 0, 10.0)) == [0, 1, 2, 3, 4]  # clipped at the ends
    assert list(slab_indices(v, 11, 1.0)) == [11]  # thinner than a slice: the slice
    s = slab(v, 5, mode, 6.0)
    values = np.stack([modality_slice(v, k) for k in (4, 5, 6)])
    np.testing.assert_allclose(modality_slice(s, 0), reduce(values, axis=0), rtol=1e-6)
    # a negative slope: the brightest modality value comes from the smallest stored one
    neg = dataclasses.replace(v, rescale_slope=np.full(12, -1.0))
    values = np.stack([modality_slice(neg, k) for k in (4, 5, 6)])
    np.testing.assert_allclose(modality_slice(slab(neg, 5, mode, 6.0), 0),
                               reduce(values, axis=0), rtol=1e-6)
