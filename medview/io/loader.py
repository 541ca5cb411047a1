"""Open files and folders: discover, detect by content, group DICOM series, read volumes.

:func:`iter_load` is a generator of :class:`Progress` events that returns a
:class:`LoadResult`; it checks a :class:`CancelToken` between files. The GUI runs it in a
worker thread; the CLI and tests drain it with :func:`load`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Generator, Iterable

from medview.core.errors import failure_reason, must_propagate
from medview.core.progress import CancelToken, Progress, drain
from medview.core.safeio import inside as _inside
from medview.core.safeio import is_regular_file
from medview.core.volume import LoadResult, SkippedFile
from medview.io.detect import preamble_warning, sniff
from medview.io.dicom import DicomHeader, read_header
from medview.io.itk import detached_data_files, read_itk
from medview.io.raster import read_raster
from medview.io.series import iter_build_volume, plan_series

log = logging.getLogger(__name__)

NOT_REGULAR = "not a regular file (FIFO, device or socket); not opened"


def discover(paths: Iterable[str]) -> tuple[list[str], list[SkippedFile]]:
    """Expand files and folders (recursively) into a sorted list of candidate files.

    Links are never followed out of a chosen folder (a DICOMDIR or a link with ``../`` or
    an absolute target cannot pull in files from elsewhere); folder links are not walked.
    """
    files: list[str] = []
    skipped: list[SkippedFile] = []
    for raw in paths:
        path = os.fspath(raw)
        if os.path.isdir(path):
            root = os.path.realpath(path)
            for dirpath, dirnames, filenames in os.walk(path, followlinks=False):
                dirnames.sort()
                for d in dirnames:
                    full = os.path.join(dirpath, d)
                    if os.path.islink(full):
                        skipped.append(SkippedFile(full, "folder link not followed"))
                for name in sorted(filenames):
                    full = os.path.join(dirpath, name)
                    if os.path.islink(full) and not _inside(full, root):
                        skipped.append(
                            SkippedFile(full, "link points outside the chosen folder; ignored")
                        )
                        continue
                    if not is_regular_file(full):
                        skipped.append(SkippedFile(full, NOT_REGULAR))
                        continue
                    files.append(full)
        elif is_regular_file(path):
            files.append(path)
        elif os.path.lexists(path):
            skipped.append(SkippedFile(path, NOT_REGULAR))
        else:
            skipped.append(SkippedFile(path, "file not found"))
    return files, skipped


def iter_load(
    paths: Iterable[str], cancel: CancelToken | None = None
) -> Generator[Progress, None, LoadResult]:
    """Load every image under ``paths``; yields progress, returns a :class:`LoadResult`."""
    files, skipped = discover(paths)
    result = LoadResult(skipped=skipped)
    headers: list[DicomHeader] = []
    companions: set[str] = set()
    total = len(files)
    for k, path in enumerate(files):
        if cancel is not None:
            cancel.raise_if_cancelled()
        try:
            fmt, head = sniff(path)
            if fmt in ("dicom", "dicom-raw"):
                header = read_header(path, raw=fmt == "dicom-raw", head=head)
                if fmt == "dicom":
                    warning = preamble_warning(head)
                    if warning:
                        header.warnings.append(warning)
                headers.append(header)
            elif fmt == "raster":
                result.volumes.append(read_raster(path))
            else:
                data_files = detached_data_files(path, fmt)  # checked: inside, regular
                companions.update(os.path.normpath(p) for p in data_files)
                result.volumes.append(read_itk(path, fmt, data_files))
        except BaseException as exc:  # one hostile file never costs the rest of the study
            if must_propagate(exc):
                raise
            result.skipped.append(SkippedFile(getattr(exc, "path", path) or path,
                                              failure_reason(exc)))
        yield Progress(k + 1, total + len(headers), "scanning files")
    if companions:
        result.skipped = [s for s in result.skipped
                          if os.path.normpath(s.path) not in companions]
    plans, dup_skipped = plan_series(headers)
    result.skipped.extend(dup_skipped)
    done = total
    grand_total = total + sum(len(p.headers) for p in plans)
    for plan in plans:
        try:
            builder = iter_build_volume(plan, cancel)
            while True:
                try:
                    step = next(builder)
                except StopIteration as stop:
                    volume, bad = stop.value
                    break
                yield Progress(done + step.done, grand_total, "reading images")
        except BaseException as exc:  # a series that cannot be built costs only itself
            if must_propagate(exc):
                raise
            reason = failure_reason(exc)
            result.skipped.extend(SkippedFile(h.path, reason) for h in plan.headers)
            done += len(plan.headers)
            continue
        done += len(plan.headers)
        result.skipped.extend(bad)
        if volume is not None:
            result.volumes.append(volume)
    log.info(
        "loaded %d volume(s), skipped %d file(s)", len(result.volumes), len(result.skipped)
    )
    return result


def load(paths: Iterable[str], cancel: CancelToken | None = None) -> LoadResult:
    """Run :func:`iter_load` to completion and return its result."""
    return drain(iter_load(paths, cancel))
