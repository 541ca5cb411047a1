"""A hostile DIMSE server (pynetdicom on localhost): answers trickled under the per-message
timeout are cut off by the whole-operation deadline; an instance that grows past the cap
while it arrives ends the association."""

from __future__ import annotations

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
