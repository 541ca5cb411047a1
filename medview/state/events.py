"""A minimal evented-state helper: an :class:`Event` is a list of callbacks called in
order with one value. Callbacks run on the thread that emits (the GUI thread: state is
changed only from there; workers report through Qt signals first)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Callback = Callable[[Any], None]


class Event:
    """Subscribers of one kind of change."""

    def __init__(self) -> None:
        self._callbacks: list[Callback] = []

    def connect(self, callback: Callback) -> None:
        self._callbacks.append(callback)

    def disconnect(self, callback: Callback) -> None:
        self._callbacks.remove(callback)

    def emit(self, value: Any = None) -> None:
        for callback in list(self._callbacks):
            callback(value)
