"""De-identified export of DICOM studies: the PS3.15 Basic Application Level
Confidentiality Profile (Annex E, Table E.1-1), applied at every nesting level.

The action table is the standard's, as encoded by the ``dicom-anonymizer`` package
(``dicomfields_2026c``: about 650 attributes with their D/Z/X/U actions, overlay and curve
groups included). Of the libraries on PyPI that encode the table it is the one that
covers it: dicognito (used before) replaces identity attributes with consistent fakes
but keeps descriptions, comments and overlays; ``deid`` applies recipes, not the table.
Its own engine is not used: it applies single tags at the top level only and keeps one
UID map per process. medview walks every data set and sequence item itself, with one
consistent mapping per export (:class:`Deidentifier`).

What is applied, per element (recursively):

- the table's action: ``X`` removed, ``Z`` emptied, ``D`` replaced by a dummy of its VR
  (Patient ID by a consistent pseudonym, so series of one patient stay together), ``U``
  UIDs remapped consistently within the export; the combined actions take the safe
  choice that keeps the object valid (``X/Z`` and ``X/Z/D`` emptied, ``Z/D`` and ``X/D``
  replaced, ``X/Z/U*`` sequences walked and their UIDs remapped);
- medview's additions (:data:`EXTRA_ACTIONS`, :func:`_safety_net`): the code sequences
  that name a procedure or protocol (their meanings are free text) are removed; any
  person name the table does not list is emptied; any free text (LT, ST, UT, UC) the
  table does not list is removed; every overlay (60xx) and curve (50xx) group is removed
  whole; private elements are removed unless on :data:`SAFE_PRIVATE` (empty: none yet);
- the file: a new file meta group (no source AE title, the new SOP Instance UID), a
  zero preamble, Patient Identity Removed YES, Longitudinal Temporal Information
  Modified, and De-identification Method (Code Sequence) naming the profile and the
  options actually applied.

Options (PS3.15 E.3): ``retain_modified_dates`` ("Retain Longitudinal Temporal
Information with Modified Dates": dates and date-times are shifted back by one whole
number of days per export instead of removed or emptied, times kept) and
``clean_descriptors`` ("Clean Descriptors": the descriptions in :data:`DESCRIPTORS` are
kept, with every identifying value found in the same file - names, IDs, dates - cut out
of them; text naming someone the file does not name is not caught: check it).

Burned-in text: an image whose Burned In Annotation is YES is left out; so is one that
likely carries burned-in text while the tag is absent (secondary captures, ultrasound,
screen captures, see :func:`burned_in_reason`), unless ``keep_burned_in``.

Each file's report says which attributes (by keyword, never by value) were removed,
emptied, replaced, shifted, remapped and kept; ``deidentification-report.json`` in the
output folder holds them all.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import re
import secrets
import warnings
from collections.abc import Callable, Generator, Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta

from pydicom import dcmread
from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, generate_uid

from medview.core.errors import MedviewError
from medview.core.limits import memory_budget
from medview.core.progress import CancelToken, Progress
from medview.core.safeio import atomic_write_bytes, open_regular, plain_text

BURNED_IN = "burned-in annotation (0028,0301) is YES: identity may be in the pixels"
REPORT_FILE = "deidentification-report.json"

#: Private elements kept (by (group, private creator, element offset)); none so far: a
#: private element is removed unless it is shown here to hold nothing identifying.
SAFE_PRIVATE: frozenset[tuple[int, str, int]] = frozenset()

#: medview's additions to the table: code sequences whose meanings are free text that
#: names a procedure as the requester wrote it.
EXTRA_ACTIONS = {
    0x00081032: "X",  # Procedure Code Sequence
    0x00321064: "X",  # Requested Procedure Code Sequence
    0x00400260: "X",  # Performed Protocol Code Sequence
}

#: The descriptions the Clean Descriptors option keeps (cleaned); without the option the
#: table removes them.
DESCRIPTORS = frozenset({
    "StudyDescription", "SeriesDescription", "ProtocolName", "ImageComments",
    "PerformedProcedureStepDescription", "RequestedProcedureDescription",
    "ScheduledProcedureStepDescription", "DerivationDescription", "AcquisitionComments",
    "AdditionalPatientHistory", "PatientComments", "ReasonForTheRequestedProcedure",
})

_FREE_TEXT = ("LT", "ST", "UT", "UC")
_DATE_VRS = ("DA", "DT")


def _table() -> tuple[dict[int, str], list[tuple[int, int, int, int, str]]]:
    """The PS3.15 Table E.1-1 actions: {tag: action} and the masked (repeating-group)
    rows as (group, element, group mask, element mask, action)."""
    from dicomanonymizer.dicom_anonymization_databases import dicomfields_2026c as t

    actions: dict[int, str] = {}
    masked: list[tuple[int, int, int, int, str]] = []
    for name, action in (("D_TAGS", "D"), ("Z_TAGS", "Z"), ("X_TAGS", "X"), ("U_TAGS", "U"),
                         ("Z_D_TAGS", "Z/D"), ("X_Z_TAGS", "X/Z"), ("X_D_TAGS", "X/D"),
                         ("X_Z_D_TAGS", "X/Z/D"), ("X_Z_U_STAR_TAGS", "X/Z/U*")):
        for row in getattr(t, name):
            if len(row) == 2:
                actions[(row[0] << 16) | row[1]] = action
            else:
                masked.append((row[0], row[1], row[2], row[3], action))
    actions.update(EXTRA_ACTIONS)
    return actions, masked


PROFILE_VERSION = "PS3.15 2026c Table E.1-1 (dicom-anonymizer dicomfields_2026c)"


@dataclass
class FileReport:
    """What was done to one file: attribute keywords only, never values."""

    output: str
    removed: list[str] = field(default_factory=list)
    emptied: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    shifted: list[str] = field(default_factory=list)
    remapped: list[str] = field(default_factory=list)
    cleaned: list[str] = field(default_factory=list)
    private_removed: int = 0
    groups_removed: list[str] = field(default_factory=list)  # overlay/curve groups
    kept: int = 0

    def summary(self) -> str:
        return (f"removed {len(self.removed) + self.private_removed}, emptied "
                f"{len(self.emptied)}, replaced {len(self.replaced)}, shifted "
                f"{len(self.shifted)}, UIDs remapped {len(self.remapped)}, cleaned "
                f"{len(self.cleaned)}, kept {self.kept}")


@dataclass
class ExportResult:
    written: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    burned_in: int = 0
    reports: list[FileReport] = field(default_factory=list)
    options: list[str] = field(default_factory=list)
    report_path: str = ""


def burned_in_reason(ds: Dataset) -> str:
    """Why ``ds`` may show identity in its pixels ("" when nothing says so): Burned In
    Annotation YES; or, with the tag absent, a secondary capture (a screenshot or a
    scanned document), an ultrasound image, or an image typed SECONDARY/SCREEN."""
    flag = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
    if flag == "YES":
        return BURNED_IN
    if flag == "NO":
        return ""
    sop_class = str(ds.get("SOPClassUID", ""))
    modality = str(ds.get("Modality", "") or "").upper()
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    why = ""
    if sop_class.startswith("1.2.840.10008.5.1.4.1.1.7") or "ConversionType" in ds:
        why = "a secondary capture (screenshot or scan)"
    elif modality in ("US", "IVUS"):
        why = "an ultrasound image"
    elif modality in ("OT", "SC", "XC", "ES", "DOC") or "SCREEN" in " ".join(image_type):
        why = f"a {modality or 'screen'} capture"
    if not why:
        return ""
    return (f"{why} without Burned In Annotation (0028,0301): it likely shows text in "
            "its pixels")


class Deidentifier:
    """One export: one consistent mapping of UIDs and patient pseudonyms, one date
    offset, the options chosen."""

    def __init__(self, retain_modified_dates: bool = False, clean_descriptors: bool = False,
                 key: bytes | None = None, date_offset_days: int | None = None) -> None:
        self.actions, self.masked = _table()
        self.retain_modified_dates = retain_modified_dates
        self.clean_descriptors = clean_descriptors
        self._key = key or secrets.token_bytes(32)
        self.offset = timedelta(days=date_offset_days if date_offset_days is not None
                                else 365 + secrets.randbelow(3650))
        self._uids: dict[str, str] = {}

    # ------------------------------------------------------------------ mappings
    def _pseudonym(self, value: str, prefix: str) -> str:
        digest = hmac.new(self._key, value.encode("utf-8", "replace"), hashlib.sha256)
        return prefix + digest.hexdigest()[:12].upper()

    def uid(self, old: str) -> str:
        old = str(old)
        if old not in self._uids:
            self._uids[old] = generate_uid(entropy_srcs=[self._key.hex(), old])
        return self._uids[old]

    @property
    def options(self) -> list[str]:
        out = ["Basic Application Confidentiality Profile"]
        if self.retain_modified_dates:
            out.append("Retain Longitudinal Temporal Information Modified Dates Option")
        if self.clean_descriptors:
            out.append("Clean Descriptors Option")
        return out

    # ------------------------------------------------------------------ values
    def _dummy(self, elem: DataElement) -> object:
        vr = elem.VR
        if elem.tag == 0x00100020:  # Patient ID: consistent within the export
            return self._pseudonym(str(elem.value or ""), "MV")
        if vr == "PN":
            return "ANONYMIZED"
        if vr in ("AE", "CS", "LO", "LT", "SH", "ST", "UC", "UT"):
            return "ANONYMIZED"
        if vr == "UI":
            return self._remap_value(elem.value)
        if vr == "AS":
            return "000Y"
        if vr == "UR":
            return "http://anonymized.invalid"
        if vr in ("DS", "IS"):
            return "0"
        if vr in ("FD", "FL", "SS", "US", "SL", "UL", "SV", "UV"):
            return 0
        if vr == "DA":
            return "19000101"
        if vr == "DT":
            return "19000101000000"
        if vr == "TM":
            return "000000"
        if vr in ("OB", "OW", "UN", "OD", "OF", "OL", "OV"):
            return b""
        return None

    def _remap_value(self, value):
        """A UID value remapped (each of a multi-valued one)."""
        if not value or isinstance(value, str):
            return self.uid(value) if value else value
        return [self.uid(v) for v in value]

    def _shift(self, elem: DataElement) -> bool:
        """Shift a DA/DT value back by the export's offset; False if it is not a date."""
        text = str(elem.value or "").strip()
        if not text:
            return True
        try:
            if elem.VR == "DA":
                d = datetime.strptime(text[:8], "%Y%m%d").date() - self.offset
                elem.value = d.strftime("%Y%m%d")
                return True
            d0 = datetime.strptime(text[:8], "%Y%m%d")
            elem.value = (d0 - self.offset).strftime("%Y%m%d") + text[8:]
            return True
        except ValueError:
            return False

    # ------------------------------------------------------------------ walk
    def _action(self, tag: BaseTag) -> str | None:
        t = int(tag)
        if t in self.actions:
            return self.actions[t]
        group, element = tag.group, tag.element
        for g, e, gm, em, action in self.masked:
            if group & gm == g & gm and element & em == e & em:
                return action
        return None

    def apply(self, ds: Dataset, report: FileReport | None = None) -> FileReport:
        """De-identify ``ds`` in place (every nesting level); returns what was done."""
        report = report or FileReport("")
        phi = _identifying_values(ds) if self.clean_descriptors else []
        self._walk(ds, report, phi)
        ds.PatientIdentityRemoved = "YES"
        ds.LongitudinalTemporalInformationModified = (
            "MODIFIED" if self.retain_modified_dates else "REMOVED")
        ds.DeidentificationMethod = self.options  # LO, one value per option
        ds.DeidentificationMethodCodeSequence = Sequence(
            [_code(code, meaning) for code, meaning in self._method_codes()])
        return report

    def _method_codes(self) -> list[tuple[str, str]]:
        codes = [("113100", "Basic Application Confidentiality Profile")]
        if self.retain_modified_dates:
            codes.append(("113107", "Retain Longitudinal Temporal Information Modified "
                                    "Dates Option"))
        if self.clean_descriptors:
            codes.append(("113105", "Clean Descriptors Option"))
        return codes

    def _walk(self, ds: Dataset, report: FileReport, phi: list[str]) -> None:
        for tag in list(ds.keys()):
            elem = ds[tag]
            kw = keyword_for_tag(tag) or f"({tag.group:04X},{tag.element:04X})"
            if tag.is_private:
                if (tag.group, _creator(ds, tag), tag.element & 0xFF) in SAFE_PRIVATE:
                    report.kept += 1
                else:
                    del ds[tag]
                    report.private_removed += 1
                continue
            if 0x5000 <= tag.group <= 0x50FF or 0x6000 <= tag.group <= 0x60FF:
                del ds[tag]  # overlay planes and curves: graphics and text, whole
                name = f"{tag.group:04X}xxxx"
                if name not in report.groups_removed:
                    report.groups_removed.append(name)
                continue
            action = self._action(tag)
            if self.clean_descriptors and kw in DESCRIPTORS and action is not None:
                elem.value = _clean(str(elem.value or ""), phi)
                report.cleaned.append(kw)
                continue
            if (self.retain_modified_dates and elem.VR in _DATE_VRS and action is not None
                    and action != "U" and self._shift(elem)):
                report.shifted.append(kw)
                continue
            if action is None:
                action = _safety_net(elem)
            if action is None or action == "K":
                if elem.VR == "SQ":
                    self._walk_items(elem, report, phi)
                report.kept += 1
                continue
            self._do(ds, elem, action, kw, report, phi)

    def _walk_items(self, elem: DataElement, report: FileReport, phi: list[str]) -> None:
        for item in elem.value or []:
            self._walk(item, report, phi)

    def _do(self, ds: Dataset, elem: DataElement, action: str, kw: str,
            report: FileReport, phi: list[str]) -> None:
        if action == "X":
            del ds[elem.tag]
            report.removed.append(kw)
        elif action == "U" or action == "X/Z/U*":
            if elem.VR == "SQ":
                self._walk_items(elem, report, phi)
            elif elem.VR == "UI":
                elem.value = self._remap_value(elem.value)
            else:
                elem.value = None
            report.remapped.append(kw)
        elif action in ("Z", "X/Z", "X/Z/D"):
            elem.value = Sequence() if elem.VR == "SQ" else None
            report.emptied.append(kw)
        elif action in ("D", "Z/D", "X/D"):
            if elem.VR == "SQ":  # replace the contents: walk them
                self._walk_items(elem, report, phi)
            else:
                elem.value = self._dummy(elem)
            report.replaced.append(kw)
        else:  # an action this engine does not know: the safest is to remove
            del ds[elem.tag]
            report.removed.append(kw)


