"""The trust gate end to end: fitted at training, stored beside the weights with its
sha256, scored in the same forward pass, population checks from DICOM tags, and what
the command line writes for images outside a model's scope."""

from __future__ import annotations

import csv
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from medview.core.volume import ImageVolume, Population
from medview.inference import scope
from medview.inference.features import SCORE
from medview.inference.predictor import Predictor
from medview.io import load
from medview.models.card import SCOPE_FILE, read_card
from medview.models.weights import WeightsError
from tests.factory import make_dataset, write


@pytest.fixture(scope="module")
def predictor(tiny_model):
    return Predictor(read_card(tiny_model[0]), "cpu", backend="torch")


def _images(data, cls, n=None):
    names = sorted(os.listdir(os.path.join(data, cls)))[:n]
    return [os.path.join(data, cls, f) for f in names]


def _gradient_png(path) -> str:
    yy, xx = np.mgrid[:64, :64]
    Image.fromarray(((xx + yy) * 2).astype(np.uint8)).save(path)
    return str(path)


def _copy_model(folder, dest, **scope_changes) -> str:
    """A copy of a model folder whose card's scope section has ``scope_changes``."""
    out = shutil.copytree(folder, dest)
    path = os.path.join(out, "card.json")
    with open(path) as f:
        card = json.load(f)
    card["scope"].update(scope_changes)
    with open(path, "w") as f:
        json.dump(card, f)
    return out


