"""`medview info`: text and JSON output, exit codes."""

import json

import pytest

from medview.cli import main
from tests.factory import write_series


def test_info_json_lists_series_and_skipped(tmp_path, capsys):
    write_series(tmp_path, n=4)
    (tmp_path / "notes.txt").write_text("not an image")
    assert main(["info", str(tmp_path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    (series,) = doc["series"]
    assert {"uid", "modality", "shape", "spacing", "n_images", "warnings"} <= set(series)
    assert series["shape"] == [4, 16, 16]
    assert series["spacing"] == [2.5, 0.5, 0.5]
    assert series["n_images"] == 4 and series["modality"] == "CT"
    assert doc["skipped"] == [{"path": str(tmp_path / "notes.txt"),
                               "reason": "not an image: text file"}]


def test_info_unknown_spacing_is_null(tmp_path, capsys):
    from PIL import Image

    Image.new("L", (8, 8)).save(tmp_path / "a.png")
    assert main(["info", str(tmp_path / "a.png"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["series"][0]["spacing"] == [None, None, None]


def test_info_text_and_exit_code_two_when_nothing_loads(tmp_path, capsys):
    (tmp_path / "x.dcm").write_bytes(b"")
    assert main(["info", str(tmp_path)]) == 2
    out = capsys.readouterr().out
    assert "0 series" in out and "empty file" in out


def test_info_text_shows_gaps(tmp_path, capsys):
    write_series(tmp_path, n=6, skip=(2,))
    assert main(["info", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "5 images of 16x16" in out and "gap at slice 2" in out


@pytest.mark.parametrize("argv, says", [
    (["infoo", "x"], "unknown command 'infoo' (did you mean 'info'?)"),
    (["--sample", "PATH"], "unknown sample 'PATH'; samples: cr-chest, ct, mr"),
    (["--no-such-option"], "unknown option '--no-such-option'"),
])
def test_mistyped_commands_and_bad_samples_are_one_line_errors(argv, says, capsys,
                                                              monkeypatch):
    import medview.gui.app as gui

    monkeypatch.setattr(gui, "main", lambda _argv: pytest.fail("the viewer was started"))
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and says in err[0]


def test_help_shows_how_to_open_the_viewer(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "medview [PATH...] [--sample [NAME]] [--model ID]" in out
    assert all(c in out for c in ("info", "predict", "explain", "train"))
