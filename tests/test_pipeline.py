"""The training input pipeline (training.pipeline): batches made ahead of the steps on
threads, finished on the device, with draws that do not depend on the threads."""

import threading

import numpy as np


def test_a_deferred_batch_gives_the_same_model_input_as_one_made_on_the_thread():
    """On a GPU the films travel as uint8 with their drawn augmentation and are finished
    on the device; the numbers are those the CPU path makes (here both on the CPU)."""
    import torch

    from medview.training.engine import _to_input
    from medview.training.pipeline import draw_augmentation, make_step_input
    from medview.training.types import TrainConfig

    films = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (6, 32, 32),
                                                               dtype=np.uint8))
    aug = draw_augmentation(6, TrainConfig(hflip=True), torch.Generator().manual_seed(3))

    def to_input(b):
        return _to_input(b, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))

    idx = torch.arange(6)
    ready = make_step_input(idx, films, aug, "cpu", to_input)
    deferred = make_step_input(idx, films, aug, "mps", to_input)
    assert ready.x is not None and deferred.x is None
    assert deferred.films is not None and deferred.films.dtype == torch.uint8
    assert torch.equal(ready.model_input("cpu", to_input),
                       deferred.model_input("cpu", to_input))
    assert ready.model_input("cpu", to_input).is_contiguous(
        memory_format=torch.channels_last)


def test_the_torch_model_input_is_the_inference_normalisation_bit_for_bit():
    import torch

    from medview.training.engine import _to_input, model_array

    rng = np.random.default_rng(1)
    for batch in (rng.integers(0, 256, (3, 20, 24), dtype=np.uint8),
                  (rng.random((3, 20, 24)) * 255).astype(np.float32)):
        got = _to_input(torch.from_numpy(batch), (0.485, 0.456, 0.406),
                        (0.229, 0.224, 0.225)).numpy()
        np.testing.assert_array_equal(got, model_array(batch, (0.485, 0.456, 0.406),
                                                       (0.229, 0.224, 0.225)))


def test_each_batch_draws_from_its_own_generator():
    import torch

    from medview.training.pipeline import step_generator

    def draw(*key):
        return torch.rand(4, generator=step_generator(*key))

    assert torch.equal(draw(1, 0, 2, 5), draw(1, 0, 2, 5))
    keys = [(1, 0, 2, 5), (1, 0, 2, 6), (1, 0, 3, 5), (1, 1, 2, 5), (2, 0, 2, 5)]
    draws = [draw(*k) for k in keys]
    assert len({tuple(d.tolist()) for d in draws}) == len(keys)


def test_pipeline_threads_one_on_the_cpu_and_the_cores_for_a_gpu(monkeypatch):
    import os

    from medview.training import pipeline

    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert pipeline.pipeline_workers("cpu") == 1
    assert pipeline.pipeline_workers("cuda") == 12
    assert pipeline.pipeline_workers("cuda:1") == 12
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    assert pipeline.pipeline_workers("cuda") == 3


def _train(tmp_path, name, **kw):
    from medview.core.progress import drain
    from medview.training import engine
    from medview.training.types import TrainConfig
    from tests.tiny import write_patch_dataset

    data = write_patch_dataset(str(tmp_path / "data"), n_per_class=12, size=32)
    return drain(engine.train(TrainConfig(
        data=data, base="timm:test_efficientnet", strategy="full", epochs=1,
        image_size=32, batch_size=4, n_bootstrap=20, min_per_class=5, id=name,
        audit=False, **kw)))


def test_the_next_batches_are_made_while_the_model_trains_on_this_one(tmp_path,
                                                                      monkeypatch):
    """Each step's forward pass waits until the pipeline has started the next batch:
    made one after the other on the training thread, that would never happen."""
    from medview.training import strategies

    started: dict[int, threading.Event] = {}
    lock = threading.Lock()
    calls = {"made": 0, "trained": 0}
    overlapped = []
    real_make, real_logits = strategies.Strategy.batch_input, strategies.Strategy.train_logits

    def batch_input(self, run, idx, gen):
        with lock:
            k = calls["made"]
            calls["made"] += 1
            started.setdefault(k, threading.Event()).set()
        return real_make(self, run, idx, gen)

    def train_logits(self, run, batch):
        k = calls["trained"]
        calls["trained"] += 1
        steps = -(-len(run.train_idx) // run.cfg.batch_size)
        if k + 1 < steps:
            with lock:
                ev = started.setdefault(k + 1, threading.Event())
            overlapped.append(ev.wait(timeout=20))
        assert threading.current_thread() is threading.main_thread()
        return real_logits(self, run, batch)

    monkeypatch.setattr(strategies.Strategy, "batch_input", batch_input)
    monkeypatch.setattr(strategies.Strategy, "train_logits", train_logits)
    result = _train(tmp_path, "overlap", augment=True)
    assert len(overlapped) >= 3 and all(overlapped)
    assert result.history[0]["input_wait_seconds"] >= 0


def test_the_weights_do_not_depend_on_how_many_threads_made_the_batches(tmp_path,
                                                                        monkeypatch):
    import torch

    from medview.training import pipeline

    states = []
    for workers in (1, 3):
        monkeypatch.setattr(pipeline, "pipeline_workers", lambda device, w=workers: w)
        result = _train(tmp_path / str(workers), f"w{workers}", augment=True)
        states.append(result.model.state_dict())
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
