"""Training engine: splits, leakage, metrics, cancel, atomic export, reproducibility."""

import json
import os

import numpy as np
import pytest

from medview.core.errors import CancelledError
from medview.core.progress import CancelToken
from medview.inference.predictor import load_gate
from medview.models.card import read_card
from medview.training import data as tdata
from medview.training import metrics as M
from medview.training.engine import train
from medview.training.export import TMP_PREFIX, export_model
from medview.training.types import TrainConfig, TrainingError
from tests.tiny import train_tiny, write_patch_dataset

# one of the slowest files: `pytest -m "not slow"` leaves it out
pytestmark = pytest.mark.slow


def _samples(n_patients=30, per_patient=3, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for p in range(n_patients):
        label = "A" if p % 3 else "B"
        for k in range(per_patient):
            out.append(tdata.Sample(f"/x/p{p}_{k}.png", label, f"p{p}",
                                    sha256=f"{p}-{k}-{rng.integers(1e9)}"))
    return tdata.Dataset(out, ["A", "B"], source="/x", patient_source="manifest")


def test_splits_are_grouped_by_patient_and_stratified():
    ds = _samples()
    splits = tdata.assign_splits(ds, (0.6, 0.2, 0.2), seed=1)
    assert sorted(i for idx in splits.values() for i in idx) == list(range(len(ds.samples)))
    owner = {}
    for sp, idx in splits.items():
        for i in idx:
            assert owner.setdefault(ds.samples[i].patient, sp) == sp
    for sp in ("train", "val", "test"):
        counts = ds.counts(splits[sp])
        assert counts["A"] > 0 and counts["B"] > 0
    assert tdata.leakage_report(ds, splits) == []
    assert splits == tdata.assign_splits(ds, (0.6, 0.2, 0.2), seed=1)


def test_leakage_report_finds_shared_patients_and_identical_images():
    ds = _samples(6, 2)
    ds.samples[1].sha256 = ds.samples[2].sha256
    splits = {"train": [0, 2], "val": [1], "test": [3]}
    report = tdata.leakage_report(ds, splits)
    assert any("patient(s) appear in more than one split" in r for r in report)
    assert any("identical image(s)" in r for r in report)


def test_manifest_split_column_is_honoured(tmp_path):
    write_patch_dataset(str(tmp_path), n_per_class=6)
    rows = ["path,label,patient_id,split"]
    for cls in ("patch", "plain"):
        for k, name in enumerate(sorted(os.listdir(tmp_path / cls))):
            split = "train" if k < 4 else ("val" if k == 4 else "test")
            rows.append(f"{cls}/{name},{cls},{cls}{k},{split}")
    (tmp_path / "m.csv").write_text("\n".join(rows))
    ds = tdata.from_manifest(str(tmp_path / "m.csv"))
    splits = tdata.assign_splits(ds, seed=5)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [8, 2, 2]
    assert ds.patient_source == "manifest"


def test_bad_folders_are_blocked_with_counts(tmp_path):
    write_patch_dataset(str(tmp_path / "one"), n_per_class=4)
    import shutil

    shutil.rmtree(tmp_path / "one" / "plain")
    ds = tdata.from_folder(str(tmp_path / "one"))
    problems, _ = tdata.check_dataset(ds, min_per_class=10)
    assert any("at least 2" in p for p in problems)
    assert any("patch: 4" in p for p in problems)
    with pytest.raises(TrainingError, match="at least 2"):
        gen = train(TrainConfig(data=str(tmp_path / "one"), base="timm:test_efficientnet",
                                min_per_class=2))
        while True:
            next(gen)


def test_metrics_match_known_values():
    y = np.array([0, 0, 1, 1])
    assert M.roc_auc(y, np.array([0.1, 0.4, 0.35, 0.8])) == 0.75
    assert M.roc_auc(y, np.array([0.5, 0.5, 0.5, 0.5])) == 0.5
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.1, 0.9]])
    ev = M.evaluate(y, probs, ["n", "p"], positive=1, threshold=0.5, n_boot=50)
    assert ev["auc"]["value"] == 1.0 and ev["sensitivity"]["value"] == 1.0
    assert ev["confusion_matrix"] == [[2, 0], [0, 2]]
    assert 0 <= ev["ece"]["value"] <= 0.3
    thr = M.choose_threshold(np.array([1, 1, 1, 1, 0, 0]),
                             np.array([0.9, 0.8, 0.6, 0.3, 0.5, 0.1]), 0.75)
    assert 0.5 < thr <= 0.6


