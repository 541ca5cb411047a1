"""After training, evaluation, the shortcut audit and the trust gate share one pass of
the final model per set of films, on the exported graph on a CPU."""

import copy

import numpy as np
import pytest
import torch

from medview.inference import scope
from medview.inference.graph_export import export_bytes
from medview.models.card import read_card
from medview.models.loading import load_model
from medview.training.engine import _to_input
from medview.training.gatefit import FinalPasses
from medview.training.robust import NUISANCE_TESTS


@pytest.fixture(scope="module")
def trained(tiny_model):
    card = read_card(tiny_model[0])
    model = load_model(card)
    spec = card.preprocessing
    films = np.random.default_rng(0).integers(0, 256, (20, *spec.size), np.uint8)
    return card, model, films


def _passes(card, model):
    spec = card.preprocessing
    return FinalPasses(model, lambda b: _to_input(b, spec.mean, spec.std), 8)


def test_the_graphs_features_are_the_models(trained):
    card, model, films = trained
    passes = _passes(card, model)
    try:
        on_torch = passes.features(films)
        data = export_bytes(model, 3, card.preprocessing.size, passes.stages)
        assert passes.use_graph(data, films[:8])
        on_graph = passes.features(films)
    finally:
        passes.close()
    assert set(on_graph) == set(on_torch) >= {scope.LOGITS, *passes.stages}
    for k, v in on_torch.items():
        assert np.allclose(on_graph[k], v, rtol=1e-4, atol=1e-4 * max(1, np.abs(v).max())), k


def test_a_graph_that_is_not_the_models_is_not_used(trained):
    card, model, films = trained
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.get_classifier().weight.mul_(-1.0)  # another model: the classes swapped
    passes = _passes(card, model)
    try:
        before = passes.features(films)[scope.LOGITS]
        wrong = export_bytes(other, 3, card.preprocessing.size, passes.stages)
        assert not passes.use_graph(wrong, films[:8])
        assert np.array_equal(passes.features(films)[scope.LOGITS], before)  # still torch
    finally:
        passes.close()


def test_the_gates_benign_check_is_the_audits_variations_from_the_same_passes(tmp_path):
    from tests.tiny import train_tiny, write_patch_dataset

    data = write_patch_dataset(str(tmp_path / "data"), n_per_class=24)
    folder = train_tiny(data, str(tmp_path / "models"), "tiny-audited", epochs=1, audit=True)
    card = read_card(folder).card
    checked = card.scope.checked
    benign = checked["benign_variations"]
    assert list(benign) == list(NUISANCE_TESTS)
    n_test = checked["internal_test"]["n"]
    assert all(v["n"] == n_test and 0 <= v["in_scope"] <= 1 for v in benign.values())
    assert set(card.reliance.flip_rate) == set(NUISANCE_TESTS)
    assert "in_scope" not in card.to_dict()["reliance"]  # the gate's, not the audit's


def test_the_card_records_the_training_numerics(tiny_model):
    recipe = read_card(tiny_model[0]).card.training
    assert recipe["numerics"] == {"precision": "float32", "memory_format": "channels_last"}


def test_the_export_skips_torchs_onnx_parse_and_writes_the_same_graph():
    """The exporter's custom-function pass (which imports the onnx package and parses the
    graph) is skipped: the graph's bytes are those torch's full exporter writes, and a
    fresh process that exports a model never imports onnx. A custom opset still gets
    torch's pass."""
    import contextlib
    import subprocess
    import sys

    import timm

    from medview.inference import graph_export as ge

    model = timm.create_model("test_efficientnet", pretrained=False, num_classes=2)
    ours = ge.export_bytes(model, 3, (32, 32))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ge, "without_onnxscript_pass", contextlib.nullcontext)
        assert ge.export_bytes(model, 3, (32, 32)) == ours
    code = ("import sys, timm\n"
            "from medview.inference.graph_export import export_bytes\n"
            "m = timm.create_model('test_efficientnet', pretrained=False, num_classes=2)\n"
            "assert len(export_bytes(m, 3, (32, 32))) > 1000\n"
            "print('onnx' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"
    from torch.onnx._internal.torchscript_exporter import onnx_proto_utils

    seen = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(onnx_proto_utils, "_add_onnxscript_fn",
                   lambda data, opsets: seen.append(dict(opsets)) or data)
        with ge.without_onnxscript_pass():
            onnx_proto_utils._add_onnxscript_fn(b"graph", {"custom.domain": 1})
            onnx_proto_utils._add_onnxscript_fn(b"graph", {})
        assert onnx_proto_utils._add_onnxscript_fn.__name__ == "<lambda>"  # restored
    assert seen == [{"custom.domain": 1}]
