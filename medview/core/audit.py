"""The audit trail: an append-only, tamper-evident log of what medview showed, saved,
sent and exported.

One JSON object per line in ``audit.jsonl`` in the user data folder (``audit/`` beside
the models; ``MEDVIEW_AUDIT_DIR`` overrides). Every entry carries its sequence number,
the UTC time, the operating-system user, what happened, and ``prev``: the hash of the
entry before it; its own ``hash`` is the SHA-256 of ``prev`` and the entry's canonical
JSON. Editing, deleting or reordering a line breaks the chain at that line, which
:func:`verify` reports. When the file passes :data:`ROTATE_BYTES` it is renamed
``audit-<first>-<last>.jsonl`` and the next entry chains on from its last hash, so
rotation never breaks the chain.

What an entry may hold: hashes (input pixels, model files), model id and version,
backend, device, the trust gate's verdict and reasons, the decision, counts, options,
DICOM UIDs of what was sent and where. Never a patient name, ID or file path (the
recorders in this module take no such argument; free text passes through
:func:`_clean`).

Limits: the chain proves that no line *inside* the log was changed, removed or moved;
removing the newest lines (truncation) leaves a shorter valid chain. ``verify`` prints
the newest hash, which can be noted elsewhere to detect that too.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

ENV_DIR = "MEDVIEW_AUDIT_DIR"
LOG_FILE = "audit.jsonl"
ROTATE_BYTES = 8 * 1024 * 1024
GENESIS = "0" * 64
#: an audit line longer than this is not read back (a log is small lines)
MAX_LINE = 64 * 1024

_lock = threading.Lock()


def audit_dir() -> str:
    override = os.environ.get(ENV_DIR)
    if override:
        return override
    from platformdirs import user_data_dir

    return os.path.join(user_data_dir("medview", appauthor=False), "audit")


def _canonical(entry: dict[str, Any]) -> bytes:
    return json.dumps(entry, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True).encode()


def entry_hash(entry: dict[str, Any]) -> str:
    """The hash of an entry: SHA-256 over its ``prev`` and its canonical JSON (without
    ``hash``)."""
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(str(body.get("prev", "")).encode() + _canonical(body)).hexdigest()


def _clean(text: str, limit: int = 300) -> str:
    """Free text for the log: as plain text (no control or escape characters), bounded."""
    from medview.core.safeio import plain_text

    return plain_text(str(text))[:limit]


def _user() -> str:
    try:
        return _clean(getpass.getuser(), 64)
    except Exception:  # no user name known to the OS (a container): say so
        return "unknown"


def _files(folder: str) -> list[str]:
    """The log's files, oldest first: the rotated ones by their first sequence number,
    then the current one."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    rotated = []
    for name in names:
        m = re.fullmatch(r"audit-(\d+)-(\d+)\.jsonl", name)
        if m:
            rotated.append((int(m.group(1)), name))
    out = [os.path.join(folder, n) for _k, n in sorted(rotated)]
    if LOG_FILE in names:
        out.append(os.path.join(folder, LOG_FILE))
    return out


def _last_entry(path: str) -> dict[str, Any] | None:
    """The last complete line of ``path`` (read from the end)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - MAX_LINE))
            tail = f.read().splitlines()
    except FileNotFoundError:
        return None
    for line in reversed(tail):
        with contextlib.suppress(ValueError):
            doc = json.loads(line)
            if isinstance(doc, dict):
                return doc
    return None


def record(event: str, **fields: Any) -> dict[str, Any] | None:
    """Append one entry; returns it (None when the log cannot be written: auditing must
    never stop a clinical task, and the failure is logged by type only)."""
    entries = record_many([(event, fields)])
    return entries[0] if entries else None


def record_many(events: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Append several entries with one write and one fsync (a batch of predictions)."""
    import logging

    if not events:
        return []
    folder = audit_dir()
    try:
        with _lock, _file_lock(folder):
            path = os.path.join(folder, LOG_FILE)
            last = _last_entry(path)
            if last is None:  # a new file: chain on from the newest rotated one
                older = [p for p in _files(folder) if p != path]
                last = _last_entry(older[-1]) if older else None
            seq = int(last["seq"]) + 1 if last else 1
            prev = str(last["hash"]) if last else GENESIS
            now = datetime.now(UTC).isoformat(timespec="milliseconds")
            user = _user()
            out = []
            for event, fields in events:
                entry = {"seq": seq, "time": now, "user": user, "event": event,
                         **{k: v for k, v in fields.items() if v is not None},
                         "prev": prev}
                entry["hash"] = entry_hash(entry)
                out.append(entry)
                prev, seq = entry["hash"], seq + 1
            data = b"".join(_canonical(e) + b"\n" for e in out)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            if os.path.getsize(path) > ROTATE_BYTES:
                first = _first_seq(path)
                os.replace(path, os.path.join(folder, f"audit-{first}-{seq - 1}.jsonl"))
            return out
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logging.getLogger(__name__).warning("audit log not written (%s)", type(exc).__name__)
        return []


