"""Atomic writes and the prediction CSV format shared by the CLI and the GUI worklist."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import tempfile
from collections.abc import Iterable

from medview.core.modeling import Prediction
from medview.core.safeio import plain_text

#: A spreadsheet treats a cell starting with one of these as a formula (CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_text(text: str) -> str:
    """A text cell that is safe to open in a spreadsheet and valid UTF-8: control
    characters and undecodable file-name bytes are escaped, and a leading formula
    character is neutralised with an apostrophe (OWASP's CSV-injection rule)."""
    text = plain_text(text)
    return "'" + text if text.startswith(_FORMULA_START) else text


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
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def prediction_header(classes: list[str]) -> list[str]:
    return ["path", "model_id", "predicted", *[f"p_{c}" for c in classes], "warnings"]


def prediction_row(path: str, p: Prediction) -> list[str]:
    return [csv_text(path), csv_text(p.model_id), csv_text(p.label),
            *[f"{v:.6f}" for v in p.probabilities], csv_text("; ".join(p.warnings))]


def predictions_csv(rows: Iterable[tuple[str, Prediction]], classes: list[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(prediction_header(classes))
    for path, p in rows:
        w.writerow(prediction_row(path, p))
    return buf.getvalue()


def write_predictions_csv(path: str, rows: Iterable[tuple[str, Prediction]],
                          classes: list[str]) -> None:
    atomic_write_bytes(path, predictions_csv(rows, classes).encode("utf-8"))
