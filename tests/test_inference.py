"""Predictor: card-driven preprocessing, calibration, decisions, warnings, OOM fallback;
saliency methods on a model whose decision depends on a known patch."""

import os

import numpy as np
import pytest

from medview.core.volume import ImageVolume
from medview.explain import METHODS, explain, saliency_for_slice
from medview.inference.devices import choose_device
from medview.inference.predictor import Predictor
from medview.io import load
from medview.models.card import read_card
from tests.tiny import PATCH


@pytest.fixture(scope="module")
def predictor(tiny_model):
    return Predictor(read_card(tiny_model[0]), "cpu", backend="torch")


def _first(data, cls):
    name = sorted(os.listdir(os.path.join(data, cls)))[0]
    return load([os.path.join(data, cls, name)]).volumes[0]


def test_prediction_is_calibrated_and_recorded(predictor, tiny_model):
    vol = _first(tiny_model[1], "patch")
    p = predictor.predict(vol, 0)
    assert abs(sum(p.probabilities) - 1) < 1e-6
    assert p.label == "patch"
    assert p.model_id == "tiny-patch" and len(p.weights_sha256) == 64
    assert len(p.input_sha256) == 64 and p.device == "cpu"
    assert p.timings_ms["inference"] > 0
    # the temperature from the card is applied to the logits
    prep = predictor.prepare(vol, 0)
    logits = predictor.logits(prep.tensor[None])[0]
    z = logits / predictor.card.temperature
    expected = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    np.testing.assert_allclose(p.probabilities, expected, rtol=1e-5, atol=1e-12)


def test_threshold_decides_binary_label(predictor, monkeypatch):
    assert predictor.card.positive_class == "plain"  # classes: patch, plain
    probs = np.array([0.75, 0.25])  # p(plain) = 0.25
    for threshold, expected in ((0.5, "patch"), (0.25, "plain"), (0.1, "plain"),
                                (0.26, "patch")):
        monkeypatch.setattr(predictor, "threshold", threshold)
        label, words = predictor.decide(probs)
        assert label == expected, threshold
        assert f"{threshold:.2f}" in words
    monkeypatch.setattr(predictor, "threshold", None)  # no operating point: argmax
    monkeypatch.setattr(predictor, "positive", None)
    assert predictor.decide(probs)[0] == "patch"


def test_preprocessing_comes_from_the_card(predictor, tiny_model):
    vol = _first(tiny_model[1], "plain")
    prep = predictor.prepare(vol, 0)
    assert prep.tensor.shape == (3, *predictor.card.preprocessing.size)


@pytest.mark.parametrize(("mean", "std", "white", "black"),
                         [((0.5,) * 3, (0.5,) * 3, 1.0, -1.0),
                          ((0.25,) * 3, (2.0,) * 3, 0.375, -0.125),
                          ((0.0, 0.5, 1.0), (1.0, 0.25, 0.5), (1.0, 2.0, 0.0),
                           (0.0, -2.0, -2.0))])
def test_card_mean_and_std_give_known_values(mean, std, white, black):
    from medview.core.modeling import Preprocessing
    from medview.imaging.model_input import prepare

    spec = Preprocessing(size=(8, 8), channels=3, mean=mean, std=std)
    px = np.zeros((1, 8, 16), np.uint8)
    px[0, :, 8:] = 255  # left half black, right half white, full-scale 8-bit
    tensor, _ = prepare(ImageVolume(px), 0, Preprocessing(**{**spec.__dict__,
                                                                 "size": (8, 16)}))
    np.testing.assert_allclose(tensor[:, :, 12], np.broadcast_to(
        np.reshape(white, (-1, 1)), (3, 8)), atol=1e-6)
    np.testing.assert_allclose(tensor[:, :, 2], np.broadcast_to(
        np.reshape(black, (-1, 1)), (3, 8)), atol=1e-6)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest", "area"])
def test_card_interpolation_is_the_filter_used(tiny_model, interpolation):
    """Each filter the card may name is the one applied: the result equals Pillow's resize
    with that filter, and differs from every other filter's."""
    import json

    from PIL import Image

    from medview.imaging.model_input import display_grey, prepare
    from medview.models.card import Card, ModelCard

    filters = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
               "nearest": Image.Resampling.NEAREST, "area": Image.Resampling.BOX}
    with open(os.path.join(tiny_model[0], "card.json")) as f:
        data = json.load(f)
    rng = np.random.default_rng(3)
    vol = ImageVolume(rng.integers(0, 256, (1, 157, 131), dtype=np.uint8))  # downscaled
    seen = {}
    for name in filters:
        data["preprocessing"]["interpolation"] = name
        spec = ModelCard(Card.from_dict(data), tiny_model[0]).preprocessing
        seen[name] = prepare(vol, 0, spec)[1]
    h, w = data["preprocessing"]["size"]
    expected = np.asarray(Image.fromarray(display_grey(vol, 0)).resize(
        (w, h), filters[interpolation]))
    np.testing.assert_array_equal(seen[interpolation], expected)
    others = [n for n in filters if n != interpolation]
    assert all(not np.array_equal(seen[interpolation], seen[n]) for n in others)


