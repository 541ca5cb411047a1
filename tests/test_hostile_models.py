"""Hostile model folders and outputs: nothing runs, nothing hangs, nothing escapes."""

import json
import os
import pickle
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from importlib.metadata import version

import pytest

from medview.inference.predictor import load_gate
from medview.models.card import CardError, read_card
from medview.models.loading import load_model
from medview.models.registry import discover_models
from medview.models.weights import WeightsError
from tests.timing import generous

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def folder(tiny_model, tmp_path):
    dst = tmp_path / "models" / "tiny-patch"
    shutil.copytree(tiny_model[0], dst)
    return dst


def _card(folder):
    return json.loads((folder / "card.json").read_text())


def _write(folder, card):
    (folder / "card.json").write_text(json.dumps(card))


def _finishes(fn, seconds=20.0):
    """Run ``fn`` in a thread; fail (instead of hanging the suite) if it blocks."""
    out = {}

    def target():
        try:
            out["value"] = fn()
        except BaseException as exc:
            out["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "blocked"
    return out


class Exploit:
    """Unpickling this creates a marker file (as os.system would run a command)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _forged(folder, architecture):
    """A card object made around validation (dataclasses.replace does not validate)."""
    from dataclasses import replace

    from medview.models.card import ModelCard

    good = read_card(str(folder))
    return ModelCard(replace(good.card, architecture=architecture), str(folder))


def test_checkpoint_path_in_card_never_unpickles(folder, tmp_path):
    from medview.models.card import Architecture

    marker = tmp_path / "pwned"
    with open(folder / "evil.pth", "wb") as f:
        pickle.dump(Exploit(str(marker)), f)
    card = _card(folder)
    forged = _forged(folder, Architecture(card["architecture"]["name"], {
        **card["architecture"]["args"], "checkpoint_path": str(folder / "evil.pth")}))
    card["architecture"]["args"]["checkpoint_path"] = str(folder / "evil.pth")
    _write(folder, card)
    with pytest.raises(CardError, match="checkpoint_path is not allowed"):
        read_card(str(folder))
    # defence in depth: a card object built around validation is refused by the loader
    with pytest.raises(WeightsError, match="not allowed"):
        load_model(forged)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["hf-hub:timm/resnet18.a1_in1k", "local-dir:/etc",
                                  "resnet18.a1_in1k", "../x", "timm/resnet18"])
def test_architecture_names_come_from_the_local_registry_only(folder, monkeypatch, name):
    def no_network(*_a, **_k):
        raise AssertionError("medview tried to reach the network")

    from medview.models.card import Architecture

    monkeypatch.setattr(socket.socket, "connect", no_network)
    card = _card(folder)
    forged = _forged(folder, Architecture(name, card["architecture"]["args"]))
    card["architecture"]["name"] = name
    _write(folder, card)
    with pytest.raises(CardError, match="plain timm model name"):
        read_card(str(folder))
    with pytest.raises(WeightsError, match="unknown or unsupported architecture"):
        load_model(forged)


def test_timm_is_pinned_past_the_pickle_loading_releases():
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        text = f.read()
    assert '"timm>=1.0.26"' in text
    assert tuple(int(p) for p in version("timm").split(".")[:3]) >= (1, 0, 26)


@pytest.mark.parametrize("size", [[100000, 100000], [2048, 2048], [224, 0]])
def test_input_size_is_capped(folder, size):
    card = _card(folder)
    card["preprocessing"]["size"] = size
    _write(folder, card)
    with pytest.raises(CardError, match=r"preprocessing\.size"):
        read_card(str(folder))


def test_fifo_card_or_card_to_dev_zero_never_hangs_and_hides_no_other_model(folder,
                                                                          monkeypatch):
    models = folder.parent
    shutil.copytree(folder, models / "fifo-card")
    shutil.copytree(folder, models / "zero-card")
    os.remove(models / "fifo-card" / "card.json")
    os.mkfifo(models / "fifo-card" / "card.json")
    os.remove(models / "zero-card" / "card.json")
    os.symlink("/dev/zero", models / "zero-card" / "card.json")
    monkeypatch.setenv("MEDVIEW_MODELS_DIR", str(models))
    reg = _finishes(discover_models, 10)["value"]
    assert "tiny-patch" in [m.id for m in reg.models]
    reasons = {e.where.split(os.sep)[0]: e.reason for e in reg.errors}
    assert "not a regular file" in reasons["fifo-card"]
    assert "outside its folder" in reasons["zero-card"]
    # the command line, in a process of its own, finishes too
    proc = subprocess.run([sys.executable, "-m", "medview", "models"], capture_output=True,
                          text=True, timeout=60, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=ROOT, MEDVIEW_MODELS_DIR=str(models)))
    assert proc.returncode == 0 and "tiny-patch" in proc.stdout
    assert proc.stdout.count("refused") >= 2


def test_fifo_weights_never_hang(folder):
    os.remove(folder / "weights.safetensors")
    os.mkfifo(folder / "weights.safetensors")
    out = _finishes(lambda: load_model(read_card(str(folder))))
    assert isinstance(out["error"], WeightsError)
    assert "not a regular file" in str(out["error"])


def test_weights_link_out_of_the_folder_is_refused(folder, tmp_path):
    outside = tmp_path / "elsewhere.safetensors"
    shutil.move(folder / "weights.safetensors", outside)
    os.symlink(outside, folder / "weights.safetensors")
    with pytest.raises(WeightsError, match="outside its folder"):
        load_model(read_card(str(folder)))


def test_huge_sparse_weights_are_refused_in_milliseconds_before_hashing(folder, monkeypatch):
    import medview.models.weights as weights

    def no_hashing(*_a, **_k):
        raise AssertionError("hashed a file whose shapes were already wrong")

    header = json.dumps({"w": {"dtype": "F32", "shape": [768 * 1024 * 1024],
                               "data_offsets": [0, 3 * 1024**3]}}).encode()
    path = folder / "weights.safetensors"
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        f.truncate(8 + len(header) + 3 * 1024**3)  # sparse: 3 GiB, no disk used
    monkeypatch.setattr(weights.hashlib, "sha256", no_hashing)
    import timm  # noqa: F401  (imported before timing: the bound is about the file)
    t = time.perf_counter()
    with pytest.raises(WeightsError, match="do not fit"):
        load_model(read_card(str(folder)))
    assert time.perf_counter() - t < generous(1.0)


def test_export_fsyncs_files_and_folder(folder, tmp_path, monkeypatch):
    import medview.training.export as ex

    synced = []
    real_fsync = os.fsync

    def spy(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    card = read_card(str(folder))
    model = load_model(card)
    out = tmp_path / "out"
    final = ex.export_model(model, {**card.data, "id": "synced"}, str(out),
                            gate=load_gate(card))
    names = {os.path.basename(p) for p in synced}
    assert {"weights.safetensors", "card.json", "README.md", "out"} <= names
    assert read_card(final).id == "synced"


def test_default_names_never_come_from_the_data_folder(tmp_path):
    from medview.core.progress import drain
    from medview.training.engine import train
    from medview.training.types import TrainConfig
    from tests.tiny import write_patch_dataset

    data = write_patch_dataset(str(tmp_path / "Doe_John_1962"), n_per_class=12)
    result = drain(train(TrainConfig(data=data, base="timm:test_efficientnet",
                                     strategy="full", epochs=1, image_size=64, batch_size=8,
                                     augment=False, n_bootstrap=20, min_per_class=5)))
    from medview.training.export import export_model

    final = export_model(result.model, result.card, str(tmp_path / "models"), gate=result.gate)
    everything = b"".join((tmp_path / "models" / os.path.basename(final) / n).read_bytes()
                          for n in os.listdir(final))
    assert b"Doe" not in everything and b"1962" not in everything
    assert "Doe" not in final
    td = result.card.training_data
    assert len(td["content_sha256"]) == 64 and "24 images" in td["source"]


def _models_cli(models_dir) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medview", "models"], capture_output=True,
                          env=dict(os.environ, MEDVIEW_MODELS_DIR=str(models_dir)),
                          timeout=120)


def test_card_text_reaches_the_terminal_as_plain_text(folder):
    card = _card(folder)
    card["name"] = "Evil \x1b]0;pwned\x07 \x1b[2J name"
    card["intended_use"] = "use \x1b[31mred\x1b[0m \x9b6n"
    card["classes"][0]["name"] = "pa\x1b[1mtch"
    card["thresholds"] = {card["classes"][0]["name"]: 0.5}
    card["decision"]["positive_class"] = card["classes"][0]["name"]
    _write(folder, card)
    r = _models_cli(folder.parent)
    assert r.returncode == 0, r.stderr
    assert b"\x1b" not in r.stdout and b"\x07" not in r.stdout and b"\xc2\x9b" not in r.stdout
    assert b"Evil" in r.stdout


@pytest.mark.parametrize("metrics", [
    {"test": {"auc": "not a dict", "n": 10}},
    {"test": {"auc": {"value": 0.9, "ci95": "x"}, "counts": [1, 2]}},
    {"test": ["a", "list"]},
    {"test": {"auc": {"value": {"nested": 1}, "ci95": [None]}, "n": {"x": 1}}},
])
def test_a_malformed_card_never_stops_the_listing(folder, metrics):
    card = _card(folder)
    card["metrics"] = metrics
    _write(folder, card)
    other = folder.parent / "other"
    shutil.copytree(folder, other)
    oc = _card(other)
    oc["id"] = "other"
    oc["metrics"] = {}
    _write(other, oc)
    r = _models_cli(folder.parent)
    assert r.returncode == 0, r.stderr
    assert b"other" in r.stdout and b"Traceback" not in r.stderr


def test_models_does_not_list_a_model_whose_weights_are_a_fifo(folder, monkeypatch):
    monkeypatch.setenv("MEDVIEW_MODELS_DIR", str(folder.parent))
    w = folder / "weights.safetensors"
    os.remove(w)
    os.mkfifo(w)
    reg = _finishes(discover_models)["value"]
    assert "tiny-patch" not in [m.id for m in reg.models]
    assert any("not a regular file" in e.reason for e in reg.errors)


def test_a_tiny_folder_naming_a_huge_architecture_is_refused_before_building(folder,
                                                                             monkeypatch):
    """The parameters are counted on a skeleton (the meta device) and refused past the
    budget before any memory is taken or any weights byte is read."""
    import medview.models.loading as loading

    card = _card(folder)
    card["architecture"] = {"name": "vit_large_patch16_224", "args": {"num_classes": 2}}
    _write(folder, card)

    def built(*_a, **_k):
        raise AssertionError("the real model was built")

    monkeypatch.setattr(loading, "build_from_card", built)
    with pytest.raises(WeightsError, match="model memory budget"):
        load_model(read_card(str(folder)))
    monkeypatch.setenv("MEDVIEW_MAX_MODEL_MEMORY", str(1024))  # and the budget is a setting
    card["architecture"] = {"name": "test_efficientnet", "args": {"num_classes": 2}}
    _write(folder, card)
    with pytest.raises(WeightsError, match="budget"):
        load_model(read_card(str(folder)))


def test_weights_in_an_unexpected_dtype_are_refused(folder):
    import hashlib

    import numpy as np
    from safetensors.numpy import load_file, save_file

    w = folder / "weights.safetensors"
    tensors = {k: (v.astype(np.float64) if v.dtype == np.float32 else v)
               for k, v in load_file(str(w)).items()}
    save_file(tensors, str(w))
    card = _card(folder)
    card["weights"]["sha256"] = hashlib.sha256(w.read_bytes()).hexdigest()
    _write(folder, card)
    with pytest.raises(WeightsError, match="stored as F64"):
        load_model(read_card(str(folder)))


def _graph_with(folder, build) -> None:
    import hashlib

    import onnx

    path = folder / "graph.onnx"
    model = onnx.load_model_from_string(path.read_bytes())
    build(model)
    data = model.SerializeToString()
    path.write_bytes(data)
    card = _card(folder)
    card["graph"]["sha256"] = hashlib.sha256(data).hexdigest()
    _write(folder, card)


def test_a_graph_that_asks_for_huge_tensors_is_refused(folder):
    """Standard operators only, but ConstantOfShape of 10^11 elements: refused by the
    graph check with the reason, never an allocation or a traceback."""
    from onnx import helper, numpy_helper

    from medview.inference.predictor import Predictor

    def build(model):
        import numpy as np

        shape = numpy_helper.from_array(np.array([100000, 1000000], np.int64), "huge_shape")
        model.graph.initializer.append(shape)
        model.graph.node.append(helper.make_node("ConstantOfShape", ["huge_shape"],
                                                 ["huge_out"]))

    _graph_with(folder, build)
    with pytest.raises(WeightsError, match="ConstantOfShape asks for more than"):
        Predictor(read_card(str(folder)), "cpu", "onnx")


def test_a_graph_failing_in_onnx_runtime_is_a_clear_model_error(folder, monkeypatch):
    import numpy as np

    from medview.core.volume import ImageVolume
    from medview.inference.predictor import Predictor

    pred = Predictor(read_card(str(folder)), "cpu", "onnx")

    class Broken:
        def run(self, *_a, **_k):
            raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : bad_alloc")

    monkeypatch.setattr(pred.engine, "session", Broken())
    with pytest.raises(WeightsError, match="failed in ONNX Runtime"):
        pred.predict(ImageVolume(np.zeros((1, 64, 64), np.uint8)), 0)
