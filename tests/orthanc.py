"""A real PACS for tests and benchmarks: Orthanc (Debian ``orthanc`` + ``orthanc-dicomweb``)
started on free localhost ports with a temporary configuration and storage.

``ORTHANC_MISSING`` is the reason to skip when the server is not installed (``.ci/run``
installs it, so in CI the tests run).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

BINARY = shutil.which("Orthanc") or ""
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
ORTHANC_MISSING = (
    "" if BINARY and os.path.exists(DICOMWEB_PLUGIN) else
    "Orthanc is not installed (Debian packages orthanc and orthanc-dicomweb; .ci/run "
    "installs them): the tests against a real PACS did not run"
)
CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Orthanc:
    """One Orthanc process. ``medview_port`` is where medview's C-MOVE SCP listens; the
    server knows medview as AE ``MEDVIEW`` there. ``allow_get=False`` makes the server
    refuse C-GET from medview (to test the C-MOVE fallback)."""

    def __init__(self, folder: str, *, allow_get: bool = True, check_called_aet: bool = True
                 ) -> None:
        self.folder = folder
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.medview_port = free_port()
        self.aet = "ORTHANC"
        self.allow_get = allow_get
        self.check_called_aet = check_called_aet
        self.proc: subprocess.Popen | None = None

    @property
    def dimse_url(self) -> str:
        return f"dicom://{self.aet}@127.0.0.1:{self.dicom_port}"

    @property
    def web_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/dicom-web"

    @property
    def rest(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def _config(self) -> dict:
        storage = os.path.join(self.folder, "storage")
        return {
            "Name": "medview-test", "StorageDirectory": storage, "IndexDirectory": storage,
            "HttpPort": self.http_port, "DicomPort": self.dicom_port, "DicomAet": self.aet,
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
            "DicomCheckCalledAet": self.check_called_aet,
            "DicomAlwaysAllowEcho": True, "DicomAlwaysAllowStore": True,
            "DicomModalities": {"medview": {
                "AET": "MEDVIEW", "Host": "127.0.0.1", "Port": self.medview_port,
                "AllowGet": self.allow_get, "AllowMove": True, "AllowFind": True,
                "AllowEcho": True, "AllowStore": True}},
            "Plugins": [DICOMWEB_PLUGIN],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "StorageCompression": False, "SaveJobs": False,
        }

    def start(self, timeout: float = 30.0) -> Orthanc:
        os.makedirs(self.folder, exist_ok=True)
        cfg = os.path.join(self.folder, "orthanc.json")
        with open(cfg, "w") as f:
            json.dump(self._config(), f)
        log = open(os.path.join(self.folder, "orthanc.log"), "ab")  # noqa: SIM115
        self.proc = subprocess.Popen([BINARY, cfg], stdout=log, stderr=log,
                                     stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited at start (see {self.folder}/orthanc.log)")
            with contextlib.suppress(OSError), urllib.request.urlopen(
                    self.rest + "/system", timeout=1) as r:
                if r.status == 200:
                    return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("Orthanc did not start within the timeout")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """Kill the server at once (as a crash or a pulled cable would)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def upload(self, paths) -> int:
        """Put files into the server through its REST API (not through medview)."""
        n = 0
        for p in paths:
            with open(p, "rb") as f:
                req = urllib.request.Request(self.rest + "/instances", data=f.read(),
                                             method="POST")
            with urllib.request.urlopen(req, timeout=30) as r:
                n += r.status == 200
        return n

    def get_json(self, path: str):
        with urllib.request.urlopen(self.rest + path, timeout=30) as r:
            return json.loads(r.read())

    def instances_of_study(self, study_uid: str) -> list[dict]:
        """Every instance the server holds for a study, with its tags (simplified)."""
        found = self._post_json("/tools/find", {"Level": "Instance", "Expand": True,
                                                "Query": {"StudyInstanceUID": study_uid}})
        return found

    def _post_json(self, path: str, doc: dict):
        req = urllib.request.Request(self.rest + path, data=json.dumps(doc).encode(),
                                     method="POST")
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def __enter__(self) -> Orthanc:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def image_dataset(pixels: np.ndarray, *, study_uid: str, series_uid: str, modality: str,
                  patient_id: str, patient_name: str, instance: int = 1,
                  body_part: str = "", view: str = "", age: str = "",
                  description: str = "", study_description: str = "",
                  accession: str = "", study_date: str = "20240312") -> Dataset:
    """A CR or CT image with the identity and study tags a PACS indexes."""
    sop_class = CR_STORAGE if modality == "CR" else CT_STORAGE
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.Modality = modality
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyDate = study_date
    ds.StudyTime = "101500"
    ds.StudyID = "1"
    ds.AccessionNumber = accession
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = study_description
    ds.SeriesDescription = description
    ds.SeriesNumber = 1 if modality == "CR" else 2
    ds.InstanceNumber = instance
    ds.Manufacturer = "medview tests"
    if body_part:
        ds.BodyPartExamined = body_part
    if view:
        ds.ViewPosition = view
    if age:
        ds.PatientAge = age
    if modality == "CT":
        ds.ImagePositionPatient = [0.0, 0.0, float(instance) * 2.5]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [0.7, 0.7]
        ds.SliceThickness = 2.5
        ds.RescaleSlope = 1
        ds.RescaleIntercept = -1024
        ds.FrameOfReferenceUID = generate_uid()
    else:
        ds.ImagerPixelSpacing = [0.2, 0.2]
        ds.PatientOrientation = ["R", "F"]
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    return ds


def chest_film(size: int = 256, seed: int = 0) -> np.ndarray:
    """A chest-film-like 12-bit image: bright mediastinum, darker lungs, ribs."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    img = 2600 - 1500 * (np.exp(-((x - 0.3) ** 2 + (y - 0.5) ** 2) / 0.03)
                         + np.exp(-((x - 0.7) ** 2 + (y - 0.5) ** 2) / 0.03))
    img += 300 * (np.sin(y * 40) > 0.8)
    img += rng.normal(0, 40, img.shape)
    return np.clip(img, 0, 4095).astype(np.uint16)


def write_study(folder: str, *, modality: str = "CR", n: int = 1, patient_id: str = "PAT001",
                patient_name: str = "Doe^Jane", size: int = 256, **tags) -> tuple[str, list]:
    """Write a study of ``n`` images; returns (study UID, file paths)."""
    os.makedirs(folder, exist_ok=True)
    study_uid, series_uid = generate_uid(), generate_uid()
    paths = []
    for k in range(n):
        pixels = chest_film(size, seed=k) if modality == "CR" else (
            np.full((size, size), 1024 + 10 * k, dtype=np.uint16))
        ds = image_dataset(pixels, study_uid=study_uid, series_uid=series_uid,
                           modality=modality, patient_id=patient_id,
                           patient_name=patient_name, instance=k + 1, **tags)
        p = os.path.join(folder, f"{modality}{k:04d}.dcm")
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    return study_uid, paths
