"""The one inference session: cached models, predict/explain/batch as cancellable
generators, used by both the command line and the AI panel."""

import numpy as np
import pytest

from medview.core.errors import CancelledError
from medview.core.progress import CancelToken, Progress, drain
from medview.core.volume import ImageVolume
from medview.inference.session import InferenceSession
from medview.models.card import read_card


@pytest.fixture(scope="module")
def session_card(tiny_model):
    session = InferenceSession()
    card = read_card(tiny_model[0])
    return session, card


def _image(seed=0):
    return ImageVolume(np.random.default_rng(seed).integers(0, 256, (1, 64, 64), np.uint8))


def test_a_model_is_loaded_once_per_device(session_card):
    session, card = session_card
    first = session.predictor(card, "cpu")
    assert session.predictor(card, "cpu") is first and session.is_loaded(card, "cpu")
    pred, prep = drain(session.predict(card, _image(), 0, "cpu"))
    assert session.loaded() == [first]
    assert pred.timings_ms["total"] > 0 and prep.tensor.shape == (3, 64, 64)


def test_each_step_of_a_batch_is_progress_and_a_cancel_point(session_card):
    session, card = session_card
    token = CancelToken()
    gen = session.batch(card, [_image(k) for k in range(5)], "cpu", token)
    steps = []
    with pytest.raises(CancelledError):
        while True:
            step = next(gen)
            steps.append(step)
            if step.done == 2:
                token.cancel()
    assert [s.done for s in steps] == [0, 1, 2]
    assert all(isinstance(s, Progress) for s in steps)
    rows = drain(session.batch(card, [_image(k) for k in range(3)], "cpu"))
    assert [r.prediction.model_id for r in rows] == ["tiny-patch"] * 3


@pytest.mark.parametrize("method", ["occlusion", "ig", "smoothgrad"])
def test_saliency_stops_within_one_forward_step_when_cancelled(session_card, method):
    session, card = session_card
    pred = session.predictor(card, "cpu")
    calls = []
    handle = pred.model.register_forward_hook(lambda *_a: calls.append(1))
    try:
        drain(session.explain(card, _image(), 0, method, "patch", "cpu"))
        full = len(calls)
        calls.clear()
        token = CancelToken()
        cancel_after = pred.model.register_forward_hook(
            lambda *_a: token.cancel() if len(calls) >= 1 else None)
        try:
            with pytest.raises(CancelledError):
                drain(session.explain(card, _image(), 0, method, "patch", "cpu",
                                      cancel=token))
        finally:
            cancel_after.remove()
    finally:
        handle.remove()
    assert len(calls) == 1 < full  # it stopped at the forward after the cancel
    assert pred.lock.acquire(timeout=1)  # and let go of the model
    pred.lock.release()
    assert not pred.model._forward_pre_hooks  # the cancel points are removed again


def test_the_command_line_loads_models_through_the_session(monkeypatch, tiny_model):
    import medview.cli as cli
    from medview.inference import session as session_module

    made = []
    real = session_module.Predictor

    def counted(card, device="auto", backend="auto"):
        made.append(card.id)
        return real(card, device, backend)

    monkeypatch.setattr(session_module, "Predictor", counted)
    session, card = cli._session(tiny_model[0], "cpu")  # loading on a thread meanwhile
    assert isinstance(session, InferenceSession)
    pred = session.predictor(card, "cpu")  # waits for that load: no second one
    assert session.predictor(card, "cpu") is pred and made == [card.id]
    assert session.loaded() == [pred]


def test_a_failed_preload_is_raised_where_the_model_is_needed_and_retried(monkeypatch,
                                                                         tiny_model):
    from medview.core.errors import MedviewError
    from medview.inference import session as session_module

    card = read_card(tiny_model[0])
    real = session_module.Predictor
    calls = []

    def broken_once(card_, device="auto", backend="auto"):
        calls.append(1)
        if len(calls) == 1:
            raise MedviewError("weights refused")
        return real(card_, device, backend)

    monkeypatch.setattr(session_module, "Predictor", broken_once)
    session = InferenceSession()
    session.preload(card, "cpu")
    with pytest.raises(MedviewError, match="weights refused"):
        session.predictor(card, "cpu")
    assert not session.is_loaded(card, "cpu")
    assert session.predictor(card, "cpu") is session.predictor(card, "cpu")  # loaded anew
    assert len(calls) == 2


