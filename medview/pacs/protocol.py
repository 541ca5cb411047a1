"""The one interface of a PACS client, whatever the protocol (DIMSE:
:class:`~medview.pacs.dimse.DimseClient`, DICOMweb: :class:`~medview.pacs.web.WebClient`).
Callers (the command line, the GUI's dialogs, :mod:`medview.pacs.retrieve`) are typed
against this, never against one protocol's class."""

from __future__ import annotations

from collections.abc import Generator, Iterable
from typing import Protocol, runtime_checkable

from medview.core.progress import CancelToken, Progress
from medview.pacs.records import (
    EchoResult,
    InstanceRecord,
    Query,
    RetrieveResult,
    SeriesRecord,
    StoreResult,
    StudyRecord,
)
from medview.pacs.servers import Server


@runtime_checkable
class PacsClient(Protocol):
    server: Server

    def echo(self) -> EchoResult: ...

    def find_studies(self, query: Query) -> list[StudyRecord]: ...

    def find_series(self, study_uid: str) -> list[SeriesRecord]: ...

    def find_instances(self, study_uid: str, series_uid: str | None = None
                       ) -> list[InstanceRecord]: ...

    def iter_retrieve(self, study_uid: str, dest: str, series_uid: str | None = None,
                      cancel: CancelToken | None = None, method: str = "auto"
                      ) -> Generator[Progress, None, RetrieveResult]: ...

    def iter_store(self, paths: Iterable[str], cancel: CancelToken | None = None
                   ) -> Generator[Progress, None, StoreResult]: ...
