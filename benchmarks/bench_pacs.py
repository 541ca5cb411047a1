"""PACS retrieve rate (part of ``make bench``).

A real Orthanc on localhost holds a study of 500 CT instances (512 x 512, 16-bit). The
same study is retrieved, engines alternated, best of 3:
- baseline: the plain pynetdicom C-GET loop of pynetdicom's own examples (decoded
  dataset in memory, ``save_as`` per instance, default settings);
- medview DIMSE: ``medview.pacs`` C-GET (IMAGE-level listing first, chunked receive to
  a temporary file, header check, fsync + rename per instance);
- medview DICOMweb (WADO-RS, one instance per request), for information.
Target: medview DIMSE >= 0.9x the baseline's instances per second. Skipped with a note
when Orthanc is not installed.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

N_INSTANCES = 500
SIZE = 512
ROUNDS = 3


def plain_pynetdicom_get(host: str, port: int, aet: str, study_uid: str, out: str) -> int:
    """pynetdicom's documented C-GET SCU loop, as a user would write it."""
    from pydicom.dataset import Dataset
    from pynetdicom import AE, _config, build_role, evt
    from pynetdicom.sop_class import CTImageStorage
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet as GET

    _config.STORE_RECV_CHUNKED_DATASET = False  # the library's default
    received = []

    def handle_store(event):
        ds = event.dataset
        ds.file_meta = event.file_meta
        ds.save_as(os.path.join(out, str(ds.SOPInstanceUID)), enforce_file_format=True)
        received.append(1)
        return 0x0000

    ae = AE(ae_title="MEDVIEW")  # the node the PACS knows
    ae.add_requested_context(GET)
    ae.add_requested_context(CTImageStorage)
    role = build_role(CTImageStorage, scp_role=True)
    assoc = ae.associate(host, port, ae_title=aet, ext_neg=[role],
                         evt_handlers=[(evt.EVT_C_STORE, handle_store)])
    q = Dataset()
    q.QueryRetrieveLevel = "STUDY"
    q.StudyInstanceUID = study_uid
    for _status, _ident in assoc.send_c_get(q, GET):
        pass
    assoc.release()
    return len(received)


def run() -> list[tuple[str, str, str, str]]:
    from tests.orthanc import ORTHANC_MISSING, Orthanc, write_study

    if ORTHANC_MISSING:
        return [("retrieve rate", "skipped", ORTHANC_MISSING, "-")]
    from medview.core.progress import drain
    from medview.pacs import PacsSettings, connect

    root = tempfile.mkdtemp(prefix="medview-bench-pacs-")
    try:
        server = Orthanc(os.path.join(root, "orthanc")).start()
        try:
            study_uid, paths = write_study(os.path.join(root, "src"), modality="CT",
                                           n=N_INSTANCES, size=SIZE)
            megabytes = sum(os.path.getsize(p) for p in paths) / 1e6
            server.upload(paths)
            settings = PacsSettings(port=server.medview_port, timeout_s=30)
            dimse = connect(server.dimse_url, settings)
            web = connect(server.web_url, settings)
            times: dict[str, list[float]] = {"plain": [], "dimse": [], "web": []}
            for k in range(ROUNDS):
                for name in ("plain", "dimse", "web"):
                    out = os.path.join(root, f"{name}{k}")
                    os.makedirs(out)
                    t0 = time.perf_counter()
                    if name == "plain":
                        n = plain_pynetdicom_get("127.0.0.1", server.dicom_port, server.aet,
                                                 study_uid, out)
                    else:
                        client = dimse if name == "dimse" else web
                        n = drain(client.iter_retrieve(study_uid, out)).received
                    times[name].append(time.perf_counter() - t0)
                    assert n == N_INSTANCES, (name, n)
                    shutil.rmtree(out)
        finally:
            server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    best = {k: min(v) for k, v in times.items()}
    rate = {k: N_INSTANCES / v for k, v in best.items()}
    ratio = rate["dimse"] / rate["plain"]
    return [
        (f"plain pynetdicom C-GET, {N_INSTANCES} x {SIZE}^2 CT ({megabytes:.0f} MB)",
         f"{rate['plain']:.0f} inst/s ({megabytes / best['plain']:.0f} MB/s)", "baseline",
         "-"),
        ("medview C-GET (count query, header check, fsync, resumable)",
         f"{rate['dimse']:.0f} inst/s ({megabytes / best['dimse']:.0f} MB/s)",
         f"{ratio:.2f}x baseline (target >= 0.9x)", "PASS" if ratio >= 0.9 else "FAIL"),
        ("medview WADO-RS (one instance per request)",
         f"{rate['web']:.0f} inst/s ({megabytes / best['web']:.0f} MB/s)",
         f"{rate['web'] / rate['plain']:.2f}x baseline", "info"),
    ]


if __name__ == "__main__":
    from benchmarks.common import print_table

    print_table(f"PACS retrieve ({N_INSTANCES} instances from Orthanc on localhost, best of "
                f"{ROUNDS})", run())
