"""``medview selftest``: check that this installation (or app bundle) works, offline.

Loads every model card and its verified weights, decodes a compressed DICOM from the
shipped samples, runs inference and Grad-CAM on a synthetic image with each model, and
prints a short report. Exit status 0 only if every check passed.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Callable

import numpy as np


def _check(name: str, fn: Callable[[], str], report: list[tuple[str, bool, str]]) -> None:
    t = time.perf_counter()
    try:
        detail = fn()
        ok = True
    except Exception as exc:
        detail = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
        ok = False
    report.append((name, ok, f"{detail} ({(time.perf_counter() - t) * 1000:.0f} ms)"))


# Compressed DICOMs from pydicom's test files that the selftest decodes (one per decoder);
# the app bundle ships them (packaging/medview.spec).
COMPRESSED_SAMPLES = {"JPEG 2000": "MR_small_jp2klossless.dcm",
                      "JPEG-LS": "MR_small_jpeg_ls_lossless.dcm",
                      "RLE": "MR_small_RLE.dcm", "JPEG baseline": "SC_rgb_jpeg_dcmd.dcm"}


def foreign_modules(root: str, modules: dict) -> list[str]:
    """Loaded modules whose file lies outside ``root`` (for a bundle: code it did not ship).

    Modules with no file or a relative one (built-in, or embedded in a library such as
    shiboken's signature support) were not read from disk and do not count.
    """
    root = os.path.normcase(os.path.realpath(root)).rstrip(os.sep) + os.sep
    out = []
    for name, module in list(modules.items()):
        path = getattr(module, "__file__", None)
        if not path or not os.path.isabs(path):
            continue
        if not os.path.normcase(os.path.realpath(path)).startswith(root):
            out.append(name)
    return sorted(out)


def run_selftest(out=print) -> int:
    from medview import __version__

    report: list[tuple[str, bool, str]] = []

    def imports() -> str:
        import captum
        import pydicom
        import SimpleITK
        import timm
        import torch

        from medview.gui.app import qt_version

        return (f"torch {torch.__version__}, timm {timm.__version__}, captum "
                f"{captum.__version__}, pydicom {pydicom.__version__}, Qt {qt_version()}, "
                f"SimpleITK {SimpleITK.Version_VersionString()}")

    def dicom() -> str:
        from pydicom.data import get_testdata_file

        from medview.io import load

        done = []
        for syntax, name in COMPRESSED_SAMPLES.items():
            result = load([get_testdata_file(name, download=False)])
            if not result.volumes:
                raise RuntimeError(f"{syntax}: {result.skipped[0].reason}")
            done.append(syntax)
        return "decoded " + ", ".join(done)

    def dicom_results() -> str:
        import tempfile

        from pydicom import dcmread
        from pydicom.data import get_testdata_file

        from medview.core.modeling import Prediction
        from medview.core.progress import drain
        from medview.reports.deid import iter_export
        from medview.reports.dicom_results import write_result

        source = get_testdata_file(COMPRESSED_SAMPLES["JPEG-LS"], download=False)
        p = Prediction("selftest", "0", "0" * 64, ["A", "B"], [0.3, 0.7], "B", "B", 0.5,
                       "0" * 64, "cpu", in_scope=True)
        with tempfile.TemporaryDirectory() as tmp:
            (sr,) = write_result(tmp, source, p)
            if dcmread(sr).Modality != "SR":
                raise RuntimeError("the structured report did not read back")
            done = drain(iter_export([source], os.path.join(tmp, "deid")))
            if len(done.written) != 1:
                raise RuntimeError("de-identification wrote nothing")
        import pynetdicom

        return (f"structured report and de-identified copy written; pynetdicom "
                f"{pynetdicom.__version__}")

    _check("libraries", imports, report)
    _check("compressed DICOM", dicom, report)
    _check("DICOM results (PACS)", dicom_results, report)
    from medview.models.registry import discover_models

    reg = discover_models()
    for err in reg.errors:
        report.append((f"model card {err.where}", False, err.reason))
    if not reg.models:
        report.append(("models", False, "no model found"))
    for card in reg.models:
        def model_check(card=card) -> str:
            from medview.core.volume import ImageVolume
            from medview.explain import explain
            from medview.inference.predictor import Predictor

            pred = Predictor(card, "cpu", "torch")
            rng = np.random.default_rng(0)
            vol = ImageVolume(rng.integers(0, 4096, (1, 512, 512), dtype=np.uint16),
                              modality="DX")
            p = pred.predict(vol, 0)
            label = p.revealed().label
            if not np.isclose(sum(p.probabilities), 1.0) or label not in card.classes + [
                    f"not {c}" for c in card.classes]:
                raise RuntimeError("implausible output")
            if pred.gate is not None and not (p.ood_score is not None
                                              and np.isfinite(p.ood_score)):
                raise RuntimeError("the trust gate gave no score")
            prep = pred.prepare(vol, 0)
            sal = explain(pred.model, prep.tensor, 0, "gradcam")
            if not np.all(np.isfinite(sal)):
                raise RuntimeError("Grad-CAM produced non-finite values")
            gate = (f"trust gate ok (noise: score {p.ood_score:.1f}, limit {p.ood_limit:.1f})"
                    if pred.gate is not None else "no trust gate")
            graph = "no exported graph"
            if card.card.graph is not None:
                fast = Predictor(card, "cpu", "onnx")  # the graph: checked, loaded, run
                q = fast.predict(vol, 0)
                diff = float(np.abs(np.subtract(q.probabilities, p.probabilities)).max())
                if not diff <= card.card.graph.tolerance or q.in_scope != p.in_scope:
                    raise RuntimeError(f"the exported graph disagrees with torch ({diff:.2g})")
                graph = (f"graph on ONNX Runtime agrees (max |dp| {diff:.1e}, "
                         f"{q.timings_ms['inference']:.0f} ms)")
            return (f"weights sha256 ok, inference {p.timings_ms['inference']:.0f} ms, "
                    f"{gate}, Grad-CAM ok, {graph}")

        _check(f"model {card.id} {card.version}", model_check, report)

    bundle = getattr(sys, "_MEIPASS", None)
    if getattr(sys, "frozen", False) and bundle:
        def self_contained() -> str:
            outside = foreign_modules(bundle, sys.modules)
            if outside:
                raise RuntimeError("modules loaded from outside the bundle: " + ", ".join(
                    f"{n} ({sys.modules[n].__file__})" for n in outside[:3]))
            return f"{len(sys.modules)} modules, all from the bundle"

        _check("app bundle", self_contained, report)
    out(f"medview {__version__} selftest")
    for name, ok, detail in report:
        out(f"  [{'PASS' if ok else 'FAIL'}] {name}: {detail}")
    failed = sum(not ok for _, ok, _ in report)
    out(f"{len(report) - failed} passed, {failed} failed")
    return 0 if failed == 0 else 1
