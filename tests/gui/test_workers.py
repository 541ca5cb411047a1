"""The thread wrapper: every yield is a cancel point, and a new job cancels the old one."""

import threading

from medview.core.progress import Progress
from medview.gui.workers import JobRunner


def test_every_yield_is_a_cancel_point_without_the_job_checking(qtbot):
    reached = []
    gate = threading.Event()

    def job(_token):  # never looks at its token
        reached.append(1)
        yield Progress(1, 3)
        gate.wait(5)
        reached.append(2)
        yield Progress(2, 3)
        reached.append(3)  # must never run: the job was cancelled at the yield before
        yield Progress(3, 3)
        return "done"

    runner = JobRunner()
    job_thread = runner.start("work", job)
    job_thread.progress.connect(lambda _p: (job_thread.cancel(), gate.set()))
    with qtbot.waitSignal(job_thread.cancelled, timeout=10000):
        pass
    job_thread.wait(5000)
    assert reached == [1, 2]


def test_a_new_job_of_a_kind_cancels_the_old_one(qtbot):
    gate = threading.Event()

    def slow(_token):
        yield Progress(0, 1)
        gate.wait(5)
        yield Progress(1, 1)

    runner = JobRunner()
    first = runner.start("work", slow)
    with qtbot.waitSignal(first.progress, timeout=10000):
        pass
    second = runner.start("work", lambda _t: iter(()))
    assert first.token.cancelled and not second.token.cancelled
    with qtbot.waitSignal(second.succeeded, timeout=10000):
        pass  # the new job runs at once
    with qtbot.waitSignal(first.cancelled, timeout=10000):
        gate.set()  # the old one stops at its next yield
    runner.shutdown()
