"""Work done ahead on threads (medview.core.ahead): order, bounds, errors, closing."""

import threading

import pytest

from medview.core.ahead import InOrder


def test_results_come_in_order_with_at_most_ahead_items_started():
    started, snapshot = [], []
    lock = threading.Lock()
    third = threading.Event()

    def work(k):
        with lock:
            started.append(k)
        if k == 3:
            third.set()
        if k == 0:  # the first item finishes after later ones
            assert third.wait(10)
            with lock:
                snapshot.append(len(started))
        return k * k

    with InOrder(work, range(20), workers=3, ahead=4) as ahead:
        assert list(ahead) == [k * k for k in range(20)]
    assert snapshot == [4]  # nothing past the look-ahead started before item 0 was taken
    assert sorted(started) == list(range(20))


def test_the_first_item_is_released_only_after_the_others_are_running():
    """Items are worked on while earlier ones are still running (a pool, not a loop)."""
    second_started = threading.Event()

    def work(k):
        if k == 1:
            second_started.set()
        if k == 0:
            assert second_started.wait(10), "item 1 never ran beside item 0"
        return k

    assert list(InOrder(work, range(5), workers=2)) == list(range(5))


def test_an_error_is_raised_at_its_item_and_closing_stops_the_rest():
    ran = []

    def work(k):
        ran.append(k)
        if k == 3:
            raise ValueError("bad item")
        return k

    ahead = InOrder(work, range(100), workers=1, ahead=2)
    assert [next(ahead) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(ValueError, match="bad item"):
        next(ahead)
    assert max(ran) <= 5  # nothing past the look-ahead was started
    with pytest.raises(StopIteration):
        next(ahead)


def test_closing_early_cancels_what_has_not_started():
    ran = []
    ahead = InOrder(lambda k: ran.append(k) or k, range(1000), workers=1, ahead=3)
    assert next(ahead) == 0
    ahead.close()
    assert len(ran) <= 5
    assert not [t for t in threading.enumerate() if t.name.startswith("medview-ahead")]
