import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# the suite's audit entries (and those of the processes it starts) go to a folder of its
# own, never into the user's audit log
if "MEDVIEW_AUDIT_DIR" not in os.environ:
    import tempfile

    os.environ["MEDVIEW_AUDIT_DIR"] = tempfile.mkdtemp(prefix="medview-test-audit-")

import socket

import pytest

from tests.orthanc import Orthanc, write_study
from tests.pacs_fixtures import require_orthanc


@pytest.fixture(autouse=True)
def own_cache_dir(tmp_path_factory, monkeypatch):
    """Each test (and the processes it starts) remembers checked graphs in a folder of its
    own: never the user's, and no test sees what another one checked."""
    monkeypatch.setenv("MEDVIEW_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


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


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    """One Orthanc with a chest film of patient PAT001 and a 20-slice CT of PAT002."""
    require_orthanc()
    root = tmp_path_factory.mktemp("pacs")
    server = Orthanc(str(root / "orthanc")).start()
    cr_uid, cr = write_study(str(root / "cr"), modality="CR", n=1, patient_id="PAT001",
                             patient_name="Doe^Jane", body_part="CHEST", view="AP",
                             age="003Y", study_description="Chest AP")
    ct_uid, ct = write_study(str(root / "ct"), modality="CT", n=20, size=64,
                             patient_id="PAT002", patient_name="Roe^Rick")
    assert server.upload(cr + ct) == 21
    server.studies = {"cr": cr_uid, "ct": ct_uid}
    server.root = root
    yield server
    server.stop()


@pytest.fixture
def pacs_env(tmp_path, pacs, monkeypatch):
    """Settings and cache of this test only (for the CLI in a subprocess, too)."""
    monkeypatch.setenv("MEDVIEW_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("MEDVIEW_PACS_CACHE", str(tmp_path / "cache"))
    return dict(os.environ, MEDVIEW_CONFIG_DIR=str(tmp_path / "config"),
                MEDVIEW_PACS_CACHE=str(tmp_path / "cache"))
