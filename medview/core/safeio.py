"""Opening untrusted files without ever blocking, following them out of their folder, or
reading them without bound.

Every file a user points medview at (a study folder, a model folder, a configuration) may
be a FIFO that blocks ``open()`` forever, a link to ``/dev/zero`` that never ends, or a
link that leads outside the folder the user chose. These helpers open with
``O_NONBLOCK`` (a FIFO then opens at once instead of waiting for a writer), check with
``fstat`` on the opened descriptor (no race between the check and the read) that it is a
regular file, and read at most a given number of bytes.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from typing import BinaryIO

from medview.core.errors import LoadError


class UnsafeFileError(LoadError):
    """A path is not a regular file, is too large, or leads outside its folder."""


def is_regular_file(path: str) -> bool:
    """True for a regular file (after following links); False for FIFOs, devices, sockets,
    folders and missing paths. Never opens the path, so it cannot block."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def try_lock(fd: int) -> bool:
    """Take an exclusive lock on ``fd`` without waiting; False when another process
    holds it. Where the system has no ``flock`` (Windows) it always succeeds."""
    try:
        import fcntl
    except ImportError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def inside(path: str, root: str) -> bool:
    """Whether ``path``, with every link resolved, lies inside the folder ``root``."""
    try:
        real_root = os.path.realpath(root)
        return os.path.commonpath([os.path.realpath(path), real_root]) == real_root
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def open_regular(path: str, *, max_bytes: int | None = None,
                 root: str | None = None) -> Iterator[BinaryIO]:
    """Open ``path`` for binary reading only if it is a regular file.

    Parameters
    ----------
    path
        The file.
    max_bytes
        Refuse a file larger than this (checked on the open descriptor).
    root
        If given, refuse a path that resolves (through links) outside this folder.

    Raises
    ------
    UnsafeFileError
        Not a regular file (FIFO, device, socket, folder), too large, or outside ``root``.
    OSError
        The ordinary errors of ``open`` (missing file, permission denied, ...).
    """
    if root is not None and not inside(path, root):
        raise UnsafeFileError(path, "the path leads outside its folder (link?)")
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeFileError(path, "not a regular file (FIFO, device or socket?)")
        if max_bytes is not None and st.st_size > max_bytes:
            raise UnsafeFileError(
                path, f"file is {st.st_size} bytes; more than the {max_bytes} allowed here")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        yield f


def read_capped(path: str, max_bytes: int, *, root: str | None = None) -> bytes:
    """The whole content of a regular file of at most ``max_bytes`` bytes."""
    with open_regular(path, max_bytes=max_bytes, root=root) as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:  # grew while reading
        raise UnsafeFileError(path, f"file is larger than the {max_bytes} bytes allowed here")
    return data


def fsync_dir(folder: str) -> None:
    """Flush a folder's entries (a rename into it) to disk where the platform allows."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # e.g. Windows: folders cannot be opened; NTFS journals renames itself
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def plain_text(text: str) -> str:
    """A string that is safe to print on a terminal or put in a CSV/log line.

    Control and escape characters (ANSI sequences, carriage returns, bidi controls) are
    replaced by ``?``, and bytes that were not valid UTF-8 in a file name (held by Python
    as lone surrogates) are written as ``\\xNN``.
    """
    if text.isascii() and text.isprintable():  # the common case, at C speed
        return text
    out = []
    for ch in text:
        o = ord(ch)
        if 0xDC80 <= o <= 0xDCFF:  # os.fsdecode's surrogateescape for an undecodable byte
            out.append(f"\\x{o - 0xDC00:02x}")
        elif 0xD800 <= o <= 0xDFFF or not ch.isprintable():
            out.append("?")
        else:
            out.append(ch)
    return "".join(out)


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync, then rename over it."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".medview-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(folder)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
