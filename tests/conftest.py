import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import socket

import pytest


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """The suite runs offline, as medview does on an air-gapped workstation: any attempt
    to connect anywhere but this machine fails the test at once instead of hanging."""
    real_connect = socket.socket.connect

    def connect(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and (host.startswith("127.") or host in ("::1", "localhost")
                                      or self.family == socket.AF_UNIX):
            return real_connect(self, address)
        raise AssertionError(f"test tried to reach the network ({host})")

    monkeypatch.setattr(socket.socket, "connect", connect)


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
