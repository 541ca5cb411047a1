"""Readers: DICOM (pydicom), NIfTI/NRRD/MHA (SimpleITK), PNG/JPEG/TIFF/BMP (Pillow)."""

from medview.io.loader import discover, iter_load, load

__all__ = ["discover", "iter_load", "load"]
