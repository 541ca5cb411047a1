"""Helpers for the tests against a real PACS (Orthanc); the fixtures ``pacs`` and
``pacs_env`` are in tests/conftest.py."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image
from pydicom.uid import generate_uid

from medview.pacs import PacsSettings
from tests.orthanc import ORTHANC_MISSING, Orthanc, image_dataset


def require_orthanc():
    if ORTHANC_MISSING:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(ORTHANC_MISSING + " - in CI these tests must run")
        pytest.skip(ORTHANC_MISSING)


def _settings(server: Orthanc, **kw) -> PacsSettings:
    return PacsSettings(port=server.medview_port, timeout_s=kw.pop("timeout_s", 10), **kw)


def _patch_film(data_dir: str, folder: str) -> tuple[str, str]:
    """A tiny-model image (a 'patch' example) as a DICOM CR of a new study."""
    png = os.path.join(data_dir, "patch", sorted(os.listdir(os.path.join(data_dir,
                                                                          "patch")))[0])
    pixels = np.asarray(Image.open(png)).astype(np.uint16)
    study_uid = generate_uid()
    ds = image_dataset(pixels, study_uid=study_uid, series_uid=generate_uid(),
                       modality="CR", patient_id="PAT900", patient_name="Film^Test")
    ds.BitsStored, ds.HighBit = 8, 7
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "film.dcm")
    ds.save_as(path, enforce_file_format=True)
    return study_uid, path
