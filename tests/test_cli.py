"""`medview info`: text and JSON output, exit codes."""

import json

import numpy as np
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


def test_a_one_jpeg_predict_imports_only_what_the_input_needs(tiny_model, tmp_path):
    """Scoring a JPEG on the graph path never imports the DICOM or ITK readers, torch,
    the training code, tqdm (no terminal) or Qt; numpy's BLAS keeps one thread."""
    import subprocess
    import sys

    from PIL import Image

    film = tmp_path / "film.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), np.uint8)).save(film)
    code = ("import sys, medview.cli as c\n"
            "rc = c.main(['predict', '--model', sys.argv[1], '--backend', 'onnx', sys.argv[2]])\n"
            "import os; print(sorted({m.split('.')[0] for m in sys.modules}))\n"
            "print('training' in {m.split('.')[1] for m in sys.modules if m.startswith('medview.')"
            " and m.count('.')})\n"
            "print(os.environ.get('OPENBLAS_NUM_THREADS'))\n"
            "sys.exit(rc)\n")
    env = {k: v for k, v in __import__("os").environ.items() if k != "OPENBLAS_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", code, tiny_model[0], str(film)],
                         capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    top = set(eval(lines[-3]))
    assert "onnxruntime" in top and "PIL" in top
    assert not top & {"pydicom", "SimpleITK", "torch", "timm", "tqdm", "PySide6", "captum"}
    assert lines[-2] == "False"  # no medview.training module
    assert lines[-1] == "1"
