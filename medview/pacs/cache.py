"""The folder retrieved instances land in: one file per instance, written atomically.

Layout: ``ROOT/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``. Every UID
comes from the network and is untrusted, so it is checked against the UID grammar
(digits and dots, at most 64 characters) before it names anything on disk: a server
cannot write outside the folder. An instance file appears only once it is complete
(temporary name, fsync, rename), so a transfer cut off half-way leaves no partial file,
and a later retrieve skips what is already present (resume). The default cache folder
has a size limit: least recently used studies are removed first.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Iterable

from medview.core.safeio import fsync_dir
from medview.pacs.servers import PacsError

_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
SUFFIX = ".dcm"
_PARTIAL_PREFIX = ".partial-"


def check_uid(uid: str, what: str = "UID") -> str:
    u = str(uid).strip().rstrip("\x00")
    if len(u) > 64 or not _UID_RE.match(u):
        raise PacsError(f"the server sent an invalid {what} ({len(u)} characters); refused")
    return u


def is_uid(uid: str) -> bool:
    try:
        check_uid(uid)
    except PacsError:
        return False
    return True


def series_folder(root: str, study_uid: str, series_uid: str) -> str:
    return os.path.join(root, check_uid(study_uid, "study UID"),
                        check_uid(series_uid, "series UID"))


def instance_path(root: str, study_uid: str, series_uid: str, sop_uid: str) -> str:
    return os.path.join(series_folder(root, study_uid, series_uid),
                        check_uid(sop_uid, "SOP instance UID") + SUFFIX)


def present_instances(folder: str) -> set[str]:
    """SOP instance UIDs whose files are already complete in a series folder."""
    if not os.path.isdir(folder):
        return set()
    out = set()
    for name in os.listdir(folder):
        if name.endswith(SUFFIX) and not name.startswith("."):
            uid = name[: -len(SUFFIX)]
            full = os.path.join(folder, name)
            if is_uid(uid) and os.path.isfile(full) and not os.path.islink(full):
                out.add(uid)
    return out


def partial_path(final: str) -> str:
    folder, name = os.path.split(final)
    return os.path.join(folder, _PARTIAL_PREFIX + name)


def take_file(src: str, tmp: str) -> None:
    """Move ``src`` to the temporary name ``tmp`` (rename on one file system, else copy)."""
    try:
        os.replace(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
        with contextlib.suppress(OSError):
            os.remove(src)


def finish_file(tmp: str, final: str) -> None:
    """fsync a complete temporary file, then rename it to its final name: a crash never
    leaves a half-written instance under a final name."""
    try:
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.makedirs(os.path.dirname(final), exist_ok=True)
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def commit_file(src: str, final: str) -> None:
    """Move a finished file to its final name through a temporary name beside it."""
    os.makedirs(os.path.dirname(final), exist_ok=True)
    tmp = partial_path(final)
    take_file(src, tmp)
    finish_file(tmp, final)


def present_in_study(root: str, study_uid: str, series_uid: str | None = None) -> set[str]:
    """SOP instance UIDs already complete for a study (or one of its series)."""
    study = os.path.join(root, check_uid(study_uid, "study UID"))
    if series_uid:
        return present_instances(os.path.join(study, check_uid(series_uid, "series UID")))
    if not os.path.isdir(study):
        return set()
    out: set[str] = set()
    for name in os.listdir(study):
        if is_uid(name):
            out |= present_instances(os.path.join(study, name))
    return out


def remove_partials(folders: Iterable[str]) -> None:
    for folder in folders:
        if os.path.isdir(folder):
            for name in os.listdir(folder):
                if name.startswith(_PARTIAL_PREFIX):
                    with contextlib.suppress(OSError):
                        os.remove(os.path.join(folder, name))
            fsync_dir(folder)


def touch_study(root: str, study_uid: str) -> None:
    """Mark a study as just used (its folder's time stamp: the cache evicts by it)."""
    folder = os.path.join(root, check_uid(study_uid, "study UID"))
    os.makedirs(folder, exist_ok=True)
    os.utime(folder)


def folder_bytes(folder: str) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(folder, followlinks=False):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def enforce_limit(root: str, limit_bytes: int, keep: Iterable[str] = ()) -> list[str]:
    """Remove least recently used study folders until the cache fits ``limit_bytes``;
    never the studies in ``keep``. Returns the study UIDs removed. Only folders named
    like a UID are touched (the cache root may hold nothing else of the user's)."""
    if not os.path.isdir(root):
        return []
    keep = set(keep)
    studies = []
    for name in os.listdir(root):
        full = os.path.join(root, name)
        if is_uid(name) and os.path.isdir(full) and not os.path.islink(full):
            studies.append((os.path.getmtime(full), name, folder_bytes(full)))
    total = sum(s[2] for s in studies)
    removed = []
    for _used, name, size in sorted(studies):
        if total <= limit_bytes:
            break
        if name in keep:
            continue
        shutil.rmtree(os.path.join(root, name), ignore_errors=True)
        total -= size
        removed.append(name)
    return removed


def instance_identity(path: str) -> tuple[str, str, str]:
    """(SOP Instance, Study Instance, Series Instance UID) of a received file, read from
    its header only (whatever the protocol that brought it; raises when it is not DICOM)."""
    import warnings

    from pydicom import dcmread

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        head = dcmread(path, stop_before_pixels=True,
                       specific_tags=["SOPInstanceUID", "StudyInstanceUID",
                                      "SeriesInstanceUID"])
    return (str(head.get("SOPInstanceUID", "")), str(head.get("StudyInstanceUID", "")),
            str(head.get("SeriesInstanceUID", "")))
