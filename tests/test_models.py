"""Model cards, the registry and safe weight loading (BAD_INPUTS item 22)."""

import json
import os
import shutil
import zipfile

import pytest

from medview.models.card import Card, CardError, read_card
from medview.models.loading import load_model
from medview.models.registry import discover_models
from medview.models.weights import WeightsError


@pytest.fixture
def model_copy(tiny_model, tmp_path):
    folder, _ = tiny_model
    dst = tmp_path / "models" / "tiny-patch"
    shutil.copytree(folder, dst)
    return dst


def _card(folder):
    return json.loads((folder / "card.json").read_text())


def _write(folder, card):
    (folder / "card.json").write_text(json.dumps(card))


def test_exported_card_validates_and_has_required_fields(model_copy):
    card = read_card(str(model_copy))
    for key in ("parent", "architecture", "classes", "thresholds", "calibration", "input",
                "preprocessing", "metrics", "training_data", "training", "intended_use",
                "out_of_scope", "limitations", "weights", "license"):
        assert key in card.data
    test = card.data["metrics"]["test"]
    assert {"value", "ci95"} <= set(test["auc"]) and test["n"] > 0
    assert len(card.weights_sha256) == 64
    versions = card.data["training"]["library_versions"]
    assert {"torch", "timm", "medview"} <= set(versions)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda c: c.pop("intended_use"), "missing field intended_use"),
        (lambda c: c.update(schema_version=99), "schema_version"),
        (lambda c: c.update(extra_code="__import__('os')"), "unknown field"),
        (lambda c: c["thresholds"].update(nope=0.5), "unknown class"),
        (lambda c: c["calibration"].update(temperature=-1), "temperature"),
        (lambda c: c["preprocessing"].update(mean=[0.5]), "one number per channel"),
        (lambda c: c.update(id="../evil"), "plain name"),
        (lambda c: c["weights"].update(sha256="xyz"), "64 lowercase hex"),
    ],
)
def test_broken_cards_are_refused_with_a_clear_reason(model_copy, mutate, message):
    card = _card(model_copy)
    mutate(card)
    with pytest.raises(CardError, match=message):
        Card.from_dict(card)


def test_broken_card_does_not_stop_other_models(model_copy, monkeypatch):
    models = model_copy.parent
    bad = models / "broken"
    shutil.copytree(model_copy, bad)
    (bad / "card.json").write_text("{ not json")
    (models / ".medview-export-123").mkdir()  # an export in progress is ignored
    monkeypatch.setenv("MEDVIEW_MODELS_DIR", str(models))
    reg = discover_models()
    assert "tiny-patch" in [m.id for m in reg.models]
    assert len(reg.errors) == 1 and "unreadable card" in reg.errors[0].reason
    with pytest.raises(KeyError, match="no model with id"):
        reg.get("missing")
    assert reg.get(str(model_copy)).id == "tiny-patch"  # a folder path works too


def test_weights_hash_mismatch_is_refused(model_copy):
    card = _card(model_copy)
    card["weights"]["sha256"] = "0" * 64
    _write(model_copy, card)
    with pytest.raises(WeightsError, match="does not match the card"):
        load_model(read_card(str(model_copy)))


def test_pickle_and_torchscript_are_refused(model_copy):
    import torch

    weights = model_copy / "weights.safetensors"
    torch.save({"w": torch.zeros(2)}, weights)  # a zip-based torch pickle
    with pytest.raises(WeightsError, match=r"TorchScript|ZIP"):
        load_model(read_card(str(model_copy)))
    import pickle

    weights.write_bytes(pickle.dumps({"w": 1}, protocol=2))
    with pytest.raises(WeightsError, match="pickle"):
        load_model(read_card(str(model_copy)))
    with zipfile.ZipFile(weights, "w") as z:
        z.writestr("code/model.py", "x")
    with pytest.raises(WeightsError, match="TorchScript"):
        load_model(read_card(str(model_copy)))


def test_truncated_weights_are_refused(model_copy):
    weights = model_copy / "weights.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 100])
    with pytest.raises(WeightsError, match="truncated"):
        load_model(read_card(str(model_copy)))


def test_wrong_shapes_are_refused(model_copy):
    from medview.core.progress import file_sha256

    card = _card(model_copy)
    card["architecture"]["args"]["num_classes"] = 2
    card["architecture"]["name"] = "test_resnet"
    _write(model_copy, card)
    with pytest.raises(WeightsError, match="do not fit"):
        load_model(read_card(str(model_copy)))
    assert file_sha256(str(model_copy / "weights.safetensors")) == card["weights"]["sha256"]


def test_hub_download_fails_clearly_offline(monkeypatch):
    import timm

    from medview.models.pretrained import BaseWeightsError, load_from_hub

    def offline(*a, **k):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(BaseWeightsError, match="no network"):
        load_from_hub("resnet18")