def test_temperature_scaling_recovers_overconfidence():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 4000)
    true_logit = rng.normal(0, 1.5, 4000) + (y * 2 - 1) * 1.0
    logits = np.stack([np.zeros(4000), true_logit * 3.0], 1)  # 3x overconfident
    t = M.fit_temperature(logits, y)
    assert 2.5 < t < 3.5
    assert M.expected_calibration_error(M.softmax(logits, t), y) < \
        M.expected_calibration_error(M.softmax(logits), y)


def test_cancel_leaves_no_model_folder(tmp_path):
    data = write_patch_dataset(str(tmp_path / "d"), n_per_class=16)
    out = tmp_path / "models"
    token = CancelToken()
    gen = train(TrainConfig(data=data, base="timm:test_efficientnet", strategy="full",
                            epochs=3, image_size=32, batch_size=4, min_per_class=5), token)
    with pytest.raises(CancelledError):
        for ev in gen:
            if ev.stage == "train":
                token.cancel()
    assert not out.exists() or os.listdir(out) == []


def test_failed_export_leaves_nothing_and_previous_model_intact(tmp_path, tiny_model,
                                                                monkeypatch):
    import medview.training.export as ex
    from medview.models.card import read_card
    from medview.models.loading import load_model

    folder, _ = tiny_model
    card = read_card(folder)
    model = load_model(card)
    out = tmp_path / "models"
    first = export_model(model, {**card.data, "id": "keep-me"}, str(out), gate=load_gate(card))

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ex, "save_weights", disk_full)
    with pytest.raises(OSError):
        export_model(model, {**card.data, "id": "new-one"}, str(out), gate=load_gate(card))
    assert sorted(os.listdir(out)) == ["keep-me"]
    assert read_card(first).id == "keep-me"
    # a leftover from a killed process (its lock file held by nobody) is cleaned at the
    # next export
    os.makedirs(out / f"{TMP_PREFIX}stale")
    (out / f"{TMP_PREFIX}stale" / ".lock").write_bytes(b"")
    monkeypatch.undo()
    export_model(model, {**card.data, "id": "third"}, str(out), gate=load_gate(card))
    assert sorted(os.listdir(out)) == ["keep-me", "third"]
    with pytest.raises(FileExistsError):
        export_model(model, {**card.data, "id": "third"}, str(out), gate=load_gate(card))


def test_export_round_trips_through_registry_and_predicts(tiny_model, monkeypatch):
    from medview.inference.predictor import Predictor
    from medview.io import load
    from medview.models.registry import discover_models

    folder, data = tiny_model
    monkeypatch.setenv("MEDVIEW_MODELS_DIR", os.path.dirname(folder))
    reg = discover_models()
    card = reg.get("tiny-patch")
    assert card.source == "user"
    assert card.data["flags"] == ["locally trained, not clinically validated"]
    assert card.data["parent"]["kind"] == "none"
    assert card.data["training_data"]["split_rule"].startswith("stratified by class")
    pred = Predictor(card, "cpu")
    for cls in ("patch", "plain"):
        name = sorted(os.listdir(os.path.join(data, cls)))[0]
        vol = load([os.path.join(data, cls, name)]).volumes[0]
        assert pred.predict(vol, 0).label == cls


