"""Progress events and cooperative cancellation for long-running generators."""

from __future__ import annotations

import threading
from dataclasses import dataclass

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
    """A thread-safe flag checked by long jobs at every step."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise CancelledError("cancelled by the user")
