"""PACS retrieve rate (part of ``make bench``).

A real Orthanc on localhost holds a study of 500 CT instances (512 x 512, 16-bit). The
same study is retrieved, engines alternated round by round, min and median of 3, each
medview method against the plain clients of the same protocol:
- C-GET: the plain pynetdicom C-GET loop of pynetdicom's own examples (decoded dataset in
  memory, ``save_as`` per instance, default settings) and dcmtk's ``getscu``, against
  ``medview.pacs`` C-GET (IMAGE-level listing first, chunked receive to a temporary
  file, header check, fsync + rename per instance);
- C-MOVE: dcmtk's ``movescu`` (its own storage SCP as the destination) against medview's
  C-MOVE (the same receiver, listening where the server sends);
- WADO-RS: dicomweb-client's ``retrieve_study`` (the whole study in memory, then
  ``save_as``) against medview's WADO-RS (one instance per request, streamed to disk).
Targets: medview's C-GET ahead of getscu and >= 0.9x the pynetdicom loop; C-MOVE and
WADO-RS are measured. dcmtk rows are skipped when its tools are missing; everything is
skipped with a note without Orthanc.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
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


def dcmtk(tool: str, server, study_uid: str, out: str) -> int:
    """dcmtk's ``getscu`` or ``movescu`` (study root, its own storage SCP for C-MOVE),
    as a user would run it; returns the files written."""
    cmd = [tool, "-S", "-aet", "MEDVIEW", "-aec", server.aet, "-k", "QueryRetrieveLevel=STUDY",
           "-k", f"StudyInstanceUID={study_uid}", "-od", out]
    if tool == "movescu":
        cmd += ["-aem", "MEDVIEW", "--port", str(server.medview_port)]
    subprocess.run([*cmd, "127.0.0.1", str(server.dicom_port)], check=True,
                   capture_output=True, timeout=600)
    return len(os.listdir(out))


def plain_wado(url: str, study_uid: str, out: str) -> int:
    """dicomweb-client's study retrieval, then ``save_as`` per instance."""
    from dicomweb_client.api import DICOMwebClient

    client = DICOMwebClient(url)
    n = 0
    for ds in client.retrieve_study(study_uid):
        ds.save_as(os.path.join(out, str(ds.SOPInstanceUID)), enforce_file_format=True)
        n += 1
    return n


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
            engines = {
                "plain pynetdicom C-GET": lambda out: plain_pynetdicom_get(
                    "127.0.0.1", server.dicom_port, server.aet, study_uid, out),
                "medview C-GET": lambda out: drain(dimse.iter_retrieve(
                    study_uid, out, method="get")).received,
                "medview C-MOVE": lambda out: drain(dimse.iter_retrieve(
                    study_uid, out, method="move")).received,
                "dicomweb-client WADO-RS": lambda out: plain_wado(server.web_url, study_uid,
                                                                  out),
                "medview WADO-RS": lambda out: drain(web.iter_retrieve(study_uid, out)
                                                     ).received,
            }
            if shutil.which("getscu") and shutil.which("movescu"):
                engines["dcmtk getscu"] = lambda out: dcmtk("getscu", server, study_uid, out)
                engines["dcmtk movescu"] = lambda out: dcmtk("movescu", server, study_uid,
                                                             out)
            times: dict[str, list[float]] = {name: [] for name in engines}
            for k in range(ROUNDS):
                for name, fetch in engines.items():
                    out = os.path.join(root, f"r{k}")
                    os.makedirs(out)
                    t0 = time.perf_counter()
                    n = fetch(out)
                    times[name].append(time.perf_counter() - t0)
                    assert n == N_INSTANCES, (name, n)
                    shutil.rmtree(out)
        finally:
            server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    rows = [("study retrieved", f"{N_INSTANCES} x {SIZE}^2 CT ({megabytes:.0f} MB)",
             "engines alternated", "")]
    # C-GET must stay ahead of dcmtk's getscu and within 0.9x of pynetdicom's loop (which
    # neither checks nor syncs what it writes); C-MOVE and WADO-RS are measured against
    # their plain clients (medview's WADO-RS asks for one instance per request, so that a
    # retrieve resumes where it stopped and every answer is bounded; dicomweb-client
    # holds the whole study in memory)
    pairs = (("medview C-GET", ("plain pynetdicom C-GET", "dcmtk getscu"), 0.9),
             ("medview C-MOVE", ("dcmtk movescu",), None),
             ("medview WADO-RS", ("dicomweb-client WADO-RS",), None))
    for ours, plain, target in pairs:
        have = [p for p in plain if p in times]
        for name in [*have, ours]:
            lo, med = min(times[name]), statistics.median(times[name])
            rate = f"{N_INSTANCES / lo:.0f} inst/s ({megabytes / lo:.0f} MB/s); median " \
                   f"{N_INSTANCES / med:.0f} inst/s"
            if name != ours:
                rows.append((name, rate, "(baseline)", ""))
                continue
            ratios = ", ".join(f"{min(times[p]) / lo:.2f}x {p.split()[0]}" for p in have)
            if target is None:
                rows.append((name, rate, f"{ratios} (measured)", ""))
                continue
            ok = all(min(times[p]) / lo >= target for p in have) and (
                "dcmtk getscu" not in times or min(times["dcmtk getscu"]) / lo > 1.0)
            rows.append((name, rate, f"{ratios} (target: >= {target}x pynetdicom, ahead "
                         "of getscu)", "PASS" if ok else "FAIL"))
    return rows


if __name__ == "__main__":
    from benchmarks.common import print_table

    print_table(f"PACS retrieve ({N_INSTANCES} instances from Orthanc on localhost, best of "
                f"{ROUNDS})", run())
