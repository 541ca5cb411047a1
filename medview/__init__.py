"""medview: a desktop viewer for medical images with local, explainable classifiers."""

import os as _os

__version__ = "0.1.0"

# ONNX Runtime's official Linux and macOS builds mint a persistent device id and keep a
# telemetry database under ~/.cache/Microsoft/DeveloperTools when they are imported. An
# offline clinical tool does not: this switches it off for the whole process, before any
# import of onnxruntime (it is read once, at initialisation). Set ORT_DISABLE_TELEMETRY=0
# to leave ONNX Runtime's default.
_os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

# numpy's OpenBLAS keeps its own pool of threads, which spin for a while after every
# matrix product. medview gives each inference engine (ONNX Runtime, torch) the cores
# explicitly; the products numpy computes (the trust gate's distances, a few hundred
# features) are small. Left at its default, OpenBLAS's spinning threads took the cores
# from ONNX Runtime after each gate score: 9.5 instead of 7.2 ms per film in a worklist
# (benchmarks/bench_cpu.py). One BLAS thread, unless the user sets it; read when numpy is
# first imported.
_os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
