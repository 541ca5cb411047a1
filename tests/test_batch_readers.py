"""Batch scoring with reader threads (the GPU default): the same rows in the same order
as one thread, unreadable files skipped the same way, a bounded read-ahead, cancel."""

import glob
import os
import threading

import pytest

from medview.core.errors import CancelledError
from medview.core.progress import CancelToken, drain
from medview.inference import batch
from medview.inference.session import InferenceSession
from medview.models.card import read_card


def _score(folder, paths, readers, cancel=None, on_step=None):
    card = read_card(folder)
    rows = []

    def step(s):
        if getattr(s, "item", None) is not None:
            rows.append((s.item.key, s.item.path,
                         [round(float(p), 6) for p in s.item.prediction.probabilities]))
        if on_step is not None:
            on_step(s)

    scan_skipped, skipped = drain(batch.iter_score_stream(
        InferenceSession(), card, paths, "cpu", cancel, backend="torch", chunk=4,
        readers=readers), step)
    return rows, sorted(s.path for s in scan_skipped + skipped)


def _inputs(tiny_model, tmp_path):
    folder, data = tiny_model
    films = sorted(glob.glob(os.path.join(data, "*", "*.png")))[:23]
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return folder, [*films[:11], str(bad), *films[11:]]


def test_reader_threads_give_the_rows_one_thread_gives(tiny_model, tmp_path):
    folder, paths = _inputs(tiny_model, tmp_path)
    one = _score(folder, paths, readers=1)
    four = _score(folder, paths, readers=4)
    assert len(one[0]) == 23 and one == four
    assert [k for k, _p, _v in four[0]] == sorted(k for k, _p, _v in four[0])  # in order
    assert any("broken.png" in p for p in four[1])


def test_reader_threads_read_a_bounded_distance_ahead(tiny_model, tmp_path, monkeypatch):
    from medview.io import loader

    folder, paths = _inputs(tiny_model, tmp_path)
    real = loader.iter_read_unit
    started = []
    lock = threading.Lock()

    def counted(unit, cancel=None):
        with lock:
            started.append(unit)
        return (yield from real(unit, cancel))

    monkeypatch.setattr(loader, "iter_read_unit", counted)
    ahead = []
    _score(folder, paths, readers=3, on_step=lambda s: ahead.append(len(started) - s.done)
           if getattr(s, "item", None) else None)
    # read but not yet given out: at most the scorer's chunk (4) and 2 x readers queued
    assert 4 < max(ahead) <= 4 + 2 * 3


def test_cancel_stops_reader_threads(tiny_model, tmp_path):
    folder, paths = _inputs(tiny_model, tmp_path)
    token = CancelToken()

    def stop(s):
        if s.done >= 3:
            token.cancel()

    with pytest.raises(CancelledError):
        _score(folder, paths, readers=4, cancel=token, on_step=stop)
    assert not [t for t in threading.enumerate() if t.name.startswith("medview-read")]


def test_readers_default_to_one_on_the_cpu_and_more_on_a_gpu(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert batch.default_readers("cpu") == 1
    assert batch.default_readers("cuda") == 8
    assert batch.default_readers("cuda:1") == 8
    from medview.inference import backends

    monkeypatch.setattr(backends, "gpu_may_be_present", lambda: False)
    assert batch.default_readers("auto") == 1


def test_gpu_check_while_torch_is_still_being_imported(monkeypatch):
    """Scoring decides its readers while the model (and torch) may still be loading on
    another thread: a half-imported torch is not asked (it has no attributes yet)."""
    import importlib.machinery
    import sys
    import types

    from medview.inference import backends

    half = types.ModuleType("torch")
    half.__spec__ = importlib.machinery.ModuleSpec("torch", None)
    half.__spec__._initializing = True
    monkeypatch.setitem(sys.modules, "torch", half)
    assert backends.gpu_may_be_present() in (True, False)  # the driver's answer
