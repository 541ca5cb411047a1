"""medview: a desktop viewer for medical images with local, explainable classifiers."""

import os as _os

__version__ = "0.1.0"

# ONNX Runtime's official Linux and macOS builds mint a persistent device id and keep a
# telemetry database under ~/.cache/Microsoft/DeveloperTools when they are imported. An
# offline clinical tool does not: this switches it off for the whole process, before any
# import of onnxruntime (it is read once, at initialisation). Set ORT_DISABLE_TELEMETRY=0
# to leave ONNX Runtime's default.
_os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
