"""Run one input through ``medview info``'s path in a forked child with a time and memory
limit, and fuzzing campaigns built on that.

Outcomes: ``ok`` (the child finished: the file loaded or was skipped with a reason),
``disagreement`` (a DICOM file medview's fast header walk and pydicom's full reader read
differently: see :mod:`tests.fuzz.differential`),
``crash`` (an exception escaped, or the child died from a signal such as SIGABRT from a
native allocator or SIGSEGV), ``hang`` (still running at the time limit; killed),
``memory`` (finished, but its peak RSS passed 1.5 GiB: something decoded past the budget).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import resource
import shutil
import signal
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from tests.fuzz.mutate import mutate
from tests.fuzz.seeds import seeds

REGRESSIONS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "regressions")
#: per-input limits of the child process
TIME_LIMIT_S = 10.0
ADDRESS_SPACE = 3 * 1024**3  # the interpreter with numpy, pydicom and SimpleITK is ~0.5 GiB
CHILD_BUDGET = "1G"  # medview's own decode budget inside the child
#: a child whose peak RSS passes this has decoded past its budget: kept as a finding
RSS_LIMIT_KIB = int(1.5 * 1024**2)


@dataclass
class Outcome:
    status: str  # ok | crash | hang
    detail: str
    max_rss_kib: int
    seconds: float


def info_path(path: str) -> None:
    """What ``medview info --json`` does with one file, plus rendering its default slice."""
    from medview.cli import _series_dict
    from medview.imaging import render_slice
    from medview.io import load

    result = load([path])
    doc = {"series": [_series_dict(v) for v in result.volumes],
           "skipped": [{"path": s.path, "reason": s.reason} for s in result.skipped]}
    json.dumps(doc)
    for v in result.volumes:
        render_slice(v, v.default_index, None)
    from tests.fuzz.differential import disagreement

    why = disagreement(path)
    if why:
        raise Disagreement(why)


class Disagreement(Exception):
    """The two DICOM header parsers read one file differently."""


def preload() -> None:
    """Import the reading path once in the parent, so each forked child starts warm."""
    import pydicom.pixels  # noqa: F401
    import SimpleITK  # noqa: F401
    from PIL import Image

    import medview.cli
    import medview.imaging
    import medview.io  # noqa: F401

    Image.init()
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit, JPEGLSLossless, RLELossless

    for uid in (JPEGBaseline8Bit, JPEG2000Lossless, JPEGLSLossless, RLELossless):
        get_decoder(uid).is_available  # noqa: B018 (loads the plug-ins)


def run_one(path: str, target: Callable[[str], None] = info_path,
            time_limit: float = TIME_LIMIT_S, address_space: int = ADDRESS_SPACE) -> Outcome:
    r, w = os.pipe()
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            os.close(r)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)  # native decoders print panics and warnings
            resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))
            os.environ["MEDVIEW_MAX_IMAGE_MEMORY"] = CHILD_BUDGET
            # this forked child already isolates the readers: no child of its own
            os.environ["MEDVIEW_ISOLATE_READERS"] = "0"
            target(path)
        except BaseException as exc:
            code = 3
            last = traceback.extract_tb(exc.__traceback__)[-1:]
            where = f" at {os.path.basename(last[0].filename)}:{last[0].lineno}" if last else ""
            os.write(w, f"{type(exc).__name__}: {str(exc)[:200]}{where}".encode(
                "utf-8", "replace"))
        finally:
            os._exit(code)
    os.close(w)
    deadline = t0 + time_limit
    status = detail = ""
    rusage = None
    while True:
        done, wstatus, rusage = os.wait4(pid, os.WNOHANG)
        if done:
            break
        if time.perf_counter() > deadline:
            os.kill(pid, signal.SIGKILL)
            _, wstatus, rusage = os.wait4(pid, 0)
            status, detail = "hang", f"still running after {time_limit:.0f} s"
            break
        time.sleep(0.002)
    with os.fdopen(r, "rb") as f:
        message = f.read().decode("utf-8", "replace")
    if not status:
        if os.WIFSIGNALED(wstatus):
            status = "crash"
            detail = f"killed by signal {signal.Signals(os.WTERMSIG(wstatus)).name}"
        elif os.WEXITSTATUS(wstatus) != 0:
            status, detail = "crash", message or f"exit code {os.WEXITSTATUS(wstatus)}"
            if message.startswith("Disagreement:"):
                status = "disagreement"
        else:
            status = "ok"
    if status == "ok" and rusage is not None and rusage.ru_maxrss > RSS_LIMIT_KIB:
        status, detail = "memory", f"peak RSS {rusage.ru_maxrss / 1024:.0f} MiB"
    return Outcome(status, detail, rusage.ru_maxrss if rusage else 0,
                   time.perf_counter() - t0)


def _kind(name: str) -> str:
    for suffix, kind in ((".nii.gz", "nifti"), (".nii", "nifti"), (".dcm", "dicom"),
                         (".nrrd", "nrrd"), (".mha", "mha"), (".png", "png"),
                         (".jpg", "jpeg"), (".tif", "tiff"), (".bmp", "bmp")):
        if name.endswith(suffix):
            return kind
    return "other"


def campaign(seconds: float, seed: int = 0, save_dir: str | None = None) -> dict:
    """Mutate seeds for ``seconds``; every crash or hang is saved to ``save_dir``."""
    rng = random.Random(seed)
    preload()
    pool = seeds()
    work = tempfile.mkdtemp(prefix="medview-fuzz-")
    counts: Counter = Counter()
    per_kind: Counter = Counter()
    findings = []
    peak = 0
    t_end = time.monotonic() + seconds
    try:
        for name, data in pool:  # the seeds themselves must load
            path = os.path.join(work, name)
            with open(path, "wb") as f:
                f.write(data)
            out = run_one(path)
            if out.status != "ok":
                findings.append({"seed": name, "status": out.status, "detail": out.detail})
            os.remove(path)
        while time.monotonic() < t_end:
            name, data = rng.choice(pool)
            mutant, ops = mutate(rng, name, data)
            path = os.path.join(work, name)
            with open(path, "wb") as f:
                f.write(mutant)
            out = run_one(path)
            counts[out.status] += 1
            per_kind[_kind(name)] += 1
            peak = max(peak, out.max_rss_kib)
            if out.status != "ok":
                sha = hashlib.sha256(mutant).hexdigest()[:12]
                kept = f"{out.status}-{sha}-{name}"
                if save_dir:
                    os.makedirs(save_dir, exist_ok=True)
                    shutil.copyfile(path, os.path.join(save_dir, kept))
                findings.append({"file": kept, "status": out.status, "mutations": ops,
                                 "detail": out.detail})
            os.remove(path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    inputs = sum(counts.values())
    return {"seconds": seconds, "seed": seed, "seeds": len(pool), "inputs": inputs,
            "inputs_per_second": round(inputs / max(seconds, 1e-9), 1),
            "ok": counts["ok"], "crashes": counts["crash"], "hangs": counts["hang"],
            "over_memory": counts["memory"], "disagreements": counts["disagreement"],
            "peak_rss_mib": round(peak / 1024, 1), "per_format": dict(per_kind),
            "findings": findings}


def replay(folder: str = REGRESSIONS) -> list[dict]:
    """Run every kept regression input; returns one record per file."""
    preload()
    out = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            continue
        work = tempfile.mkdtemp(prefix="medview-replay-")
        try:
            # the file name after the "<status>-<hash>-" prefix keeps the original suffix
            target = os.path.join(work, name.split("-", 2)[-1] if name.count("-") >= 2
                                  else name)
            shutil.copyfile(path, target)
            o = run_one(target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        out.append({"file": name, "status": o.status, "detail": o.detail,
                    "max_rss_mib": round(o.max_rss_kib / 1024, 1)})
    return out


def _raises(_path: str) -> None:
    raise ValueError("escaped")


def _hangs(_path: str) -> None:
    while True:
        time.sleep(1)


def _aborts(_path: str) -> None:
    os.abort()


def _allocates(_path: str) -> None:
    bytearray(8 * 1024**3)  # more than the address-space limit


def self_check() -> dict[str, str]:
    """The harness itself tells an escaped exception, a hang, an abort and an allocation
    past the memory limit from a good run."""
    with tempfile.NamedTemporaryFile(suffix=".dcm") as f:
        return {name: run_one(f.name, fn, time_limit=3).status for name, fn in (
            ("ok", lambda _p: None), ("raises", _raises), ("hangs", _hangs),
            ("aborts", _aborts), ("allocates", _allocates))}
