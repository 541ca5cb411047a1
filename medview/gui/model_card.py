"""The model card dialog: where the model was checked (a table, from the validated card),
then its README (untrusted Markdown, rendered without loading anything it names) and
card.json as plain text."""

from __future__ import annotations

import json
import os

from PySide6.QtGui import QTextCursor, QTextDocument
from PySide6.QtWidgets import (
    QAbstractItemView,
    QDialog,
    QPlainTextEdit,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from medview.gui.panels import plain_label
from medview.models.card import (
    NO_GATE,
    NOT_CHECKED,
    ModelCard,
    gate_summary,
    reliance_lines,
    where_checked,
)


def card_readme(card) -> str:
    """A model folder's README as text: a regular file inside the folder, at most 1 MiB
    (a FIFO or a link to a device never blocks the window)."""
    from medview.core.safeio import read_capped
    from medview.models.card import MAX_README_BYTES, README_FILE

    try:
        data = read_capped(os.path.join(card.folder, README_FILE), MAX_README_BYTES,
                           root=card.folder)
    except FileNotFoundError:
        return ""
    except Exception as exc:  # UnsafeFileError (FIFO, device, too large, outside), OSError
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
        return f"(README not shown: {reason})"
    return data.decode("utf-8", errors="replace")


def safe_markdown(text: str) -> str:
    """A README's Markdown without what could make the viewer open something: images
    become their alt text, links their text, reference definitions are dropped (raw HTML
    is switched off when rendering). Qt reads an image path straight from disk, so a
    README naming a FIFO or a device would otherwise hang the window."""
    import re

    text = re.sub(r"!\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"!\[([^\]]*)\]\[[^\]]*\]", r"\1", text)
    text = re.sub(r"(?<!!)\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"(?m)^ {0,3}\[[^\]]+\]:\s*\S+.*$", "", text)
    return re.sub(r"<(?:https?|file|ftp)://[^>]*>", "", text)


class MarkdownView(QTextBrowser):
    """A model README rendered as Markdown. A README is untrusted: no raw HTML, links are
    not followed and no resource (image, file, URL) it names is loaded."""

    def __init__(self) -> None:
        super().__init__()
        self.setOpenLinks(False)
        self.setOpenExternalLinks(False)

    def setMarkdown(self, text: str) -> None:
        features = QTextDocument.MarkdownFeature(
            QTextDocument.MarkdownFeature.MarkdownDialectGitHub.value
            | QTextDocument.MarkdownFeature.MarkdownNoHTML.value)
        self.document().setMarkdown(safe_markdown(text), features)
        self.moveCursor(QTextCursor.MoveOperation.Start)  # open at the top

    def loadResource(self, _type, _name):
        return None


class ModelCardDialog(QDialog):
    """A model's card, README and card.json (non-modal)."""

    def __init__(self, card: ModelCard, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        dlg = self
        dlg.setWindowTitle(f"Model card: {card.name}")
        sc = card.card.scope
        head = plain_label("Where this model was checked - " + (
            f"trust gate: {gate_summary(card.card)}" if sc is not None else NO_GATE))
        head.setStyleSheet("font-weight: bold;")
        rows = where_checked(card.card)
        table = QTableWidget(len(rows), 3)
        table.setHorizontalHeaderLabels(["Where", "Images", "Result"])
        table.verticalHeader().setVisible(False)
        table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        for r, cells in enumerate(rows):
            for c, value in enumerate(cells):
                table.setItem(r, c, QTableWidgetItem(value))
        table.resizeColumnsToContents()
        table.horizontalHeader().setStretchLastSection(True)
        known = plain_label(
            (f"Known failure modes: {sc.known_failures}\n" if sc and sc.known_failures
             else "") + NOT_CHECKED)
        rel = card.card.reliance
        reliance = plain_label("What the model relies on (shortcut audit): "
                               + "\n".join(reliance_lines(card.card)))
        if rel is not None and rel.warnings:
            reliance.setStyleSheet("color: #b00020;")
        readme = MarkdownView()
        readme.setMarkdown(card_readme(card))
        raw = QPlainTextEdit()
        raw.setReadOnly(True)
        raw.setPlainText(json.dumps(card.data, indent=2))
        docs = QTabWidget()
        docs.addTab(readme, "README")
        docs.addTab(raw, "card.json")
        lay = QVBoxLayout(dlg)
        lay.addWidget(head)
        lay.addWidget(table, 2)
        lay.addWidget(known)
        lay.addWidget(reliance)
        lay.addWidget(docs, 3)
        dlg.resize(900, 760)
        dlg.setModal(False)
        self.table = table
        self.readme = readme
        self.reliance = reliance
