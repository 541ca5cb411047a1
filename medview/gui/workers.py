"""Run generator jobs (which yield Progress and check a CancelToken) in QThreads.

Nothing else in medview knows about threads: long work is written as plain generators in
the lower layers, and :class:`JobThread` wraps one. Cancelling is cooperative: the job
stops at its next ``yield``/cancel check. :class:`JobRunner` keeps the newest job of a
kind alive and cancels older ones, and joins everything on shutdown.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator
from typing import Any

from PySide6.QtCore import QObject, QThread, QTimer, Signal

from medview.core.errors import CancelledError, must_propagate
from medview.core.progress import CancelToken, Progress

log = logging.getLogger(__name__)

JobFactory = Callable[[CancelToken], Generator[Progress, None, Any]]


class JobThread(QThread):
    """Runs one generator job; emits progress (at most ~20 per second) and the outcome."""

    progress = Signal(object)
    succeeded = Signal(object)
    failed = Signal(object)
    cancelled = Signal()

    def __init__(self, factory: JobFactory, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._factory = factory
        self.token = CancelToken()

    def cancel(self) -> None:
        self.token.cancel()

    def _emit_progress(self, step: Progress) -> None:
        """Deliver ``step``, thinned to ~20 per second; milestones and the last step of a
        count always go through. Used for yielded steps and for steps
        reported from inside a library call (``CancelToken.report``)."""
        now = time.monotonic()
        total = getattr(step, "total", 0)  # job events (training's) need not be Progress
        if (getattr(step, "milestone", False) or now - self._last_emit > 0.05
                or (total and getattr(step, "done", 0) >= total)):
            self._last_emit = now
            self.progress.emit(step)

    def run(self) -> None:
        self._last_emit = 0.0
        self.token.on_progress = self._emit_progress
        try:
            gen = self._factory(self.token)
            while True:
                try:
                    step = next(gen)
                except StopIteration as stop:
                    result = stop.value
                    break
                if self.token.cancelled:  # every yield is a cancel point
                    gen.close()
                    self.cancelled.emit()
                    return
                self._emit_progress(step)
            if self.token.cancelled:
                self.cancelled.emit()
            else:
                self.succeeded.emit(result)
        except CancelledError:
            self.cancelled.emit()
        except BaseException as exc:  # native plug-ins may raise BaseException (Rust panics)
            if must_propagate(exc):
                raise
            # the type only: messages can name files, which must not reach the logs
            log.error("background job failed: %s", type(exc).__name__)
            self.failed.emit(exc)


class JobRunner(QObject):
    """Starts jobs by kind; a new job of a kind cancels the running one (newest wins)."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._current: dict[str, JobThread] = {}
        self._all: set[JobThread] = set()

    def start(self, kind: str, factory: JobFactory) -> JobThread:
        """Queue a job; its thread starts once control returns to the event loop, so the
        caller can connect the job's signals first without racing a fast job."""
        old = self._current.get(kind)
        if old is not None:
            old.cancel()
        job = JobThread(factory)
        self._current[kind] = job
        self._all.add(job)
        job.finished.connect(lambda j=job: self._forget(j))
        QTimer.singleShot(0, lambda j=job: self._launch(j))
        return job

    def _launch(self, job: JobThread) -> None:
        if job.token.cancelled:  # cancelled before it ever ran
            job.cancelled.emit()
            self._forget(job)
            return
        job.start()

    def current(self, kind: str) -> JobThread | None:
        """The newest job of ``kind`` while it is queued or running."""
        return self._current.get(kind)

    def cancel(self, kind: str) -> None:
        job = self._current.get(kind)
        if job is not None:
            job.cancel()

    def supersede(self, kind: str) -> None:
        """Cancel the job of ``kind`` and stop treating it as the newest: its result came
        from elsewhere (work done ahead), so whatever the job still reports is ignored
        by :meth:`is_current` checks."""
        job = self._current.pop(kind, None)
        if job is not None:
            job.cancel()

    def is_current(self, job: JobThread) -> bool:
        return any(j is job for j in self._current.values())

    def _forget(self, job: JobThread) -> None:
        self._all.discard(job)
        for kind, j in list(self._current.items()):
            if j is job:
                del self._current[kind]
        # No deleteLater(): callers may still hold the job; Python frees it when unused,
        # which is safe because a job is only forgotten after its thread has finished.

    def shutdown(self, timeout_ms: int = 5000) -> None:
        """Cancel every job and wait for the threads to end."""
        for job in list(self._all):
            job.cancel()
        for job in list(self._all):
            job.wait(timeout_ms)
