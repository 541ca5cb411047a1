"""Find model folders: the bundled ``models/`` directory and the user's models directory.

The bundled directory is found through one resource helper that works from a source
checkout, an installed wheel and a PyInstaller bundle. A broken card is reported and the
other models still load.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field

from medview.core.errors import must_propagate
from medview.models.card import CARD_FILE, CardError, ModelCard, check_weights_file, read_card
from medview.models.staging import clean_stale_exports

log = logging.getLogger(__name__)

ENV_USER_DIR = "MEDVIEW_MODELS_DIR"


def resource_path(name: str) -> str | None:
    """A top-level resource folder (``models``, ``resources``) wherever medview runs from."""
    candidates = []
    frozen = getattr(sys, "_MEIPASS", None)
    if frozen:
        candidates.append(os.path.join(frozen, name))
    here = os.path.dirname(os.path.abspath(__file__))
    candidates.append(os.path.join(here, "..", "..", name))  # source checkout
    candidates.append(os.path.join(here, "..", "_bundled", name))  # wheel
    candidates.append(os.path.join(sys.prefix, "share", "medview", name))
    for c in candidates:
        if os.path.isdir(c):
            return os.path.normpath(c)
    return None


def bundled_models_dir() -> str | None:
    return resource_path("models")


def user_models_dir() -> str:
    """The user's models directory (``MEDVIEW_MODELS_DIR`` overrides the platform default)."""
    override = os.environ.get(ENV_USER_DIR)
    if override:
        return override
    from platformdirs import user_data_dir

    return os.path.join(user_data_dir("medview", "medview"), "models")


@dataclass
class Registry:
    """The models found, and the folders whose cards were refused (with reasons)."""

    models: list[ModelCard] = field(default_factory=list)
    errors: list[CardError] = field(default_factory=list)

    def get(self, key: str) -> ModelCard:
        """A model by id, or by the path of its folder."""
        if os.path.isdir(key):
            return read_card(key, source="path")
        for m in self.models:
            if m.id == key:
                return m
        known = ", ".join(m.id for m in self.models) or "none"
        raise KeyError(f"no model with id {key!r} (available: {known})")


def _scan(folder: str | None, source: str, reg: Registry, seen: set[str]) -> None:
    if not folder or not os.path.isdir(folder):
        return
    try:
        names = sorted(os.listdir(folder))
    except OSError as exc:
        reg.errors.append(CardError(os.path.basename(folder), f"models folder unreadable: "
                                                              f"{exc.strerror or exc}"))
        return
    for name in names:
        path = os.path.join(folder, name)
        if name.startswith(".") or not os.path.isdir(path):
            continue  # hidden temp folders of an export in progress are ignored
        if not os.path.lexists(os.path.join(path, CARD_FILE)):
            continue
        try:
            card = read_card(path, source)
            check_weights_file(card)  # listed only with a plausible weights file
        except CardError as exc:
            log.warning("model card refused: %s", exc.reason)
            reg.errors.append(exc)
            continue
        except BaseException as exc:  # one broken folder never hides the others
            if must_propagate(exc):
                raise
            log.warning("model card refused: %s", type(exc).__name__)
            reg.errors.append(CardError(name, f"unreadable model folder ({type(exc).__name__})"))
            continue
        if card.id in seen:
            reg.errors.append(CardError(name, f"duplicate model id {card.id!r}; ignored"))
            continue
        seen.add(card.id)
        reg.models.append(card)


def discover_models(extra_dirs: list[str] | None = None) -> Registry:
    """Bundled models first, then the user's, then any ``extra_dirs``."""
    reg = Registry()
    seen: set[str] = set()
    _scan(bundled_models_dir(), "bundled", reg, seen)
    user = user_models_dir()
    clean_stale_exports(user)  # leftovers of an export that was killed
    _scan(user, "user", reg, seen)
    for d in extra_dirs or []:
        _scan(d, "user", reg, seen)
    return reg
