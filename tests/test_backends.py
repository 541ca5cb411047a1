"""The exported-graph backend: agreement with torch, refusal of tampered graphs, Grad-CAM
as a class activation map, the automatic choice, and a graph path that never imports
torch."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medview.core.progress import drain as drain_all
from medview.core.volume import ImageVolume
from medview.inference import backends, scope
from medview.inference.predictor import Predictor
from medview.inference.session import InferenceSession
from medview.io import load
from medview.models.card import read_card
from medview.models.weights import WeightsError


def _vols(data: str, n: int = 6) -> list[ImageVolume]:
    files = []
    for cls in ("patch", "plain"):
        folder = os.path.join(data, cls)
        files += [os.path.join(folder, f) for f in sorted(os.listdir(folder))[:n // 2]]
    return load(files).volumes


@pytest.fixture(scope="module")
def pair(tiny_model):
    card = read_card(tiny_model[0])
    return Predictor(card, "cpu", "onnx"), Predictor(card, "cpu", "torch")


def test_a_saved_model_carries_a_verified_graph(tiny_model):
    card = read_card(tiny_model[0])
    g = card.card.graph
    assert g is not None and os.path.isfile(card.graph_path)
    assert g.max_abs_diff <= g.tolerance and g.checked_on >= 8
    assert g.cam_head == "classifier"
    assert {"logits", "pre_logits", "feature_maps"} <= set(g.outputs)
    assert set(card.card.scope.stages) - set(scope.INPUT_STAGES) <= set(g.outputs)


def test_graph_and_torch_agree_on_real_like_and_random_inputs(pair, tiny_model):
    onnx_pred, torch_pred = pair
    assert onnx_pred.backend == "onnx" and torch_pred.backend == "torch"
    rng = np.random.default_rng(3)
    random_images = [ImageVolume(rng.integers(0, 256, (1, 64, 64), np.uint8))
                     for _ in range(4)]
    for v in _vols(tiny_model[1]) + random_images:
        a, b = onnx_pred.predict(v, 0), torch_pred.predict(v, 0)
        assert np.abs(np.subtract(a.probabilities, b.probabilities)).max() <= 1e-4
        assert a.in_scope == b.in_scope and a.label == b.label
        assert a.ood_score == pytest.approx(b.ood_score, rel=1e-3, abs=1e-3)
        assert a.backend == "onnx" and b.backend == "torch"
    batch = np.stack([onnx_pred.prepare(v, 0).tensor for v in _vols(tiny_model[1])])
    fa, fb = onnx_pred.forward(batch), torch_pred.engine.tap.forward(
        torch_pred.model, __import__("torch").from_numpy(batch))
    for name in fb:  # logits, pre-logits, every gate stage (thumbnail included)
        np.testing.assert_allclose(fa[name], fb[name], rtol=1e-4, atol=1e-4)


def test_gradcam_from_the_graph_equals_captum(pair, tiny_model):
    session = InferenceSession()
    card = pair[0].card
    for v in _vols(tiny_model[1], 4):
        for target in card.classes:
            fast = drain_all(session.explain(card, v, 0, "gradcam", target, "cpu",
                                             backend="onnx"))
            captum = drain_all(session.explain(card, v, 0, "gradcam", target, "cpu",
                                               backend="torch"))
            assert fast.shape == captum.shape == (64, 64)
            np.testing.assert_allclose(fast, captum, atol=2e-4)
    # other methods still run (on torch) for a graph-backed model
    ig = drain_all(session.explain(card, v, 0, "ig", card.classes[0], "cpu",
                                   backend="onnx"))
    assert ig.shape == (64, 64) and ig.max() > 0


def test_the_scoring_pass_hands_its_feature_maps_to_gradcam(pair, tiny_model):
    """The viewer's prediction and heat-map on the graph backend: one pass of the graph,
    the map the same as from a pass of its own."""
    card = pair[0].card
    session = InferenceSession()
    engine = session.predictor(card, "cpu", "onnx").engine
    runs = []
    real_run = engine.run
    engine.run = lambda *a, **k: (runs.append(k.get("maps")), real_run(*a, **k))[1]
    for v in _vols(tiny_model[1], 3):
        runs.clear()
        p, prep = drain_all(session.predict(card, v, 0, "cpu", backend="onnx"))
        assert prep.feature_maps is not None and runs == [True]
        target = p.label if p.label in card.classes else card.classes[0]
        cam = drain_all(session.explain(card, v, 0, "gradcam", target, "cpu", prep=prep,
                                        backend="onnx"))
        assert runs == [True]  # no second pass
        again = drain_all(session.explain(card, v, 0, "gradcam", target, "cpu",
                                          backend="onnx"))
        assert runs == [True, True]  # without the scored input's maps: a pass of its own
        np.testing.assert_array_equal(cam, again)


def _copy(tiny_model, tmp_path, name="m") -> str:
    dst = tmp_path / name
    shutil.copytree(tiny_model[0], dst)
    return str(dst)


def _set_graph(folder: str, data: bytes) -> None:
    """Write a graph and put its sha256 in the card (an attacker controls both)."""
    import hashlib

    with open(os.path.join(folder, "graph.onnx"), "wb") as f:
        f.write(data)
    path = Path(folder) / "card.json"
    card = json.loads(path.read_text())
    card["graph"]["sha256"] = hashlib.sha256(data).hexdigest()
    path.write_text(json.dumps(card))


def _graph_proto(folder: str):
    import onnx

    return onnx.load_model_from_string((Path(folder) / "graph.onnx").read_bytes())


def test_tampered_graphs_are_refused(tiny_model, tmp_path):
    # changed bytes, sha in the card unchanged
    m = _copy(tiny_model, tmp_path, "flipped")
    with open(os.path.join(m, "graph.onnx"), "r+b") as f:
        f.seek(-100, 2)
        f.write(b"\x00" * 8)
    with pytest.raises(WeightsError, match="sha256"):
        Predictor(read_card(m), "cpu", "onnx")
    # automatic choice: the model still runs, on torch, and says why
    auto = Predictor(read_card(m), "cpu")
    assert auto.backend == "torch" and any("sha256" in n for n in auto.notices)

    # an initializer whose data lives in a file outside the folder (sha updated)
    m = _copy(tiny_model, tmp_path, "external")
    model = _graph_proto(m)
    t = model.graph.initializer[0]
    t.ClearField("raw_data")
    t.data_location = 1  # EXTERNAL
    for k, v in (("location", "../../../etc/passwd"), ("offset", "0"), ("length", "64")):
        e = t.external_data.add()
        e.key, e.value = k, v
    _set_graph(m, model.SerializeToString())
    with pytest.raises(WeightsError, match="outside the graph file"):
        Predictor(read_card(m), "cpu", "onnx")

    # an operator from a custom domain (would need a custom op library)
    m = _copy(tiny_model, tmp_path, "custom")
    model = _graph_proto(m)
    model.graph.node[0].domain = "com.example.evil"
    _set_graph(m, model.SerializeToString())
    with pytest.raises(WeightsError, match="non-standard domain"):
        Predictor(read_card(m), "cpu", "onnx")

    # a link to a graph outside the folder
    m = _copy(tiny_model, tmp_path, "linked")
    outside = tmp_path / "outside.onnx"
    shutil.move(os.path.join(m, "graph.onnx"), outside)
    os.symlink(outside, os.path.join(m, "graph.onnx"))
    with pytest.raises(WeightsError, match="outside"):
        Predictor(read_card(m), "cpu", "onnx")

    # not ONNX at all
    m = _copy(tiny_model, tmp_path, "garbage")
    _set_graph(m, b"\x80\x04not a graph" * 10)
    with pytest.raises(WeightsError, match="not an ONNX model"):
        Predictor(read_card(m), "cpu", "onnx")


def test_a_checked_graph_is_remembered_by_its_hashes_and_still_read_and_hashed(
        tiny_model, tmp_path, monkeypatch):
    """A graph that passed the structure and binding checks is not parsed again when the
    same bytes come with the same weights; any other bytes, weights, outputs or check
    version are checked again, the cited file is still read and hashed each time, and
    a damaged record is ignored."""
    from medview.models import graph as G

    parsed = []
    real = G.check_graph_bytes
    monkeypatch.setattr(G, "check_graph_bytes",
                        lambda *a, **k: parsed.append(1) or real(*a, **k))
    card = read_card(tiny_model[0])
    Predictor(card, "cpu", "onnx")
    assert len(parsed) == 1 and os.path.isfile(G.checked_record_path())
    Predictor(card, "cpu", "onnx")
    assert len(parsed) == 1  # remembered
    # a copy holds the same bytes: remembered too; flipped bytes are refused by the hash
    m = _copy(tiny_model, tmp_path, "flipped")
    Predictor(read_card(m), "cpu", "onnx")
    assert len(parsed) == 1
    with open(os.path.join(m, "graph.onnx"), "r+b") as f:
        f.seek(-100, 2)
        f.write(b"\x00" * 8)
    with pytest.raises(WeightsError, match="sha256"):
        Predictor(read_card(m), "cpu", "onnx")
    # another classifier in the graph (its sha in the card): parsed, and refused
    m = _copy(tiny_model, tmp_path, "rebound")
    model = _graph_proto(m)
    t = next(t for t in model.graph.initializer if t.name.endswith("classifier.weight"))
    t.raw_data = (np.frombuffer(t.raw_data, "<f4") + 1).astype("<f4").tobytes()
    _set_graph(m, model.SerializeToString())
    with pytest.raises(WeightsError, match="differs from the model's weights"):
        Predictor(read_card(m), "cpu", "onnx")
    assert len(parsed) == 2
    # a damaged record is no record; a new check version forgets the old records
    with open(G.checked_record_path(), "w") as f:
        f.write("{not json")
    Predictor(card, "cpu", "onnx")
    assert len(parsed) == 3
    monkeypatch.setattr(G, "CHECKS_VERSION", G.CHECKS_VERSION + 1)
    Predictor(card, "cpu", "onnx")
    assert len(parsed) == 4
    # the record's key: other outputs or other weights are another key
    assert G._check_key("a" * 64, ["x"], "b" * 64) != G._check_key("a" * 64, ["y"], "b" * 64)
    assert G._check_key("a" * 64, ["x"], "b" * 64) != G._check_key("a" * 64, ["x"], "c" * 64)


def test_automatic_choice(tiny_model, tmp_path, monkeypatch):
    card = read_card(tiny_model[0])
    monkeypatch.setattr(backends, "gpu_may_be_present", lambda: False)
    assert backends.resolve(card, "auto") == ("onnx", "cpu")
    assert backends.resolve(card, "cpu", "torch") == ("torch", "cpu")
    assert backends.resolve(card, "cuda") == ("torch", "cuda")
    monkeypatch.setattr(backends, "gpu_may_be_present", lambda: True)
    assert backends.resolve(card, "auto")[0] == "torch"  # a GPU keeps torch
    assert backends.resolve(card, "cpu") == ("onnx", "cpu")
    with pytest.raises(backends.BackendError, match="CPU only"):
        backends.resolve(card, "cuda", "onnx")
    from dataclasses import replace

    def with_graph(**kw):
        return type(card)(card.card.replace(graph=replace(card.card.graph, **kw)),
                          card.folder)

    disagreeing = with_graph(max_abs_diff=5e-4)
    assert backends.resolve(disagreeing, "cpu") == ("torch", "cpu")
    slower = with_graph(speed={"torch_ms": 1.0, "graph_ms": 2.0})
    assert backends.resolve(slower, "cpu") == ("torch", "cpu")
    no_graph = type(card)(card.card.replace(graph=None), card.folder)
    assert backends.resolve(no_graph, "cpu") == ("torch", "cpu")
    with pytest.raises(backends.BackendError, match="no exported graph"):
        backends.resolve(no_graph, "cpu", "onnx")


def test_batch_scoring_in_chunks_equals_one_by_one(tiny_model):
    session = InferenceSession()
    card = read_card(tiny_model[0])
    vols = _vols(tiny_model[1], 10)
    chunked = drain_all(session.batch(card, vols, "cpu", backend="onnx", chunk=4))
    single = drain_all(session.batch(card, vols, "cpu", backend="onnx", chunk=1))
    for a, b in zip(chunked, single, strict=True):
        np.testing.assert_allclose(a.prediction.probabilities, b.prediction.probabilities,
                                   atol=1e-5)
        assert a.prediction.in_scope == b.prediction.in_scope


def test_the_graph_path_never_imports_torch(tiny_model, tmp_path):
    """A prediction, the trust gate and Grad-CAM on the graph backend, in a fresh
    process: torch, torchvision and timm are never imported."""
    png = os.path.join(tiny_model[1], "patch", sorted(os.listdir(
        os.path.join(tiny_model[1], "patch")))[0])
    code = f"""