def _first_seq(path: str) -> int:
    with open(path, "rb") as f:
        return int(json.loads(f.readline())["seq"])


@contextlib.contextmanager
def _file_lock(folder: str) -> Iterator[None]:
    """An exclusive lock between processes (the CLI and the GUI may both write)."""
    os.makedirs(folder, mode=0o700, exist_ok=True)
    fd = os.open(os.path.join(folder, ".lock"), os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        try:
            import fcntl
        except ImportError:  # Windows: the in-process lock only
            yield
            return
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@dataclass
class Verification:
    ok: bool
    entries: int
    newest_hash: str
    broken: str = ""  # where the first broken link is, and why


def iter_entries(folder: str | None = None) -> Iterator[tuple[str, int, dict[str, Any] | None]]:
    """(file name, line number, entry or None when the line is not a JSON object)."""
    for path in _files(folder or audit_dir()):
        with open(path, "rb") as f:
            for n, line in enumerate(f, 1):
                try:
                    doc = json.loads(line[:MAX_LINE])
                except ValueError:
                    doc = None
                yield os.path.basename(path), n, doc if isinstance(doc, dict) else None


def verify(folder: str | None = None) -> Verification:
    """Walk the whole chain; the first entry whose hash, predecessor or sequence number
    does not fit is the broken link."""
    prev, seq, count = GENESIS, 0, 0
    for name, line, entry in iter_entries(folder):
        where = f"{name} line {line}"
        if entry is None:
            return Verification(False, count, prev, f"{where}: not a log entry")
        if entry.get("seq") != seq + 1:
            return Verification(False, count, prev, f"{where}: entry {entry.get('seq')} "
                                f"follows entry {seq} (an entry was removed or moved)")
        if entry.get("prev") != prev:
            return Verification(False, count, prev, f"{where}: entry {seq + 1} does not "
                                "follow the one before it (removed, moved or edited)")
        if entry.get("hash") != entry_hash(entry):
            return Verification(False, count, prev, f"{where}: entry {seq + 1} was edited "
                                "(its hash does not match its contents)")
        prev, seq, count = entry["hash"], seq + 1, count + 1
    return Verification(True, count, prev)


# ---------------------------------------------------------------------- what is recorded
def server_text(server: str) -> str:
    """A server URL or name for the log, without any credentials in it."""
    return _clean(re.sub(r"//[^/@]*@", "//", str(server)) if "://" in str(server)
                  and "dicom://" not in str(server) else str(server), 200)



def prediction_fields(p: Any, shown_anyway: bool = False) -> dict[str, Any]:
    """An AI result as the log records it (a :class:`~medview.core.modeling.Prediction`):
    hashes and the model, never who the patient is."""
    return {
        "input_sha256": p.input_sha256, "model_id": p.model_id,
        "model_version": p.model_version, "weights_sha256": p.weights_sha256,
        "computed_by": getattr(p, "computed_by", None), "backend": p.backend,
        "device": p.device, "in_scope": p.in_scope, "ood_score": p.ood_score,
        "ood_limit": p.ood_limit, "scope_reasons": [_clean(r) for r in p.scope_reasons],
        "decision": _clean(p.withheld_decision if p.withheld else p.decision),
        "shown_anyway": shown_anyway,
    }
