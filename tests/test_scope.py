"""Out-of-distribution scores for the trust gate, on synthetic embeddings with known
answers."""

import numpy as np
import pytest

from medview.inference import scope
from medview.models.card import SCOPE_METHODS


def _data(seed=0, d=16, n=400):
    rng = np.random.default_rng(seed)
    means = np.zeros((2, d))
    means[0, 0], means[1, 0] = -3, 3
    labels = rng.integers(0, 2, n)
    feats = means[labels] + rng.normal(size=(n, d))
    logits = np.stack([-feats[:, 0], feats[:, 0]], axis=1)
    return feats, labels, logits


def _features(feats, logits, stage=None):
    """The predictor's feature dict; the stage statistics default to a noisy copy of the
    embedding's first 8 dimensions."""
    if stage is None:
        stage = feats[:, :8] + 0.1
    return {scope.PRE_LOGITS: feats, scope.LOGITS: logits, "blocks.6": stage}


def test_mahalanobis_distance_matches_its_definition():
    feats, labels, _ = _data()
    stats = scope.fit_mahalanobis(feats, labels, ridge=0.0)
    x = np.zeros((1, feats.shape[1]))
    x[0, 0] = 3.0  # exactly at class 1's mean direction
    cov = np.cov((feats - stats["means"][labels]).T, ddof=2)
    diff = x[0] - stats["means"][1]
    expected = np.sqrt(diff @ np.linalg.inv(cov) @ diff)
    assert scope.mahalanobis_score(stats, x)[0] == pytest.approx(expected, rel=1e-3)


def test_knn_distance_is_zero_on_a_training_point_and_grows_away():
    feats, *_ = _data()
    stats = scope.fit_knn(feats)
    assert scope.knn_score(stats, feats[:3], k=1) == pytest.approx(0.0, abs=1e-6)
    rng = np.random.default_rng(1)
    fresh = feats[:50] + rng.normal(scale=0.05, size=(50, feats.shape[1]))  # near training
    far = np.zeros((3, feats.shape[1]))
    far[:, 5] = 1.0  # a direction the training images do not point in
    assert scope.knn_score(stats, far).min() > scope.knn_score(stats, fresh).max()


def test_energy_is_lower_for_confident_logits():
    e = scope.energy_score(np.array([[10.0, 0.0], [0.1, 0.0]]))
    assert e[0] < e[1]
    assert e[1] == pytest.approx(-np.log(np.exp(0.1) + 1.0))


@pytest.mark.parametrize("method", SCOPE_METHODS)
def test_gate_passes_about_the_percentile_and_withholds_far_images(method):
    feats, labels, logits = _data(0)
    vfeats, _, vlogits = _data(1)
    gate = scope.fit_gate(method, _features(feats, logits), labels,
                          _features(vfeats, vlogits), percentile=95, stages=("blocks.6",))
    assert gate.in_distribution_pass_rate == pytest.approx(0.95, abs=0.01)
    tfeats, _, tlogits = _data(2)
    inside = gate.in_scope(_features(tfeats, tlogits)).mean()
    assert 0.9 < inside < 0.99  # unseen, same distribution
    rng = np.random.default_rng(3)
    far = rng.normal(size=(200, feats.shape[1])) * 0.2
    far[:, 5] += 12  # a direction the training images never vary in much
    far_logits = np.zeros((200, 2))  # an unsure model
    out = gate.in_scope(_features(far, far_logits)).mean()
    assert out < 0.05


def test_multi_depth_catches_what_only_an_early_stage_sees():
    """An image whose embedding is ordinary but whose stage statistics are not (as an
    inverted film's are) is withheld by multi_depth, not by the embedding alone."""
    feats, labels, logits = _data(0)
    vfeats, _, vlogits = _data(1)
    train, val = _features(feats, logits), _features(vfeats, vlogits)
    deep = scope.fit_gate("multi_depth", train, labels, val, 99, stages=("blocks.6",))
    flat = scope.fit_gate("mahalanobis", train, labels, val, 99)
    tfeats, _, tlogits = _data(2)
    odd = _features(tfeats, tlogits, stage=-(tfeats[:, :8] + 0.1) * 3)
    assert deep.in_scope(odd).mean() < 0.05
    assert flat.in_scope(odd).mean() > 0.9


def test_statistics_round_trip_as_safetensors_and_are_refused_when_changed():
    feats, labels, logits = _data()
    f = _features(feats, logits)
    gate = scope.fit_gate("multi_depth", f, labels, f, stages=("blocks.6",))
    data = gate.to_bytes()
    back = scope.ScopeGate.from_bytes(data, "multi_depth", gate.limit, gate.sha256(),
                                      stages=("blocks.6",))
    some = {k: v[:5] for k, v in f.items()}
    np.testing.assert_allclose(back.score(some), gate.score(some))
    tampered = bytearray(data)
    tampered[-1] ^= 1
    with pytest.raises(ValueError, match="does not match"):
        scope.ScopeGate.from_bytes(bytes(tampered), "multi_depth", gate.limit, gate.sha256(),
                                   stages=("blocks.6",))
    with pytest.raises(ValueError, match="lack"):  # the card names a stage not stored
        scope.ScopeGate.from_bytes(data, "multi_depth", gate.limit, gate.sha256(),
                                   stages=("blocks.6", "blocks.4"))


def test_auroc_and_fpr_at_95_tpr():
    inside = np.arange(100.0)
    assert scope.auroc(inside, inside + 1000) == 1.0
    assert scope.auroc(inside, inside) == pytest.approx(0.5)
    assert scope.fpr_at_tpr(inside, np.array([10.0, 96.0, 200.0])) == pytest.approx(1 / 3)


def test_a_score_and_its_limit_read_as_they_compare():
    """ "score 3.0 > limit 3.0" reads false: enough decimals to show the difference."""
    from medview.core.presentation import score_and_limit
    from medview.inference.scope import content_reason

    assert content_reason(3.04, 2.98).endswith("score 3.04 > limit 2.98")
    assert content_reason(5.24, 3.41).endswith("score 5.2 > limit 3.4")
    assert content_reason(3.0004, 3.0001).endswith("score 3.0004 > limit 3.0001")
    assert score_and_limit(3.0, 3.0) == ("3.0", "3.0")
    for score, limit in ((3.04, 2.98), (10.0, 9.96), (0.0501, 0.05)):
        a, b = score_and_limit(score, limit)
        assert float(a) > float(b)
