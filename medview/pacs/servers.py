"""Where the PACS is and who medview is on the network: server URLs and the settings file.

A server is a URL: ``dicom://AET@host:port`` for DIMSE (C-ECHO/FIND/GET/MOVE/STORE) or
``http(s)://host:port/dicom-web`` for DICOMweb (QIDO-RS/WADO-RS/STOW-RS). medview's own AE
title and storage port (the C-MOVE destination), named servers, the retrieve cache and the
network timeout live in ``pacs.json`` in medview's configuration folder
(``MEDVIEW_CONFIG_DIR`` overrides the platform default). The file is written atomically and
read as untrusted text (size cap, every field type-checked).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from urllib.parse import urlsplit

from medview.core.errors import MedviewError

ENV_CONFIG_DIR = "MEDVIEW_CONFIG_DIR"
ENV_CACHE_DIR = "MEDVIEW_PACS_CACHE"
DEFAULT_AE_TITLE = "MEDVIEW"
DEFAULT_PORT = 11112
DEFAULT_CACHE_LIMIT_MB = 4096
DEFAULT_TIMEOUT_S = 10.0
_SETTINGS_MAX_BYTES = 1 << 20

#: An AE title: 1-16 characters of the default repertoire, no backslash or control
#: characters, not only spaces (PS3.5 6.2, VR AE).
_AE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")
_HOST_RE = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9.\-]{0,252})$")


class PacsError(MedviewError):
    """A network operation failed; ``str(err)`` is a plain-text reason for a person."""


def check_ae_title(title: str, what: str = "AE title") -> str:
    t = title.strip()
    if not t or not _AE_RE.match(title):
        raise PacsError(f"{what} {title!r} is not valid: 1-16 characters, no backslash")
    return t


@dataclass(frozen=True)
class Server:
    """A parsed server URL. ``kind`` is ``"dimse"`` or ``"dicomweb"``."""

    kind: str
    url: str
    host: str = ""
    port: int = 0
    ae_title: str = ""  # the called AE title (DIMSE)

    def __str__(self) -> str:
        return self.url


def parse_server(text: str) -> Server:
    """``dicom://AET@host:port`` or ``http(s)://host[:port]/path``; a clear error otherwise."""
    t = text.strip()
    low = t.lower()
    if low.startswith("dicom://"):
        rest = t[len("dicom://"):].rstrip("/")
        if "@" not in rest:
            raise PacsError(f"{t}: write the server's AE title before '@', "
                            "e.g. dicom://ORTHANC@pacs.example.org:4242")
        aet, _, hostport = rest.rpartition("@")
        aet = check_ae_title(aet, "server AE title")
        host, sep, port_text = hostport.rpartition(":")
        if not sep or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise PacsError(f"{t}: give the server's DICOM port, e.g. dicom://{aet}@host:104")
        if not _HOST_RE.match(host):
            raise PacsError(f"{t}: {host!r} is not a host name or address")
        return Server("dimse", f"dicom://{aet}@{host}:{int(port_text)}",
                      host.strip("[]"), int(port_text), aet)
    if low.startswith(("http://", "https://")):
        parts = urlsplit(t)
        if not parts.hostname or not _HOST_RE.match(parts.hostname.strip("[]")):
            raise PacsError(f"{t}: no valid host in the URL")
        if parts.query or parts.fragment:
            raise PacsError(f"{t}: a DICOMweb base URL has no '?' or '#' part")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as exc:
            raise PacsError(f"{t}: {exc}") from None
        return Server("dicomweb", t.rstrip("/"), parts.hostname, port)
    raise PacsError(f"{t!r} is not a server URL: use dicom://AET@host:port (DIMSE) or "
                    "http(s)://host:port/dicom-web (DICOMweb), or a saved server's name")


#: the deadline: this many times the per-read timeout, and at least MIN_DEADLINE_S
DEADLINE_FACTOR = 6.0
MIN_DEADLINE_S = 30.0


@dataclass
class PacsSettings:
    """medview's own node and the saved servers."""

    ae_title: str = DEFAULT_AE_TITLE
    port: int = DEFAULT_PORT  # where medview's storage SCP listens for C-MOVE
    servers: dict[str, str] = field(default_factory=dict)  # name -> URL
    cache_dir: str = ""  # empty: the platform cache folder
    cache_limit_mb: int = DEFAULT_CACHE_LIMIT_MB
    timeout_s: float = DEFAULT_TIMEOUT_S

    @property
    def deadline_s(self) -> float:
        """The whole-operation deadline beside the per-read ``timeout_s``: a query's whole
        answer, one retrieved instance, must arrive within it (a server trickling a byte
        at a time never trips the per-read timeout)."""
        return max(MIN_DEADLINE_S, DEADLINE_FACTOR * float(self.timeout_s))

    def resolve(self, text: str) -> Server:
        """A saved server's name or a URL."""
        if text in self.servers:
            return parse_server(self.servers[text])
        return parse_server(text)

    def cache_root(self) -> str:
        if self.cache_dir:
            return self.cache_dir
        override = os.environ.get(ENV_CACHE_DIR)
        if override:
            return override
        from platformdirs import user_cache_dir

        return os.path.join(user_cache_dir("medview", "medview"), "pacs")

    def validate(self) -> PacsSettings:
        self.ae_title = check_ae_title(self.ae_title, "medview's AE title")
        if not 0 < int(self.port) < 65536:
            raise PacsError(f"port {self.port} is not between 1 and 65535")
        for name, url in self.servers.items():
            if not name.strip():
                raise PacsError("a saved server needs a name")
            parse_server(url)
        if self.cache_limit_mb < 1:
            raise PacsError("the cache limit must be at least 1 MB")
        if not 0.5 <= self.timeout_s <= 600:
            raise PacsError("the timeout must be between 0.5 and 600 seconds")
        return self


def config_dir() -> str:
    override = os.environ.get(ENV_CONFIG_DIR)
    if override:
        return override
    from platformdirs import user_config_dir

    return user_config_dir("medview", "medview")


def settings_path() -> str:
    return os.path.join(config_dir(), "pacs.json")


def load_settings(path: str | None = None) -> PacsSettings:
    """The saved settings, or the defaults when there is no file. A file that is not
    valid gives the defaults for its bad fields (never an exception at start-up)."""
    from medview.core.safeio import is_regular_file, read_capped

    path = path or settings_path()
    s = PacsSettings()
    if not is_regular_file(path):
        return s
    try:
        doc = json.loads(read_capped(path, _SETTINGS_MAX_BYTES).decode("utf-8"))
    except (OSError, ValueError, MedviewError):
        return s
    if not isinstance(doc, dict):
        return s
    typed: dict[str, type | tuple[type, ...]] = {
        "ae_title": str, "port": int, "cache_dir": str, "cache_limit_mb": int,
        "timeout_s": (int, float)}
    for key, kind in typed.items():
        if isinstance(doc.get(key), kind) and not isinstance(doc.get(key), bool):
            setattr(s, key, doc[key])
    servers = doc.get("servers")
    if isinstance(servers, dict):
        s.servers = {str(k): str(v) for k, v in servers.items()
                     if isinstance(k, str) and isinstance(v, str)}
    try:
        return s.validate()
    except (PacsError, ValueError, TypeError):
        return PacsSettings(servers=s.servers)


def save_settings(settings: PacsSettings, path: str | None = None) -> str:
    """Validate and write the settings atomically; returns the path written."""
    from medview.core.safeio import atomic_write_bytes

    settings.validate()
    path = path or settings_path()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write_bytes(path, (json.dumps(asdict(settings), indent=2) + "\n").encode())
    return path
