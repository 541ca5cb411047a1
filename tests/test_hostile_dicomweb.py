"""A hostile DICOMweb server (http.server on localhost) plays each attack on the client:
oversized instances, instances of another study, redirects elsewhere, absurdly nested or
huge search answers, and a server that trickles one byte at a time."""

from __future__ import annotations

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from pydicom import dcmread

from medview.core.progress import drain
from medview.pacs import PacsError, PacsSettings, connect, web
from tests.orthanc import write_study

BOUNDARY = "medviewtestboundary"


class Hostile:
    """A localhost HTTP server whose handler is ``play(handler)``; counts requests."""

    def __init__(self, play) -> None:
        outer = self
        self.requests: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                outer.requests.append(self.path)
                play(self)

            def log_message(self, *_a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/dicom-web"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _client(url: str, timeout: float = 5):
    return connect(url, PacsSettings(timeout_s=timeout))


def _send(h, body: bytes, ctype: str = "application/dicom+json", status: int = 200,
          headers: dict | None = None) -> None:
    h.send_response(status)
    h.send_header("Content-Type", ctype)
    h.send_header("Content-Length", str(len(body)))
    for k, v in (headers or {}).items():
        h.send_header(k, v)
    h.end_headers()
    h.wfile.write(body)


def trickle(h, ctype: str, byte: bytes, count: int, pause: float) -> None:
    """Answer with ``count`` single bytes, ``pause`` seconds apart (a Content-Length that
    promises them all, so the client keeps reading)."""
    h.send_response(200)
    h.send_header("Content-Type", ctype)
    h.send_header("Content-Length", str(count))
    h.end_headers()
    try:
        for _ in range(count):
            h.wfile.write(byte)
            h.wfile.flush()
            time.sleep(pause)
    except OSError:
        pass


def _instances_json(study: str, series: str, sops: list[str]) -> bytes:
    return json.dumps([{"0020000E": {"vr": "UI", "Value": [series]},
                        "00080018": {"vr": "UI", "Value": [sop]},
                        "00080016": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.1"]}}
                       for sop in sops]).encode()


def _multipart(data: bytes) -> bytes:
    return (f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data
            + f"\r\n--{BOUNDARY}--\r\n".encode())


@pytest.fixture
def study(tmp_path):
    study_uid, paths = write_study(str(tmp_path / "src"), modality="CR", n=1, size=64)
    ds = dcmread(paths[0])
    return study_uid, str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID), paths[0]


def _wado_server(study, instance_bytes: bytes):
    study_uid, series, sop, _path = study

    def play(h):
        if h.path.split("?")[0].endswith("/instances"):  # QIDO: the instance list
            _send(h, _instances_json(study_uid, series, [sop]))
        else:
            _send(h, _multipart(instance_bytes),
                  f'multipart/related; type="application/dicom"; boundary={BOUNDARY}')
    return Hostile(play)


def test_a_well_behaved_answer_is_retrieved(study, tmp_path):
    server = _wado_server(study, Path(study[3]).read_bytes())
    try:
        r = drain(_client(server.url).iter_retrieve(study[0], str(tmp_path / "cache")))
        assert r.complete and r.received == 1
    finally:
        server.close()


def test_an_oversized_instance_is_refused_while_it_streams(study, tmp_path, monkeypatch):
    monkeypatch.setattr(web, "MAX_INSTANCE_BYTES", 50_000)
    big = Path(study[3]).read_bytes() + b"\0" * 200_000
    server = _wado_server(study, big)
    try:
        with pytest.raises(PacsError, match="larger than"):
            drain(_client(server.url).iter_retrieve(study[0], str(tmp_path / "cache")))
        assert not [f for _d, _s, fs in os.walk(tmp_path / "cache") for f in fs
                    if f.endswith(".dcm")]
    finally:
        server.close()


def test_an_instance_of_another_study_is_refused(study, tmp_path):
    _other_uid, other = write_study(str(tmp_path / "other"), modality="CR", n=1, size=64,
                                    patient_id="OTHER", patient_name="Other^Patient")
    ds = dcmread(other[0])
    ds.SOPInstanceUID = study[2]  # claims the instance asked for, of another study
    ds.save_as(other[0])
    server = _wado_server(study, Path(other[0]).read_bytes())
    try:
        r = drain(_client(server.url).iter_retrieve(study[0], str(tmp_path / "cache")))
        assert r.received == 0 and r.failed == 1 and "does not match" in r.message
    finally:
        server.close()


def test_redirects_to_another_origin_are_never_followed():
    elsewhere = Hostile(lambda h: _send(h, b"[]"))
    redirect = Hostile(lambda h: _send(h, b"", status=302, headers={
        "Location": elsewhere.url.replace("127.0.0.1", "localhost") + h.path[len(
            "/dicom-web"):]}))
    try:
        from medview.pacs.records import Query

        with pytest.raises(PacsError, match="redirected to another address"):
            _client(redirect.url).find_studies(Query(patient_id="MRN-SECRET"))
        assert elsewhere.requests == []  # the patient ID never left for the other host
    finally:
        redirect.close()
        elsewhere.close()


def test_a_deeply_nested_search_answer_is_refused():
    server = Hostile(lambda h: _send(h, b"[" * 100_000 + b"]" * 100_000))
    try:
        with pytest.raises(PacsError, match="nested too deeply"):
            _client(server.url).echo()
    finally:
        server.close()


def test_a_search_answer_past_the_match_cap_is_refused():
    answer = json.dumps([{"0020000D": {"vr": "UI", "Value": [f"1.2.{k}"]}}
                         for k in range(2500)]).encode()
    server = Hostile(lambda h: _send(h, answer))
    try:
        from medview.pacs.records import Query

        with pytest.raises(PacsError, match="narrow the query"):
            _client(server.url).find_studies(Query(patient_id="X"))
    finally:
        server.close()


def test_a_trickling_server_is_cut_off_at_the_deadline(monkeypatch):
    """One byte every 0.2 s never trips a 1 s per-read timeout; the whole-answer deadline
    ends it."""
    from medview.pacs import servers

    monkeypatch.setattr(servers, "MIN_DEADLINE_S", 1.5)
    monkeypatch.setattr(servers, "DEADLINE_FACTOR", 1.5)

    server = Hostile(lambda h: trickle(h, "application/dicom+json", b" ", 400, 0.2))
    try:
        t = time.monotonic()
        with pytest.raises(PacsError, match="deadline"):
            _client(server.url, timeout=1).echo()
        assert time.monotonic() - t < 10
    finally:
        server.close()