def test_same_seed_gives_same_weights(tmp_path):
    data = write_patch_dataset(str(tmp_path / "d"), n_per_class=10)
    kw = dict(epochs=2, image_size=32, batch_size=4, n_bootstrap=10, augment=True)
    a = train_tiny(data, str(tmp_path / "a"), **kw)
    b = train_tiny(data, str(tmp_path / "b"), **kw)
    c = train_tiny(data, str(tmp_path / "c"), seed=1, **kw)
    sha = [read_card(f).weights_sha256 for f in (a, b, c)]
    assert sha[0] == sha[1] != sha[2]


@pytest.mark.parametrize("strategy", ["feature", "partial", "gradual", "scratch"])
def test_every_strategy_runs(tmp_path, strategy):
    data = write_patch_dataset(str(tmp_path / "d"), n_per_class=8)
    events = []
    gen = train(TrainConfig(data=data, base="timm:test_efficientnet", strategy=strategy,
                            epochs=2, image_size=32, batch_size=4, min_per_class=5,
                            n_bootstrap=10, unfreeze_blocks=1))
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            result = stop.value
            break
    stages = {e.stage for e in events}
    assert {"load", "epoch", "evaluate", "done"} <= stages
    if strategy == "feature":
        assert "features" in stages
    assert result.card.training["strategy"] == strategy
    assert set(result.card.metrics) == {"validation", "test"}


def test_partial_strategy_freezes_lower_layers(tmp_path):
    import timm

    from medview.training.strategies import layer_groups, set_trainable

    model = timm.create_model("test_efficientnet", num_classes=2)
    groups = layer_groups(model)
    set_trainable(model, 2)
    assert all(p.requires_grad for m in groups[0] + groups[1] for p in m.parameters())
    assert not any(p.requires_grad for g in groups[2:] for m in g for p in m.parameters())
    assert not model.bn1.training  # frozen batch norm keeps its statistics


