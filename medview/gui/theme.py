"""The application's colours: dark by default (reading rooms are dark), light on request.

Both are Qt's Fusion style with a palette, so every widget follows; the image area is
black in both. Chosen in View > Theme and kept in the settings (``view/theme``).
"""

from __future__ import annotations

from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QApplication

THEMES = ("dark", "light")
DEFAULT_THEME = "dark"


def dark_palette() -> QPalette:
    p = QPalette()
    role, group = QPalette.ColorRole, QPalette.ColorGroup
    colours = {
        role.Window: "#2b2d30", role.WindowText: "#e4e4e4", role.Base: "#1f2023",
        role.AlternateBase: "#2b2d30", role.ToolTipBase: "#1f2023",
        role.ToolTipText: "#e4e4e4", role.Text: "#e4e4e4", role.Button: "#35373b",
        role.ButtonText: "#e4e4e4", role.BrightText: "#ff5555", role.Link: "#6cb6ff",
        role.Highlight: "#2f6fb3", role.HighlightedText: "#ffffff",
        role.PlaceholderText: "#8a8d91", role.Light: "#45484d", role.Midlight: "#3a3d41",
        role.Mid: "#2f3135", role.Dark: "#1b1c1f", role.Shadow: "#000000",
    }
    for r, c in colours.items():
        p.setColor(r, QColor(c))
    for r in (role.WindowText, role.Text, role.ButtonText):
        p.setColor(group.Disabled, r, QColor("#7a7d82"))
    return p


def apply_theme(name: str, app: QApplication | None = None) -> str:
    """Apply ``name`` ("dark" or "light"; anything else: the default) to the application;
    returns the theme applied."""
    app = app or QApplication.instance()
    name = name if name in THEMES else DEFAULT_THEME
    if app is None:
        return name
    if app.style().name().lower() != "fusion":
        app.setStyle("Fusion")
    app.setPalette(dark_palette() if name == "dark" else app.style().standardPalette())
    app.setProperty("medview_theme", name)
    return name


def current_theme(app: QApplication | None = None) -> str:
    app = app or QApplication.instance()
    value = app.property("medview_theme") if app is not None else None
    return value if value in THEMES else DEFAULT_THEME
