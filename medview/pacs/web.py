"""DICOMweb on dicomweb-client: QIDO-RS (echo, find), WADO-RS (retrieve), STOW-RS (store).

Retrieve asks for one instance per request over one kept-alive HTTP session, so a
transfer can be resumed instance by instance and at most one instance is in memory.
"""

from __future__ import annotations

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

MAX_MATCHES = 2000
STORE_BATCH = 16


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
        from dicomweb_client.api import DICOMwebClient

        self.server = server
        self.settings = settings
        self._client = DICOMwebClient(url=server.url, timeout=settings.timeout_s)
        # dicomweb-client retries failed requests 5 times with exponential back-off (30 s
        # for a refused connection); medview answers within the timeout and the user
        # retries (a retrieve resumes)
        self._client.set_http_retry_params(retry=False)

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
        except requests.exceptions.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else None
            code = "?" if status is None else status
            hint = {401: " (the server wants a login)", 403: " (access denied)",
                    404: " (no DICOMweb service at this URL: check the path, e.g. "
                         "/dicom-web)"}.get(status or 0, "")
            raise PacsError(f"{self.server.url}: HTTP {code}{hint}") from None

    def echo(self) -> EchoResult:
        t0 = time.perf_counter()
        self._call(self._client.search_for_studies, limit=1)
        return EchoResult(self.server.url, (time.perf_counter() - t0) * 1000, "QIDO-RS")

    def find_studies(self, query: Query) -> list[StudyRecord]:
        items = self._call(self._client.search_for_studies, search_filters=query.filters(),
                           fields=["StudyDescription", "ModalitiesInStudy",
                                   "NumberOfStudyRelatedSeries",
                                   "NumberOfStudyRelatedInstances"],
                           limit=MAX_MATCHES) or []
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
        items = self._call(self._client.search_for_series, study_instance_uid=study_uid,
                           fields=["SeriesDescription", "SeriesNumber",
                                   "NumberOfSeriesRelatedInstances"]) or []
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
        kwargs = {"study_instance_uid": cache.check_uid(study_uid, "study UID")}
        if series_uid:
            kwargs["series_instance_uid"] = cache.check_uid(series_uid, "series UID")
        out = []
        offset = 0
        while True:  # QIDO servers page their answers
            items = self._call(self._client.search_for_instances, offset=offset,
                               limit=1000, **kwargs) or []
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
            try:
                ds = self._call(self._client.retrieve_instance, study_uid, w.series_uid,
                                w.sop_uid)
            except PacsError as exc:
                if result.received == 0 and k == 0:
                    raise
                result.message = str(exc)
                break
            if str(getattr(ds, "SOPInstanceUID", "")) != w.sop_uid:
                result.failed += 1
                continue
            final = cache.instance_path(dest, study_uid, w.series_uid, w.sop_uid)
            os.makedirs(os.path.dirname(final), exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".medview-", dir=os.path.dirname(final))
            os.close(fd)
            try:
                ds.save_as(tmp, enforce_file_format=True)
                cache.commit_file(tmp, final)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
            result.received += 1
            yield Progress(result.received, len(missing),
                           f"{result.received} of {len(missing)} instance(s)")
        yield Progress(result.received, len(missing), result.summary())
        return result

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
