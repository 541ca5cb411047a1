"""Predictor: card-driven preprocessing, calibration, decisions, warnings, OOM fallback;
saliency methods on a model whose decision depends on a known patch."""

import os

import numpy as np
import pytest

from medview.core.volume import ImageVolume
from medview.explain import METHODS, explain, saliency_for_slice
from medview.inference.predictor import Predictor, choose_device
from medview.io import load
from medview.models.card import read_card
from tests.tiny import PATCH


@pytest.fixture(scope="module")
def predictor(tiny_model):
    return Predictor(read_card(tiny_model[0]), "cpu")


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


def test_threshold_decides_binary_label(predictor):
    predictor_threshold = predictor.threshold
    assert predictor.card.positive_class == "plain" and predictor_threshold is not None
    label, words = predictor.decide(np.array([0.2, 0.8]))
    assert label == ("plain" if predictor_threshold <= 0.8 else "patch")
    assert "threshold" in words


def test_preprocessing_comes_from_the_card(predictor, tiny_model):
    vol = _first(tiny_model[1], "plain")
    prep = predictor.prepare(vol, 0)
    assert prep.tensor.shape == (3, *predictor.card.preprocessing.size)
    mean, std = predictor.card.preprocessing.mean[0], predictor.card.preprocessing.std[0]
    np.testing.assert_allclose(prep.tensor[0], (prep.seen / 255.0 - mean) / std, atol=1e-6)


def test_contract_warnings(predictor):
    rng = np.random.default_rng(0)
    rgb = ImageVolume(rng.integers(0, 255, (1, 64, 64, 3), dtype=np.uint8), modality="OT",
                      photometric="RGB")
    assert any("colour image" in w for w in predictor.predict(rgb, 0).warnings)
    tiny = ImageVolume(np.zeros((1, 10, 10), np.uint8), modality="OT")
    assert any("far smaller" in w for w in predictor.predict(tiny, 0).warnings)
    ct = ImageVolume(np.zeros((20, 64, 64), np.int16), modality="CT")
    warns = predictor.predict(ct, 3).warnings
    assert any("modality CT" in w for w in warns)
    assert any("20-slice volume" in w and "slice 4" in w for w in warns)


def test_gpu_out_of_memory_retries_smaller_then_cpu(predictor, monkeypatch):
    import torch

    batch = np.stack([predictor.prepare(ImageVolume(np.zeros((1, 64, 64), np.uint8)), 0)
                      .tensor] * 4)
    calls = []
    real_run = predictor._run

    def fake_run(b):
        calls.append((predictor.device, len(b)))
        if predictor.device != "cpu":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return real_run(b)

    monkeypatch.setattr(predictor, "_run", fake_run)
    monkeypatch.setattr(predictor, "device", "cuda")
    out = predictor.logits(batch, batch_size=4)
    assert out.shape == (4, 2)
    assert [c[1] for c in calls[:3]] == [4, 2, 1]
    assert predictor.device == "cpu"
    assert any("GPU out of memory" in n for n in predictor.notices)
    predictor.notices.clear()


def test_device_choice():
    assert choose_device("auto") in ("cuda", "mps", "cpu")
    assert choose_device("cpu") == "cpu"
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
    assert rows[0] == ["path", "model_id", "predicted", "p_patch", "p_plain", "warnings"]
    assert len(rows) == 1 + 96
    correct = sum(r[2] == os.path.basename(os.path.dirname(r[0])) for r in rows[1:])
    assert correct >= 90
    png = tmp_path / "overlay.png"
    first = os.path.join(data, "patch", sorted(os.listdir(os.path.join(data, "patch")))[0])
    assert main(["explain", first, "--model", folder, "--method", "gradcam", "--target",
                 "patch", "--out", str(png)]) == 0
    img = np.asarray(Image.open(png))
    assert img.shape == (64, 64, 3)
    assert main(["explain", first, "--model", folder, "--target", "nope", "--out",
                 str(png)]) == 2
    assert main(["predict", data, "--model", "no-such-model"]) == 2
