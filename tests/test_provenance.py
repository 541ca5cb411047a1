"""Provenance that is checked, not cited: every backend reads and verifies the model file
that computes a result, the exported graph is bound to the weights it came from, results
name the file that computed them, and broken outputs are failures, never a label."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medview.cli import main
from medview.core.volume import ImageVolume
from medview.inference.predictor import NonFiniteOutput, Predictor
from medview.models.card import CardError, read_card
from medview.models.weights import WeightsError
from tests.test_backends import _copy, _graph_proto, _set_graph


def _film(data: str) -> str:
    folder = os.path.join(data, "plain")
    return os.path.join(folder, sorted(os.listdir(folder))[0])


def _weights(m: str) -> str:
    return os.path.join(m, "weights.safetensors")


@pytest.mark.parametrize("backend", ["onnx", "torch"])
@pytest.mark.parametrize("case", ["fifo", "dev-zero", "link-out", "pickle", "sparse"])
def test_tampered_weights_are_refused_on_every_backend(tiny_model, tmp_path, backend, case):
    m = _copy(tiny_model, tmp_path, f"{case}-{backend}")
    w = _weights(m)
    os.remove(w)
    if case == "fifo":
        os.mkfifo(w)
    elif case == "dev-zero":
        os.symlink("/dev/zero", w)
    elif case == "link-out":
        outside = tmp_path / f"outside-{backend}.safetensors"
        shutil.copy(_weights(tiny_model[0]), outside)
        os.symlink(outside, w)
    elif case == "pickle":
        import pickle

        Path(w).write_bytes(pickle.dumps({"w": [1, 2, 3]}))
    else:
        with open(w, "wb") as f:
            f.truncate(3 * 1024**3)
    with pytest.raises(WeightsError):
        Predictor(read_card(m), "cpu", backend)


def test_auto_never_computes_with_unverified_weights(tiny_model, tmp_path):
    m = _copy(tiny_model, tmp_path)
    os.remove(_weights(m))
    os.symlink("/dev/zero", _weights(m))
    with pytest.raises(WeightsError):
        Predictor(read_card(m), "cpu")  # the graph is refused, then torch refuses too


def test_a_graph_whose_classifier_was_changed_is_refused(tiny_model, tmp_path):
    """The attacker shifts the classifier's bias in the graph and updates the graph's
    sha256 in the card: the graph no longer computes the weights' model."""
    from onnx import numpy_helper

    m = _copy(tiny_model, tmp_path)
    model = _graph_proto(m)
    bias = next(t for t in model.graph.initializer if t.name.endswith("classifier.bias"))
    shifted = numpy_helper.to_array(bias) + np.array([-20.0, 20.0], np.float32)
    bias.CopyFrom(numpy_helper.from_array(shifted.astype(np.float32), bias.name))
    _set_graph(m, model.SerializeToString())
    with pytest.raises(WeightsError, match="differs from the model's weights"):
        Predictor(read_card(m), "cpu", "onnx")
    auto = Predictor(read_card(m), "cpu")  # the automatic choice computes with torch
    assert auto.backend == "torch"
    assert any("differs from the model's weights" in n for n in auto.notices)


def test_a_graph_exported_from_other_weights_is_not_used(tiny_model, tmp_path):
    m = _copy(tiny_model, tmp_path)
    path = Path(m) / "card.json"
    card = json.loads(path.read_text())
    card["graph"]["weights_sha256"] = "ab" * 32
    path.write_text(json.dumps(card))
    with pytest.raises(WeightsError, match="not exported from this model's weights"):
        Predictor(read_card(m), "cpu", "onnx")
    assert Predictor(read_card(m), "cpu").backend == "torch"


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_results_name_the_file_that_computed_them(tiny_model, tmp_path, backend):
    folder, data = tiny_model
    card = read_card(folder)
    p = Predictor(card, "cpu", backend).predict(ImageVolume(
        np.zeros((1, 64, 64), np.uint8)), 0)
    want = ({"file": "graph.onnx", "sha256": card.card.graph.sha256} if backend == "onnx"
            else {"file": "weights.safetensors", "sha256": card.weights_sha256})
    assert p.computed_by == want
    out = tmp_path / "p.csv"
    assert main(["predict", _film(data), "--model", folder, "--csv", str(out),
                 "--backend", backend]) == 0
    import csv

    row = next(csv.DictReader(out.open()))
    assert (row["model_file"], row["model_sha256"]) == (want["file"], want["sha256"])
    r = subprocess.run([sys.executable, "-m", "medview", "predict", _film(data), "--model",
                        folder, "--json", "--backend", backend], capture_output=True,
                       text=True)
    doc = json.loads(r.stdout)["predictions"][0]
    assert doc["computed_by"] == want and doc["weights_sha256"] == card.weights_sha256


def test_non_finite_outputs_are_a_failure_not_a_label(tiny_model, tmp_path, monkeypatch):
    folder, _data = tiny_model
    pred = Predictor(read_card(folder), "cpu", "torch")
    real = pred.engine.run

    def nan_run(batch, batch_size=16, maps=False):
        out = real(batch, batch_size, maps)
        out["logits"] = out["logits"].copy()
        out["logits"][0, 0] = np.nan
        return out

    monkeypatch.setattr(pred.engine, "run", nan_run)
    with pytest.raises(NonFiniteOutput, match="non-finite"):
        pred.predict(ImageVolume(np.zeros((1, 64, 64), np.uint8)), 0)


def test_a_batch_keeps_going_past_an_image_with_non_finite_outputs(tiny_model, monkeypatch):
    from medview.core.progress import drain
    from medview.inference.session import score_stream

    folder, _data = tiny_model
    pred = Predictor(read_card(folder), "cpu", "torch")
    real = pred.engine.run

    def poisoned(batch, batch_size=16, maps=False):
        out = real(batch, batch_size, maps)
        bad = batch.reshape(len(batch), -1).mean(axis=1) > 0.5  # the white image
        out["logits"] = np.where(bad[:, None], np.inf, out["logits"])
        return out

    monkeypatch.setattr(pred.engine, "run", poisoned)
    vols = [ImageVolume(np.full((1, 64, 64), v, np.uint8), source_paths=[f"{v}.png"])
            for v in (0, 255, 10)]
    failed: list = []
    rows = []
    drain(score_stream(pred, enumerate(vols), 3, failed=failed),
          lambda s: rows.append(s.item) if s.item is not None else None)
    assert [r.key for r in rows] == [0, 2]
    assert [f.path for f in failed] == ["255.png"] and "non-finite" in failed[0].reason


@pytest.mark.parametrize("t", [0.0, 1e-9, 1e6, float("nan"), float("inf")])
def test_calibration_temperature_is_bounded_when_the_card_is_read(tiny_model, tmp_path, t):
    m = _copy(tiny_model, tmp_path)
    path = Path(m) / "card.json"
    card = json.loads(path.read_text())
    card["calibration"]["temperature"] = t
    path.write_text(json.dumps(card))
    with pytest.raises(CardError, match="temperature"):
        read_card(m)


def test_onnx_runtime_mints_no_device_id_or_telemetry_database(tmp_path):
    """An offline tool writes no machine identifier: importing medview switches ONNX
    Runtime's telemetry off before the runtime is loaded."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("ORT_DISABLE_TELEMETRY",
                                                             "XDG_CACHE_HOME")}
    env["HOME"] = str(home)
    code = ("import medview.inference.backends as b, medview.models.card as c; "
            "import onnxruntime; print(onnxruntime.__version__)")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    written = [str(p.relative_to(home)) for p in home.rglob("*") if p.is_file()]
    assert written == []
