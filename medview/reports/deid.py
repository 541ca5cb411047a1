"""De-identified export of DICOM studies, on dicognito.

dicognito applies the identity part of the DICOM PS3.15 Basic Application Level
Confidentiality Profile: names, IDs, addresses, institution and equipment names are
replaced by consistent fakes, dates and times shifted by one offset, and every UID
remapped, consistently for one export (one :class:`Deidentifier`), so series and
references within a study still fit together. medview adds two library calls: private
tags are removed (pydicom), and Patient Identity Removed / De-identification Method are
recorded (dicognito). Images whose Burned In Annotation (0028,0301) is YES may show
identity in their pixels, which no header rule removes: they are left out (and named
in the report) unless the caller asks to keep them.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Generator, Iterable
from dataclasses import dataclass, field

from pydicom import dcmread

from medview.core.errors import MedviewError
from medview.core.limits import memory_budget
from medview.core.progress import CancelToken, Progress
from medview.core.safeio import atomic_write_bytes, open_regular, plain_text

BURNED_IN = "burned-in annotation (0028,0301) is YES: identity may be in the pixels"


@dataclass
class ExportResult:
    written: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    burned_in: int = 0


class Deidentifier:
    """One export: one consistent mapping of identities, dates and UIDs."""

    def __init__(self) -> None:
        from dicognito.anonymizer import Anonymizer

        self._anonymizer = Anonymizer()

    def apply(self, ds) -> None:
        ds.remove_private_tags()
        self._anonymizer.anonymize(ds)


def _uid_part(value) -> str:
    text = str(value or "")
    return text if text and all(c.isdigit() or c == "." for c in text) and len(text) <= 64 \
        else "unknown"


def iter_export(paths: Iterable[str], out_dir: str, *, keep_burned_in: bool = False,
                cancel: CancelToken | None = None) -> Generator[Progress, None, ExportResult]:
    """De-identify every DICOM file in ``paths`` into ``out_dir`` as
    ``<study>/<series>/<instance>.dcm`` (the new UIDs: no identity in any name)."""
    from medview.io.loader import discover

    files, skipped = discover(paths)
    result = ExportResult(skipped=[(s.path, s.reason) for s in skipped])
    deid = Deidentifier()
    budget = memory_budget()
    for k, path in enumerate(files):
        if cancel is not None:
            cancel.raise_if_cancelled()
        try:
            with open_regular(path, max_bytes=budget) as f, warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = dcmread(f)
                ds.get("PixelData")  # read everything while the file is open
        except (OSError, MedviewError) as exc:
            result.skipped.append((path, plain_text(str(exc))))
            continue
        except Exception:
            result.skipped.append((path, "not a DICOM file"))
            continue
        if "SOPInstanceUID" not in ds:
            result.skipped.append((path, "not a DICOM image or object (no SOP Instance UID)"))
            continue
        if str(ds.get("BurnedInAnnotation", "")).upper() == "YES":
            result.burned_in += 1
            if not keep_burned_in:
                result.skipped.append((path, BURNED_IN + "; left out"))
                continue
        deid.apply(ds)
        if getattr(ds, "file_meta", None) is not None:
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        folder = os.path.join(out_dir, _uid_part(ds.get("StudyInstanceUID")),
                              _uid_part(ds.get("SeriesInstanceUID")))
        os.makedirs(folder, exist_ok=True)
        target = os.path.join(folder, _uid_part(ds.SOPInstanceUID) + ".dcm")
        import io

        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        atomic_write_bytes(target, buf.getvalue())
        result.written.append(target)
        yield Progress(k + 1, len(files), f"{len(result.written)} file(s) de-identified")
    return result
