"""The Qt user interface: the only package that imports PySide6 or pyqtgraph.

pyqtgraph is imported by the modules that draw with it (:func:`import_pyqtgraph`), not by
this package: the app paints its first window before that 0.2-0.3 s import."""

import contextlib
import functools
import sys
import types

#: PySide6's modules that pyqtgraph mirrors (``pyqtgraph.Qt.QtCore`` and so on).
MIRRORED = ("QtCore", "QtGui", "QtWidgets")


def import_pyqtgraph():
    """Import pyqtgraph, without two costs of its import that medview does not use:
    - its CUDA probe: its RawImageWidget (which medview does not use) imports NVIDIA's
      ``cuda.bindings`` when that is installed, as it is beside a CUDA build of torch;
    - its eager copy of Qt (:func:`qt_mirrors_on_demand`), ~90 ms of a launch.
    Both only while pyqtgraph is imported (docs/performance.md)."""
    if "pyqtgraph" in sys.modules:
        return sys.modules["pyqtgraph"]
    with _without_module("cuda.bindings.runtime"), qt_mirrors_on_demand():
        import pyqtgraph
    return pyqtgraph


@contextlib.contextmanager
def _without_module(name: str):
    """An import of ``name`` raises ImportError inside the block (unless it was imported
    before)."""
    hide = name not in sys.modules
    if hide:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        if hide and name in sys.modules and sys.modules[name] is None:
            del sys.modules[name]


@contextlib.contextmanager
def qt_mirrors_on_demand():
    """While pyqtgraph is imported, its copies of QtCore, QtGui and QtWidgets start empty
    and look a name up in PySide6's module when first asked (a module ``__getattr__``):
    the same objects its import-time copy would hold, without that copy reading every
    name of the three modules, which makes every one of PySide6's lazily created classes
    and enums (~1,500, ~90 ms on a 2-core machine). pyqtgraph's own additions to its
    copies (``QtCore.Signal`` and the like) still stay in the copies, not in PySide6.

    Does nothing when pyqtgraph (or a copy) is already imported. PySide6's modules list
    no names (``__dir__``) only inside the block: pyqtgraph's copy loop then copies
    nothing."""
    import PySide6.QtCore
    import PySide6.QtGui
    import PySide6.QtWidgets  # noqa: F401  (the three are read below)

    names = [f"pyqtgraph.Qt.{n}" for n in MIRRORED]
    if "pyqtgraph.Qt" in sys.modules or any(n in sys.modules for n in names):
        yield
        return
    real = {n: sys.modules[f"PySide6.{n}"] for n in MIRRORED}
    saved: dict[str, object] = {}
    for n, module in real.items():
        mirror = types.ModuleType(f"pyqtgraph.Qt.{n}", f"pyqtgraph's view of PySide6.{n}")
        mirror.__getattr__ = functools.partial(getattr, module)  # type: ignore[attr-defined]
        sys.modules[mirror.__name__] = mirror
        saved[n] = module.__dict__.get("__dir__", _ABSENT)
        module.__dict__["__dir__"] = _no_names
    try:
        yield
    finally:
        for n, module in real.items():
            if module.__dict__.get("__dir__") is _no_names:
                if saved[n] is _ABSENT:
                    del module.__dict__["__dir__"]
                else:
                    module.__dict__["__dir__"] = saved[n]
        if "pyqtgraph.Qt" not in sys.modules:  # the import failed: leave no half state
            for name in names:
                sys.modules.pop(name, None)


_ABSENT = object()


def _no_names() -> list[str]:
    return []


def lighten_pyside_imports() -> bool:
    """Make PySide6's check of every module imported after it cheaper, with the same
    answer. PySide6 looks for ``from __feature__ import ...`` users by reading the source
    of each newly imported module with ``inspect.getsource`` (tokenizing it into
    linecache): ~0.15 ms a module, ~60 ms over the ~500 modules a launch imports after
    Qt. The answer is whether the text "PySide6" is in the module's source; here that is
    read straight from the module's ``.py`` file, and anything else (no file, not a .py
    file, unreadable) still goes to PySide6's own check. Returns whether it was applied
    (False where this PySide6 has no such check)."""
    feature = sys.modules.get("shibokensupport.feature")
    original = getattr(feature, "_mod_uses_pyside", None)
    if feature is None or not callable(original):
        return False
    if getattr(original, "_medview", False):
        return True

    def uses_pyside(module) -> bool:
        path = getattr(module, "__file__", None)
        if isinstance(path, str) and path.endswith(".py"):
            try:
                with open(path, "rb") as f:
                    return b"PySide6" in f.read()
            except OSError:
                pass
        return original(module)

    uses_pyside._medview = True  # type: ignore[attr-defined]
    uses_pyside.pyside_check = original  # type: ignore[attr-defined]
    feature._mod_uses_pyside = uses_pyside
    return True