def test_a_kept_result_is_handed_once_to_the_same_request_for_the_same_volume(session_card):
    """What the viewer works out while its window is built (``keep``) is what the panel's
    first identical request gets, once; another volume object, slice, class or method
    is computed afresh."""
    session, card = session_card
    vol = _image(3)
    p, prep = drain(session.predict(card, vol, 0, "cpu", keep=True))
    again, again_prep = drain(session.predict(card, vol, 0, "cpu"))
    assert again is p and again_prep is prep
    assert drain(session.predict(card, vol, 0, "cpu"))[0] is not p  # handed once
    twin = ImageVolume(vol.pixels.copy())  # the same pixels, another volume object
    drain(session.predict(card, vol, 0, "cpu", keep=True))
    assert drain(session.predict(card, twin, 0, "cpu"))[0] is not p
    target = card.classes[0]
    sal = drain(session.explain(card, vol, 0, "gradcam", target, "cpu", keep=True))
    assert drain(session.explain(card, vol, 0, "gradcam", card.classes[1], "cpu")) is not sal
    assert drain(session.explain(card, vol, 0, "gradcam", target, "cpu")) is sal
    assert drain(session.explain(card, vol, 0, "gradcam", target, "cpu")) is not sal
    # the map with its note, as the viewer asks: ready now or not, never waiting
    assert session.explained_ahead(card, vol, 0, "gradcam", target, "cpu") is None
    made = drain(session.explain_with_note(card, vol, 0, "gradcam", target, "cpu", keep=True))
    assert isinstance(made[1], str) and made[0].shape == (vol.rows, vol.cols)
    assert session.explained_ahead(card, vol, 0, "gradcam", target, "cpu") is made
    assert session.explained_ahead(card, vol, 0, "gradcam", target, "cpu") is None
    p, prep = drain(session.predict(card, vol, 0, "cpu", keep=True))
    assert session.predicted_ahead(card, twin, 0, "cpu") is None  # another volume object
    assert session.predicted_ahead(card, vol, 0, "cpu") == (p, prep)


def test_a_request_during_work_ahead_waits_for_it_instead_of_scoring_again(session_card):
    """On a slow machine the panel can ask before the launch has scored the first image:
    it waits for that work (cancellable) and gets its result; other volumes do not wait."""
    import threading

    session, card = session_card
    vol = _image(3)
    twin = ImageVolume(vol.pixels.copy())
    target = card.classes[0]
    got: dict[str, object] = {}

    def ask() -> None:
        got["p"] = drain(session.predict(card, vol, 0, "cpu"))[0]
        got["sal"] = drain(session.explain(card, vol, 0, "gradcam", target, "cpu"))

    with session.working_ahead(vol):
        stop = CancelToken()
        stop.cancel()
        with pytest.raises(CancelledError):  # waits (here: cancelled) rather than scoring
            drain(session.predict(card, vol, 0, "cpu", cancel=stop))
        other = threading.Thread(target=lambda: drain(session.predict(card, twin, 0, "cpu")))
        other.start()
        other.join(60)
        assert not other.is_alive()  # another volume object is not held
        asker = threading.Thread(target=ask)
        asker.start()
        p, prep = drain(session.predict(card, vol, 0, "cpu", keep=True))
        sal = drain(session.explain(card, vol, 0, "gradcam", target, "cpu", prep=prep,
                                    keep=True))
    asker.join(60)
    assert got["p"] is p and got["sal"] is sal
    # once the work ahead ended, a request finding nothing kept scores at once
    assert drain(session.predict(card, vol, 0, "cpu"))[0] is not p
