"""DIMSE on pynetdicom: C-ECHO, C-FIND (study, series, instance), C-GET with a C-MOVE
fallback, C-STORE.

Received instances never pass through memory whole: pynetdicom's chunked receive writes
each dataset to a temporary file as its fragments arrive, and the handler moves the
finished file into the cache (see :mod:`medview.pacs.cache`). Every UID from the server
is checked before it names a file, and every file is checked to be the instance it
claims to be before it is kept.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import socket
import threading
import time
import warnings
from collections.abc import Generator, Iterable

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

from medview.core.errors import CancelledError
from medview.core.limits import fmt_bytes
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

log = logging.getLogger(__name__)

#: Most results one C-FIND may return before medview stops reading (narrow the query).
#: Largest instance kept from the network (bytes); a bigger one is refused.
#: Transfer syntaxes accepted for storage: uncompressed, then what medview decodes (or
#: keeps as received: the files are stored as they arrive).
UNCOMPRESSED_SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
COMPRESSED_SYNTAXES = [DeflatedExplicitVRLittleEndian, JPEGBaseline8Bit, JPEGExtended12Bit,
                       JPEGLosslessSV1, JPEGLSLossless, JPEG2000Lossless, JPEG2000,
                       RLELossless]
STORAGE_SYNTAXES = UNCOMPRESSED_SYNTAXES + COMPRESSED_SYNTAXES

_REJECT_REASONS = {
    # (source, diagnostic) of A-ASSOCIATE-RJ, PS3.8 9.3.4
    (1, 1): "the server gave no reason",
    (1, 2): "the server does not support this application context",
    (1, 3): "the server does not know medview's AE title {calling!r}: add it to the PACS's "
            "list of known nodes, or set medview's AE title in Settings",
    (1, 7): "the server's AE title is not {called!r}: check the AE title in the URL",
    (2, 1): "no reason given",
    (2, 2): "protocol version not supported",
    (3, 1): "the server is busy (temporary congestion); try again",
    (3, 2): "the server has reached its limit of connections; try again",
}

_pynetdicom_lock = threading.Lock()


def _ae(settings: PacsSettings):
    from pynetdicom import AE, _config

    with _pynetdicom_lock:
        # Received datasets go to a temporary file fragment by fragment (memory stays flat
        # however large an instance is) and are never decoded on the way in.
        _config.STORE_RECV_CHUNKED_DATASET = True
        _config.LOG_HANDLER_LEVEL = "none"
        # pynetdicom logs every refused or rejected association as an error; medview
        # turns those into one clear message of its own
        logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    ae = AE(ae_title=settings.ae_title)
    ae.acse_timeout = settings.timeout_s
    ae.dimse_timeout = settings.timeout_s
    ae.network_timeout = settings.timeout_s
    ae.connection_timeout = settings.timeout_s
    ae.maximum_pdu_size = 1 << 20  # 1 MiB P-DATA PDUs: few round trips, bounded buffers
    return ae


def _diagnose_connect(server: Server, timeout: float) -> str:
    """Why a TCP connection to the server fails, in words ('' when it succeeds)."""
    try:
        with socket.create_connection((server.host, server.port), timeout=timeout):
            return ""
    except ConnectionRefusedError:
        return f"connection refused: nothing accepts DICOM at {server.host}:{server.port}"
    except TimeoutError:
        return f"no answer from {server.host}:{server.port} within {timeout:g} s (timeout)"
    except socket.gaierror:
        return f"unknown host {server.host!r}"
    except OSError as exc:
        return f"cannot reach {server.host}:{server.port}: {exc.strerror or exc}"


class DimseClient:
    """One DICOM server reached by DIMSE, as medview's AE."""

    def __init__(self, server: Server, settings: PacsSettings) -> None:
        self.server = server
        self.settings = settings

    # -- association ----------------------------------------------------------------
    def _associate(self, ae, ext_neg=None, evt_handlers=None):
        started = time.monotonic()
        assoc = ae.associate(self.server.host, self.server.port, ae_title=self.server.ae_title,
                             ext_neg=ext_neg, evt_handlers=evt_handlers)
        if assoc.is_established:
            return assoc
        raise PacsError(self._why_not(assoc, time.monotonic() - started))

    def _why_not(self, assoc, waited: float = 0.0) -> str:
        where = f"{self.server.url}"
        if assoc.is_rejected:
            rsp = getattr(assoc.acceptor, "primitive", None)
            key = (getattr(rsp, "result_source", 0), getattr(rsp, "diagnostic", 0))
            reason = _REJECT_REASONS.get(key, getattr(rsp, "reason_str", "no reason given"))
            reason = reason.format(calling=self.settings.ae_title, called=self.server.ae_title)
            return f"{where}: association rejected: {reason}"
        problem = _diagnose_connect(self.server, min(self.settings.timeout_s, 5.0))
        if problem:
            return f"{where}: {problem}"
        titles = (f"the called AE title {self.server.ae_title!r} may not be the server's, "
                  f"or it may refuse medview's AE title {self.settings.ae_title!r}")
        if waited >= 0.95 * self.settings.timeout_s:
            # pynetdicom ends an unanswered request with an abort of its own: a timeout
            return (f"{where}: no answer to the association request within "
                    f"{self.settings.timeout_s:g} s (the server may be busy, or {titles})")
        if assoc.is_aborted:
            return (f"{where}: the server aborted the association ({titles}, or none of "
                    "the requested services)")
        return f"{where}: no association within {self.settings.timeout_s:g} s"

    def _lost(self, assoc, what: str) -> str:
        if assoc.is_aborted:
            return (f"{self.server.url}: the server aborted the {what}; it may not accept "
                    f"it from medview's AE title {self.settings.ae_title!r} (add medview to "
                    "the PACS's known nodes)")
        return (f"{self.server.url}: no answer to the {what} within "
                f"{self.settings.timeout_s:g} s; the server may not accept it from medview's "
                f"AE title {self.settings.ae_title!r} (add medview to the PACS's known "
                "nodes), or it is overloaded")

    # -- echo -----------------------------------------------------------------------
    def echo(self) -> EchoResult:
        from pynetdicom.sop_class import Verification

        ae = _ae(self.settings)
        ae.add_requested_context(Verification)
        t0 = time.perf_counter()
        assoc = self._associate(ae)
        try:
            status = assoc.send_c_echo()
        finally:
            assoc.release()
        ms = (time.perf_counter() - t0) * 1000
        code = getattr(status, "Status", None)
        if code != 0x0000:
            raise PacsError(f"{self.server.url}: C-ECHO answered status "
                            f"{'none (timeout)' if code is None else hex(code)}")
        return EchoResult(self.server.url, ms, "C-ECHO")

    # -- find -----------------------------------------------------------------------
    def _find(self, identifier: Dataset) -> list[Dataset]:
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

        ae = _ae(self.settings)
        ae.add_requested_context(FIND)
        assoc = self._associate(ae)
        out: list[Dataset] = []
        watchdog = _Watchdog(assoc, self.settings.deadline_s)  # the whole answer
        try:
            for status, ds in assoc.send_c_find(identifier, FIND):
                code = getattr(status, "Status", None)
                if code is None and watchdog.fired:
                    raise PacsError(f"{self.server.url}: the query's answer was not "
                                    f"complete within {self.settings.deadline_s:g} s "
                                    "(deadline); aborted")
                if code is None:
                    raise PacsError(self._lost(assoc, "query"))
                if code in (0xFF00, 0xFF01) and ds is not None:
                    out.append(ds)
                    if len(out) >= MAX_MATCHES:
                        assoc.abort()
                        raise PacsError(f"more than {MAX_MATCHES} matches: narrow the query")
                elif code not in (0x0000, 0xFF00, 0xFF01):
                    raise PacsError(f"{self.server.url}: C-FIND failed with status "
                                    f"{hex(code)}")
        finally:
            watchdog.stop()
            if assoc.is_established:
                assoc.release()
        if watchdog.fired:
            raise PacsError(f"{self.server.url}: the query's answer was not complete "
                            f"within {self.settings.deadline_s:g} s (deadline); aborted")
        return out

    def find_studies(self, query: Query) -> list[StudyRecord]:
        q = Dataset()
        q.QueryRetrieveLevel = "STUDY"
        for key in ("StudyInstanceUID", "StudyDate", "StudyDescription", "PatientName",
                    "PatientID", "AccessionNumber", "ModalitiesInStudy",
                    "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances"):
            setattr(q, key, "")
        for key, value in query.filters().items():
            setattr(q, key, value)
        out = []
        for ds in self._find(q):
            uid = text(ds.get("StudyInstanceUID", ""))
            if not cache.is_uid(uid):
                continue
            mods = ds.get("ModalitiesInStudy", "")
            mods = [mods] if isinstance(mods, str) else list(mods or [])
            out.append(StudyRecord(
                uid, text(ds.get("PatientID")), text(ds.get("PatientName")),
                text(ds.get("StudyDate")), text(ds.get("StudyDescription")),
                text(ds.get("AccessionNumber")), tuple(text(m) for m in mods if m),
                count(ds.get("NumberOfStudyRelatedSeries")),
                count(ds.get("NumberOfStudyRelatedInstances"))))
        return sorted(out, key=lambda s: (s.study_date, s.study_uid), reverse=True)

    def find_series(self, study_uid: str) -> list[SeriesRecord]:
        q = Dataset()
        q.QueryRetrieveLevel = "SERIES"
        q.StudyInstanceUID = cache.check_uid(study_uid, "study UID")
        for key in ("SeriesInstanceUID", "Modality", "SeriesDescription", "SeriesNumber",
                    "NumberOfSeriesRelatedInstances"):
            setattr(q, key, "")
        out = []
        for ds in self._find(q):
            uid = text(ds.get("SeriesInstanceUID", ""))
            if cache.is_uid(uid):
                out.append(SeriesRecord(study_uid, uid, text(ds.get("Modality")),
                                        text(ds.get("SeriesDescription")),
                                        count(ds.get("SeriesNumber")),
                                        count(ds.get("NumberOfSeriesRelatedInstances"))))
        return sorted(out, key=lambda s: (s.number is None, s.number or 0, s.series_uid))

    def find_instances(self, study_uid: str, series_uid: str | None = None
                       ) -> list[InstanceRecord]:
        q = Dataset()
        q.QueryRetrieveLevel = "IMAGE"
        q.StudyInstanceUID = cache.check_uid(study_uid, "study UID")
        q.SeriesInstanceUID = cache.check_uid(series_uid, "series UID") if series_uid else ""
        q.SOPInstanceUID = ""
        q.SOPClassUID = ""
        out = []
        for ds in self._find(q):
            series = text(ds.get("SeriesInstanceUID", ""))
            sop = text(ds.get("SOPInstanceUID", ""))
            if cache.is_uid(series) and cache.is_uid(sop):
                out.append(InstanceRecord(series, sop, text(ds.get("SOPClassUID", ""))))
        return out

    # -- retrieve -------------------------------------------------------------------
    def _summary(self, study_uid: str, series_uid: str | None
                 ) -> tuple[int | None, list[str] | None]:
        """(number of instances, SOP classes) of a study or series from one or two quick
        C-FINDs; None where the server does not say."""
        q = Dataset()
        q.QueryRetrieveLevel = "STUDY"
        q.StudyInstanceUID = study_uid
        q.SOPClassesInStudy = ""
        q.NumberOfStudyRelatedInstances = ""
        found = self._find(q)
        if not found:
            return 0, []
        raw = found[0].get("SOPClassesInStudy", "")
        raw = [raw] if isinstance(raw, str) else list(raw or [])
        classes = sorted({text(c) for c in raw if cache.is_uid(text(c))}) or None
        n = count(found[0].get("NumberOfStudyRelatedInstances"))
        if series_uid:
            q = Dataset()
            q.QueryRetrieveLevel = "SERIES"
            q.StudyInstanceUID = study_uid
            q.SeriesInstanceUID = series_uid
            q.NumberOfSeriesRelatedInstances = ""
            found = self._find(q)
            n = count(found[0].get("NumberOfSeriesRelatedInstances")) if found else 0
        return n, classes

    def iter_retrieve(self, study_uid: str, dest: str, series_uid: str | None = None,
                      cancel: CancelToken | None = None, method: str = "auto"
                      ) -> Generator[Progress, None, RetrieveResult]:
        """Fetch a study (or one series) into ``dest``; yields progress, returns what was
        done. ``method``: ``auto`` (C-GET, C-MOVE if the server refuses C-GET), ``get``
        or ``move``. Instances already in ``dest`` are not fetched again: a first
        retrieve asks for the whole study or series (the server's count and SOP classes
        from one quick query); a resumed one lists the instances and asks for the
        missing ones only."""
        study_uid = cache.check_uid(study_uid, "study UID")
        if series_uid:
            series_uid = cache.check_uid(series_uid, "series UID")
        yield Progress(0, 0, "asking the server what the study holds")
        present = cache.present_in_study(dest, study_uid, series_uid)
        missing: list[InstanceRecord] | None = None
        expected, classes = (None, None) if present else self._summary(study_uid, series_uid)
        if present or classes is None or expected is None:  # resume, or a terse server
            wanted = self.find_instances(study_uid, series_uid)
            missing = [w for w in wanted if w.sop_uid not in present]
            expected = len(wanted)
            classes = sorted({w.sop_class for w in wanted if cache.is_uid(w.sop_class)})
            if len(missing) == len(wanted):
                missing = None  # nothing here yet: ask for the whole study/series
        result = RetrieveResult(study_uid, os.path.join(dest, study_uid), expected=expected,
                                already_present=0 if missing is None else
                                expected - len(missing))
        if not expected:
            raise PacsError(f"{self.server.url}: no instances found for that "
                            f"{'series' if series_uid else 'study'}")
        cache.touch_study(dest, study_uid)
        if missing is not None and not missing:
            yield Progress(expected, expected, "all instances already present")
            return result
        receiver = _Receiver(dest, study_uid, series_uid, missing, result)
        todo = expected - result.already_present
        tries = ["get", "move"] if method == "auto" else [method]
        last_error: PacsError | None = None
        for how in tries:
            try:
                if how == "get":
                    yield from self._get(missing, classes, series_uid, receiver, result, todo,
                                         cancel)
                else:
                    yield from self._move(missing, series_uid, receiver, result, todo, cancel)
                last_error = None
                break
            except _Refused as exc:
                last_error = PacsError(str(exc))
                log.info("retrieve by %s refused; %s", how, "trying C-MOVE" if how == "get"
                         else "no other method")
                continue
            finally:
                receiver.finish()
                cache.remove_partials([result.folder, *result.series_folders.values()])
        if last_error is not None and result.received == 0:
            raise last_error
        return result

    def _identifier(self, missing: list[InstanceRecord] | None, series_uid: str | None,
                    study_uid: str) -> Dataset:
        q = Dataset()
        q.StudyInstanceUID = study_uid
        if missing is None and series_uid is None:
            q.QueryRetrieveLevel = "STUDY"
        elif missing is None:
            q.QueryRetrieveLevel = "SERIES"
            q.SeriesInstanceUID = series_uid
        else:  # resume: only the missing instances (list of UID matching, PS3.4 C.2.2.2.2)
            q.QueryRetrieveLevel = "IMAGE"
            series = sorted({m.series_uid for m in missing})
            q.SeriesInstanceUID = series if len(series) > 1 else series[0]
            sops = [m.sop_uid for m in missing]
            q.SOPInstanceUID = sops if len(sops) > 1 else sops[0]
        return q

    def _get(self, missing, classes, series_uid, receiver, result, total, cancel):
        from pynetdicom import build_role, evt
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet as GET

        ae = _ae(self.settings)
        ae.add_requested_context(GET)
        if len(classes) > 120:
            raise _Refused("the study holds more than 120 kinds of objects; use C-MOVE")
        # The server picks ONE transfer syntax per presentation context and must convert
        # every object of that SOP class to it; a PACS that cannot transcode (Orthanc from
        # lossy JPEG 2000, say) then fails those sub-operations. So each compressed syntax
        # gets a context of its own beside the uncompressed one (as dcmtk's getscu does),
        # as far as the 128 contexts of an association allow.
        per_class = 1 + len(COMPRESSED_SYNTAXES)
        compressed = COMPRESSED_SYNTAXES if 1 + len(classes) * per_class <= 128 else []
        roles = []
        for sop_class in classes:
            ae.add_requested_context(sop_class, UNCOMPRESSED_SYNTAXES)
            for syntax in compressed:
                ae.add_requested_context(sop_class, [syntax])
            roles.append(build_role(sop_class, scp_role=True))
        receiver.start()
        assoc = self._associate(ae, ext_neg=roles,
                                evt_handlers=[(evt.EVT_C_STORE, receiver.handle),
                                              (evt.EVT_DATA_RECV, receiver.on_data)])
        if not any(cx.abstract_syntax == GET for cx in assoc.accepted_contexts):
            assoc.release()
            raise _Refused(f"{self.server.url} does not offer C-GET")
        result.method = "C-GET"
        ident = self._identifier(missing, series_uid, result.study_uid)
        yield from self._drive(assoc, assoc.send_c_get(ident, GET), receiver, result, total,
                               cancel)

    def _move(self, missing, series_uid, receiver, result, total, cancel):
        from pynetdicom import AllStoragePresentationContexts, evt
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove as MOVE

        ae = _ae(self.settings)
        ae.supported_contexts = AllStoragePresentationContexts
        for cx in ae.supported_contexts:
            cx.transfer_syntax = list(STORAGE_SYNTAXES)
        try:
            scp = ae.start_server(("0.0.0.0", self.settings.port), block=False,
                                  evt_handlers=[(evt.EVT_C_STORE, receiver.handle),
                                                (evt.EVT_DATA_RECV, receiver.on_data)])
        except OSError as exc:
            raise PacsError(f"cannot listen on port {self.settings.port} for C-MOVE "
                            f"({exc.strerror or exc}); change the port in Settings") from None
        try:
            ae.add_requested_context(MOVE)
            receiver.start()
            assoc = self._associate(ae)
            result.method = "C-MOVE"
            ident = self._identifier(missing, series_uid, result.study_uid)
            yield from self._drive(assoc, assoc.send_c_move(ident, self.settings.ae_title, MOVE),
                                   receiver, result, total, cancel)
        finally:
            scp.shutdown()

    def _drive(self, assoc, responses, receiver, result, total, cancel):
        # each wanted instance must arrive within the deadline (a whole study may take
        # longer; refused instances are no progress: a server could send them forever)
        watchdog = _Watchdog(assoc, self.settings.deadline_s, lambda: receiver.received,
                             cancel)
        try:
            yield from self._responses(assoc, responses, receiver, result, total, cancel)
        except _Refused:
            if not watchdog.fired:
                raise
            receiver.finish()  # the deadline ended it: not a refusal, no other method
            result.received, result.failed = receiver.received, receiver.failed
        except GeneratorExit:  # the caller stopped (cancel): end the transfer at once
            assoc.abort()
            raise
        finally:
            watchdog.stop()
            if assoc.is_established:
                assoc.release()
        if watchdog.fired:
            result.message = (f"no instance arrived within {self.settings.deadline_s:g} s "
                              "(deadline); the transfer was aborted - retrieve again to "
                              "fetch the rest")
        yield Progress(result.received, total, result.summary())

    def _responses(self, assoc, responses, receiver, result, total, cancel):
        final = None
        for status, _ident in responses:
            if cancel is not None and cancel.cancelled:
                assoc.abort()
                raise CancelledError(f"retrieve cancelled: {result.summary()}")
            code = getattr(status, "Status", None)
            if code is None:  # timeout or aborted association
                if receiver.accepted == 0 and result.method == "C-GET":
                    raise _Refused(self._lost(assoc, "C-GET"))
                result.message = "the server stopped answering (connection lost)"
                break
            result.received = receiver.received
            yield Progress(receiver.received, total,
                           f"{receiver.received} of {total} instance(s)")
            if code not in (0xFF00, 0xFF01):
                final = code
        receiver.finish()  # the last instances are committed after the last answer
        result.received = receiver.received
        result.failed = receiver.failed
        if final is not None and final not in (0x0000, 0xB000):
            if result.received == 0 and final in (0xA701, 0xA702, 0xA801, 0xA900,
                                                  0xC000, 0x0122, 0x0124, 0xFE00):
                hint = (" (the PACS does not know medview's AE title "
                        f"{self.settings.ae_title!r} as a move destination at this "
                        f"computer, port {self.settings.port})"
                        if final == 0xA801 else "")
                raise _Refused(f"{self.server.url}: retrieve refused, status "
                               f"{hex(final)}{hint}")
            result.message = f"the server ended with status {hex(final)}"
        if receiver.errors:
            result.message = "; ".join([result.message, *receiver.errors[:3]]).strip("; ")

    # -- store ----------------------------------------------------------------------
    def iter_store(self, paths: Iterable[str], cancel: CancelToken | None = None
                   ) -> Generator[Progress, None, StoreResult]:
        paths = list(paths)
        metas = []
        for p in paths:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                meta = dcmread(p, stop_before_pixels=True, specific_tags=["SOPClassUID"])
            metas.append((p, str(meta.file_meta.MediaStorageSOPClassUID),
                          str(meta.file_meta.TransferSyntaxUID)))
        ae = _ae(self.settings)
        pairs = sorted({(c, t) for _p, c, t in metas})
        if len(pairs) > 120:
            raise PacsError("too many kinds of objects to send in one association")
        for sop_class, ts in pairs:
            syntaxes = [ts] + ([ExplicitVRLittleEndian] if ts != ExplicitVRLittleEndian
                               else [])
            ae.add_requested_context(sop_class, syntaxes)
        assoc = self._associate(ae)
        out = StoreResult()
        try:
            for k, (p, _c, _t) in enumerate(metas):
                if cancel is not None:
                    cancel.raise_if_cancelled()
                status = assoc.send_c_store(p)
                code = getattr(status, "Status", None)
                if code in (0x0000, 0xB000, 0xB007, 0xB006):
                    out.sent += 1
                else:
                    out.failed += 1
                    out.messages.append(f"{os.path.basename(p)}: C-STORE status "
                                        f"{'none (timeout)' if code is None else hex(code)}")
                yield Progress(k + 1, len(metas), f"sent {k + 1} of {len(metas)}")
        finally:
            if assoc.is_established:
                assoc.release()
        return out


