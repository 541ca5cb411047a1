"""What a query or a transfer returns: plain, typed records (all text already made safe
to show: control characters removed)."""

from __future__ import annotations

from dataclasses import dataclass, field

from medview.core.safeio import plain_text


def text(value, limit: int = 256) -> str:
    """A value from the network as one line of plain text."""
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        value = "\\".join(str(v) for v in value)
    t = plain_text(str(value)).strip()
    return t if len(t) <= limit else t[:limit] + "..."


def count(value) -> int | None:
    try:
        n = int(str(value).strip())
    except (TypeError, ValueError):
        return None
    return n if n >= 0 else None


#: The most matches a query may return (the user is asked to narrow it).
MAX_MATCHES = 2000
#: The largest instance accepted from a server, whatever the protocol.
MAX_INSTANCE_BYTES = 4 * 1024**3

@dataclass(frozen=True)
class Query:
    """Study-level matching keys; empty = any. ``study_date`` is ``YYYYMMDD`` or a range
    ``YYYYMMDD-YYYYMMDD``; ``patient_name`` may hold ``*`` and ``?`` wildcards."""

    patient_id: str = ""
    patient_name: str = ""
    modality: str = ""
    study_date: str = ""
    accession: str = ""

    def filters(self) -> dict[str, str]:
        out = {"PatientID": self.patient_id, "PatientName": self.patient_name,
               "ModalitiesInStudy": self.modality, "StudyDate": self.study_date,
               "AccessionNumber": self.accession}
        return {k: v.strip() for k, v in out.items() if v.strip()}


@dataclass(frozen=True)
class StudyRecord:
    study_uid: str
    patient_id: str = ""
    patient_name: str = ""
    study_date: str = ""
    description: str = ""
    accession: str = ""
    modalities: tuple[str, ...] = ()
    n_series: int | None = None
    n_instances: int | None = None

    def as_dict(self) -> dict:
        return {"study_uid": self.study_uid, "patient_id": self.patient_id,
                "patient_name": self.patient_name, "study_date": self.study_date,
                "description": self.description, "accession": self.accession,
                "modalities": list(self.modalities), "n_series": self.n_series,
                "n_instances": self.n_instances}


@dataclass(frozen=True)
class SeriesRecord:
    study_uid: str
    series_uid: str
    modality: str = ""
    description: str = ""
    number: int | None = None
    n_instances: int | None = None

    def as_dict(self) -> dict:
        return {"study_uid": self.study_uid, "series_uid": self.series_uid,
                "modality": self.modality, "description": self.description,
                "number": self.number, "n_instances": self.n_instances}


@dataclass(frozen=True)
class InstanceRecord:
    series_uid: str
    sop_uid: str
    sop_class: str = ""


@dataclass(frozen=True)
class EchoResult:
    server: str
    ms: float  # round trip: connect, associate (or HTTP request), answer, release
    detail: str = ""


@dataclass
class RetrieveResult:
    """What a retrieve did. ``complete`` is False when instances are still missing
    (server stopped, cancelled, or refused some); rerunning the same retrieve fetches
    only those."""

    study_uid: str
    folder: str  # the study's folder in the cache / output folder
    expected: int = 0
    received: int = 0
    already_present: int = 0
    failed: int = 0
    method: str = ""
    series_folders: dict[str, str] = field(default_factory=dict)  # series UID -> folder
    message: str = ""

    @property
    def complete(self) -> bool:
        return self.expected > 0 and self.received + self.already_present >= self.expected

    def summary(self) -> str:
        head = (f"{self.received} instance(s) received, {self.already_present} already "
                f"present, of {self.expected}")
        if self.method:
            head += f" ({self.method})"
        if not self.complete:
            head += f"; INCOMPLETE: {self.expected - self.received - self.already_present}" \
                    " missing - run the same retrieve again to fetch only those"
        return head + (f"; {self.message}" if self.message else "")


@dataclass
class StoreResult:
    sent: int = 0
    failed: int = 0
    messages: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.sent > 0
