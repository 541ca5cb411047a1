"""The AI panel's state without Qt (medview.state.panel): what is shown of a prediction,
"Show anyway", when a saliency map may be drawn, the worklist's order and export."""

from __future__ import annotations

import csv
import os

import numpy as np

from medview.core.modeling import Prediction
from medview.core.presentation import present
from medview.core.volume import ImageVolume
from medview.inference.rows import prediction_row
from medview.inference.session import ScoredItem
from medview.state.panel import PanelModel


def _prediction(in_scope: bool | None = True, label: str = "PNEUMONIA") -> Prediction:
    p = Prediction(model_id="m", model_version="1", weights_sha256="0" * 64,
                   classes=["NORMAL", "PNEUMONIA"], probabilities=[0.2, 0.8],
                   label=label, decision=f"{label}: p 0.80 >= 0.5", threshold=0.5,
                   input_sha256="1" * 64, device="cpu", in_scope=in_scope,
                   ood_score=None if in_scope is None else (1.0 if in_scope else 9.0),
                   ood_limit=None if in_scope is None else 3.0,
                   warnings=["a warning"])
    if in_scope is False:
        p.scope_reasons = ["looks unlike this model's training images"]
        p.withheld_label, p.withheld_decision = p.label, p.decision
        p.label, p.decision = "", "withheld: out of scope"
    return p


def _recorder(model: PanelModel) -> dict[str, list]:
    seen: dict[str, list] = {"result": [], "saliency": [], "rows": [], "reset": []}
    model.events.result.connect(seen["result"].append)
    model.events.saliency.connect(seen["saliency"].append)
    model.events.worklist_row.connect(seen["rows"].append)
    model.events.worklist_reset.connect(seen["reset"].append)
    return seen


def test_an_in_scope_result_is_shown_whole():
    model = PanelModel()
    seen = _recorder(model)
    model.set_prediction(_prediction(), prep=None)
    shown = seen["result"][-1]
    assert shown.label == "PNEUMONIA" and shown.probabilities == {"NORMAL": 0.2,
                                                                  "PNEUMONIA": 0.8}
    assert not shown.out_of_scope and shown.banner == ""
    assert model.saliency_refusal() is None and not model.reveal()
    assert seen["saliency"] == [None]  # a new result drops the old map


def test_an_out_of_scope_result_is_withheld_until_revealed():
    model = PanelModel()
    seen = _recorder(model)
    model.set_prediction(_prediction(in_scope=False), prep=None)
    shown = seen["result"][-1]
    assert shown.withheld and shown.label is None and shown.probabilities is None
    assert shown.label_text == "out of scope" and shown.scope_text == "no"
    assert "no result is shown" in shown.banner
    assert shown.notes[0] == "out of scope: looks unlike this model's training images"
    assert "Show anyway" in model.saliency_refusal()
    assert model.reveal()
    shown = seen["result"][-1]
    assert shown.revealed and shown.label == "PNEUMONIA"
    assert shown.decision.startswith("OUT OF SCOPE (shown on request)")
    assert "shown on request" in shown.banner and "no result is shown" not in shown.banner
    assert model.saliency_refusal() is None
    assert model.shown_prediction.label == "PNEUMONIA" and model.shown_prediction.withheld
    assert not model.reveal()  # once
    assert len(seen["result"]) == 2


def test_every_surface_presents_the_same_way():
    """The CSV row, the JSON and the panel agree on what is withheld."""
    from medview.cli import _pred_dict

    p = _prediction(in_scope=False)
    row = prediction_row("a.png", p)
    assert row[2:5] == ["", "", ""] and row[5] == "false"
    assert _pred_dict(p)["predicted"] is None and _pred_dict(p)["probabilities"] is None
    shown = present(p)
    assert shown.label is None and shown.probabilities is None
    revealed = prediction_row("a.png", p, score_out_of_scope=True)
    assert revealed[2:5] == ["PNEUMONIA", "0.200000", "0.800000"]
    assert _pred_dict(p, True)["probabilities"] == present(p, True).probabilities
    unchecked = present(_prediction(in_scope=None))
    assert unchecked.scope_text == "unchecked" and unchecked.label == "PNEUMONIA"


def test_a_new_image_clears_the_result_and_the_map():
    model = PanelModel()
    seen = _recorder(model)
    vol = ImageVolume(np.zeros((1, 4, 4), np.uint8))
    assert model.set_image(vol, 0)
    model.set_prediction(_prediction(), prep=None)
    model.set_saliency(np.ones((4, 4)), "gradcam", "PNEUMONIA")
    assert model.saliency.method == "gradcam"
    assert not model.set_image(vol, 0)  # the same image: nothing changes
    assert model.prediction is not None
    assert model.set_image(vol, 1)
    assert model.prediction is None and model.saliency is None
    assert seen["result"][-1] is None and seen["saliency"][-1] is None


def _item(k: int, in_scope: bool, folder: str) -> ScoredItem:
    path = os.path.join(folder, f"film{k}.png")
    vol = ImageVolume(np.zeros((1, 4, 4), np.uint8), description=f"film {k}",
                      source_paths=[path])
    return ScoredItem(vol, 0, path, _prediction(in_scope=in_scope), key=k)


def test_worklist_keeps_out_of_scope_rows_apart_and_exports_them(tmp_path):
    model = PanelModel()
    seen = _recorder(model)
    items = [_item(0, False, str(tmp_path)), _item(1, True, str(tmp_path)),
             _item(2, True, str(tmp_path))]
    model.start_worklist(["NORMAL", "PNEUMONIA"])
    for it in items:  # as a running batch reports them
        model.add_scored(it)
    assert [r.description for r in model.worklist] == ["film 0", "film 1", "film 2"]
    model.finish_worklist(items, ["NORMAL", "PNEUMONIA"])
    assert [r.description for r in model.worklist] == ["film 1", "film 2", "film 0"]
    assert seen["reset"] == [["NORMAL", "PNEUMONIA"]] * 2 and seen["rows"][-3:] == [0, 1, 2]
    assert model.worklist_summary == "Scored 3 series; 1 out of scope (no result shown)."
    out = tmp_path / "worklist.csv"
    model.export_worklist(str(out), [])
    with open(out, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0][:5] == ["path", "series", "study", "model_id", "predicted"]
    assert [r[1] for r in rows[1:]] == ["film 1", "film 2", "film 0"]
    assert [r[4] for r in rows[1:]] == ["PNEUMONIA", "PNEUMONIA", ""]
    assert model.export_folder() == str(tmp_path)
