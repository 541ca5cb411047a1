"""The Qt user interface: the only package that imports PySide6 or pyqtgraph.

pyqtgraph is imported by the modules that draw with it (:func:`import_pyqtgraph`), not by
this package: the app paints its first window before that 0.2-0.3 s import."""

import sys


def import_pyqtgraph():
    """Import pyqtgraph without its CUDA probe: its RawImageWidget (which medview does not
    use) imports NVIDIA's ``cuda.bindings`` when that is installed, as it is beside a CUDA
    build of torch, and that slowed every launch (docs/performance.md). The module is hidden
    only while pyqtgraph is imported."""
    name = "cuda.bindings.runtime"
    hide = "pyqtgraph" not in sys.modules and name not in sys.modules
    if hide:
        sys.modules[name] = None  # an import of it now raises ImportError
    try:
        import pyqtgraph
    finally:
        if hide and name in sys.modules and sys.modules[name] is None:
            del sys.modules[name]
    return pyqtgraph