def test_training_fits_the_gate_and_the_card_records_it(tiny_model):
    import hashlib

    folder, _ = tiny_model
    card = read_card(folder).card
    sc = card.scope
    assert sc is not None and sc.method == scope.DEFAULT_METHOD
    assert sc.percentile == scope.DEFAULT_PERCENTILE
    assert sc.stages[0] == scope.INPUT_LAYOUT_STAGE and len(sc.stages) == 1 + scope.STAGES_USED
    with open(os.path.join(folder, SCOPE_FILE), "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == sc.sha256
    assert 0.9 <= sc.in_distribution_pass_rate <= 1.0
    checked = sc.checked
    assert checked["internal_test"]["n"] > 0
    assert set(checked["quick_check"]) >= {"synthetic graphics", "inverted", "rotated 90"}
    with open(os.path.join(folder, "README.md")) as f:
        assert "## Where this model was checked" in f.read()


def test_one_forward_gives_the_same_logits_as_the_model(predictor):
    import torch

    prep = predictor.prepare(ImageVolume(np.full((1, 64, 64), 110, np.uint8)), 0)
    x = torch.from_numpy(prep.tensor[np.newaxis])
    scored = predictor.forward(prep.tensor[np.newaxis])
    with torch.inference_mode():
        plain = predictor.model(x).numpy()
    np.testing.assert_allclose(scored[scope.LOGITS], plain, rtol=1e-5, atol=1e-5)
    assert set(scored) == {scope.LOGITS, SCORE}
    feats = predictor.tap.forward(predictor.model, x)  # everything, for fitting
    assert set(feats) == {scope.LOGITS, scope.PRE_LOGITS, *predictor.gate.stages}
    np.testing.assert_allclose(feats[scope.LOGITS], plain, rtol=1e-5, atol=1e-5)
    # the score computed in torch inside the forward pass is the gate's own (numpy) score
    np.testing.assert_allclose(scored[SCORE], predictor.gate.score(feats), rtol=1e-4)


def test_training_like_images_pass_and_unlike_ones_are_withheld(predictor, tiny_model,
                                                                tmp_path):
    _, data = tiny_model
    vols = load(_images(data, "patch", 12) + _images(data, "plain", 12)).volumes
    preds = [predictor.predict(v, 0) for v in vols]
    assert np.mean([p.in_scope for p in preds]) >= 0.9
    assert all(p.ood_score is not None and p.ood_limit == predictor.gate.limit for p in preds)
    inside = [p for p in preds if p.in_scope]
    assert all(p.label in p.classes and not p.scope_reasons for p in inside)
    odd = predictor.predict(load([_gradient_png(tmp_path / "g.png")]).volumes[0], 0)
    assert odd.withheld and odd.label == "" and odd.ood_score > odd.ood_limit
    assert odd.scope_reasons[0].startswith("looks unlike this model's training images: "
                                           "score")
    inverted = ImageVolume(255 - vols[0].pixels)
    assert predictor.predict(inverted, 0).withheld


def test_population_reasons_from_dicom_tags(tiny_model, tmp_path):
    folder = _copy_model(tiny_model[0], tmp_path / "m", body_parts=["CHEST"],
                         view_positions=["AP"], age_years=[1, 5])
    pred = Predictor(read_card(folder), "cpu")
    img = np.asarray(Image.open(_images(tiny_model[1], "plain", 1)[0]))

    def film(**tags):
        ds = make_dataset(img.astype(np.uint16), modality="DX", intercept=0.0)
        for k, v in tags.items():
            setattr(ds, k, v)
        return load([write(ds, tmp_path / f"f{len(os.listdir(tmp_path))}.dcm")]).volumes[0]

    ok = film(BodyPartExamined="CHEST", ViewPosition="AP", PatientAge="003Y")
    assert ok.population == Population("CHEST", "AP", 3.0)
    assert not scope.population_reasons(pred.card.card, ok, 0)
    adult = pred.predict(film(PatientAge="064Y", ViewPosition="PA"), 0)
    assert adult.withheld
    assert "patient age 64 y, model is for 1-5 y" in adult.scope_reasons
    assert "view PA, model is for AP" in adult.scope_reasons
    # age from the birth and study dates; the 6th birthday is past the range [1, 5]
    old = film(PatientBirthDate="20100301", StudyDate="20160302")
    assert old.population.age_years == pytest.approx(6.0, abs=0.01)
    assert any("patient age 6 y" in r for r in scope.population_reasons(pred.card.card,
                                                                         old, 0))
    # the lower bound holds too: 11 months is before the 1st birthday, 12 months is in
    infant = film(PatientAge="011M")
    assert "patient age 11 months, model is for 1-5 y" in scope.population_reasons(
        pred.card.card, infant, 0)
    assert pred.predict(infant, 0).withheld
    assert not scope.population_reasons(pred.card.card, film(PatientAge="012M"), 0)
    lateral = film(ViewPosition="LL", BodyPartExamined="SKULL")
    reasons = scope.population_reasons(pred.card.card, lateral, 0)
    assert "view LL (lateral), model is for AP" in reasons
    assert "body part SKULL, model is for CHEST" in reasons
    ct = film()
    ct.modality = "CT"
    assert "modality CT, model is for CR/DX" in scope.population_reasons(pred.card.card, ct, 0)
    # unknown metadata is no reason: the content gate decides
    assert not scope.population_reasons(pred.card.card, ImageVolume(img[None]), 0)


@pytest.mark.parametrize("text, years", [("064Y", 64), ("006M", 0.5), ("010W", 70 / 365.25),
                                         ("000Y", None), ("000D", 0.0), ("", None),
                                         ("999Y", None), ("abc", None)])
def test_patient_age_text(text, years):
    from pydicom.dataset import Dataset

    from medview.io.dicom import patient_age_years

    ds = Dataset()
    ds.PatientAge = text
    got = patient_age_years(ds)
    assert got == (None if years is None else pytest.approx(years, abs=1e-3))


def test_tampered_missing_or_mismatched_gate_refuses_the_model(tiny_model, tmp_path):
    folder = _copy_model(tiny_model[0], tmp_path / "tampered")
    path = os.path.join(folder, SCOPE_FILE)
    with open(path, "rb") as f:
        data = bytearray(f.read())
    data[-1] ^= 1
    with open(path, "wb") as f:
        f.write(bytes(data))
    with pytest.raises(WeightsError, match=r"trust gate.*sha256"):
        Predictor(read_card(folder), "cpu")
    os.remove(path)
    with pytest.raises(WeightsError, match="trust gate"):
        Predictor(read_card(folder), "cpu")
    bad_stage = _copy_model(tiny_model[0], tmp_path / "stage", stages=["no_such.module"])
    with pytest.raises(WeightsError, match=r"no_such\.module"):
        Predictor(read_card(bad_stage), "cpu")


def test_cli_withholds_out_of_scope_rows_unless_asked(tiny_model, tmp_path, capsys):
    from medview.cli import main

    folder, data = tiny_model
    odd = _gradient_png(tmp_path / "gradient.png")
    films = _images(data, "patch", 3)
    out = tmp_path / "scores.csv"
    assert main(["predict", odd, *films, "--model", folder, "--csv", str(out)]) == 0
    rows = {os.path.basename(r["path"]): r for r in csv.DictReader(out.open())}
    header = next(csv.reader(out.open()))
    assert header == ["path", "model_id", "predicted", "p_patch", "p_plain", "in_scope",
                      "ood_score", "warnings", "model_file", "model_sha256"]
    g = rows["gradient.png"]
    assert g["in_scope"] == "false" and g["predicted"] == "" and g["p_patch"] == ""
    assert float(g["ood_score"]) > 0 and "out of scope: looks unlike" in g["warnings"]
    assert sum(r["in_scope"] == "true" and r["predicted"] == "patch" for r in rows.values()) >= 2
    assert main(["predict", odd, "--model", folder, "--csv", str(out),
                 "--score-out-of-scope"]) == 0
    (g,) = list(csv.DictReader(out.open()))
    assert g["in_scope"] == "false" and g["predicted"] in ("patch", "plain")
    assert float(g["p_patch"]) + float(g["p_plain"]) == pytest.approx(1.0, abs=1e-5)
    capsys.readouterr()
    assert main(["predict", odd, "--model", folder, "--json"]) == 0
    (p,) = json.loads(capsys.readouterr().out)["predictions"]
    assert p["in_scope"] is False and p["predicted"] is None and p["probabilities"] is None
    assert p["scope_reasons"] and p["ood_score"] > p["ood_limit"]


def test_explain_refuses_out_of_scope_and_stamps_when_asked(tiny_model, tmp_path, capsys):
    from medview.cli import main

    folder, _ = tiny_model
    odd = _gradient_png(tmp_path / "gradient.png")
    png = tmp_path / "overlay.png"
    assert main(["explain", odd, "--model", folder, "--out", str(png)]) == 3
    assert not png.exists() and "outside this model's scope" in capsys.readouterr().err
    assert main(["explain", odd, "--model", folder, "--out", str(png),
                 "--score-out-of-scope"]) == 0
    img = np.asarray(Image.open(png))
    band = img[:4].reshape(-1, 3).mean(0)
    assert band[0] > 150 and band[1] < 60  # the red OUT OF SCOPE band across the top
    assert "OUT OF SCOPE" in capsys.readouterr().out


def test_bundled_models_carry_a_checked_gate():
    """Each bundled model's gate loads (sha256, stages) and its card says where it was
    checked, with the targets of the out-of-distribution benchmark met."""
    from medview.models.registry import discover_models

    bundled = [c for c in discover_models().models if c.source == "bundled"]
    assert {c.id for c in bundled} >= {"cxr-pneumonia", "cxr-pneumonia-type"}
    for card in bundled:
        sc = card.card.scope
        assert sc.method == "multi_depth" and sc.age_years == [1, 5]
        assert sc.view_positions == ["AP"] and sc.body_parts == ["CHEST"]
        assert Predictor(card, "cpu").gate is not None
        checked = sc.checked
        assert checked["internal_test"]["in_scope"] >= 0.95
        cats = checked["ood_benchmark"]
        assert {"CT", "MR", "US", "photo", "synthetic", "inverted", "rotated 90"} <= set(cats)
        withheld = sum(c["withheld"] * c["n"] for c in cats.values()) / sum(
            c["n"] for c in cats.values())
        assert withheld >= 0.99
        assert "adult" in sc.known_failures
        # ... and what it relies on: the shortcut audit of its test split
        rel = card.card.reliance
        assert rel is not None and rel.n >= 600 and len(rel.flip_rate) >= 10
        assert "lungs hidden (lung-field estimate)" in rel.masked_auc


def test_gate_file_leading_outside_the_model_folder_is_refused(tiny_model, tmp_path):
    folder = _copy_model(tiny_model[0], tmp_path / "linked")
    outside = tmp_path / "elsewhere.safetensors"
    os.replace(os.path.join(folder, SCOPE_FILE), outside)
    os.symlink(outside, os.path.join(folder, SCOPE_FILE))
    with pytest.raises(WeightsError, match="trust gate"):
        Predictor(read_card(folder), "cpu")


def test_models_command_names_the_gate_and_population(tiny_model, monkeypatch, capsys):
    from medview.cli import main

    monkeypatch.setenv("MEDVIEW_MODELS_DIR", os.path.dirname(tiny_model[0]))
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "trust gate: multi_depth, limit" in out and "population: modality CR/DX" in out
    assert "WARNING: SMALL TEST SET" in out  # the tiny model was tested on a few images
    assert main(["models", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    tiny = next(m for m in doc["models"] if m["id"] == "tiny-patch")
    assert tiny["scope"]["method"] == "multi_depth"


def test_cli_shows_progress_on_a_terminal_and_says_what_it_wrote(tiny_model, tmp_path,
                                                                 monkeypatch):
    import io
    import sys

    from medview.cli import main

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    folder, data = tiny_model
    out = tmp_path / "s.csv"
    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    assert main(["predict", *_images(data, "patch", 3), "--model", folder, "--csv",
                 str(out)]) == 0
    text = term.getvalue()
    assert "scoring" in text and "3/3" in text  # the bar reached the end
    assert text.rstrip().endswith(f"wrote 3 rows to {out}")
    quiet = io.StringIO()  # not a terminal: no bar, only the summary line
    monkeypatch.setattr(sys, "stderr", quiet)
    assert main(["predict", *_images(data, "patch", 3), "--model", folder, "--csv",
                 str(out)]) == 0
    assert quiet.getvalue() == f"wrote 3 rows to {out}\n"
    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    png = tmp_path / "o.png"
    assert main(["explain", _images(data, "patch", 1)[0], "--model", folder, "--method",
                 "occlusion", "--out", str(png)]) == 0
    assert "saliency (occlusion)" in term.getvalue()
