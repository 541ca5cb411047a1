"""Size report of an app bundle: the whole folder, and the parts that only CUDA needs.

    python packaging/bundle_report.py dist/medview

The CUDA part is every file of the NVIDIA runtime packages (cuBLAS, cuDNN, NCCL, ...) and
torch's own CUDA libraries; a bundle built from a CPU-only torch has none of it.
"""

from __future__ import annotations

import fnmatch
import os
import sys

CUDA_PATTERNS = ("nvidia/*", "*/nvidia/*", "*libtorch_cuda*", "*libc10_cuda*",
                 "*libcaffe2_nvrtc*", "*libtorch_nvshmem*", "*libcudnn*", "*libcublas*",
                 "*libcudart*", "*libnccl*", "*libnvrtc*", "*libcufft*", "*libcurand*",
                 "*libcusolver*", "*libcusparse*", "*libnvJitLink*", "*libcupti*",
                 "*libnvshmem*", "*libcufile*", "*libnvToolsExt*", "*cudnn*.dll",
                 "*cublas*.dll", "*cudart*.dll")
GROUPS = {
    "bundled models": ("models/*",),
    "Qt (PySide6)": ("PySide6/*", "*/PySide6/*", "shiboken6/*"),
    "torch (CPU part)": ("torch/*",),
    "ONNX Runtime + onnx": ("onnxruntime/*", "onnx/*"),
}


def report(root: str) -> str:
    sizes: dict[str, int] = {}
    for d, _dirs, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            if not os.path.islink(p):
                rel = os.path.relpath(p, root).replace(os.sep, "/")
                rel = rel.removeprefix("_internal/")  # PyInstaller's contents folder
                sizes[rel] = os.path.getsize(p)
    total = sum(sizes.values())
    cuda = {k for k in sizes if any(fnmatch.fnmatch(k, pat) for pat in CUDA_PATTERNS)}
    cuda_bytes = sum(sizes[k] for k in cuda)
    rows = [("whole bundle", total), ("CUDA libraries", cuda_bytes),
            ("without CUDA libraries", total - cuda_bytes)]
    for name, pats in GROUPS.items():
        rows.append((name, sum(v for k, v in sizes.items()
                               if k not in cuda and any(fnmatch.fnmatch(k, p) for p in pats))))
    lines = [f"bundle {root}: {len(sizes)} files"]
    lines += [f"  {name:<24} {size / 2**20:9.0f} MiB" for name, size in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    print(report(sys.argv[1] if len(sys.argv) > 1 else "dist/medview"))