class _Watchdog:
    """Aborts an association that makes no progress for ``limit`` seconds: a query whose
    whole answer is late (``progress`` never changes), a retrieve whose next instance is
    late. pynetdicom's timeouts are per message, so a server trickling its answers under
    them would otherwise keep medview waiting forever."""

    def __init__(self, assoc, limit: float, progress=lambda: 0,
                 cancel: CancelToken | None = None) -> None:
        self.assoc, self.limit, self.progress, self.cancel = assoc, limit, progress, cancel
        self.fired = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name="medview-dimse-deadline")
        self._thread.start()

    def _run(self) -> None:
        last, since = self.progress(), time.monotonic()
        while not self._stop.wait(0.1):
            now = self.progress()
            if self.cancel is not None and self.cancel.cancelled:
                with contextlib.suppress(Exception):  # the user: end it now
                    self.assoc.abort()
                return
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since > self.limit:
                self.fired = True
                with contextlib.suppress(Exception):
                    self.assoc.abort()
                return

    def stop(self) -> None:
        self._stop.set()


class _Refused(Exception):
    """The server refused this way of retrieving; another may work."""


class _Receiver:
    """The C-STORE handler of a retrieve. In pynetdicom's association thread it only
    checks the UID and the size and moves the received temporary file aside; a committer
    thread then checks the header (the instance asked for, in this study), fsyncs and
    renames it into its series folder, so disk flushes overlap the network."""

    def __init__(self, dest: str, study_uid: str, series_uid: str | None,
                 missing: list[InstanceRecord] | None, result: RetrieveResult) -> None:
        self.dest = dest
        self.study_uid = study_uid
        self.series_uid = series_uid
        self.by_sop = {m.sop_uid: m for m in missing} if missing is not None else None
        self.result = result
        self.study_dir = os.path.join(dest, study_uid)
        self.accepted = 0  # handed over by the association thread
        self.received = 0  # committed to the cache
        self.failed = 0
        self.errors: list[str] = []
        self._lock = threading.Lock()
        #: bytes received since the last instance was handed over (pynetdicom writes an
        #: arriving instance to a temporary file as it comes: bounded here, while it comes)
        self.arriving = 0
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            os.makedirs(self.study_dir, exist_ok=True)
            self._thread = threading.Thread(target=self._commit_loop, daemon=True,
                                            name="medview-pacs-commit")
            self._thread.start()

    def finish(self) -> None:
        """Wait until every instance handed over is committed (or refused)."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def _fail(self, why: str) -> int:
        with self._lock:
            self.failed += 1
            if len(self.errors) < 10:
                self.errors.append(why)
        return 0xA700 if "large" in why else 0xC211

    def on_data(self, event) -> None:
        """pynetdicom's EVT_DATA_RECV: abort the association once more bytes than one
        instance may have arrive without an instance completing (the temporary file
        pynetdicom writes would otherwise grow without bound before any refusal)."""
        with self._lock:
            self.arriving += len(event.data)
            over = self.arriving > MAX_INSTANCE_BYTES + (1 << 20)
        if over:
            self._fail(f"an instance larger than {fmt_bytes(MAX_INSTANCE_BYTES)} was "
                       "refused while it arrived (too large)")
            with self._lock:
                self.arriving = 0
            with contextlib.suppress(Exception):
                event.assoc.abort()

    def handle(self, event) -> int:
        with self._lock:
            self.arriving = 0
        sop = str(event.request.AffectedSOPInstanceUID or "")
        try:
            src = str(event.dataset_path)
        except AttributeError:
            return self._fail("instance arrived without a dataset")
        try:
            if not cache.is_uid(sop):
                return self._fail("an instance with an invalid UID was refused")
            size = os.path.getsize(src)
            if size > MAX_INSTANCE_BYTES:
                return self._fail(f"an instance of {fmt_bytes(size)} was refused (too large)")
            # a name of its own per arrival: a second copy of the same instance must not
            # replace a file the committer is checking
            with self._lock:  # a C-MOVE peer may open several associations
                self.accepted += 1
                n = self.accepted
            tmp = os.path.join(self.study_dir, f".partial-{n}-{sop}.dcm")
            cache.take_file(src, tmp)
            self._queue.put((sop, tmp))
            return 0x0000
        except Exception as exc:  # a bad instance must not end the association
            log.info("received instance refused: %s", type(exc).__name__)
            return self._fail(f"an instance could not be kept ({type(exc).__name__})")
        finally:
            with contextlib.suppress(OSError):
                if os.path.exists(src):
                    os.remove(src)

    def _commit_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            sop, tmp = item
            try:
                got_sop, got_study, series = cache.instance_identity(tmp)
                known = self.by_sop.get(sop) if self.by_sop is not None else None
                if (got_sop != sop or got_study != self.study_uid
                        or (self.series_uid and series != self.series_uid)
                        or (self.by_sop is not None and known is None)
                        or (known is not None and known.series_uid != series)):
                    os.remove(tmp)
                    self._fail("an instance that does not match what was requested was "
                               "refused")
                    continue
                final = cache.instance_path(self.dest, self.study_uid, series, sop)
                cache.finish_file(tmp, final)
                with self._lock:
                    self.received += 1
                    self.result.series_folders.setdefault(series, os.path.dirname(final))
            except Exception as exc:
                with contextlib.suppress(OSError):
                    os.remove(tmp)
                log.info("received instance refused: %s", type(exc).__name__)
                self._fail(f"an instance could not be kept ({type(exc).__name__})")
