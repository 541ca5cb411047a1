import pytest
from PySide6.QtCore import QSettings


@pytest.fixture
def window(qtbot, tmp_path_factory):
    from medview.gui.app import create_app
    from medview.gui.main_window import MainWindow

    create_app()
    settings = QSettings(str(tmp_path_factory.mktemp("settings") / "settings.ini"),
                         QSettings.Format.IniFormat)
    win = MainWindow(settings=settings)
    qtbot.addWidget(win)
    win.show()
    yield win
    win.close()
