"""Write small synthetic DICOM files for tests (and benchmarks)."""

from __future__ import annotations

import os

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)


def make_dataset(
    pixels: np.ndarray,
    *,
    modality: str = "CT",
    series_uid: str | None = None,
    position: tuple[float, float, float] | None = (0.0, 0.0, 0.0),
    orientation: tuple[float, ...] | None = (1, 0, 0, 0, 1, 0),
    instance: int = 1,
    slope: float | str | None = 1.0,
    intercept: float | str | None = -1024.0,
    window: tuple | None = None,
    photometric: str = "MONOCHROME2",
    spacing: tuple[float, float] | None = (0.5, 0.5),
    description: str = "Synthetic",
    sop_uid: str | None = None,
    bits_stored: int | None = None,
) -> Dataset:
    """A CT-like image dataset holding ``pixels`` (2-D, or 3-D for multi-frame)."""
    pixels = np.asarray(pixels)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage if modality == "CT" else (
        SecondaryCaptureImageStorage
    )
    meta.MediaStorageSOPInstanceUID = sop_uid or generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.Modality = modality
    ds.SeriesDescription = description
    ds.PatientName = "Test^Patient"
    ds.PatientID = "TEST123"
    ds.InstanceNumber = instance
    if position is not None:
        ds.ImagePositionPatient = [float(v) for v in position]
    if orientation is not None:
        ds.ImageOrientationPatient = [float(v) for v in orientation]
    if spacing is not None:
        ds.PixelSpacing = [float(v) for v in spacing]
    if slope is not None:
        ds.RescaleSlope = slope
    if intercept is not None:
        ds.RescaleIntercept = intercept
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    frames = pixels.shape[0] if pixels.ndim == 3 and photometric != "RGB" else 1
    if frames > 1:
        ds.NumberOfFrames = frames
    rows, cols = pixels.shape[-2:] if photometric != "RGB" else pixels.shape[-3:-1]
    ds.Rows, ds.Columns = int(rows), int(cols)
    ds.SamplesPerPixel = 3 if photometric == "RGB" else 1
    if photometric == "RGB":
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    itemsize = pixels.dtype.itemsize
    ds.BitsAllocated = 8 * itemsize
    ds.BitsStored = bits_stored or 8 * itemsize
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    ds.PixelData = np.ascontiguousarray(pixels).astype(pixels.dtype.newbyteorder("<")).tobytes()
    return ds


def write(ds: Dataset, path: str | os.PathLike) -> str:
    ds.save_as(str(path), enforce_file_format=True)
    return str(path)


def write_series(
    folder: str | os.PathLike,
    n: int = 8,
    size: int = 16,
    spacing_z: float = 2.5,
    *,
    shuffle: bool = True,
    skip: tuple[int, ...] = (),
    series_uid: str | None = None,
    prefix: str = "img",
    description: str = "Synthetic CT",
) -> tuple[list[str], np.ndarray]:
    """Write an axial CT series; slice k holds the value ``k * 10`` everywhere (+ a ramp).

    With ``shuffle`` the slices are written in a random order and the files are named by
    that order (and Instance Numbers run against z), so only Image Position (Patient)
    gives the slice order. Returns the file paths (in writing order) and the expected
    stored volume in increasing-z order (without the skipped slices).
    """
    os.makedirs(folder, exist_ok=True)
    uid = series_uid or generate_uid()
    rng = np.random.default_rng(0)
    order = rng.permutation(n) if shuffle else np.arange(n)
    paths = []
    vol = []
    ramp = np.arange(size * size, dtype=np.int16).reshape(size, size) % 7
    for k in range(n):
        if k in skip:
            continue
        vol.append((ramp + k * 10).astype(np.int16))
    for j, idx in enumerate(order):
        k = int(idx)
        if k in skip:
            continue
        pixels = (ramp + k * 10).astype(np.int16)
        ds = make_dataset(
            pixels,
            series_uid=uid,
            position=(-10.0, -10.0, k * spacing_z),
            instance=n - k,  # deliberately opposite to z order
            description=description,
        )
        # named by writing order, so neither file names nor instance numbers follow z:
        # only the positions give the slice order
        name = f"{prefix}{j if shuffle else k:03d}.dcm"
        paths.append(write(ds, os.path.join(folder, name)))
    return paths, np.stack(vol)
