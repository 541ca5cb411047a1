"""A hostile DIMSE server (pynetdicom on localhost): answers trickled under the per-message
timeout are cut off by the whole-operation deadline; an instance that grows past the cap
while it arrives ends the association."""

from __future__ import annotations

import os
import socket
import time
from types import SimpleNamespace

import pytest
from pydicom.dataset import Dataset

from medview.pacs import PacsError, PacsSettings, connect, servers
from medview.pacs.records import Query


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _c_get_server(wanted, get):
    """A pynetdicom server that lists ``wanted`` (one instance of one study) to C-FIND at
    every level and answers C-GET with the handler ``get``; returns (server, port)."""
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import (
        SecondaryCaptureImageStorage,
        StudyRootQueryRetrieveInformationModelFind,
        StudyRootQueryRetrieveInformationModelGet,
    )

    def find(event):
        ds = Dataset()
        level = event.identifier.QueryRetrieveLevel
        ds.QueryRetrieveLevel = level
        ds.StudyInstanceUID = wanted.StudyInstanceUID
        if level in ("SERIES", "IMAGE"):
            ds.SeriesInstanceUID = wanted.SeriesInstanceUID
        if level == "IMAGE":
            ds.SOPInstanceUID = wanted.SOPInstanceUID
            ds.SOPClassUID = SecondaryCaptureImageStorage
        if level == "STUDY":
            ds.NumberOfStudyRelatedInstances = 1
            ds.SOPClassesInStudy = [SecondaryCaptureImageStorage]
        yield 0xFF00, ds

    ae = AE(ae_title="HOSTILE")
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_supported_context(SecondaryCaptureImageStorage, scu_role=True, scp_role=True)
    port = _free_port()
    scp = ae.start_server(("127.0.0.1", port), block=False,
                          evt_handlers=[(evt.EVT_C_FIND, find), (evt.EVT_C_GET, get)])
    return scp, port


def test_a_trickled_query_answer_is_cut_off_at_the_deadline(monkeypatch):
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

    monkeypatch.setattr(servers, "MIN_DEADLINE_S", 1.5)
    monkeypatch.setattr(servers, "DEADLINE_FACTOR", 1.5)

    def slow_find(event):
        for k in range(100):  # one match every 0.3 s: never 1 s of silence
            time.sleep(0.3)
            ds = Dataset()
            ds.QueryRetrieveLevel = "STUDY"
            ds.StudyInstanceUID = f"1.2.3.{k}"
            yield 0xFF00, ds
        yield 0x0000, None

    ae = AE(ae_title="HOSTILE")
    ae.add_supported_context(FIND)
    port = _free_port()
    scp = ae.start_server(("127.0.0.1", port), block=False,
                          evt_handlers=[(evt.EVT_C_FIND, slow_find)])
    try:
        client = connect(f"dicom://HOSTILE@127.0.0.1:{port}", PacsSettings(timeout_s=1))
        t = time.monotonic()
        with pytest.raises(PacsError, match="deadline"):
            client.find_studies(Query(patient_id="X"))
        assert time.monotonic() - t < 10
    finally:
        scp.shutdown()


def test_an_instance_growing_past_the_cap_ends_the_association(tmp_path, monkeypatch):
    """pynetdicom writes an arriving instance to a temporary file as it comes; the
    receiver counts the bytes and aborts before that file passes the cap."""
    from medview.pacs import dimse
    from medview.pacs.records import RetrieveResult

    monkeypatch.setattr(dimse, "MAX_INSTANCE_BYTES", 4 * 1024**2)
    receiver = dimse._Receiver(str(tmp_path), "1.2.3", None, None,
                               RetrieveResult("1.2.3", str(tmp_path / "1.2.3")))
    aborted = []
    assoc = SimpleNamespace(abort=lambda: aborted.append(True))
    for _ in range(4):
        receiver.on_data(SimpleNamespace(assoc=assoc, data=b"\0" * (1 << 20)))
    assert not aborted  # 4 MiB: still within one instance's cap
    receiver.on_data(SimpleNamespace(assoc=assoc, data=b"\0" * (2 << 20)))
    assert aborted and receiver.failed == 1 and "too large" in receiver.errors[0]
    # a completed instance resets the count
    receiver.arriving = 3 * 1024**2
    receiver.handle(SimpleNamespace(request=SimpleNamespace(AffectedSOPInstanceUID="1.2.9"),
                                    dataset_path=str(tmp_path / "missing")))
    assert receiver.arriving == 0


