"""DICOMweb: QIDO-RS (echo, find), WADO-RS (retrieve), STOW-RS (store).

The server is untrusted, like a file. QIDO and WADO requests go through medview's own
transport on a ``requests`` session (dicomweb-client stores results, STOW-RS):

- never leave the configured origin: a redirect to another scheme, host or port is
  refused before it is followed (queries carry patient IDs and names);
- every request has an idle limit (the settings' timeout, per read) *and* a deadline for
  the whole answer (``PacsSettings.deadline_s``), so a server trickling one byte every
  few seconds is cut off;
- answers are read in chunks and bounded: a QIDO answer to :data:`MAX_QIDO_BYTES` and
  :data:`MAX_MATCHES` (too deep nesting stops the JSON parser); a WADO-RS instance is
  streamed to a temporary file, never held in memory, and refused past ``MAX_INSTANCE_BYTES`` (the
  DIMSE limit), then checked like a DIMSE one: the instance, study and series asked for.

Retrieve asks for one instance per request over one kept-alive HTTP session, so a
transfer can be resumed instance by instance.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
import warnings
from collections.abc import Generator, Iterable

from pydicom import dcmread

from medview.core.errors import CancelledError
from medview.core.progress import CancelToken, Progress
from medview.pacs import cache
from medview.pacs.records import (
    MAX_INSTANCE_BYTES,
    MAX_MATCHES,
    EchoResult,
    InstanceRecord,
    Query,
    RetrieveResult,
    SeriesRecord,
    StoreResult,
    StudyRecord,
    count,
    text,
)
from medview.pacs.servers import PacsError, PacsSettings, Server

STORE_BATCH = 16
#: a QIDO answer larger than this is refused (2000 studies of JSON are ~2 MB)
MAX_QIDO_BYTES = 64 * 1024**2
CHUNK = 256 * 1024


def _value(item: dict, keyword: str):
    """A value of a DICOM JSON (PS3.18 F.2) attribute by keyword, or None."""
    from pydicom.datadict import tag_for_keyword

    tag = tag_for_keyword(keyword)
    attr = item.get(f"{tag:08X}") if tag is not None else None
    if not isinstance(attr, dict):
        return None
    values = attr.get("Value")
    if not isinstance(values, list) or not values:
        return None
    if attr.get("vr") == "PN":
        v = values[0]
        return v.get("Alphabetic", "") if isinstance(v, dict) else ""
    return values if len(values) > 1 else values[0]


class WebClient:
    """One DICOMweb service."""

    def __init__(self, server: Server, settings: PacsSettings) -> None:
        import requests
        from dicomweb_client.api import DICOMwebClient

        self.server = server
        self.settings = settings
        self._session = requests.Session()
        self._session.hooks["response"].append(self._same_origin)
        self._client = DICOMwebClient(url=server.url, timeout=settings.timeout_s,
                                      session=self._session)
        # dicomweb-client retries failed requests 5 times with exponential back-off (30 s
        # for a refused connection); medview answers within the timeout and the user
        # retries (a retrieve resumes)
        self._client.set_http_retry_params(retry=False)

    # -- transport ------------------------------------------------------------------
    def _origin(self, url: str) -> tuple[str, str, int | None]:
        from urllib.parse import urlsplit

        u = urlsplit(url)
        port = u.port or {"http": 80, "https": 443}.get(u.scheme)
        return u.scheme.lower(), (u.hostname or "").lower(), port

    def _same_origin(self, response, *_args, **_kwargs):
        """A response hook: a redirect elsewhere is refused before it is followed."""
        if response.is_redirect:
            from urllib.parse import urljoin

            target = urljoin(response.url, response.headers.get("location", ""))
            if self._origin(target) != self._origin(self.server.url):
                response.close()
                raise PacsError(f"{self.server.url}: the server redirected to another "
                                "address; not followed (queries carry patient data)")
        return response

    @property
    def deadline_s(self) -> float:
        return self.settings.deadline_s

    def _get(self, path: str, params: list | None, accept: str, sink, max_bytes: int,
             what: str, cancel: CancelToken | None = None) -> str:
        """GET ``path`` (below the service URL), streaming the body into ``sink`` (a
        callable taking chunks) within the deadline and ``max_bytes``; returns the
        Content-Type."""
        url = self.server.url.rstrip("/") + path
        deadline = time.monotonic() + self.deadline_s

        def request():
            return self._session.get(url, params=params, headers={"Accept": accept},
                                     stream=True, timeout=self.settings.timeout_s,
                                     allow_redirects=True)

        late = PacsError(f"{self.server.url}: {what} not complete within "
                         f"{self.deadline_s:g} s (deadline); refused")
        with self._call(request) as r:
            self._call(r.raise_for_status)
            # a reader blocked on a trickling server wakes when the deadline shuts the
            # socket down (the per-read timeout alone never fires on one byte at a time)
            watchdog = _deadline_watchdog(r, deadline, cancel)
            try:
                total = 0
                chunks = r.iter_content(CHUNK)
                while True:
                    try:
                        chunk = self._call(next, chunks, None)
                    except PacsError:
                        if cancel is not None and cancel.cancelled:
                            raise CancelledError("cancelled while the server sent") \
                                from None
                        if time.monotonic() >= deadline:
                            raise late from None
                        raise
                    if cancel is not None and cancel.cancelled:
                        raise CancelledError("cancelled while the server sent")
                    if chunk is None:
                        break
                    total += len(chunk)
                    if total > max_bytes:
                        raise PacsError(f"{self.server.url}: {what} larger than "
                                        f"{max_bytes // 1024**2} MiB; refused")
                    if time.monotonic() > deadline:
                        raise late
                    sink(chunk)
                if cancel is not None and cancel.cancelled:
                    raise CancelledError("cancelled while the server sent")
                if time.monotonic() >= deadline:
                    raise late  # the socket was shut: the answer may look complete
            finally:
                if watchdog is not None:
                    watchdog.cancel()
            return r.headers.get("content-type", "")

    def _qido(self, path: str, params: list) -> list[dict]:
        """A QIDO-RS search: at most MAX_MATCHES results, each a DICOM JSON object."""
        import json

        parts: list[bytes] = []
        self._get(path, params, "application/dicom+json", parts.append, MAX_QIDO_BYTES,
                  "the search answer")
        body = b"".join(parts)
        if not body.strip():
            return []
        try:
            doc = json.loads(body)
        except RecursionError:  # the C parser stops deep nesting itself, in C
            raise PacsError(f"{self.server.url}: the search answer is nested too deeply; "
                            "refused") from None
        except ValueError:
            raise PacsError(f"{self.server.url}: the search answer is not valid JSON") \
                from None
        if not isinstance(doc, list):
            raise PacsError(f"{self.server.url}: the search answer is not a list")
        if len(doc) > MAX_MATCHES:
            raise PacsError(f"{self.server.url}: more than {MAX_MATCHES} matches: narrow "
                            "the query")
        return [it for it in doc if isinstance(it, dict)]

    def _call(self, fn, *args, **kwargs):
        import requests

        try:
            return fn(*args, **kwargs)
        except requests.exceptions.SSLError as exc:
            raise PacsError(f"{self.server.url}: TLS handshake failed ({_tls_reason(exc)})") \
                from None
        except requests.exceptions.ConnectTimeout:
            raise PacsError(f"{self.server.url}: no answer within "
                            f"{self.settings.timeout_s:g} s (timeout)") from None
        except requests.exceptions.ReadTimeout:
            raise PacsError(f"{self.server.url}: the server stopped answering "
                            f"for {self.settings.timeout_s:g} s (timeout)") from None
        except requests.exceptions.ConnectionError as exc:
            why = "connection refused" if "refused" in str(exc).lower() else _short(exc)
            raise PacsError(f"{self.server.url}: {why}") from None
        except requests.exceptions.TooManyRedirects:
            raise PacsError(f"{self.server.url}: too many redirects") from None
        except (requests.exceptions.ChunkedEncodingError,
                requests.exceptions.ContentDecodingError) as exc:
            raise PacsError(f"{self.server.url}: the answer was cut off or malformed "
                            f"({type(exc).__name__})") from None
        except RecursionError:
            raise PacsError(f"{self.server.url}: the answer is nested too deeply") from None
        except requests.exceptions.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else None
            code = "?" if status is None else status
            hint = {401: " (the server wants a login)", 403: " (access denied)",
                    404: " (no DICOMweb service at this URL: check the path, e.g. "
                         "/dicom-web)"}.get(status or 0, "")
            raise PacsError(f"{self.server.url}: HTTP {code}{hint}") from None

    def echo(self) -> EchoResult:
        t0 = time.perf_counter()
        self._qido("/studies", [("limit", "1")])
        return EchoResult(self.server.url, (time.perf_counter() - t0) * 1000, "QIDO-RS")

    def find_studies(self, query: Query) -> list[StudyRecord]:
        params = [*query.filters().items(),
                  *(("includefield", f) for f in ("StudyDescription", "ModalitiesInStudy",
                                                  "NumberOfStudyRelatedSeries",
                                                  "NumberOfStudyRelatedInstances")),
                  ("limit", str(MAX_MATCHES + 1))]
        items = self._qido("/studies", params)
        out = []
        for it in items:
            uid = text(_value(it, "StudyInstanceUID"))
            if not cache.is_uid(uid):
                continue
            mods = _value(it, "ModalitiesInStudy")
            mods = [mods] if isinstance(mods, str) else list(mods or [])
            out.append(StudyRecord(
                uid, text(_value(it, "PatientID")), text(_value(it, "PatientName")),
                text(_value(it, "StudyDate")), text(_value(it, "StudyDescription")),
                text(_value(it, "AccessionNumber")), tuple(text(m) for m in mods if m),
                count(_value(it, "NumberOfStudyRelatedSeries")),
                count(_value(it, "NumberOfStudyRelatedInstances"))))
        return sorted(out, key=lambda s: (s.study_date, s.study_uid), reverse=True)

    def find_series(self, study_uid: str) -> list[SeriesRecord]:
        study_uid = cache.check_uid(study_uid, "study UID")
        items = self._qido(f"/studies/{study_uid}/series",
                           [("includefield", f) for f in ("SeriesDescription", "SeriesNumber",
                                                          "NumberOfSeriesRelatedInstances")])
        out = []
        for it in items:
            uid = text(_value(it, "SeriesInstanceUID"))
            if cache.is_uid(uid):
                out.append(SeriesRecord(study_uid, uid, text(_value(it, "Modality")),
                                        text(_value(it, "SeriesDescription")),
                                        count(_value(it, "SeriesNumber")),
                                        count(_value(it, "NumberOfSeriesRelatedInstances"))))
        return sorted(out, key=lambda s: (s.number is None, s.number or 0, s.series_uid))

    def find_instances(self, study_uid: str, series_uid: str | None = None
                       ) -> list[InstanceRecord]:
        path = f"/studies/{cache.check_uid(study_uid, 'study UID')}"
        if series_uid:
            path += f"/series/{cache.check_uid(series_uid, 'series UID')}"
        path += "/instances"
        out = []
        offset = 0
        while True:  # QIDO servers page their answers
            items = self._qido(path, [("offset", str(offset)), ("limit", "1000")])
            for it in items:
                series = text(_value(it, "SeriesInstanceUID"))
                sop = text(_value(it, "SOPInstanceUID"))
                if cache.is_uid(series) and cache.is_uid(sop):
                    out.append(InstanceRecord(series, sop, text(_value(it, "SOPClassUID"))))
            offset += len(items)
            if len(items) < 1000 or offset >= 100_000:
                return out

    def iter_retrieve(self, study_uid: str, dest: str, series_uid: str | None = None,
                      cancel: CancelToken | None = None, method: str = "auto"
                      ) -> Generator[Progress, None, RetrieveResult]:
        study_uid = cache.check_uid(study_uid, "study UID")
        yield Progress(0, 0, "listing instances")
        wanted = self.find_instances(study_uid, series_uid)
        if not wanted:
            raise PacsError(f"{self.server.url}: no instances found")
        result = RetrieveResult(study_uid, os.path.join(dest, study_uid), expected=len(wanted),
                                method="WADO-RS")
        present: set[str] = set()
        for w in wanted:
            folder = cache.series_folder(dest, study_uid, w.series_uid)
            if w.series_uid not in result.series_folders:
                result.series_folders[w.series_uid] = folder
                present |= cache.present_instances(folder)
        missing = [w for w in wanted if w.sop_uid not in present]
        result.already_present = len(wanted) - len(missing)
        cache.touch_study(dest, study_uid)
        for k, w in enumerate(missing):
            if cancel is not None and cancel.cancelled:
                raise CancelledError(f"retrieve cancelled: {result.summary()}")
            final = cache.instance_path(dest, study_uid, w.series_uid, w.sop_uid)
            os.makedirs(os.path.dirname(final), exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".medview-", dir=os.path.dirname(final))
            os.close(fd)
            try:
                try:
                    self._fetch_instance(study_uid, w.series_uid, w.sop_uid, tmp, cancel)
                except PacsError as exc:
                    if result.received == 0 and k == 0:
                        raise
                    result.message = str(exc)
                    break
                why = _mismatch(tmp, study_uid, w.series_uid, w.sop_uid)
                if why:
                    result.failed += 1
                    result.message = why
                    continue
                cache.commit_file(tmp, final)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
            result.received += 1
            yield Progress(result.received, len(missing),
                           f"{result.received} of {len(missing)} instance(s)")
        yield Progress(result.received, len(missing), result.summary())
        return result

    def _fetch_instance(self, study: str, series: str, sop: str, tmp: str,
                        cancel: CancelToken | None = None) -> None:
        """One instance by WADO-RS into the file ``tmp``: the multipart answer is streamed
        through :class:`_MultipartToFile` (one part kept: the DICOM file), never held in
        memory, refused past MAX_INSTANCE_BYTES."""
        path = f"/studies/{study}/series/{series}/instances/{sop}"
        with open(tmp, "wb") as f:
            parser = _MultipartToFile(f)
            ctype = self._get(path, None,
                              'multipart/related; type="application/dicom"',
                              parser.feed, MAX_INSTANCE_BYTES + 64 * 1024, "the instance",
                              cancel)
            parser.finish(ctype, self.server.url)
            f.flush()
            os.fsync(f.fileno())

    def iter_store(self, paths: Iterable[str], cancel: CancelToken | None = None
                   ) -> Generator[Progress, None, StoreResult]:
        paths = list(paths)
        out = StoreResult()
        for start in range(0, len(paths), STORE_BATCH):
            if cancel is not None:
                cancel.raise_if_cancelled()
            batch = paths[start:start + STORE_BATCH]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                datasets = [dcmread(p) for p in batch]
            answer = self._call(self._client.store_instances, datasets)
            failed = len(answer.get("FailedSOPSequence", []) or []) if answer else 0
            out.failed += failed
            out.sent += len(batch) - failed
            if failed:
                out.messages.append(f"{failed} instance(s) refused by the server")
            yield Progress(min(start + STORE_BATCH, len(paths)), len(paths),
                           f"sent {out.sent} of {len(paths)}")
        return out


class _Watch:
    def __init__(self) -> None:
        import threading

        self.stopped = threading.Event()

    def cancel(self) -> None:
        self.stopped.set()


def _deadline_watchdog(response, deadline: float, cancel: CancelToken | None = None):
    """A thread that shuts the response's socket down at ``deadline``, or as soon as the
    user cancels (a reader blocked on a trickling server wakes at once). None when the
    socket cannot be reached: then only the per-read timeout and the checks between
    chunks apply."""
    import socket
    import threading

    try:
        sock = response.raw._fp.fp.raw._sock  # http.client's socket under urllib3
    except AttributeError:
        return None
    watch = _Watch()

    def run() -> None:
        while not watch.stopped.wait(0.1):
            if time.monotonic() >= deadline or (cancel is not None and cancel.cancelled):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                return

    threading.Thread(target=run, daemon=True, name="medview-http-deadline").start()
    return watch


class _MultipartToFile:
    """A multipart/related body streamed into a file: the first part's content is
    written, its headers and the boundaries are not. Only the bytes that may still be a
    boundary are held back (a few dozen)."""

    def __init__(self, out) -> None:
        self.out = out
        self.buf = b""
        self.state = "preamble"  # preamble -> headers -> body -> done
        self.delimiter = b""
        self.single = False  # the server answered with one part, not multipart

    def feed(self, chunk: bytes) -> None:
        self.buf += chunk
        while True:
            if self.state == "preamble":
                if (not self.buf.startswith((b"--", b"\r\n--")) and len(self.buf) >= 132
                        and self.buf[128:132] == b"DICM"):
                    self.single, self.state = True, "body"  # one part, not multipart
                    continue
                end = self.buf.find(b"\r\n")
                if end < 0:
                    if len(self.buf) > 4096:
                        raise PacsError("the instance answer has no multipart boundary")
                    return
                line = self.buf[:end]
                self.buf = self.buf[end + 2:]
                if line.startswith(b"--") and len(line) > 2:
                    self.delimiter = b"\r\n" + line
                    self.state = "headers"
            elif self.state == "headers":
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(self.buf) > 16384:
                        raise PacsError("the instance answer's part headers are too long")
                    return
                self.buf = self.buf[end + 4:]
                self.state = "body"
            elif self.state == "body":
                if self.single:
                    self.out.write(self.buf)
                    self.buf = b""
                    return
                at = self.buf.find(self.delimiter)
                if at >= 0:
                    self.out.write(self.buf[:at])
                    self.buf = b""
                    self.state = "done"
                    return
                keep = len(self.delimiter)
                if len(self.buf) > keep:
                    self.out.write(self.buf[:-keep])
                    self.buf = self.buf[-keep:]
                return
            else:
                self.buf = b""  # epilogue and further parts are not kept
                return

    def finish(self, content_type: str, url: str) -> None:
        if self.state != "done" and not (self.single and self.state == "body"):
            raise PacsError(f"{url}: the instance answer was cut off")


def _mismatch(path: str, study: str, series: str, sop: str) -> str:
    """Why a received file is not the instance asked for ("" when it is): its SOP
    Instance, Study and Series UIDs must be those requested, as on the DIMSE path."""
    try:
        got = cache.instance_identity(path)
    except Exception as exc:
        return f"an instance that is not a DICOM file was refused ({type(exc).__name__})"
    if got != (sop, study, series):
        return "an instance that does not match what was requested was refused"
    return ""


def _short(exc: Exception) -> str:
    msg = str(exc)
    return msg if len(msg) < 160 else msg[:160] + "..."


def _tls_reason(exc: Exception) -> str:
    import re

    m = re.search(r"\[SSL: ([A-Z_]+)\]", str(exc))
    code = m.group(1) if m else ""
    if code == "WRONG_VERSION_NUMBER":
        return "the server does not speak TLS on this port: try http://"
    if code == "CERTIFICATE_VERIFY_FAILED":
        return "the server's certificate is not trusted by this computer"
    return code or _short(exc)
