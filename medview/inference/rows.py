"""The prediction CSV format shared by the command line (one or many processes) and the
GUI worklist."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence

from medview.core.modeling import Prediction
from medview.core.presentation import present
from medview.core.safeio import atomic_write_bytes, plain_text

#: A spreadsheet treats a cell starting with one of these as a formula (CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_text(text: str) -> str:
    """A text cell that is safe to open in a spreadsheet and valid UTF-8: control
    characters and undecodable file-name bytes are escaped, and a leading formula
    character is neutralised with an apostrophe (OWASP's CSV-injection rule)."""
    text = plain_text(text)
    return "'" + text if text.startswith(_FORMULA_START) else text


def prediction_header(classes: list[str]) -> list[str]:
    return ["path", "model_id", "predicted", *[f"p_{c}" for c in classes], "in_scope",
            "ood_score", "warnings", "model_file", "model_sha256"]


def in_scope_text(p: Prediction) -> str:
    """``true``/``false``; empty when the model has no trust gate and nothing else
    put the image out of scope."""
    return "" if p.in_scope is None else ("true" if p.in_scope else "false")


def prediction_row(path: str, p: Prediction, score_out_of_scope: bool = False) -> list[str]:
    """One CSV row, of what :func:`~medview.core.presentation.present` allows: for an
    out-of-scope image the label and probabilities are left empty unless
    ``score_out_of_scope``; the reasons lead the warnings either way."""
    shown = present(p, reveal=score_out_of_scope)
    probs = (["" for _ in p.probabilities] if shown.probabilities is None
             else [f"{v:.6f}" for v in shown.probabilities.values()])
    score = "" if p.ood_score is None else f"{p.ood_score:.3f}"
    return [csv_text(path), csv_text(p.model_id), csv_text(shown.label or ""), *probs,
            in_scope_text(p), score, csv_text("; ".join(shown.notes)),
            csv_text(p.computed_by.get("file", "")), csv_text(p.computed_by.get("sha256", ""))]


#: the columns a worklist export adds after ``path``: what its table shows of each series
WORKLIST_COLUMNS = ["series", "study"]


def predictions_csv(rows: Iterable[tuple[str, Prediction]], classes: list[str],
                    score_out_of_scope: bool = False,
                    series: Sequence[tuple[str, str]] | None = None) -> str:
    """The prediction CSV; with ``series`` ((series, study) text per row, the worklist's),
    :data:`WORKLIST_COLUMNS` follow the path."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    header = prediction_header(classes)
    w.writerow(header if series is None else [header[0], *WORKLIST_COLUMNS, *header[1:]])
    for k, (path, p) in enumerate(rows):
        row = prediction_row(path, p, score_out_of_scope)
        if series is not None:
            row = [row[0], *(csv_text(t) for t in series[k]), *row[1:]]
        w.writerow(row)
    return buf.getvalue()


def write_predictions_csv(path: str, rows: Iterable[tuple[str, Prediction]],
                          classes: list[str], score_out_of_scope: bool = False,
                          series: Sequence[tuple[str, str]] | None = None) -> None:
    atomic_write_bytes(path, predictions_csv(rows, classes, score_out_of_scope, series)
                       .encode("utf-8"))
