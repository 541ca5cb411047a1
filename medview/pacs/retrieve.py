"""Retrieving what a user picked, series by series: the one retrieve loop of the command
line (``medview pacs get``) and the GUI's Open from PACS dialog.

Each series is fetched on its own, so it can be opened as soon as its files are in (a
:class:`SeriesArrived` milestone), and a cancelled or broken retrieve keeps every series
that completed. The cache's size limit is enforced after each study, keeping the studies
just asked for.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass

from medview.core.progress import CancelToken, Progress
from medview.pacs import cache
from medview.pacs.protocol import PacsClient
from medview.pacs.records import RetrieveResult


@dataclass(frozen=True)
class SeriesArrived(Progress):
    """A retrieve step: one series is in the cache (a milestone): all of it, or - the
    server stopped or refused some - ``present`` of its ``expected`` instances."""

    folder: str = ""
    series_uid: str = ""
    milestone: bool = True
    expected: int = 0
    present: int = 0

    @property
    def whole(self) -> bool:
        return self.expected <= 0 or self.present >= self.expected


@dataclass(frozen=True)
class SeriesStarted(Progress):
    """A retrieve step: series ``done + 1`` of ``total`` (of one study) is being fetched."""

    series_uid: str = ""
    milestone: bool = True


@dataclass
class Retrieved:
    """What :func:`iter_retrieve_series` did: one result per series, and the studies the
    cache's size limit evicted."""

    results: list[RetrieveResult]
    evicted: list[str]

    @property
    def complete(self) -> bool:
        return bool(self.results) and all(r.complete for r in self.results)


def iter_retrieve_series(client: PacsClient, wanted: Sequence[tuple[str, str | None]],
                         dest: str, cancel: CancelToken | None = None, method: str = "auto",
                         cache_limit_bytes: int | None = None
                         ) -> Generator[Progress, None, Retrieved]:
    """Fetch ``wanted`` (study UID, series UID or None for the whole study) into ``dest``,
    one series at a time; returns one :class:`RetrieveResult` per series. With
    ``cache_limit_bytes`` (``dest`` is the cache) older studies are evicted past it."""
    results: list[RetrieveResult] = []
    evicted: list[str] = []
    keep = [study for study, _series in wanted]
    for study_uid, series_uid in wanted:
        series = ([series_uid] if series_uid else
                  [s.series_uid for s in client.find_series(study_uid)])
        for k, uid in enumerate(series):
            if cancel is not None:
                cancel.raise_if_cancelled()
            yield SeriesStarted(k, len(series), f"series {k + 1} of {len(series)}",
                                series_uid=uid)
            r = yield from client.iter_retrieve(study_uid, dest, uid, cancel, method=method)
            results.append(r)
            if r.received + r.already_present:
                yield SeriesArrived(k + 1, len(series), f"series {k + 1} of {len(series)} in",
                                    folder=r.series_folders.get(uid, ""), series_uid=uid,
                                    expected=r.expected,
                                    present=r.received + r.already_present)
        if cache_limit_bytes is not None:
            evicted += cache.enforce_limit(dest, cache_limit_bytes, keep=keep)
    return Retrieved(results, evicted)
