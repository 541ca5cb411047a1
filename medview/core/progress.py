"""Progress events and cooperative cancellation for long-running generators."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

from medview.core.errors import CancelledError


@dataclass(frozen=True)
class Progress:
    """One step of a long job: ``done`` of ``total`` units, with a short message."""

    done: int
    total: int
    message: str = ""

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0


class CancelToken:
    """A thread-safe flag checked by long jobs at every step.

    ``on_progress`` (set by whoever runs the job) receives :class:`Progress` events that
    a job reports from inside a call that cannot yield (captum's attribution loops)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.on_progress: Callable[[Progress], None] | None = None

    def report(self, step: Progress) -> None:
        if self.on_progress is not None:
            self.on_progress(step)

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise CancelledError("cancelled by the user")


T = TypeVar("T")


def drain(gen: Generator[Any, None, T], on_event: Callable[[Any], None] | None = None) -> T:
    """Run a progress generator to the end, passing each event to ``on_event``; return
    the generator's result."""
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            return stop.value
        if on_event is not None:
            on_event(event)


def relay(gen: Generator[Any, None, T], convert: Callable[[Any], Any]
          ) -> Generator[Any, None, T]:
    """Re-yield a progress generator's events through ``convert`` (another scale or event
    type); return the generator's result. ``yield from relay(...)`` in a job that runs a
    sub-job."""
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            return stop.value
        yield convert(event)


def file_sha256(path: str) -> str:
    """sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