def test_cli_train_and_models(tmp_path, capsys, monkeypatch):
    from medview.cli import main

    data = write_patch_dataset(str(tmp_path / "d"), n_per_class=8)
    out = tmp_path / "m"
    monkeypatch.setenv("MEDVIEW_MODELS_DIR", str(out))
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"batch_size": 4, "min_per_class": 5, "n_bootstrap": 10}))
    rc = main(["train", data, "--base", "timm:test_efficientnet", "--strategy", "full",
               "--epochs", "1", "--image-size", "32", "--name", "CLI Test", "--out",
               str(out), "--config", str(cfg)])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "epoch 1/1" in text and "saved" in text
    assert main(["models", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    ids = [m["id"] for m in doc["models"]]
    assert "cli-test" in ids


def test_dicom_patient_id_groups_splits_and_is_only_kept_hashed(tmp_path):
    from tests.factory import make_dataset, write

    rng = np.random.default_rng(0)
    for cls in ("A", "B"):
        os.makedirs(tmp_path / cls)
        for p in range(6):
            for k in range(3):
                ds = make_dataset(rng.integers(0, 200, (16, 16)).astype(np.int16),
                                  modality="DX")
                ds.PatientID = f"MRN-{cls}-{p}"
                write(ds, tmp_path / cls / f"img{p}{k}.dcm")
    ds = tdata.from_folder(str(tmp_path))
    assert ds.patient_source == "none"
    from medview.core.progress import drain

    drain(tdata.load_images(ds, (16, 16)))
    assert ds.patient_source == "DICOM Patient ID"
    assert all(s.patient.startswith("dicom-") and "MRN" not in s.patient for s in ds.samples)
    splits = tdata.assign_splits(ds, (0.5, 0.25, 0.25), seed=0)
    assert tdata.leakage_report(ds, splits) == []
    assert len({s.patient for s in ds.samples}) == 12


def test_export_cleanup_never_deletes_another_exports_work(tmp_path):
    """Two exports into one folder: one run's clean-up must not delete the other's staging
    folder while that export still runs (it holds the lock); a killed one's is removed."""
    import fcntl
    import subprocess
    import sys

    from medview.models.staging import clean_stale_exports, staging_folder

    out = tmp_path / "models"
    out.mkdir()
    holder = out / f"{TMP_PREFIX}other-process"
    holder.mkdir()
    (holder / ".lock").write_bytes(b"")
    code = ("import fcntl, os, sys, time\n"
            "fd = os.open(sys.argv[1], os.O_RDWR)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "print('locked', flush=True)\n"
            "sys.stdin.read()\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(holder / ".lock")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        young_unlocked = out / f"{TMP_PREFIX}just-created"
        young_unlocked.mkdir()  # made a moment ago, lock not taken yet
        with staging_folder(str(out)) as mine:
            assert clean_stale_exports(str(out)) == 0
            assert holder.is_dir() and young_unlocked.is_dir() and os.path.isdir(mine)
    finally:
        proc.stdin.close()
        proc.wait(10)
    # the other process has ended, and our own block ended without renaming its folder
    assert clean_stale_exports(str(out)) == 2
    assert not holder.exists() and not os.path.exists(mine) and young_unlocked.is_dir()
    assert fcntl is not None


def test_the_best_epochs_weights_are_the_ones_exported(tmp_path, monkeypatch):
    """Validation AUC is best at epoch 1 and worse after it: the model that comes out of
    training, and the exported weights, are epoch 1's, not the last epoch's."""
    import copy

    import torch

    import medview.training.engine as engine
    from medview.core.progress import drain
    from medview.models.loading import load_model

    data = write_patch_dataset(str(tmp_path / "data"), n_per_class=16)
    snapshots = []  # the weights each epoch was validated with
    real_predict, real_metrics = engine._predict_logits, M.point_metrics
    scripted_auc = iter([0.9, 0.6, 0.5])

    def predict(model, *args, **kwargs):
        snapshots.append(copy.deepcopy(model.state_dict()))
        return real_predict(model, *args, **kwargs)

    def metrics(*args, **kwargs):
        out = real_metrics(*args, **kwargs)
        auc = next(scripted_auc, None)  # the three epochs' validations come first
        if auc is not None:
            out["auc_macro"] = auc
        return out

    monkeypatch.setattr(engine, "_predict_logits", predict)
    monkeypatch.setattr(M, "point_metrics", metrics)
    cfg = TrainConfig(data=data, base="timm:test_efficientnet", strategy="full", epochs=3,
                      image_size=64, batch_size=8, lr=5e-3, augment=False, n_bootstrap=20,
                      min_per_class=5, patience=10, id="best-epoch")
    result = drain(train(cfg))
    assert result.card.training["best_epoch"] == 1
    epoch1, epoch3 = snapshots[0], snapshots[2]
    weight = "conv_stem.weight"
    assert not torch.equal(epoch1[weight], epoch3[weight])  # training did change them
    final = result.model.state_dict()
    assert all(torch.equal(final[k], epoch1[k]) for k in epoch1)
    exported = load_model(read_card(export_model(result.model, result.card,
                                                 str(tmp_path / "models"),
                                                 gate=result.gate))).state_dict()
    assert all(torch.equal(exported[k], epoch1[k]) for k in epoch1)


@pytest.mark.parametrize(("name", "trainable_groups", "lr_ratio", "rebuilt"),
                         [("partial", [3, 3, 3], 1.0, [True, False, False]),
                          ("full", [None, None, None], 1.0, [True, False, False]),
                          ("scratch", [None, None, None], 1.0, [True, False, False]),
                          ("gradual", [1, 2, 3], 0.5, [True, True, True])])
def test_each_strategy_freezes_and_schedules_as_documented(name, trainable_groups, lr_ratio,
                                                           rebuilt):
    import timm

    from medview.training.strategies import (
        STRATEGIES,
        TrainingRun,
        layer_groups,
        strategy_for,
    )

    cfg = TrainConfig(strategy=name, unfreeze_blocks=2, lr=1e-3, lr_decay=0.5)
    model = timm.create_model("test_efficientnet", num_classes=2)
    groups = layer_groups(model)
    run = TrainingRun(cfg, model, None, None, None, "cpu", None, None, None, None)
    strategy = strategy_for(name)
    assert strategy.name == name and name in STRATEGIES
    assert STRATEGIES[name].pretrained == (name != "scratch")
    assert strategy.early_stopping == (name != "gradual")
    for epoch, (n, fresh) in enumerate(zip(trainable_groups, rebuilt, strict=True)):
        before = run.optimizer
        strategy.start_epoch(run, epoch)
        assert (run.optimizer is not before) == fresh
        k = len(groups) if n is None else n
        on = [any(p.requires_grad for m in g for p in m.parameters()) for g in groups]
        assert on == [i < k for i in range(len(groups))]
        lrs = [g["lr"] for g in run.optimizer.param_groups]
        assert lrs[0] == cfg.lr
        if len(lrs) > 1:
            assert lrs[1] == pytest.approx(cfg.lr * lr_ratio)


def test_feature_strategy_trains_only_the_head_on_cached_features():
    import timm
    import torch

    from medview.core.progress import drain
    from medview.training.strategies import TrainingRun, strategy_for

    model = timm.create_model("test_efficientnet", num_classes=2)
    calls = []

    def features(idx):
        calls.append(len(idx))
        return torch.randn(len(idx), model.num_features)

    run = TrainingRun(TrainConfig(strategy="feature"), model, None, np.arange(10),
                      np.arange(4), "cpu", None, None, None, features)
    strategy = strategy_for("feature")
    drain(strategy.prepare(run))
    assert calls == [10, 4]  # computed once, for train and validation
    head = {id(p) for p in model.get_classifier().parameters()}
    assert {id(p) for g in run.optimizer.param_groups for p in g["params"]} == head
    assert all(p.requires_grad == (id(p) in head) for p in model.parameters())
    strategy.start_epoch(run, 0)
    batch = strategy.batch_input(run, torch.tensor([0, 3]), None)
    assert strategy.train_logits(run, batch).shape == (2, 2)
    assert strategy.val_logits(run).shape == (4, 2)
    assert not strategy.augments


def test_final_card_names_and_retunes_only_on_a_real_threshold_change(tmp_path):
    from medview.core.progress import drain
    from medview.training.engine import final_card

    data = write_patch_dataset(str(tmp_path / "d"), n_per_class=12)
    result = drain(train(TrainConfig(data=data, base="timm:test_efficientnet", strategy="full",
                                     epochs=1, image_size=64, batch_size=8, augment=False,
                                     n_bootstrap=20, min_per_class=5, positive_class="patch")))
    pos = result.card.decision.positive_class
    t0 = result.card.thresholds[pos]
    same = final_card(result, "My Model", t0, 20)
    assert (same.id, same.name) == ("my-model", "My Model")
    assert same.thresholds == result.card.thresholds
    assert same.decision == result.card.decision and same.metrics == result.card.metrics
    moved = final_card(result, "My Model", 0.9, 20)
    assert moved.thresholds == {pos: 0.9}
    assert "a threshold the user chose" in moved.decision.rule
    assert moved.metrics["validation"] == result.card.metrics["validation"]
    # the test split is re-scored at the user's threshold: the confusion matrix is the one
    # that threshold gives
    k = result.classes.index(pos)
    pred = np.where(result.test_probs[:, k] >= 0.9, k, 1 - k)
    expected = [[int(((result.test_y == a) & (pred == b)).sum()) for b in range(2)]
                for a in range(2)]
    assert moved.metrics["test"]["confusion_matrix"] == expected


def test_wilson_and_newcombe_intervals_match_published_values():
    # Wilson 95% for 0/10 is 0-0.278 and for 12/12 0.757-1 (Newcombe 1998, table I style)
    assert M.wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-3)
    assert M.wilson_interval(12, 12) == pytest.approx((0.7575, 1.0), abs=1e-3)
    assert M.wilson_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-3)
    lo, hi = M.auc_interval(1.0, 6, 6)
    assert hi == 1.0 and 0.6 < lo < 0.85  # does not collapse on a separable small set
    lo, hi = M.auc_interval(0.9, 200, 200)
    assert lo < 0.9 < hi and hi - lo < 0.08


def test_small_separable_sets_get_real_intervals():
    """12 perfectly separated images: the bootstrap alone says 1.0-1.0; the card must
    carry an interval that admits the uncertainty of 12 images."""
    y = np.array([0] * 6 + [1] * 6)
    p1 = np.linspace(0.6, 0.99, 12) * (y == 1) + np.linspace(0.01, 0.4, 12) * (y == 0)
    probs = np.stack([1 - p1, p1], axis=1)
    ev = M.evaluate(y, probs, ["no", "yes"], 1, 0.5, n_boot=200)
    assert ev["auc"]["value"] == 1.0 and ev["auc"]["ci95"][0] < 0.85
    assert ev["sensitivity"]["value"] == 1.0 and ev["sensitivity"]["ci95"][0] < 0.7
    assert ev["accuracy"]["ci95"][0] < 0.8
    assert "Wilson" in ev["ci_method"]


def test_cards_on_small_sets_say_so(tiny_model):
    card = read_card(tiny_model[0]).card
    n = card.headline_metrics["n"]
    assert n < 100 and card.evidence_warning.startswith("SMALL TEST SET")
    from medview.models.registry import discover_models

    bundled = discover_models().get("cxr-pneumonia").card
    assert bundled.evidence_warning == ""


def test_card_records_only_what_ran_and_refuses_a_pinned_calibration(tmp_path,
                                                                      monkeypatch):
    """Feature extraction never augments and reads no block count: its card says so. A
    temperature fitted at its search bound (as on a small separable validation set) is
    refused: the card and the warnings say the model is not calibrated."""
    from medview.core.progress import drain

    data = write_patch_dataset(str(tmp_path / "d"), n_per_class=12)
    cfg = TrainConfig(data=data, base="timm:test_efficientnet", strategy="feature", epochs=2,
                      image_size=64, batch_size=8, augment=True, n_bootstrap=20,
                      min_per_class=5)
    monkeypatch.setattr(M, "fit_temperature", lambda *_a: M.TEMPERATURE_BOUNDS[0])
    res = drain(train(cfg))
    rec = res.card.training
    assert rec["augment"] is False and "rotation_deg" not in rec
    assert "unfreeze_blocks" not in rec
    cal = res.card.calibration
    assert cal.temperature == 1.0 and cal.method.startswith("none")
    assert any(w.startswith("not calibrated") for w in res.warnings)


def test_temperature_at_the_search_bound_is_refused():
    logits = np.array([[5.0, -5.0]] * 6 + [[-5.0, 5.0]] * 6)
    y = np.array([0] * 6 + [1] * 6)
    t = M.fit_temperature(logits, y)
    assert M.calibration_problem(logits, t)  # separable: outputs saturate
    assert M.calibration_problem(logits, M.TEMPERATURE_BOUNDS[0]).startswith(
        "the fitted temperature")
    mixed = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.2, 0.0]])
    assert M.calibration_problem(mixed, M.fit_temperature(mixed, np.array([0, 1, 1, 1]))) == ""


