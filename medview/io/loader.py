"""Open files and folders: discover, detect by content, group DICOM series, read volumes.

:func:`iter_load` is a generator of :class:`Progress` events that returns a
:class:`LoadResult`; it checks a :class:`CancelToken` between files. The GUI runs it in a
worker thread; the CLI and tests drain it with :func:`load`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Generator, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from medview.core.errors import failure_reason, must_propagate
from medview.core.progress import CancelToken, Progress, drain, relay
from medview.core.safeio import inside as _inside
from medview.core.safeio import is_regular_file
from medview.core.volume import ImageVolume, LoadResult, SkippedFile
from medview.io.detect import preamble_warning, sniff

# Each reader is imported when a file needs it: scoring a JPEG never imports pydicom or
# SimpleITK (benchmarks/bench_cpu.py: a cold one-film predict).
if TYPE_CHECKING:
    from medview.io.dicom import DicomHeader
    from medview.io.series import SeriesPlan

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


class FileReader(Protocol):
    """A reader of one non-DICOM file (a DICOM series is built from its planned headers
    by :func:`medview.io.series.iter_build_volume`): the whole file's image, or a typed
    :class:`~medview.core.errors.LoadError` naming the reason."""

    def __call__(self, unit: LoadUnit) -> ImageVolume: ...


def _read_raster_unit(unit: LoadUnit) -> ImageVolume:
    from medview.io.raster import read_raster

    return read_raster(unit.path)


def _read_itk_unit(unit: LoadUnit) -> ImageVolume:
    from medview.io.itk import read_itk

    return read_itk(unit.path, unit.fmt, list(unit.data_files))


@dataclass
class LoadUnit:
    """What one step of loading reads: a raster or ITK file, or one planned DICOM
    series. Planning needs only headers, so units can be read (and dropped) one by one."""

    kind: str  # "raster" | "itk" | "dicom"
    path: str = ""
    fmt: str = ""
    data_files: tuple[str, ...] = ()
    plan: SeriesPlan | None = None

    @property
    def size(self) -> int:
        return len(self.plan.headers) if self.plan is not None else 1


#: the reader of each kind of single-file unit
FILE_READERS: dict[str, FileReader] = {"raster": _read_raster_unit, "itk": _read_itk_unit}


def iter_scan(
    paths: Iterable[str], cancel: CancelToken | None = None
) -> Generator[Progress, None, tuple[list[LoadUnit], list[SkippedFile]]]:
    """Find every image under ``paths`` and plan the DICOM series from headers alone;
    returns the units (non-DICOM files in file order, then the series) and the skipped
    files. No pixels are read."""
    files, skipped = discover(paths)
    units: list[LoadUnit] = []
    headers: list[DicomHeader] = []
    companions: set[str] = set()
    total = len(files)
    for k, path in enumerate(files):
        if cancel is not None:
            cancel.raise_if_cancelled()
        try:
            fmt, head = sniff(path)
            if fmt in ("dicom", "dicom-raw"):
                from medview.io.dicom import read_header

                header = read_header(path, raw=fmt == "dicom-raw", head=head)
                if fmt == "dicom":
                    warning = preamble_warning(head)
                    if warning:
                        header.warnings.append(warning)
                headers.append(header)
            elif fmt == "raster":
                units.append(LoadUnit("raster", path))
            else:
                from medview.io.itk import detached_data_files

                data_files = detached_data_files(path, fmt)  # checked: inside, regular
                companions.update(os.path.normpath(p) for p in data_files)
                units.append(LoadUnit("itk", path, fmt, tuple(data_files)))
        except BaseException as exc:  # one hostile file never costs the rest of the study
            if must_propagate(exc):
                raise
            skipped.append(SkippedFile(getattr(exc, "path", path) or path,
                                       failure_reason(exc), getattr(exc, "modality", "")))
        yield Progress(k + 1, total, "scanning files")
    if companions:
        skipped = [s for s in skipped if os.path.normpath(s.path) not in companions]
    if headers:
        from medview.io.series import plan_series

        plans, dup_skipped = plan_series(headers)
        skipped.extend(dup_skipped)
        units.extend(LoadUnit("dicom", plan=p) for p in plans)
    return units, skipped


def iter_read_unit(
    unit: LoadUnit, cancel: CancelToken | None = None
) -> Generator[Progress, None, tuple[ImageVolume | None, list[SkippedFile]]]:
    """Read one unit; a failure costs only this unit (its files are returned as
    skipped, with the reason)."""
    try:
        reader = FILE_READERS.get(unit.kind)
        if reader is not None:
            return reader(unit), []
        from medview.io.series import iter_build_volume

        return (yield from iter_build_volume(unit.plan, cancel))
    except BaseException as exc:
        if must_propagate(exc):
            raise
        reason = failure_reason(exc)
        if unit.plan is not None:
            return None, [SkippedFile(h.path, reason) for h in unit.plan.headers]
        return None, [SkippedFile(getattr(exc, "path", unit.path) or unit.path, reason)]


def iter_load(
    paths: Iterable[str], cancel: CancelToken | None = None
) -> Generator[Progress, None, LoadResult]:
    """Load every image under ``paths``; yields progress, returns a :class:`LoadResult`."""
    units, skipped = yield from relay(
        iter_scan(paths, cancel), lambda step: Progress(step.done, 2 * step.total, step.message))
    result = LoadResult(skipped=skipped)
    scanned = sum(u.size for u in units)
    done, grand_total = scanned, scanned * 2
    for unit in units:
        volume, bad = yield from relay(
            iter_read_unit(unit, cancel),
            lambda step, base=done: Progress(base + step.done, grand_total, "reading images"))
        done += unit.size
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
