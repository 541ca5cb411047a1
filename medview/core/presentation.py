"""What a consumer may show of one prediction: the one rendering of the out-of-scope rule.

The trust gate decides once (:attr:`Prediction.in_scope`); every surface that shows a
result (the CSV, ``--json``, the worklist, the AI panel, the DICOM SR) asks
:func:`present` what it may show, instead of applying the rule itself. An image outside
the model's scope has its label, probabilities and decision withheld unless the user
deliberately asked to see them ("Show anyway", ``--score-out-of-scope``); the reasons
lead its notes either way.
"""

from __future__ import annotations

from dataclasses import dataclass

from medview.core.modeling import Prediction

#: how the in-scope flag reads in a table (None: the model has no content gate)
SCOPE_WORDS = {True: "yes", False: "no", None: "unchecked"}


@dataclass(frozen=True)
class Presented:
    """One prediction as it may be shown."""

    prediction: Prediction
    #: the label, or None when withheld (out of scope and not revealed)
    label: str | None
    #: class -> probability, or None when withheld
    probabilities: dict[str, float] | None
    #: the decision text (a withheld one says so; a revealed one is stamped OUT OF SCOPE)
    decision: str
    #: out of scope, and the user asked to see the result anyway
    revealed: bool
    #: "out of scope: <reason>" for each scope reason, then the warnings
    notes: tuple[str, ...]

    @property
    def withheld(self) -> bool:
        """Out of scope and nothing of the answer may be shown."""
        return self.label is None

    @property
    def out_of_scope(self) -> bool:
        return self.prediction.withheld

    @property
    def label_text(self) -> str:
        """The label for a table cell: "out of scope" when withheld."""
        return "out of scope" if self.label is None else self.label

    @property
    def scope_text(self) -> str:
        return SCOPE_WORDS[self.prediction.in_scope]

    @property
    def banner(self) -> str:
        """What the panel says above an out-of-scope result ("" when in scope)."""
        p = self.prediction
        if not p.withheld:
            return ""
        reasons = "\n".join(f"- {r}" for r in p.scope_reasons)
        if self.revealed:
            return ("OUT OF SCOPE: shown on request. This image is outside what this model "
                    "was built for; do not rely on this result:\n" + reasons)
        return ("OUT OF SCOPE: no result is shown. This image is outside what this model "
                "was built for:\n" + reasons)


def score_and_limit(score: float, limit: float) -> tuple[str, str]:
    """An out-of-distribution score and its limit as text, with as many decimals (1 to 6)
    as it takes for the two to read as they compare: 3.04 against 2.98 is "3.04" and
    "2.98", never "3.0" and "3.0"."""
    a = b = ""
    for decimals in range(1, 7):
        a, b = f"{score:.{decimals}f}", f"{limit:.{decimals}f}"
        if a != b or score == limit:
            break
    return a, b


def present(p: Prediction, reveal: bool = False) -> Presented:
    """What may be shown of ``p``; ``reveal`` is the user's deliberate request to see an
    out-of-scope result (it changes nothing for an image in scope)."""
    revealed = p.withheld and reveal
    hide = p.withheld and not reveal
    shown = p.revealed() if revealed else p
    notes = tuple([f"out of scope: {r}" for r in p.scope_reasons] + list(p.warnings))
    return Presented(
        prediction=p,
        label=None if hide else shown.label,
        probabilities=None if hide else dict(zip(p.classes, p.probabilities, strict=True)),
        decision=shown.decision, revealed=revealed, notes=notes)
