"""The lower layers never load torch or Qt (ARCHITECTURE.md)."""

import subprocess
import sys

FORBIDDEN = ("torch", "PySide6", "pyqtgraph", "timm", "captum")


def _loaded_after(imports: str) -> set[str]:
    code = (
        f"import sys; {imports}; "
        "print('\\n'.join(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    return set(out.split())


def test_core_io_imaging_load_neither_torch_nor_qt():
    loaded = _loaded_after(
        "import medview.core, medview.io, medview.imaging, medview.io.loader, "
        "medview.io.samples, medview.cli"
    )
    assert not loaded & set(FORBIDDEN), loaded & set(FORBIDDEN)


def test_cli_info_runs_without_qt(tmp_path):
    from tests.factory import write_series

    write_series(tmp_path, n=2)
    code = (
        "import sys; from medview.cli import main; rc = main(['info', sys.argv[1]]); "
        "bad = [m for m in ('PySide6', 'torch') if m in sys.modules]; "
        "assert not bad, bad; sys.exit(rc)"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True)
    assert proc.returncode == 0, proc.stderr


def test_only_gui_imports_qt():
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1] / "medview"
    offenders = []
    for path in root.rglob("*.py"):
        if "gui" in path.relative_to(root).parts:
            continue
        text = path.read_text()
        if "PySide6" in text or "pyqtgraph" in text:
            offenders.append(str(path.relative_to(root)))
    assert offenders == []


def test_failed_jobs_log_no_paths(qtbot, caplog):
    """A failing background job logs the error type, never its message (which can hold
    file paths or other identifying text)."""
    from medview.core.errors import LoadError
    from medview.gui.workers import JobRunner

    def job(token):
        yield from ()
        raise LoadError("/data/Doe^John/1.dcm", "bad")

    runner = JobRunner()
    with qtbot.waitSignal(runner.start("x", job).failed, timeout=5000):
        pass
    assert "LoadError" in caplog.text and "Doe" not in caplog.text
