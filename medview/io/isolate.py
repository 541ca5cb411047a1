"""Native readers in a child process: the next unknown native crash costs one file.

SimpleITK (NIfTI, NRRD, MetaImage) is C++ reading untrusted bytes; a crash there (a
segfault, an abort, an allocation past the address-space limit) used to end medview.
Headers are validated in Python first for every limit those readers are known to break
on (:mod:`medview.io.itk`), and beyond that each such file is read in a child process
forked from a *forkserver* (a clean process preloaded with the readers, never a fork of
the GUI and its threads) under an address-space limit. The child hands the volume back
through a pipe; a child that dies is reported as that file's refusal and the rest of the
folder loads.

Off (the reader runs in this process) where a forkserver cannot be used: a frozen app
bundle, Windows, or ``MEDVIEW_ISOLATE_READERS=0`` (the fuzzer, whose own forked child
already isolates the readers).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import sys
import threading
from typing import Any

from medview.core import errors
from medview.core.errors import LoadError

ENV = "MEDVIEW_ISOLATE_READERS"
#: the settings a child must see as they are now (a forkserver started earlier would
#: otherwise read the environment of its own start)
PASSED_ENV = ("MEDVIEW_MAX_IMAGE_MEMORY",)
#: a read that takes longer than this is ended (a native reader looping forever)
TIME_LIMIT_S = 300.0
#: the child's address space: far above any budgeted read, far below the machine
MIN_ADDRESS_SPACE = 4 * 1024**3

_lock = threading.Lock()
_ctx: Any = None


def enabled() -> bool:
    return (os.environ.get(ENV, "1") != "0" and not getattr(sys, "frozen", False)
            and sys.platform != "win32")


def _context():
    import multiprocessing

    global _ctx
    with _lock:
        if _ctx is None:
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(["medview.io.itk", "medview.io.isolate"])
            _ctx = ctx
        return _ctx


def _child(conn, module: str, name: str, args: tuple, env: dict[str, str]) -> None:
    """In the child: the limits, then the reader; its result or its error back."""
    import resource

    from medview.core.limits import memory_budget

    os.environ.update(env)
    limit = max(MIN_ADDRESS_SPACE, 8 * memory_budget())
    with contextlib.suppress(ValueError, OSError):  # a lower limit may already apply
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        result = getattr(importlib.import_module(module), name)(*args)
        conn.send(("ok", result))
    except LoadError as exc:
        conn.send(("load", type(exc).__name__, exc.path, exc.reason))
    except MemoryError:
        conn.send(("load", "TooLargeError", "", "not enough memory to read this file"))
    except BaseException as exc:
        conn.send(("error", type(exc).__name__, str(exc).splitlines()[0][:200]
                   if str(exc) else ""))
    finally:
        conn.close()


def _start_without_main(proc) -> None:
    """Start ``proc`` without the child importing this program's main script (its target
    lives in an importable module; a script without an ``if __name__ == "__main__"``
    guard would otherwise run again in the child)."""
    from multiprocessing import spawn

    with _lock:
        original = spawn.get_preparation_data

        def preparation(name: str) -> dict:
            data = original(name)
            data.pop("init_main_from_path", None)
            data.pop("init_main_from_name", None)
            return data

        spawn.get_preparation_data = preparation
        try:
            proc.start()
        finally:
            spawn.get_preparation_data = original


def _load_error(kind: str, path: str, reason: str) -> LoadError:
    cls = getattr(errors, kind, None)
    if isinstance(cls, type) and issubclass(cls, LoadError):
        try:
            return cls(path, reason)
        except TypeError:  # a subclass with other arguments
            pass
    return LoadError(path, reason)


def run(path: str, module: str, name: str, *args: Any) -> Any:
    """``module.name(*args)`` in a child process; its result, or a :class:`LoadError`
    naming ``path`` when it raised, died (a signal) or ran past :data:`TIME_LIMIT_S`."""
    ctx = _context()
    receive, send = ctx.Pipe(duplex=False)
    env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
    proc = ctx.Process(target=_child, args=(send, module, name, args, env), daemon=True)
    _start_without_main(proc)
    send.close()
    message = None
    try:
        if receive.poll(TIME_LIMIT_S):
            try:
                message = receive.recv()
            except (EOFError, OSError):
                message = None  # the child died before it answered
        else:
            proc.kill()
            raise LoadError(path, f"the reader did not finish within {TIME_LIMIT_S:g} s; "
                                  "refused")
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join()
        receive.close()
    if message is None:
        code = proc.exitcode
        how = (signal.Signals(-code).name if code is not None and code < 0
               and -code in signal.valid_signals() else f"exit code {code}")
        raise LoadError(path, f"the file crashed the native reader ({how}); refused")
    if message[0] == "ok":
        return message[1]
    if message[0] == "load":
        _kind, kind, where, reason = message
        raise _load_error(kind, where or path, reason)
    _kind, kind, detail = message
    raise LoadError(path, f"unexpected error while reading ({kind}"
                          f"{': ' + detail if detail else ''})")
