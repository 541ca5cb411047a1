"""Command line: ``medview [PATH...]`` opens the viewer; subcommands work headless.

``medview info PATH... [--json]`` lists the series found and every skipped file.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Sequence

SUBCOMMANDS = ("info",)


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _series_dict(v) -> dict:
    return {
        "uid": v.series_uid,
        "modality": v.modality,
        "description": v.description,
        "shape": list(v.shape),
        "spacing": [_finite(s) for s in v.spacing],
        "n_images": v.n_slices,
        "photometric": v.photometric,
        "multiframe": v.multiframe,
        "incomplete": v.incomplete,
        "warnings": list(v.warnings),
    }


def _fmt_spacing(spacing) -> str:
    return " x ".join("?" if not math.isfinite(s) else f"{s:.4g}" for s in spacing) + " mm"


def cmd_info(args: argparse.Namespace) -> int:
    from medview.io import load

    result = load(args.paths)
    if args.json:
        doc = {
            "series": [_series_dict(v) for v in result.volumes],
            "skipped": [{"path": s.path, "reason": s.reason} for s in result.skipped],
        }
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        out = sys.stdout
        out.write(f"{len(result.volumes)} series, {len(result.skipped)} skipped file(s)\n")
        for k, v in enumerate(result.volumes, 1):
            kind = "frames" if v.multiframe else "images"
            dims = "x".join(str(d) for d in v.shape[1:])
            out.write(
                f"\n[{k}] {v.modality}  {v.description or '(no description)'}\n"
                f"    {v.n_slices} {kind} of {dims}  {v.photometric}\n"
                f"    spacing (slice x row x col): {_fmt_spacing(v.spacing)}\n"
                f"    uid: {v.series_uid}\n"
            )
            for w in v.warnings:
                out.write(f"    warning: {w}\n")
        if result.skipped:
            out.write("\nSkipped files:\n")
            for s in result.skipped:
                out.write(f"  {s.path}: {s.reason}\n")
    return 0 if result.volumes else 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medview",
        description="Medical image viewer with local AI classifiers (research use only).",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command")
    info = sub.add_parser("info", help="list the series and skipped files under PATHs")
    info.add_argument("paths", nargs="+", metavar="PATH")
    info.add_argument("--json", action="store_true", help="print one JSON document")
    info.set_defaults(func=cmd_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not argv or (argv[0] not in SUBCOMMANDS and argv[0] not in ("-h", "--help", "--version")):
        from medview.gui.app import main as gui_main

        return gui_main(argv)
    args = build_parser().parse_args(argv)
    if args.version:
        from medview import __version__

        print(__version__)
        return 0
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