def _safety_net(elem: DataElement) -> str | None:
    """medview's rule for what the table does not list: person names are emptied, free
    text removed."""
    if elem.VR == "PN":
        return "Z"
    if elem.VR in _FREE_TEXT:
        return "X"
    return None


def _creator(ds: Dataset, tag: BaseTag) -> str:
    block = tag.element >> 8
    if block < 0x10:
        return ""
    creator = ds.get((tag.group << 16) | block)
    return str(creator.value) if creator is not None else ""


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = "DCM"
    item.CodeMeaning = meaning
    return item


def _identifying_values(ds: Dataset) -> list[str]:
    """The values of ``ds`` that identify someone (names and their parts, IDs, dates,
    addresses, institutions), longest first, for cleaning descriptors."""
    keep: set[str] = set()

    def visit(d: Dataset) -> None:
        for elem in d:
            if elem.VR == "SQ":
                for item in elem.value or []:
                    visit(item)
                continue
            kw = keyword_for_tag(elem.tag) or ""
            if elem.VR == "PN" or kw in ("PatientID", "OtherPatientIDs", "AccessionNumber",
                                         "StudyID", "PatientBirthDate", "InstitutionName",
                                         "InstitutionAddress", "PatientAddress",
                                         "IssuerOfPatientID", "StationName",
                                         "DeviceSerialNumber", "PatientTelephoneNumbers"):
                values = elem.value if elem.VM > 1 else [elem.value]
                for v in values:
                    text = str(v or "")
                    keep.add(text)
                    keep.update(p for p in re.split(r"[\^=\s,]+", text) if len(p) >= 2)
    visit(ds)
    return sorted((v for v in keep if len(v) >= 2), key=len, reverse=True)


