"""Staging folders for writing model folders atomically, and safe clean-up of leftovers.

A model folder is assembled in a hidden ``.medview-export-*`` folder beside its
destination and renamed into place in one step. While an export runs, its process holds
an exclusive lock on ``.lock`` inside the staging folder; the clean-up (at start-up and
before each export) removes only staging folders whose lock nobody holds, so two exports
into one models folder, from two processes or two windows, never delete each other's
work. Where file locks are not available a leftover must also be a day old.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from types import ModuleType

from medview.core.safeio import try_lock

fcntl: ModuleType | None
try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

TMP_PREFIX = ".medview-export-"
LOCK_FILE = ".lock"
#: A staging folder without a lock file is only removed when older than this (it may
#: have been created a moment ago by another process that has not locked it yet).
STALE_SECONDS = 24 * 3600


def _is_stale(folder: str) -> bool:
    lock = os.path.join(folder, LOCK_FILE)
    try:
        age = time.time() - os.lstat(folder).st_mtime
    except OSError:
        return False
    if fcntl is None or not os.path.isfile(lock):
        return age > STALE_SECONDS
    try:
        fd = os.open(lock, os.O_RDWR | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return False
    try:
        return try_lock(fd)  # nobody holds it: its process has ended
    finally:
        os.close(fd)  # closing releases our own lock


def clean_stale_exports(out_dir: str) -> int:
    """Remove staging folders of interrupted exports; returns how many were removed."""
    try:
        names = os.listdir(out_dir)
    except OSError:
        return 0
    n = 0
    for name in names:
        path = os.path.join(out_dir, name)
        if (name.startswith(TMP_PREFIX) and os.path.isdir(path) and not os.path.islink(path)
                and _is_stale(path)):
            shutil.rmtree(path, ignore_errors=True)
            n += 1
    return n


@contextlib.contextmanager
def staging_folder(out_dir: str) -> Iterator[str]:
    """A new locked staging folder in ``out_dir``; removed on error, kept for the caller
    to rename on success (the lock ends with the block)."""
    tmp = tempfile.mkdtemp(prefix=TMP_PREFIX, dir=out_dir)
    fd = os.open(os.path.join(tmp, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try_lock(fd)
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        os.close(fd)