def test_a_model_folder_as_base_is_named_not_located(tiny_model, tmp_path):
    """Fine-tuning from a model folder: the card names the parent (id, version, weights
    sha256) and carries no local path."""
    folder, data = tiny_model
    out = train_tiny(data, str(tmp_path / "models"), model_id="tiny-again", base=folder,
                     epochs=1)
    with open(os.path.join(out, "card.json"), encoding="utf-8") as f:
        text = f.read()
    card = read_card(out).card
    assert card.parent["kind"] == "model" and card.parent["id"] == "tiny-patch"
    assert card.training["base"].startswith("tiny-patch ")
    assert folder not in text and str(tmp_path) not in text


def test_deterministic_mode_is_on_without_importing_the_compiler():
    """Training's deterministic mode is the one torch.use_deterministic_algorithms sets
    (warn-only), and the compiler stack it would import (1.8 s) stays unimported; the
    compiler, if imported later, is deterministic too."""
    import subprocess
    import sys

    code = (
        "import sys, torch\n"
        "from medview.training.engine import deterministic_algorithms\n"
        "deterministic_algorithms()\n"
        "assert torch.are_deterministic_algorithms_enabled()\n"
        "assert torch.is_deterministic_algorithms_warn_only_enabled()\n"
        "assert 'torch._inductor' not in sys.modules, 'compiler imported'\n"
        "import torch._inductor.config as c\n"
        "assert c.deterministic\n")
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_DETERMINISTIC"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]


