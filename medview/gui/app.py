"""GUI entry point: ``medview [PATH...]`` or ``medview --sample [NAME]``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medview", description="Open the medview viewer.")
    p.add_argument("paths", nargs="*", metavar="PATH", help="files or folders to open")
    p.add_argument("--sample", nargs="?", const="cr-chest", default=None,
                   help="open a sample study shipped with medview (default: cr-chest)")
    p.add_argument("--screenshot", metavar="PNG", default=None, help=argparse.SUPPRESS)
    return p


def qt_version() -> str:
    """The Qt binding's version (imports it: a check that Qt loads in this install)."""
    import PySide6
    from PySide6.QtCore import qVersion

    return f"PySide6 {PySide6.__version__} (Qt {qVersion()})"


def create_app(argv: Sequence[str] = ()):
    """The QApplication with medview's global pyqtgraph settings (row-major images)."""
    import pyqtgraph as pg
    from PySide6.QtWidgets import QApplication

    pg.setConfigOptions(imageAxisOrder="row-major", antialias=True)
    app = QApplication.instance() or QApplication(["medview", *argv])
    app.setApplicationName("medview")
    app.setOrganizationName("medview")
    return app


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    app = create_app()
    from medview.gui.main_window import MainWindow

    window = MainWindow()
    paths = list(args.paths)
    if args.sample:
        from medview.io.samples import sample_path

        paths.append(sample_path(args.sample))
    window.show()
    if args.screenshot:
        from PySide6.QtCore import QTimer

        def grab(_result=None) -> None:
            QTimer.singleShot(500, lambda: (window.grab().save(args.screenshot), app.quit()))

        if paths:
            window.load_finished.connect(grab)
        else:
            grab()
    if paths:
        window.open_paths(paths)
    return app.exec()


if __name__ == "__main__":
    sys.exit(main())
