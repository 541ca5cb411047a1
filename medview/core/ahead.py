"""Work done ahead on threads, handed back in order.

The one read-ahead of medview: the training films (decoding), batch scoring (decoding and
preparing films) and the training batches (augmenting the next batches while the model
computes this one) all run ``fn`` on a few threads, at most ``ahead`` items ahead of the
one the caller is using, and hand the results back in the items' order. The work must
release the interpreter lock to gain (decoding, resizing, PIL, numpy and torch kernels
do). Memory stays bounded by ``ahead`` results.
"""

from __future__ import annotations

import itertools
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

R = TypeVar("R")


def threads_beside_device(cap: int) -> int:
    """Threads that feed a GPU: the cores less the one that drives it, at most ``cap``
    (the batch scorer's readers, the training pipeline's threads)."""
    return max(1, min(cap, (os.cpu_count() or 2) - 1))


class InOrder(Iterator[R]):
    """``fn(item)`` for each item, in the items' order, computed by ``workers`` threads
    at most ``ahead`` (default ``2 * workers``) items ahead of the one yielded. Work
    starts at once (before the first ``next``), so it overlaps whatever the caller does
    first (e.g. loading a model).

    An exception of ``fn`` is raised at its item. :meth:`close` (or ``with``) cancels
    what has not started and waits for what has, so no thread outlives it."""

    def __init__(self, fn: Callable[[Any], R], items: Iterable[Any], workers: int,
                 ahead: int | None = None, name: str = "medview-ahead") -> None:
        workers = max(1, int(workers))
        ahead = max(1, 2 * workers if ahead is None else int(ahead))
        self._fn = fn
        self._todo = iter(items)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix=name)
        self._queue: deque[Future] = deque(
            self._pool.submit(fn, x) for x in itertools.islice(self._todo, ahead))

    def __next__(self) -> R:
        if not self._queue:
            self.close()
            raise StopIteration
        try:
            result = self._queue.popleft().result()
        except BaseException:
            self.close()
            raise
        for x in itertools.islice(self._todo, 1):
            self._queue.append(self._pool.submit(self._fn, x))
        return result

    def close(self) -> None:
        while self._queue:
            self._queue.popleft().cancel()
        self._todo = iter(())
        self._pool.shutdown(wait=True)

    def __enter__(self) -> InOrder[R]:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
