"""The robust recipe and the shortcut audit: lung-field estimate, hospital variations,
counterfactual films, and an audit that flags a model trained on a planted marker."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from medview.imaging import lungs
from medview.training import robust


def synthetic_chest(size: int = 128, seed: int = 0, consolidated: bool = False) -> np.ndarray:
    """A bright body with two dark lungs (and, optionally, a bright lower-left lung)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    img = np.full((size, size), 20.0)
    img[((yy - 0.55) / 0.45) ** 2 + ((xx - 0.5) / 0.42) ** 2 < 1] = 170
    for cx in (0.33, 0.67):
        lung = ((yy - 0.52) / 0.28) ** 2 + ((xx - cx) / 0.12) ** 2 < 1
        img[lung] = 60
        if consolidated and cx < 0.5:
            img[lung & (yy > 0.55)] = 165
    return (img + rng.normal(0, 4, img.shape)).clip(0, 255).astype(np.uint8)


def test_lung_field_follows_two_lungs_and_falls_back_to_the_box():
    img = synthetic_chest()
    mask, estimated = lungs.lung_field(img)
    assert estimated
    size = img.shape[0]
    for cx in (0.33, 0.67):  # both lung centres inside, the spine between them outside
        assert mask[int(0.52 * size), int(cx * size)]
    assert not mask[int(0.52 * size), size // 2]
    assert not mask[2, 2] and not mask[-3, -3]
    # a consolidated lower lobe (bright) is still covered: the twin's mirror
    cons, ok = lungs.lung_field(synthetic_chest(consolidated=True))
    assert ok and cons[int(0.7 * size), int(0.33 * size)]
    flat, ok = lungs.lung_field(np.full((96, 96), 128, np.uint8))
    assert not ok and (flat == lungs.box_mask((96, 96))).all()


def test_masks_and_marker_removal():
    img = synthetic_chest()
    box = lungs.box_mask(img.shape)
    hidden = lungs.fill_median(img, box)
    assert len(np.unique(hidden[box])) == 1 and (hidden[~box] == img[~box]).all()
    edges = lungs.periphery_mask(img.shape)
    assert edges[0, 0] and not edges[64, 64] and abs(edges.mean() - (1 - 0.7 ** 2)) < 0.03
    marked = img.copy()
    marked[5:12, 5:12] = 255
    cleaned = lungs.remove_markers(marked)
    assert cleaned[5:12, 5:12].max() < 200 and (cleaned[40:90, 40:90] == img[40:90, 40:90]).all()


def test_hospital_variation_is_seeded_and_keeps_the_film_shape():
    img = synthetic_chest()
    a = robust.hospital_variation(img, np.random.default_rng(3))
    b = robust.hospital_variation(img, np.random.default_rng(3))
    assert a.shape == img.shape and a.dtype == np.uint8 and (a == b).all()
    changed = [not np.array_equal(robust.hospital_variation(img, np.random.default_rng(s)), img)
               for s in range(20)]
    assert sum(changed) >= 15
    for name, fn in robust.NUISANCE_TESTS.items():
        out = fn(img)
        assert out.shape == img.shape and out.dtype == np.uint8, name


def test_swap_outside_keeps_the_lungs_and_takes_the_rest_from_another_film(monkeypatch):
    monkeypatch.setattr(robust, "P_SWAP", 1.0)
    a, b = synthetic_chest(seed=1), np.full((128, 128), 250, np.uint8)
    masks = np.stack([lungs.lung_field(a)[0], lungs.lung_field(a)[0]])
    out = robust.swap_outside(np.stack([a, b]), masks, np.random.default_rng(0))
    assert (out[0][masks[0]] == a[masks[0]]).all()
    assert (out[0][0:5, 0:5] == 250).all()  # the corner came from the other film


def test_lungs_hidden_replaces_the_lungs_with_one_level():
    a = synthetic_chest(seed=2)
    mask = lungs.lung_field(a)[0]
    out = robust.lungs_hidden(a[np.newaxis], mask[np.newaxis], np.random.default_rng(0))[0]
    assert len(np.unique(out[mask])) == 1 and (out[~mask & ~lungs.box_mask(a.shape)]
                                              == a[~mask & ~lungs.box_mask(a.shape)]).all()


def test_cannot_tell_loss_is_zero_only_for_equal_logits():
    import torch

    from medview.training.engine import cannot_tell_loss

    loss = cannot_tell_loss(torch.tensor([[0.3, 0.3], [2.0, -2.0], [0.0, 0.0]]))
    assert loss[0].item() == pytest.approx(0, abs=1e-6)
    assert loss[2].item() == pytest.approx(0, abs=1e-6)
    assert loss[1].item() > 1.0


def test_audit_warnings_read_the_numbers():
    from medview.training.audit import HIDDEN_BOX, HIDDEN_EDGES, audit_warnings

    clean = {"auc": 0.99, "masked_auc": {HIDDEN_BOX: 0.6, HIDDEN_EDGES: 0.985},
             "flip_rate": {"JPEG quality 30": 0.005}}
    assert audit_warnings(clean) == []
    bad = {"auc": 0.99, "masked_auc": {HIDDEN_BOX: 0.9, HIDDEN_EDGES: 0.9},
           "flip_rate": {"JPEG quality 30": 0.05}}
    text = " ".join(audit_warnings(bad))
    assert "without the lungs" in text and "edges" in text and "JPEG quality 30 5.0%" in text


def _write_marker_dataset(root: str, size: int = 64, n: int = 24, seed: int = 0,
                          marker: bool = True) -> str:
    """Two classes of noise films. With ``marker``, "sick" films carry a bright square in
    the top-left corner (outside the lungs) and nothing else differs; without it, "sick"
    films have a fine texture inside the central chest box."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    checker = np.where(((yy // 2) + (xx // 2)) % 2 == 0, 1.0, -1.0)
    inner = lungs.box_mask((size, size), (0.3, 0.75, 0.3, 0.7))
    for cls in ("sick", "well"):
        os.makedirs(os.path.join(root, cls), exist_ok=True)
        for i in range(n):
            bg = rng.uniform(90, 130)
            img = rng.normal(bg, 8, (size, size))
            if cls == "sick":
                if marker:
                    img[2:10, 2:10] = 255
                else:
                    img[inner] = bg + 60 * checker[inner]
            name = f"person{i // 2 + (1000 if cls == 'well' else 0)}_{i % 2}.png"
            Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(
                os.path.join(root, cls, name))
    return root


def _train(data: str, **kw):
    from medview.core.progress import drain
    from medview.training.engine import train
    from medview.training.types import TrainConfig

    args = dict(data=data, base="timm:test_efficientnet", strategy="full", epochs=6,
                image_size=64, batch_size=8, lr=3e-3, augment=False, n_bootstrap=20,
                min_per_class=5, patience=6, positive_class="sick")
    args.update(kw)
    return drain(train(TrainConfig(**args)))


@pytest.mark.slow
def test_audit_flags_a_model_trained_on_a_planted_border_marker(tmp_path):
    """A model that learned a corner marker still separates the classes with the lungs
    hidden: the audit says so, in the card and its README text; one that learned what is
    inside the chest is not flagged."""
    from medview.models.card import reliance_lines
    from medview.training.audit import HIDDEN_BOX, HIDDEN_EDGES

    shortcut = _train(_write_marker_dataset(str(tmp_path / "marker")))
    rel = shortcut.card.reliance
    assert rel is not None and rel.auc >= 0.9
    assert rel.masked_auc[HIDDEN_BOX] >= 0.9  # the lungs are hidden, the marker is not
    assert any("still decides without the lungs" in w for w in rel.warnings)
    assert any("without the lungs" in w for w in shortcut.warnings)
    assert any(line.startswith("Warning: The model still decides without the lungs")
               for line in reliance_lines(shortcut.card))

    honest = _train(_write_marker_dataset(str(tmp_path / "texture"), marker=False))
    rel = honest.card.reliance
    assert rel.auc >= 0.9 and rel.masked_auc[HIDDEN_BOX] < 0.75
    assert rel.masked_auc[HIDDEN_EDGES] >= rel.auc - 0.05
    assert not any("without the lungs" in w for w in rel.warnings)


@pytest.mark.slow
def test_the_robust_recipe_trains_and_records_itself(tmp_path):
    """The default recipe (hospital variations, swapped surroundings, lung-hidden films)
    runs through the engine and the card's recipe says so."""
    res = _train(_write_marker_dataset(str(tmp_path / "texture"), marker=False),
                 augment=True, epochs=2)
    rec = res.card.training
    assert rec["augment"] is True and rec["robust"] is True
    assert rec["counterfactual_weight"] == 1.0
    assert res.card.reliance is not None and res.card.reliance.n > 0


def test_the_augmentation_appends_lung_hidden_films_only_in_the_robust_recipe():
    import torch

    from medview.training.engine import lung_masks, make_augment
    from medview.training.types import TrainConfig

    batch = torch.from_numpy(np.stack([synthetic_chest(64, seed=s) for s in range(8)]))
    masks = lung_masks(batch.numpy(), range(8))
    gen = torch.Generator().manual_seed(0)
    out = make_augment(TrainConfig(), gen, masks)(batch, np.arange(8))
    # 8 films + a quarter with the lungs hidden + a quarter again as a second variation
    assert out.shape == (12, 64, 64)
    plain = make_augment(TrainConfig(robust=False), gen, masks)(batch, np.arange(8))
    assert plain.shape == (8, 64, 64)
    none = make_augment(TrainConfig(counterfactual_weight=0.0, consistency_weight=0.0),
                        gen, masks)(batch, np.arange(8))
    assert none.shape == (8, 64, 64)


def test_the_second_views_are_of_the_first_films(monkeypatch):
    import torch

    from medview.training.engine import make_augment
    from medview.training.types import TrainConfig

    monkeypatch.setattr(robust, "vary_batch", lambda b, rng: b.copy())
    rng = np.random.default_rng(0)
    batch = torch.from_numpy(rng.integers(0, 256, (8, 32, 32), dtype=np.uint8))
    cfg = TrainConfig(counterfactual_weight=0.0, rotation_deg=0.0, scale_range=(1.0, 1.0),
                      translate=0.0, brightness=0.0, contrast=0.0)
    out = make_augment(cfg, torch.Generator().manual_seed(0), None)(batch, np.arange(8))
    assert out.shape == (10, 32, 32)
    assert torch.allclose(out[8:], batch[:2].float(), atol=1.0)


def test_the_consistency_term_is_zero_when_two_views_agree_and_grows_apart():
    import torch

    from medview.training.engine import consistency_loss

    a = torch.tensor([[2.0, -1.0], [0.0, 0.0]])
    assert torch.allclose(consistency_loss(a, a), torch.zeros(2), atol=1e-6)
    near = consistency_loss(a, a + torch.tensor([[0.0, 0.5], [0.0, 0.5]]))
    far = consistency_loss(a, a + torch.tensor([[0.0, 3.0], [0.0, 3.0]]))
    assert (near > 0).all() and (far > near).all() and (far <= np.log(2) + 1e-6).all()


def test_the_gate_thumbnail_without_the_network_is_the_taps():
    import timm
    import torch

    from medview.inference.features import StageTap, gate_stages
    from medview.training.engine import _to_input
    from medview.training.gatefit import thumbnails

    model = timm.create_model("test_efficientnet", pretrained=False, num_classes=2).eval()
    films = np.stack([synthetic_chest(64, seed=s) for s in range(4)])
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    from medview.inference import scope

    stages = (*scope.INPUT_STAGES, *gate_stages(model)[1:])
    tap = StageTap(model, stages)
    try:
        taps = tap.forward(model, _to_input(torch.from_numpy(films), mean, std))
    finally:
        tap.remove()
    for stage in scope.INPUT_STAGES:
        got = thumbnails(films, lambda b: _to_input(torch.from_numpy(b), mean, std), stage)
        assert got.shape == taps[stage].shape and np.allclose(got, taps[stage], atol=1e-5)
    # the layout thumbnail is the raw one normalised per film, as the graph backend
    # computes it in numpy
    assert np.allclose(scope.normalise_thumbnails(taps[scope.INPUT_STAGE]),
                       taps[scope.INPUT_LAYOUT_STAGE], atol=1e-5)
    assert np.allclose(taps[scope.INPUT_LAYOUT_STAGE].mean(1), 0, atol=1e-5)
    assert not np.allclose(taps[scope.INPUT_STAGE], taps[scope.INPUT_LAYOUT_STAGE])


def test_layout_keeping_variations_never_rewindow_or_mark(monkeypatch):
    def no(*_a, **_k):
        raise AssertionError("a layout-changing variation ran")

    monkeypatch.setattr(robust, "_window", no)
    monkeypatch.setattr(robust, "_marker", no)
    img = synthetic_chest()
    for s in range(30):
        out = robust.hospital_variation(img, np.random.default_rng(s), robust.LAYOUT_KEEPING)
        # no white marker or band, no black band or border, no new window
        assert not (out >= 250).any() and (out <= 2).mean() < 0.01


@pytest.mark.parametrize("bad", [{"lung_estimate": {"estimated_share": "95%"}},
                                 {"warnings": [{"html": "<b>x</b>"}]},
                                 {"masked_auc": {"x": 1.5}}])
def test_a_card_whose_audit_is_not_numbers_and_text_is_refused(bad):
    from medview.models.card import Card, CardError

    path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "models",
                        "cxr-pneumonia", "card.json")
    with open(path, encoding="utf-8") as f:
        base = json.load(f)
    base["reliance"] = {**base["reliance"], **bad}
    with pytest.raises(CardError, match="reliance"):
        Card.from_dict(base)


