import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A tiny model trained on synthetic images where a bright corner patch decides the
    class; exported as a complete model folder. Returns (model folder, data folder)."""
    from tests.tiny import train_tiny, write_patch_dataset

    root = tmp_path_factory.mktemp("tiny")
    data = write_patch_dataset(str(root / "data"), n_per_class=48)
    return train_tiny(data, str(root / "models")), data


@pytest.fixture(scope="session")
def qapp_cls():
    """pytest-qt creates medview's own QApplication (it handles file-open events)."""
    from medview.gui.app import application_class

    return application_class()