def _clean(text: str, phi: list[str]) -> str:
    for value in phi:
        text = re.sub(re.escape(value), "", text, flags=re.IGNORECASE)
    return re.sub(r"\s{2,}", " ", text).strip()


def _uid_part(value) -> str:
    text = str(value or "")
    return text if text and all(c.isdigit() or c == "." for c in text) and len(text) <= 64 \
        else "unknown"


def deidentified_bytes(ds: Dataset) -> bytes:
    """``ds`` written as a DICOM file with a zero preamble and a new file meta group that
    names nothing of the source (its AE title, its implementation)."""
    meta = FileMetaDataset()
    old = getattr(ds, "file_meta", None)
    syntax = getattr(old, "TransferSyntaxUID", None) if old is not None else None
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = syntax or "1.2.840.10008.1.2.1"
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "MEDVIEW"
    ds.file_meta = meta
    ds.preamble = b"\0" * 128
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def iter_export(paths: Iterable[str], out_dir: str, *, keep_burned_in: bool = False,
                retain_modified_dates: bool = False, clean_descriptors: bool = False,
                cancel: CancelToken | None = None,
                on_file: Callable[[FileReport], None] | None = None
                ) -> Generator[Progress, None, ExportResult]:
    """De-identify every DICOM file in ``paths`` into ``out_dir`` as
    ``<study>/<series>/<instance>.dcm`` (the new UIDs: no identity in any name), with a
    report per file in :data:`REPORT_FILE`."""
    from medview.io.loader import discover

    files, skipped = discover(paths)
    result = ExportResult(skipped=[(s.path, s.reason) for s in skipped])
    deid = Deidentifier(retain_modified_dates, clean_descriptors)
    result.options = deid.options
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
        if "SOPInstanceUID" not in ds or "SOPClassUID" not in ds:
            result.skipped.append((path, "not a DICOM image or object (no SOP Instance UID)"))
            continue
        why = burned_in_reason(ds)
        if why:
            result.burned_in += 1
            if not keep_burned_in:
                result.skipped.append((path, why + "; left out"))
                continue
        try:
            report = deid.apply(ds)
            data = deidentified_bytes(ds)
        except Exception as exc:  # a value pydicom cannot write: the file is left out
            result.skipped.append((path, f"could not be de-identified "
                                         f"({type(exc).__name__}); left out"))
            continue
        folder = os.path.join(out_dir, _uid_part(ds.get("StudyInstanceUID")),
                              _uid_part(ds.get("SeriesInstanceUID")))
        os.makedirs(folder, exist_ok=True)
        target = os.path.join(folder, _uid_part(ds.SOPInstanceUID) + ".dcm")
        atomic_write_bytes(target, data)
        report.output = os.path.relpath(target, out_dir)
        result.reports.append(report)
        result.written.append(target)
        if on_file is not None:
            on_file(report)
        yield Progress(k + 1, len(files), f"{len(result.written)} file(s) de-identified")
    if result.written:
        result.report_path = os.path.join(out_dir, REPORT_FILE)
        doc = {"profile": PROFILE_VERSION, "options": result.options,
               "date_shift": ("whole days, one offset for the export"
                              if retain_modified_dates else "dates removed or emptied"),
               "files": [asdict(r) for r in result.reports],
               "left_out": len(result.skipped)}
        atomic_write_bytes(result.report_path, json.dumps(doc, indent=1).encode())
    from medview.core import audit

    audit.record("deidentified_export", profile=PROFILE_VERSION, options=result.options,
                 files_written=len(result.written), files_left_out=len(result.skipped),
                 burned_in=result.burned_in)
    return result

