"""Time bounds for tests."""

from __future__ import annotations

import os


#: Timing checks in tests are bounds that separate "refused up front" from "did the
#: expensive thing" (decoded a bomb, hashed gigabytes): generous, so that a busy or slow
#: machine still meets them. Speed targets are benchmarks (make bench), never tests.
def generous(seconds: float) -> float:
    """A time bound for a test: ``seconds`` as measured on an idle developer machine,
    times the slack a loaded CI machine may need (``MEDVIEW_TEST_TIME_SLACK``, default 5)."""
    return seconds * float(os.environ.get("MEDVIEW_TEST_TIME_SLACK", "5"))