def test_models_cli_lists_sha_and_intended_use(model_copy, monkeypatch, capsys):
    from medview.cli import main

    monkeypatch.setenv("MEDVIEW_MODELS_DIR", str(model_copy.parent))
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    card = _card(model_copy)
    assert card["weights"]["sha256"] in out and "intended use" in out
    assert os.path.basename(str(model_copy)) in out


def test_selftest_passes_and_fails_honestly(model_copy, monkeypatch):
    from medview.selftest import run_selftest

    monkeypatch.setenv("MEDVIEW_MODELS_DIR", str(model_copy.parent))
    lines = []
    assert run_selftest(lines.append) == 0
    assert any("[PASS] model tiny-patch" in x for x in lines)
    assert lines[-1].endswith(" passed, 0 failed")
    card = _card(model_copy)
    card["weights"]["sha256"] = "1" * 64
    _write(model_copy, card)
    lines.clear()
    assert run_selftest(lines.append) == 1
    assert any("[FAIL] model tiny-patch" in x and "does not match" in x for x in lines)


def test_selftest_in_a_bundle_checks_every_module_came_from_it(model_copy, monkeypatch,
                                                                tmp_path):
    import sys

    from medview.selftest import foreign_modules, run_selftest

    monkeypatch.setenv("MEDVIEW_MODELS_DIR", str(model_copy.parent))
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    # a bundle folder that holds none of the loaded code: reported, and the run fails
    monkeypatch.setattr(sys, "_MEIPASS", str(tmp_path), raising=False)
    lines = []
    assert run_selftest(lines.append) == 1
    assert any("[FAIL] app bundle" in x and "outside the bundle" in x for x in lines)
    # every file under the bundle root: passes
    root = os.path.dirname(os.path.dirname(os.__file__))
    monkeypatch.setattr(sys, "_MEIPASS", "/", raising=False)
    lines.clear()
    assert run_selftest(lines.append) == 0
    assert any("[PASS] app bundle" in x for x in lines)
    assert "os" not in foreign_modules(root, {"os": os})
    embedded = type(os)("embedded")
    embedded.__file__ = "shibokensupport/__init__.py"  # in memory, not read from disk
    assert foreign_modules(str(tmp_path), {"os": os, "nofile": sys,
                                           "embedded": embedded}) == ["os"]


MODELS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models")
BUNDLED = sorted(os.path.join(MODELS, name) for name in os.listdir(MODELS))


@pytest.mark.parametrize("folder", BUNDLED, ids=os.path.basename)
def test_every_bundled_model_loads_and_runs(folder):
    """As timm tests every registered model: each bundled card validates, its weights match
    the card's sha256 and fit its architecture, and one forward pass gives a valid output."""
    import numpy as np
    import torch

    from medview.core.progress import file_sha256
    from medview.core.volume import ImageVolume
    from medview.inference.predictor import Predictor

    card = read_card(folder)
    assert card.source == "bundled" and card.id == os.path.basename(folder)
    assert file_sha256(card.weights_path) == card.weights_sha256
    assert os.path.getsize(card.weights_path) < 25 * 1024**2
    predictor = Predictor(card, "cpu")
    assert isinstance(predictor.model, torch.nn.Module) and not predictor.model.training
    rng = np.random.default_rng(0)
    p = predictor.predict(ImageVolume(rng.integers(0, 256, (1, 300, 260), np.uint8)), 0)
    assert p.classes == card.classes and abs(sum(p.probabilities) - 1) < 1e-6
    assert all(np.isfinite(p.probabilities))


def test_card_json_schema_is_generated_from_the_typed_card_and_checked_in():
    from medview.models.card import card_json_schema

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "medview", "models", "card.schema.json")
    with open(path) as f:
        assert json.load(f) == card_json_schema(), (
            "regenerate medview/models/card.schema.json from medview.models.card")


@pytest.mark.parametrize("folder", BUNDLED, ids=os.path.basename)
def test_bundled_cards_validate_against_the_json_schema_and_round_trip(folder):
    import jsonschema

    from medview.models.card import Card, card_json_schema

    with open(os.path.join(folder, "card.json")) as f:
        data = json.load(f)
    jsonschema.validate(data, card_json_schema())
    assert Card.from_dict(data).to_dict() == data
    bad = {**data, "architecture": {**data["architecture"], "extra": 1}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, card_json_schema())
    with pytest.raises(CardError, match="unknown field"):
        Card.from_dict(bad)


def test_card_replace_validates_like_a_card_from_disk(tiny_model):
    card = read_card(tiny_model[0]).card
    renamed = card.replace(name="Renamed", id="renamed")
    assert (renamed.name, renamed.id, card.name) == ("Renamed", "renamed", card.name)
    with pytest.raises(CardError, match="plain name"):
        card.replace(id="../escape")
    with pytest.raises(CardError, match="threshold"):
        card.replace(thresholds={card.classes[0].name: 1.5})
