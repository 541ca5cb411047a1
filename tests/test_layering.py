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


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(edges.get(w, ())))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        found.append(sorted(comp))
    return found


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_between_modules():
    """Every import counts, including those inside functions: a cycle hidden behind a
    function-local import is still a cycle (a name in the wrong home)."""
    import grimp

    graph = grimp.build_graph("medview", cache_dir=None)
    modules = {m for m in graph.modules if m.startswith("medview")}
    edges = {m: {t for t in graph.find_modules_directly_imported_by(m) if t in modules}
             for m in modules}
    assert _cycles(edges) == []