def test_a_c_get_server_sending_an_oversized_instance_is_cut_off(tmp_path, monkeypatch):
    """The server answers C-GET with an instance far past the cap: the association is
    aborted while it arrives, nothing lands in the cache, and the retrieve says why."""
    import numpy as np

    from medview.core.progress import drain
    from medview.pacs import dimse
    from tests.factory import make_dataset

    monkeypatch.setattr(dimse, "MAX_INSTANCE_BYTES", 1024 * 1024)
    big = make_dataset(np.zeros((2048, 2048), np.uint16), modality="OT")  # 8 MiB
    study = big.StudyInstanceUID

    def get(event):
        yield 1
        yield 0xFF00, big

    scp, port = _c_get_server(big, get)
    try:
        client = connect(f"dicom://HOSTILE@127.0.0.1:{port}", PacsSettings(timeout_s=5))
        try:
            r = drain(client.iter_retrieve(study, str(tmp_path / "cache"), method="get"))
        except PacsError as exc:  # refused outright: still nothing kept
            r = None
            assert "C-GET" in str(exc) or "aborted" in str(exc)
        kept = [f for _d, _s, fs in os.walk(tmp_path / "cache") for f in fs
                if f.endswith(".dcm")]
        assert kept == []
        if r is not None:
            assert r.received == 0 and not r.complete
            assert "too large" in r.message
    finally:
        scp.shutdown()


def test_a_c_get_that_never_delivers_what_was_asked_is_cut_off_at_the_deadline(
        tmp_path, monkeypatch):
    """The server answers C-GET with instance after instance of another study, 0.5 s
    apart (every message in time for the per-message timeout): none is what was asked
    for, so no progress; the deadline aborts it instead of 50 x 0.5 s."""
    import numpy as np
    from pydicom.uid import generate_uid

    from medview.core.progress import drain
    from tests.factory import make_dataset

    monkeypatch.setattr(servers, "MIN_DEADLINE_S", 1.5)
    monkeypatch.setattr(servers, "DEADLINE_FACTOR", 1.5)
    wanted = make_dataset(np.zeros((8, 8), np.uint16), modality="OT")
    study = wanted.StudyInstanceUID

    def get(event):
        yield 50
        for _ in range(50):
            time.sleep(0.5)
            other = make_dataset(np.zeros((8, 8), np.uint16), modality="OT")
            other.StudyInstanceUID = generate_uid()  # not the study asked for
            yield 0xFF00, other

    scp, port = _c_get_server(wanted, get)
    try:
        client = connect(f"dicom://HOSTILE@127.0.0.1:{port}", PacsSettings(timeout_s=1))
        t = time.monotonic()
        r = drain(client.iter_retrieve(study, str(tmp_path / "cache"), method="get"))
        assert "deadline" in r.message and r.received == 0 and not r.complete
        assert time.monotonic() - t < 10
    finally:
        scp.shutdown()


def test_a_server_that_accepts_the_connection_and_never_answers_is_a_timeout():
    """A host that takes the TCP connection and says nothing is reported as an
    unanswered association request naming both AE titles, not as the server aborting or
    refusing medview."""
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    held = []
    threading.Thread(target=lambda: held.append(listener.accept()), daemon=True).start()
    try:
        client = connect(f"dicom://SILENT@127.0.0.1:{port}",
                         PacsSettings(ae_title="MEDVIEW", timeout_s=1))
        with pytest.raises(PacsError) as err:
            client.echo()
        text = str(err.value)
        assert "no answer to the association request within 1 s" in text
        assert "'SILENT'" in text and "'MEDVIEW'" in text and "aborted" not in text
    finally:
        for conn, _addr in held:
            conn.close()
        listener.close()