@pytest.mark.parametrize("binary", [True, False])
def test_the_bootstrap_scores_each_resample_as_point_metrics_would(binary):
    """Each replicate's metrics, computed at once from how often each film was drawn, are
    point_metrics of the resampled films themselves: tied scores, three classes, and
    resamples that miss a class (NaN AUCs) included."""
    import math

    rng = np.random.default_rng(7)
    k = 2 if binary else 3
    n = 23
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[1::3] = logits[0::3][:len(logits[1::3])]  # tied scores across the classes
    probs = M.softmax(logits)
    classes = [f"c{j}" for j in range(k)]
    positive, threshold = (1, 0.45) if binary else (None, None)
    weights = np.stack([np.bincount(rng.integers(0, n, n), minlength=n)
                        for _ in range(40)]).astype(float)
    weights[0] = (y != 0) * 1.0  # a resample with no film of class 0
    fast = M.weighted_point_metrics(y, probs, classes, positive, threshold, weights)
    for b, w in enumerate(weights):
        idx = np.repeat(np.arange(n), w.astype(int))
        ref = M.point_metrics(y[idx], probs[idx], classes, positive, threshold)
        assert set(fast) == set(ref)
        for name, value in ref.items():
            if math.isnan(value):
                assert math.isnan(fast[name][b]), (b, name)
            else:
                assert fast[name][b] == pytest.approx(value, abs=1e-12), (b, name)
    assert math.isnan(fast["auc_c0"][0])