import sys, json
from medview.cli import main
rc = main(["predict", "--model", {tiny_model[0]!r}, {png!r}, "--json", "--device", "cpu"])
from medview.core.progress import drain as drain_all
from medview.inference.session import InferenceSession
from medview.io import load
from medview.models.card import read_card
card = read_card({tiny_model[0]!r})
v = load([{png!r}]).volumes[0]
cam = drain_all(InferenceSession().explain(card, v, 0, "gradcam", card.classes[0], "cpu"))
heavy = sorted(m for m in ("torch", "torchvision", "timm", "captum") if m in sys.modules)
print(json.dumps({{"rc": rc, "heavy": heavy, "cam": float(cam.max())}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"rc": 0, "heavy": [], "cam": pytest.approx(1.0, abs=1e-6)}
    assert '"backend": "onnx"' in out.stdout


def test_fast_exit_keeps_every_output_and_the_exit_code(tiny_model, tmp_path):
    """``python -m medview predict`` ends with os._exit after flushing: the JSON on a
    pipe, the CSV file and the exit codes are complete."""
    png = os.path.join(tiny_model[1], "plain", sorted(os.listdir(
        os.path.join(tiny_model[1], "plain")))[0])
    csv_path = tmp_path / "out.csv"
    run = [sys.executable, "-m", "medview", "predict", "--model", tiny_model[0], png]
    out = subprocess.run([*run, "--json"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    doc = json.loads(out.stdout)
    assert len(doc["predictions"]) == 1 and doc["predictions"][0]["backend"] == "onnx"
    out = subprocess.run([*run, "--csv", str(csv_path)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and "wrote 1 rows" in out.stderr
    assert len(csv_path.read_text().splitlines()) == 2
    missing = subprocess.run([sys.executable, "-m", "medview", "predict", "--model",
                              tiny_model[0], str(tmp_path / "nothing-here")],
                             capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2
