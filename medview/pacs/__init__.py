"""DICOM networking: echo, find, retrieve into a local cache, store. On pynetdicom (DIMSE)
and dicomweb-client (DICOMweb); uses :mod:`medview.io` only, knows nothing of Qt or torch.

:func:`connect` turns a server URL (or a saved server's name) into a client with one
interface whatever the protocol: ``echo()``, ``find_studies(query)``,
``find_series(study_uid)``, ``find_instances(study_uid, series_uid)``,
``iter_retrieve(study_uid, dest, series_uid, cancel)`` and ``iter_store(paths, cancel)``
(generators of :class:`~medview.core.progress.Progress` that return their result).
"""

from __future__ import annotations

from medview.pacs.protocol import PacsClient
from medview.pacs.records import (
    EchoResult,
    InstanceRecord,
    Query,
    RetrieveResult,
    SeriesRecord,
    StoreResult,
    StudyRecord,
)
from medview.pacs.servers import (
    PacsError,
    PacsSettings,
    Server,
    load_settings,
    parse_server,
    save_settings,
)


def connect(url_or_name: str, settings: PacsSettings | None = None) -> PacsClient:
    """A client for a server URL or a saved server's name."""
    settings = settings or load_settings()
    server = settings.resolve(url_or_name)
    if server.kind == "dimse":
        from medview.pacs.dimse import DimseClient

        return DimseClient(server, settings)
    from medview.pacs.web import WebClient

    return WebClient(server, settings)


__all__ = ["EchoResult", "InstanceRecord", "PacsClient", "PacsError", "PacsSettings", "Query",
           "RetrieveResult", "SeriesRecord", "Server", "StoreResult", "StudyRecord",
           "connect", "load_settings", "parse_server", "save_settings"]
