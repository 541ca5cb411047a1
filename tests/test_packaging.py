"""The packaging files agree with the code they ship (the bundle itself is built and
smoke-tested by packaging/smoke_test.sh, outside the test suite)."""

import ast
import configparser
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGING = os.path.join(ROOT, "packaging")


def _spec_constant(name):
    with open(os.path.join(PACKAGING, "medview.spec"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{name} not in the spec")


def test_bundle_ships_every_sample_the_app_and_selftest_open():
    from medview.io.samples import SAMPLES
    from medview.selftest import COMPRESSED_SAMPLES

    shipped = set(_spec_constant("SAMPLE_FILES"))
    needed = set(SAMPLES.values()) | set(COMPRESSED_SAMPLES.values())
    assert needed <= shipped, needed - shipped


def test_bundle_ships_the_files_of_each_model_folder():
    files = set(_spec_constant("MODEL_FILES"))
    assert {"card.json", "weights.safetensors", "scope.safetensors", "README.md"} <= files
    models = os.path.join(os.path.dirname(PACKAGING), "models")
    for entry in os.listdir(models):  # every file a bundled model folder holds is shipped
        if os.path.isfile(os.path.join(models, entry, "card.json")):
            shipped = files | {"train.json"}  # the recipe stays in the source tree
            assert set(os.listdir(os.path.join(models, entry))) <= shipped, entry


def test_desktop_entry_opens_files_with_the_app():
    entry = configparser.ConfigParser(interpolation=None)
    entry.optionxform = str
    entry.read(os.path.join(PACKAGING, "medview.desktop"), encoding="utf-8")
    d = entry["Desktop Entry"]
    assert d["Type"] == "Application" and d["Icon"] == "medview"
    # %F: a launcher passes every selected or dropped file as an argument
    assert d["Exec"].split() == ["medview", "%F"]
    mimes = set(filter(None, d["MimeType"].split(";")))
    assert {"application/dicom", "image/x-nifti", "image/png", "image/jpeg"} <= mimes
    assert d["Categories"].endswith(";") and "MedicalSoftware" in d["Categories"]


def test_packaged_entry_point_is_the_command_line(monkeypatch, capsys):
    import runpy
    import sys

    from medview import __version__

    monkeypatch.setattr(sys, "argv", ["medview", "--version"])
    try:
        runpy.run_path(os.path.join(PACKAGING, "medview_entry.py"), run_name="__main__")
    except SystemExit as exc:
        assert exc.code == 0
    else:
        raise AssertionError("the entry point must exit with the command's status")
    assert capsys.readouterr().out.strip() == __version__
