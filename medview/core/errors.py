"""Typed errors. Each load error names the file and a plain-text reason."""

from __future__ import annotations


class MedviewError(Exception):
    """Base class of every error medview raises on purpose."""


class CancelledError(MedviewError):
    """The user cancelled a long-running job."""


class LoadError(MedviewError):
    """A file could not be loaded as an image.

    Parameters
    ----------
    path
        The file (as given by the user; shown in the GUI, never written to logs).
    reason
        Plain-text reason a clinician can read.
    """

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


class NotAnImageError(LoadError):
    """The file is not an image medview reads (detected by content, not by name)."""


class CorruptFileError(LoadError):
    """The file is truncated or internally inconsistent."""


class NoPixelDataError(CorruptFileError):
    """A DICOM object without pixels (an SR, a presentation state...): not an image, but
    its ``modality`` tells a reader that wants such objects (a measurement report) to
    look at it."""

    def __init__(self, path: str, modality: str) -> None:
        super().__init__(path, f"incomplete: no Pixel Data ({modality or 'object'})")
        self.modality = modality


class InvalidPixelTagError(LoadError):
    """A DICOM pixel-description tag holds an impossible value."""

    def __init__(self, path: str, tag: str, reason: str) -> None:
        super().__init__(path, f"invalid {tag}: {reason}")
        self.tag = tag


class UnsupportedTransferSyntaxError(LoadError):
    """Compressed pixel data for which no decoder is installed or which failed to decode."""

    def __init__(self, path: str, syntax_name: str, syntax_uid: str, detail: str) -> None:
        super().__init__(path, f"cannot decode {syntax_name} ({syntax_uid}): {detail}")
        self.syntax_name = syntax_name
        self.syntax_uid = syntax_uid


class TooLargeError(LoadError):
    """The header implies more memory than medview will allocate."""


def load_error_from_os(path: str, exc: OSError) -> LoadError:
    """The plain-language :class:`LoadError` for an operating-system error on ``path``."""
    if isinstance(exc, FileNotFoundError):
        return LoadError(path, "file not found (deleted or moved during the scan?)")
    if isinstance(exc, PermissionError):
        return LoadError(path, "permission denied")
    return LoadError(path, f"cannot read the file: {exc.strerror or exc}")


def must_propagate(exc: BaseException) -> bool:
    """Exceptions a per-file guard must never swallow: the user's interrupt or cancel, and
    interpreter shutdown. Everything else (including ``BaseException`` subclasses raised
    by native decoder plug-ins, such as a Rust ``PanicException``) becomes a skipped file."""
    return isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit, CancelledError))


def failure_reason(exc: BaseException) -> str:
    """A plain-text reason for an unexpected failure while reading one file."""
    if isinstance(exc, LoadError):
        return exc.reason
    if isinstance(exc, MemoryError):
        return "not enough memory to read this file"
    if isinstance(exc, RecursionError):
        return "structure nested too deeply to read"
    detail = str(exc).splitlines()[0][:160] if str(exc) else ""
    kind = type(exc).__name__
    if not isinstance(exc, Exception):
        return f"the decoder crashed ({kind}); file skipped"
    return f"unexpected error while reading ({kind}{': ' + detail if detail else ''})"
