"""The AI panel's state, without Qt: the models on offer and the one chosen, the image in
view, its prediction (and whether the user chose to see an out-of-scope one), its
saliency map, and the worklist of a batch run.

:class:`~medview.gui.model_panel.ModelPanel` renders this and starts the jobs; the rules
(what is shown of a prediction, when a saliency map may be drawn, how the worklist is
ordered and exported) live here.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from medview.core.modeling import Prediction
from medview.core.presentation import Presented, present
from medview.core.volume import ImageVolume
from medview.inference.predictor import PreparedInput
from medview.inference.session import ScoredItem
from medview.models.card import ModelCard
from medview.models.registry import Registry
from medview.state.events import Event


@dataclass(frozen=True)
class WorklistRow:
    """One scored series of the worklist."""

    description: str
    path: str
    prediction: Prediction
    volume: ImageVolume

    @classmethod
    def of(cls, item: ScoredItem) -> WorklistRow:
        return cls(item.volume.description or os.path.basename(item.path), item.path,
                   item.prediction, item.volume)

    @property
    def study(self) -> str:
        """The study of a DICOM series as the export names it: date and description (the
        patient's name, shown in the table, stays out of an exported file)."""
        st = self.volume.study
        return "  ".join(t for t in (st.study_date, st.study_description) if t)

    @property
    def presented(self) -> Presented:
        return present(self.prediction)


@dataclass(frozen=True)
class Saliency:
    """A saliency map for the image in view: (rows, cols), with how it was made."""

    values: np.ndarray
    method: str
    target: str


class PanelEvents:
    """What a view of :class:`PanelModel` subscribes to."""

    def __init__(self) -> None:
        #: the model list was (re)read; value: the Registry
        self.models = Event()
        #: the result in view changed; value: the Presented result, or None (cleared)
        self.result = Event()
        #: the saliency map changed; value: a Saliency, or None
        self.saliency = Event()
        #: the worklist was emptied for a new run; value: the class names
        self.worklist_reset = Event()
        #: a row was appended; value: its index in :attr:`PanelModel.worklist`
        self.worklist_row = Event()


class PanelModel:
    """The state of the AI panel (see the module docstring)."""

    def __init__(self) -> None:
        self.events = PanelEvents()
        self.registry: Registry | None = None
        self.cards: list[ModelCard] = []
        self.volume: ImageVolume | None = None
        self.index = 0
        self.prediction: Prediction | None = None
        self.prep: PreparedInput | None = None
        self.revealed = False
        self.saliency: Saliency | None = None
        self.worklist: list[WorklistRow] = []

    # ------------------------------------------------------------------ models
    def set_registry(self, registry: Registry) -> None:
        self.registry = registry
        self.cards = list(registry.models)
        self.events.models.emit(registry)

    def card(self, k: int) -> ModelCard | None:
        return self.cards[k] if 0 <= k < len(self.cards) else None

    # ------------------------------------------------------------------ image in view
    def set_image(self, volume: ImageVolume | None, index: int) -> bool:
        """The image in view; True when it changed (its result is then cleared)."""
        if volume is self.volume and index == self.index:
            return False
        self.volume, self.index = volume, index
        self.clear_result()
        return True

    def clear_result(self) -> None:
        self.prediction = None
        self.prep = None
        self.revealed = False
        self.saliency = None
        self.events.saliency.emit(None)
        self.events.result.emit(None)

    @property
    def presented(self) -> Presented | None:
        """What may be shown of the result in view."""
        if self.prediction is None:
            return None
        return present(self.prediction, reveal=self.revealed)

    def set_prediction(self, prediction: Prediction, prep: PreparedInput) -> None:
        self.prediction, self.prep = prediction, prep
        self.revealed = False
        self.saliency = None
        self.events.saliency.emit(None)
        self.events.result.emit(self.presented)

    def reveal(self) -> bool:
        """"Show anyway" on an out-of-scope result; False when there is nothing to
        reveal (no result, in scope, or already revealed)."""
        p = self.prediction
        if p is None or not p.withheld or self.revealed:
            return False
        self.revealed = True
        self.events.result.emit(self.presented)
        return True

    @property
    def shown_prediction(self) -> Prediction | None:
        """The prediction as the user sees it (restored and stamped when revealed)."""
        p = self.prediction
        return p.revealed() if p is not None and self.revealed else p

    @property
    def out_of_scope(self) -> bool:
        return self.prediction is not None and self.prediction.withheld

    def saliency_refusal(self) -> str | None:
        """Why no saliency map may be drawn now (None: it may)."""
        if self.out_of_scope and not self.revealed:
            return "Out of scope: saliency is drawn only after \"Show anyway\"."
        return None

    def set_saliency(self, values: np.ndarray, method: str, target: str) -> None:
        self.saliency = Saliency(values, method, target)
        self.events.saliency.emit(self.saliency)

    # ------------------------------------------------------------------ worklist
    def start_worklist(self, classes: list[str]) -> None:
        self.worklist = []
        self.events.worklist_reset.emit(classes)

    def add_scored(self, item: ScoredItem) -> None:
        """A row scored by a running batch, appended as it arrives."""
        self.worklist.append(WorklistRow.of(item))
        self.events.worklist_row.emit(len(self.worklist) - 1)

    def finish_worklist(self, items: Iterable[ScoredItem], classes: list[str]) -> None:
        """The whole batch: out-of-scope rows are kept apart, after the ones the model
        may answer (input order otherwise)."""
        rows = sorted((WorklistRow.of(it) for it in items),
                      key=lambda r: r.prediction.withheld)
        self.start_worklist(classes)
        for row in rows:
            self.worklist.append(row)
            self.events.worklist_row.emit(len(self.worklist) - 1)

    @property
    def worklist_summary(self) -> str:
        out = sum(r.prediction.withheld for r in self.worklist)
        return (f"Scored {len(self.worklist)} series"
                + (f"; {out} out of scope (no result shown)." if out else "."))

    def export_worklist(self, path: str, classes: list[str]) -> None:
        """The worklist as the command line's prediction CSV (written atomically)."""
        from medview.inference.rows import write_predictions_csv

        if self.worklist:
            classes = self.worklist[0].prediction.classes
        write_predictions_csv(path, [(r.path, r.prediction) for r in self.worklist], classes,
                              series=[(r.description, r.study) for r in self.worklist])

    def export_folder(self) -> str:
        """Where an export dialog starts: the folder of the first scored study, else the
        home folder (never the process's working directory)."""
        folders = [os.path.dirname(r.path) for r in self.worklist]
        return next((f for f in folders if f and os.path.isdir(f)), os.path.expanduser("~"))
