"""The Qt user interface: the only package that imports PySide6 or pyqtgraph."""

import sys


def _import_pyqtgraph() -> None:
    """Import pyqtgraph without its CUDA probe: its RawImageWidget (which medview does not
    use) imports NVIDIA's ``cuda.bindings`` when that is installed, as it is beside a CUDA
    build of torch, and that slowed every launch (docs/performance.md). The module is hidden
    only while pyqtgraph is imported."""
    name = "cuda.bindings.runtime"
    if "pyqtgraph" in sys.modules or name in sys.modules:
        return
    sys.modules[name] = None  # an import of it now raises ImportError
    try:
        import pyqtgraph  # noqa: F401
    finally:
        if name in sys.modules and sys.modules[name] is None:
            del sys.modules[name]


_import_pyqtgraph()