def test_preprocessing_window_is_read():
    from medview.core.modeling import Preprocessing
    from medview.imaging.model_input import prepare

    vol = ImageVolume(np.zeros((1, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="window"):
        prepare(vol, 0, Preprocessing(size=(8, 8), window="raw"))


def test_inputs_outside_the_contract_are_withheld_with_reasons(predictor):
    rng = np.random.default_rng(0)
    rgb = ImageVolume(rng.integers(0, 255, (1, 64, 64, 3), dtype=np.uint8), modality="OT",
                      photometric="RGB")
    p = predictor.predict(rgb, 0)
    assert p.withheld and any("colour image" in r for r in p.scope_reasons)
    assert p.label == "" and "Withheld" in p.decision and p.withheld_label in p.classes
    tiny = ImageVolume(np.zeros((1, 10, 10), np.uint8), modality="OT")
    assert any("far smaller" in w for w in predictor.predict(tiny, 0).warnings)
    ct = ImageVolume(np.zeros((20, 64, 64), np.int16), modality="CT")
    p = predictor.predict(ct, 3)
    assert p.withheld and p.label == ""
    assert any("modality CT" in r for r in p.scope_reasons)
    assert any("20-slice volume" in r for r in p.scope_reasons)
    assert any("slice 4 of 20" in w for w in p.warnings)
    shown = p.revealed()
    assert shown.label == p.withheld_label and shown.decision.startswith("OUT OF SCOPE")


def test_gpu_out_of_memory_retries_smaller_then_cpu(predictor, monkeypatch):
    import torch

    batch = np.stack([predictor.prepare(ImageVolume(np.zeros((1, 64, 64), np.uint8)), 0)
                      .tensor] * 4)
    calls = []
    engine = predictor.engine
    real_run = engine._run

    def fake_run(b, maps=False):
        calls.append((engine.device, len(b)))
        if engine.device != "cpu":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return real_run(b)

    monkeypatch.setattr(engine, "_run", fake_run)
    monkeypatch.setattr(engine, "device", "cuda")
    out = predictor.logits(batch, batch_size=4)
    assert out.shape == (4, 2)
    assert [c[1] for c in calls[:3]] == [4, 2, 1]
    assert predictor.device == "cpu"
    assert any("GPU out of memory" in n for n in predictor.notices)
    predictor.notices.clear()


def test_device_choice(monkeypatch):
    import torch

    mps = getattr(torch.backends, "mps", None)
    if mps is not None:
        monkeypatch.setattr(mps, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert choose_device("auto") == "cuda" and choose_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert choose_device("auto") == "cpu" and choose_device("") == "cpu"
    with pytest.raises(ValueError, match="not available"):
        choose_device("cuda")
    with pytest.raises(ValueError, match="not available"):
        choose_device("tpu")


@pytest.mark.parametrize("method", list(METHODS))
def test_saliency_peaks_inside_the_deciding_patch(predictor, tiny_model, method):
    vol = _first(tiny_model[1], "patch")
    prep = predictor.prepare(vol, 0)
    spec = predictor.card.preprocessing
    black = [(0 - m) / s for m, s in zip(spec.mean, spec.std, strict=True)]
    target = predictor.card.classes.index("patch")
    sal = explain(predictor.model, prep.tensor, target, method, black=black)
    assert sal.shape == spec.size and sal.min() >= 0 and sal.max() <= 1
    r, c = np.unravel_index(np.argmax(sal), sal.shape)
    assert PATCH[0].start <= r < PATCH[0].stop and PATCH[1].start <= c < PATCH[1].stop
    inside = sal[PATCH].mean()
    outside = (sal.sum() - sal[PATCH].sum()) / (sal.size - sal[PATCH].size)
    assert inside > 2 * outside


def test_saliency_is_resized_back_to_the_slice(predictor):
    vol = ImageVolume(np.full((1, 90, 150), 90, np.uint8))
    prep = predictor.prepare(vol, 0)
    sal = saliency_for_slice(predictor.model, prep.tensor, 0, "gradcam", (90, 150))
    assert sal.shape == (90, 150)


def test_cli_predict_csv_and_explain_png(tiny_model, tmp_path, capsys):
    import csv

    from PIL import Image

    from medview.cli import main

    folder, data = tiny_model
    out = tmp_path / "scores.csv"
    assert main(["predict", data, "--model", folder, "--csv", str(out), "--device", "cpu"]) == 0
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["path", "model_id", "predicted", "p_patch", "p_plain", "in_scope",
                       "ood_score", "warnings", "model_file", "model_sha256"]
    assert len(rows) == 1 + 96
    correct = sum(r[2] == os.path.basename(os.path.dirname(r[0])) for r in rows[1:])
    assert correct >= 90
    png = tmp_path / "overlay.png"
    first = os.path.join(data, "patch", sorted(os.listdir(os.path.join(data, "patch")))[0])
    assert main(["explain", first, "--model", folder, "--method", "gradcam", "--target",
                 "patch", "--out", str(png)]) == 0
    opened = Image.open(png)
    img = np.asarray(opened)
    assert img.shape[1] == 64 and img.shape[0] > 64  # the slice, then the caption below it
    assert img[64:].max() == 255 and img[64:].min() == 0  # white text on black
    assert opened.text["medview:model"] == "tiny-patch 1.0.0"
    assert opened.text["medview:class"] == "patch" and opened.text["medview:method"] == "gradcam"
    assert "Research use only" in opened.text["Description"]
    assert main(["explain", first, "--model", folder, "--target", "nope", "--out",
                 str(png)]) == 2
    assert main(["predict", data, "--model", "no-such-model"]) == 2
