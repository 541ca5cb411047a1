"""The fuzzing harness as part of the suite: it can tell a crash and a hang from a good run,
every input that ever crashed or hung still loads cleanly, and a short campaign finds
nothing. ``make fuzz SECONDS=N`` runs a longer one and keeps what it finds."""

import json
import os
import subprocess
import sys

import pytest

# one of the slowest files: `pytest -m "not slow"` leaves it out
pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: seconds of the campaign run by ``make test`` (``FUZZ_SECONDS`` overrides)
SECONDS = float(os.environ.get("FUZZ_SECONDS", "60"))


def _run(*args, timeout=120):
    # a process of its own: the harness forks, which a test process with Qt threads must not
    proc = subprocess.run([sys.executable, "-m", "tests.fuzz", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    return proc.returncode, proc.stdout, proc.stderr


def test_harness_tells_crashes_and_hangs_from_good_runs():
    rc, out, err = _run("--self-check")
    assert rc == 0, err
    assert json.loads(out) == {"ok": "ok", "raises": "crash", "hangs": "hang",
                               "aborts": "crash", "allocates": "crash"}


def test_every_input_that_ever_crashed_or_hung_now_loads():
    rc, out, _err = _run("--replay", "--json")
    files = json.loads(out)["files"]
    assert len(files) >= 2
    assert rc == 0, [f for f in files if f["status"] != "ok"]


def test_short_fuzz_campaign_finds_no_crash_no_hang_and_no_disagreement(tmp_path):
    rc, out, _err = _run("--seconds", str(SECONDS), "--seed", "1", "--save", str(tmp_path),
                        "--json", timeout=SECONDS + 300)
    report = json.loads(out)
    assert report["inputs"] > SECONDS * 5  # it really ran
    assert report["crashes"] == report["hangs"] == report["over_memory"] == 0, (
        f"kept in {tmp_path}; copy them into tests/data/regressions: {report['findings']}")
    assert report["disagreements"] == 0, (
        f"kept in {tmp_path}; copy them into tests/data/regressions: {report['findings']}")
    assert rc == 0, report["findings"]
