"""The command line with hostile file names and unwritable outputs."""

import csv
import os

from PIL import Image

from medview.cli import main
from medview.inference.rows import csv_text


def _film(path):
    Image.fromarray(
        __import__("numpy").random.default_rng(0).integers(0, 255, (64, 64), dtype="uint8")
    ).save(path, format="PNG")
    return path


def test_predict_csv_survives_undecodable_names_escapes_and_formulas(tiny_model, tmp_path,
                                                                    capsys, monkeypatch):
    monkeypatch.setenv("MEDVIEW_MODELS_DIR", os.path.dirname(tiny_model[0]))
    study = tmp_path / "study"
    study.mkdir()
    raw = os.fsencode(str(study)) + b"/bad\xff\xfe.png"  # not valid UTF-8
    _film(os.fsdecode(raw))
    _film(study / "esc\x1b[31mred\x07.png")
    _film(study / "=HYPERLINK(1).png")
    out = tmp_path / "out.csv"
    assert main(["predict", str(study), "--model", "tiny-patch", "--csv", str(out)]) == 0
    rows = list(csv.reader(out.open(encoding="utf-8")))
    assert len(rows) == 4
    paths = [r[0] for r in rows[1:]]
    assert any("bad\\xff\\xfe.png" in p for p in paths)
    assert not any("\x1b" in p or "\x07" in p for p in paths)
    # without --csv the rows go to the terminal: no escape sequence reaches it
    assert main(["predict", str(study), "--model", "tiny-patch"]) == 0
    printed = capsys.readouterr().out
    assert "\x1b" not in printed and "\x07" not in printed and "bad\\xff\\xfe" in printed


def test_csv_cells_that_start_a_formula_are_neutralised():
    for bad in ("=1+1", "+1", "-1", "@SUM(A1)"):
        assert csv_text(bad).startswith("'")
    assert csv_text("\t=1") == "?=1"  # control characters never reach the file
    assert csv_text("NORMAL") == "NORMAL"
    assert csv_text("a\x1b[2Jb") == "a?[2Jb"


def test_relative_names_starting_with_a_formula_are_neutralised(tiny_model, tmp_path,
                                                                monkeypatch):
    monkeypatch.setenv("MEDVIEW_MODELS_DIR", os.path.dirname(tiny_model[0]))
    monkeypatch.chdir(tmp_path)
    _film(tmp_path / "=cmd.png")
    assert main(["predict", "=cmd.png", "--model", "tiny-patch", "--csv", "o.csv"]) == 0
    with open("o.csv", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[1][0] == "'=cmd.png"


def test_unwritable_outputs_give_one_line_errors(tiny_model, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MEDVIEW_MODELS_DIR", os.path.dirname(tiny_model[0]))
    film = _film(tmp_path / "a.png")
    missing = tmp_path / "no-such-folder" / "out.csv"
    assert main(["predict", str(film), "--model", "tiny-patch", "--csv", str(missing)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0]
    assert main(["explain", str(film), "--model", "tiny-patch", "--score-out-of-scope",
                 "--out", str(missing.with_suffix(".png"))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert main(["train", "--config", str(tmp_path / "missing.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")


def test_config_that_is_a_fifo_or_not_json_never_hangs(tmp_path, capsys):
    os.mkfifo(tmp_path / "fifo.json")
    assert main(["train", "--config", str(tmp_path / "fifo.json")]) == 2
    assert "not a regular file" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{nope")
    assert main(["train", "--config", str(tmp_path / "bad.json")]) == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_partial_csvs_of_a_killed_predict_are_cleaned_at_the_next_start(tiny_model, tmp_path):
    """kill -9 during ``predict --csv`` left a hidden partial CSV (with file paths); the
    next writer in that folder removes it, never one a live writer still holds."""
    import signal
    import subprocess
    import sys

    from medview.inference.batch import PARTIAL_PREFIX, RowWriter

    folder, data = tiny_model
    out = tmp_path / "out"
    out.mkdir()
    code = ("import sys, time; from medview.inference.batch import RowWriter; "
            "w = RowWriter(sys.argv[1], ['path']); w.row(['/data/Doe^John/1.dcm']); "
            "w.f.flush(); print('ready', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(out / "a.csv")],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    live = RowWriter(str(out / "b.csv"), ["path"])  # the other writer is alive: kept
    assert len([n for n in os.listdir(out) if n.startswith(PARTIAL_PREFIX)]) == 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    live.discard()
    assert len([n for n in os.listdir(out) if n.startswith(PARTIAL_PREFIX)]) == 1
    film = os.path.join(data, "plain", sorted(os.listdir(os.path.join(data, "plain")))[0])
    from medview.cli import main

    assert main(["predict", film, "--model", folder, "--csv", str(out / "c.csv")]) == 0
    assert sorted(os.listdir(out)) == ["c.csv"]  # the killed writer's partial is gone