def test_training_films_read_side_by_side_match_one_reader(tmp_path):
    """Reading the training films on several threads gives the array one thread gives, in
    the samples' order, with the same unreadable files skipped and the same hashes; a
    cancel stops it."""
    from PIL import Image

    from medview.core.progress import CancelToken, drain

    rng = np.random.default_rng(3)
    for cls in ("A", "B"):
        os.makedirs(tmp_path / cls)
        for k in range(13):
            Image.fromarray(rng.integers(0, 255, (20 + k, 30), np.uint8)).save(
                tmp_path / cls / f"f{k:02d}.png")
    (tmp_path / "A" / "f05.png").write_bytes(b"\x89PNG broken")
    results = []
    for readers in (1, 4):
        ds = tdata.from_folder(str(tmp_path))
        arr = drain(tdata.load_images(ds, (16, 16), readers=readers))
        results.append((arr, [s.path for s in ds.samples], [s.sha256 for s in ds.samples],
                        [f.path for f in ds.skipped]))
    (a1, p1, h1, s1), (a4, p4, h4, s4) = results
    assert a1.shape == (25, 16, 16) and np.array_equal(a1, a4)
    assert p1 == p4 == sorted(p1) and h1 == h4 and all(h1)
    assert s1 == s4 and s1[0].endswith("f05.png")
    token = CancelToken()
    token.cancel()
    with pytest.raises(CancelledError):
        drain(tdata.load_images(tdata.from_folder(str(tmp_path)), (16, 16), cancel=token,
                                readers=4))
