"""The audit trail: what was shown, saved, sent and exported, hash-chained so that an
edited, deleted or reordered entry is found; nobody named in it."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys

import pytest

from medview.core import audit


@pytest.fixture
def log_dir(tmp_path, monkeypatch):
    folder = tmp_path / "audit"
    monkeypatch.setenv(audit.ENV_DIR, str(folder))
    return folder


def _lines(folder) -> list[str]:
    return (folder / audit.LOG_FILE).read_text().splitlines()


def _write(folder, lines: list[str]) -> None:
    (folder / audit.LOG_FILE).write_text("".join(line + "\n" for line in lines))


def test_entries_chain_and_verify(log_dir):
    for k in range(5):
        audit.record("result_shown", model_id="m", input_sha256=f"{k:064x}")
    v = audit.verify()
    assert v.ok and v.entries == 5
    entries = [json.loads(x) for x in _lines(log_dir)]
    assert [e["seq"] for e in entries] == [1, 2, 3, 4, 5]
    assert entries[0]["prev"] == audit.GENESIS
    assert all(b["prev"] == a["hash"] for a, b in itertools.pairwise(entries))
    assert {"time", "user", "event"} <= set(entries[0])


@pytest.mark.parametrize("tamper", ["edited", "deleted", "reordered", "garbage"])
def test_verify_finds_the_first_broken_link(log_dir, tamper):
    for k in range(5):
        audit.record("result_shown", model_id="m", in_scope=True, decision=f"d{k}")
    lines = _lines(log_dir)
    if tamper == "edited":
        e = json.loads(lines[2])
        e["decision"] = "NORMAL"
        lines[2] = json.dumps(e)
    elif tamper == "deleted":
        del lines[2]
    elif tamper == "reordered":
        lines[1], lines[2] = lines[2], lines[1]
    else:
        lines[2] = "not json"
    _write(log_dir, lines)
    v = audit.verify()
    assert not v.ok
    assert "line 2" in v.broken if tamper == "reordered" else "line 3" in v.broken
    r = subprocess.run([sys.executable, "-m", "medview", "audit", "verify"],
                       capture_output=True, text=True, env=dict(os.environ))
    assert r.returncode == 1 and "BROKEN" in r.stdout


def test_an_edited_entry_with_a_recomputed_hash_still_breaks_the_next_link(log_dir):
    for k in range(3):
        audit.record("result_shown", decision=f"d{k}")
    lines = _lines(log_dir)
    e = json.loads(lines[1])
    e["decision"] = "forged"
    e["hash"] = audit.entry_hash(e)
    lines[1] = json.dumps(e)
    _write(log_dir, lines)
    v = audit.verify()
    assert not v.ok and "line 3" in v.broken


def test_rotation_keeps_the_chain(log_dir, monkeypatch):
    monkeypatch.setattr(audit, "ROTATE_BYTES", 600)
    for k in range(12):
        audit.record("result_shown", decision=f"entry {k}")
    files = sorted(os.listdir(log_dir))
    assert any(f.startswith("audit-") for f in files)
    v = audit.verify()
    assert v.ok and v.entries == 12
    rotated = next(f for f in files if f.startswith("audit-"))
    os.remove(log_dir / rotated)  # a whole rotated file removed
    assert not audit.verify().ok


def test_cli_results_exports_and_saliency_are_recorded_without_identity(tiny_model, log_dir,
                                                                        tmp_path):
    from medview.cli import main
    from tests.factory import make_dataset, write

    folder, data = tiny_model
    film = os.path.join(data, "plain", sorted(os.listdir(os.path.join(data, "plain")))[0])
    assert main(["predict", film, "--model", folder, "--csv", str(tmp_path / "p.csv")]) == 0
    assert main(["explain", film, "--model", folder, "--out", str(tmp_path / "e.png")]) == 0
    import numpy as np

    ds = make_dataset(np.zeros((8, 8), np.uint16), modality="CT")
    ds.PatientName, ds.PatientID = "Audit^Secret", "AUDIT-ID-77"
    dcm = write(ds, tmp_path / "ct.dcm")
    assert main(["export", dcm, "--deidentify", "--out", str(tmp_path / "deid")]) == 0
    entries = [json.loads(x) for x in _lines(log_dir)]
    events = [e["event"] for e in entries]
    assert events == ["result_exported", "saliency_saved", "deidentified_export"]
    shown = entries[0]
    assert shown["computed_by"]["file"] in ("graph.onnx", "weights.safetensors")
    assert len(shown["input_sha256"]) == 64 and shown["model_id"] == "tiny-patch"
    assert shown["in_scope"] is not None and shown["output"] == "csv"
    assert entries[2]["files_written"] == 1
    text = (log_dir / audit.LOG_FILE).read_text()
    for secret in ("Audit^Secret", "AUDIT-ID-77", str(tmp_path), film):
        assert secret not in text
    assert audit.verify().ok
    r = subprocess.run([sys.executable, "-m", "medview", "audit", "show", "--since",
                        "2000-01-01"], capture_output=True, text=True, env=dict(os.environ))
    assert r.returncode == 0 and "result_exported" in r.stdout


def test_an_unwritable_log_never_stops_the_work(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv(audit.ENV_DIR, str(blocker / "audit"))  # under a file: cannot exist
    assert audit.record("result_shown", model_id="m") is None
    assert "audit log not written" in caplog.text