def test_the_lung_fields_hull_and_threshold_are_scikit_images():
    """The lung-field estimate's convex hull and Otsu threshold (written with numpy, so
    that training does not import scikit-image) give scikit-image's answers: random
    blobs, thin lines, single pixels and regions touching the border; float32 values
    like the smoothed film's."""
    from skimage.filters import threshold_otsu
    from skimage.morphology import convex_hull_image

    from medview.imaging import lungs

    rng = np.random.default_rng(5)
    shapes = []
    for _ in range(40):
        m = np.zeros((int(rng.integers(8, 70)), int(rng.integers(8, 70))), bool)
        for _ in range(int(rng.integers(1, 5))):
            r, c = rng.integers(0, m.shape[0]), rng.integers(0, m.shape[1])
            m[max(0, r - rng.integers(0, 9)):r + 1, max(0, c - rng.integers(0, 9)):c + 1] = True
        shapes.append(m)
    line = np.zeros((20, 20), bool)
    line[3, 2:15] = True
    dot = np.zeros((9, 9), bool)
    dot[4, 4] = True
    corner = np.zeros((12, 12), bool)
    corner[0, 0] = corner[11, 11] = corner[0, 11] = True
    for m in [*shapes, line, dot, corner]:
        assert np.array_equal(lungs.convex_hull_mask(m), convex_hull_image(m))
    for _ in range(30):
        v = (rng.normal(100, 30, int(rng.integers(50, 4000)))
             * rng.choice([1, 1, 0.01])).astype(np.float32)
        assert lungs.threshold_otsu(v) == float(threshold_otsu(v))
    assert lungs.threshold_otsu(np.full(10, 7, np.float32)) == 7.0
