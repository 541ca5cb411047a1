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

from medview.cli_common import progress_bar

BACKENDS = ("auto", "torch", "onnx")
BACKEND_HELP = ("auto (default): on the CPU the model's exported graph on ONNX Runtime when "
                "its card says it agrees with PyTorch, else PyTorch; torch; onnx (CPU)")
SUBCOMMANDS = ("info", "models", "train", "predict", "explain", "pacs", "export", "audit",
               "selftest")


def _show(text: str) -> str:
    """A file name or file-derived string as safe terminal text (no escape sequences,
    undecodable bytes as \\xNN)."""
    from medview.core.safeio import plain_text

    return plain_text(str(text))


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
        "tilt_deg": v.tilt_deg,
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
            "skipped": [{"path": _show(s.path), "reason": s.reason} for s in result.skipped],
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
                f"\n[{k}] {_show(v.modality)}  {_show(v.description) or '(no description)'}\n"
                f"    {v.n_slices} {kind} of {dims}  {v.photometric}\n"
                f"    spacing (slice x row x col): {_fmt_spacing(v.spacing)}\n"
                + (f"    tilt: {v.tilt_deg:.1f} degrees\n" if v.tilt_deg else "") +
                f"    uid: {_show(v.series_uid)}\n"
            )
            for w in v.warnings:
                out.write(f"    warning: {w}\n")
        if result.skipped:
            out.write("\nSkipped files:\n")
            for s in result.skipped:
                out.write(f"  {_show(s.path)}: {_show(s.reason)}\n")
    return 0 if result.volumes else 2


def cmd_models(args: argparse.Namespace) -> int:
    from medview.models.registry import discover_models

    reg = discover_models()
    if args.json:
        doc = {"models": [m.summary() for m in reg.models],
               "errors": [{"where": e.where, "reason": e.reason} for e in reg.errors]}
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    if not reg.models:
        print("no models found")
    for m in reg.models:
        try:
            print(_model_text(m))
        except (TypeError, AttributeError, KeyError, ValueError, IndexError) as exc:
            # one malformed free-form section never stops the listing
            print(f"refused {_show(m.id)}: malformed card ({type(exc).__name__} in its "
                  "metrics or scope)")
    for e in reg.errors:
        print(f"refused {_show(e.where)}: {_show(e.reason)}")
    return 0


def _metric(value) -> str:
    return _show(str(value)) if isinstance(value, (int, float, str)) else "?"


def _model_text(m) -> str:
    """One model for ``medview models``: every text from the card as plain text (a card
    is untrusted: no escape sequence reaches the terminal)."""
    s = m.summary()
    test = m.card.metrics.get("test")
    test = test if isinstance(test, dict) else {}
    auc = test.get("auc")
    if isinstance(auc, dict) and "value" in auc:
        ci = auc.get("ci95") if isinstance(auc.get("ci95"), list) else [None, None]
        ci = [*ci, None, None][:2]
        perf = (f"test AUC {_metric(auc.get('value'))} (95% CI {_metric(ci[0])}-"
                f"{_metric(ci[1])}, n={_metric(test.get('n'))})")
    else:
        perf = "no test metrics"
    small = m.card.evidence_warning
    if small:
        perf += f"\n    WARNING: {_show(small)}"
    inp = s["input"]
    return (f"{_show(s['id'])}  {_show(s['name'])} v{_show(s['version'])}  [{s['source']}]\n"
            f"    classes: {_show(', '.join(s['classes']))}\n"
            f"    input: {_show(inp['dimensionality'])} {_show(', '.join(inp['modalities']))},"
            f" {inp['size'][0]}x{inp['size'][1]}, {inp['channels']} channel(s)\n"
            f"    intended use: {_show(s['intended_use'])}\n    {perf}\n"
            f"    {_show(_gate_line(m.card))}\n"
            f"    weights sha256: {s['weights_sha256']}")


def _gate_line(card) -> str:
    from medview.models.card import population_text

    sc = card.scope
    if sc is None:
        return "trust gate: none (answers any image; nothing checks it is like its training data)"
    it = (sc.checked or {}).get("internal_test")
    passed = (f", test images in scope {it['in_scope']}"
              if isinstance(it, dict) and "in_scope" in it else "")
    return (f"trust gate: {sc.method}, limit {sc.limit:.4g} (validation {sc.percentile:g}th "
            f"percentile{passed}); population: {population_text(card)}")


def cmd_train(args: argparse.Namespace) -> int:
    import os

    from medview.core.errors import CancelledError, MedviewError
    from medview.core.progress import drain
    from medview.models.registry import user_models_dir
    from medview.training import distributed
    from medview.training.engine import checkpoint_dir_for, print_event, train
    from medview.training.strategies import strategy_for
    from medview.training.types import TrainConfig

    overrides = {"data": args.data, "base": args.base, "strategy": args.strategy,
                 "epochs": args.epochs, "image_size": args.image_size, "name": args.name,
                 "out": args.out, "device": args.device}
    try:
        cfg = (TrainConfig.from_file(args.config, **overrides) if args.config
               else TrainConfig(**{k: v for k, v in overrides.items() if v is not None}))
        if not cfg.data:
            print("error: no DATA given (argument or config 'data')", file=sys.stderr)
            return 2
        cfg.data = os.path.abspath(cfg.data)
        cfg.validate()
        strategy_for(cfg.strategy)
        out = os.path.abspath(cfg.out or user_models_dir())
        ckpt = checkpoint_dir_for(cfg, out)
        if args.cluster_script:
            for path in distributed.write_cluster_scripts(cfg, args.cluster_script, out):
                print(f"wrote {_show(path)}")
            return 0
        from medview.training.placement import plan

        where = plan("train", cfg.device, args.nproc)
        cfg.device = where.device  # the workers connect for it (NCCL on CUDA)
        print(f"{where.describe()}", file=sys.stderr, flush=True)
        if where.nproc > 1:
            config = distributed.write_worker_config(cfg, os.path.join(ckpt, "config.json"))
            worker = ["train", "--config", config, "--out", out] + (
                ["--events-json"] if args.events_json else []) + (
                ["--result-json", args.result_json] if args.result_json else [])
            return distributed.launch(where.nproc, worker)
        result = drain(train(cfg, checkpoint_dir=ckpt),
                       lambda ev: print_event(ev, args.events_json))
        distributed.finish_training(result, out, ckpt, args.events_json, args.result_json)
    except (MedviewError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (CancelledError, KeyboardInterrupt):
        print("cancelled: no model was written; the same command resumes from the last "
              "finished epoch", file=sys.stderr)
        return 130
    if args.events_json:
        return 0
    test = result.card.headline_metrics
    for key in ("auc", "sensitivity", "specificity", "accuracy", "ece"):
        v = test[key]
        print(f"  {key}: {v['value']} (95% CI {v['ci95'][0]}-{v['ci95'][1]})")
    print(f"  {_gate_line(result.card)}")
    for w in result.warnings:
        print(f"  warning: {w}")
    return 0


def _session(model: str, device: str, backend: str = "auto"):
    """(session, card) with the model loading on a background thread while the caller
    reads its inputs, or None after printing why it can't be used. A model whose files
    are refused stops the command at its first prediction (a MedviewError, "error: ...")."""
    from medview.core.errors import MedviewError
    from medview.inference.backends import resolve
    from medview.inference.session import InferenceSession
    from medview.models.registry import discover_models

    session = InferenceSession()
    try:
        card = discover_models().get(model)
        resolve(card, device, backend)  # a backend or device this model can't use: now
    except (KeyError, ValueError, MedviewError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
    session.preload(card, device, backend)
    return session, card


def _gpus_may_score(device: str) -> bool:
    """Whether ``predict --csv`` without ``--nproc`` should ask how many CUDA GPUs there
    are (one process each): ``--device auto`` or ``cuda`` and a GPU may be present
    (decided without importing torch on a machine without one)."""
    from medview.inference.backends import gpu_may_be_present

    return device in ("auto", "cuda") and gpu_may_be_present()


def cmd_predict(args: argparse.Namespace) -> int:
    from medview import cli_pacs

    anyway = args.score_out_of_scope
    csv_only = bool(args.csv) and not args.json and not cli_pacs.results_wanted(args)
    if args.nproc is not None and args.nproc != 1 and not csv_only:
        print("error: --nproc writes a CSV (--csv FILE); --json, --sr-dir, --sc and "
              "--send run on one process", file=sys.stderr)
        return 2
    if (args.nproc is not None and args.nproc != 1) or (
            args.nproc is None and csv_only and _gpus_may_score(args.device)):
        from medview.training.distributed import launch
        from medview.training.placement import PlacementError, plan

        try:
            # --nproc left out: one process per CUDA GPU (plan's default)
            where = plan("predict", args.device, args.nproc)
        except PlacementError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(where.describe(), file=sys.stderr, flush=True)
        if where.nproc > 1:
            worker = ["predict", *args.paths, "--model", args.model, "--csv", args.csv,
                      "--device", where.device, "--backend", args.backend] + (
                          ["--score-out-of-scope"] if anyway else [])
            return launch(where.nproc, worker, max_restarts=0)
    loaded = _session(args.model, args.device, args.backend)  # loads while we read
    if loaded is None:
        return 2
    session, card = loaded
    from medview.core import audit
    from medview.core.progress import drain
    from medview.inference.batch import RowWriter, iter_score_stream
    from medview.inference.rows import prediction_header, prediction_row
    from medview.inference.session import ScoredProgress

    header = prediction_header(card.classes)
    writer = RowWriter(args.csv, header) if args.csv else None
    if not args.csv and not args.json:
        print(",".join(header))
    results = cli_pacs.ResultWriter(args, session, card) if cli_pacs.results_wanted(
        args) else None
    json_rows: list[dict] = []
    audit_rows: list[tuple[str, dict]] = []
    output = "csv" if writer is not None else ("json" if args.json else "stdout")
    count = [0]
    on_step, bar = progress_bar("scoring")

    def scored(step) -> None:
        on_step(step)
        if not isinstance(step, ScoredProgress) or step.item is None:
            return
        item = step.item
        count[0] += 1
        audit_rows.append(("result_exported", {**audit.prediction_fields(
            item.prediction, shown_anyway=bool(anyway and item.prediction.withheld)),
            "output": output}))
        if writer is not None:
            writer.row(prediction_row(item.path, item.prediction, anyway))
        if args.json:
            json_rows.append({"path": _show(item.path), **_pred_dict(item.prediction, anyway)})
        elif writer is None:
            print(",".join(prediction_row(item.path, item.prediction, anyway)), flush=True)
        if results is not None:
            results.add(item)

    try:
        scan_skipped, read_skipped = drain(iter_score_stream(
            session, card, args.paths, args.device, backend=args.backend), scored)
        skipped = scan_skipped + read_skipped
        if writer is not None:
            writer.commit()
        audit.record_many(audit_rows)
    except BaseException:
        if writer is not None:
            writer.discard()
        raise
    finally:
        bar.close()
    if writer is not None:
        print(f"wrote {writer.rows} rows to {_show(args.csv)}", file=sys.stderr)
    if args.json:
        doc = {"model": {"id": card.id, "version": card.version,
                         "weights_sha256": card.weights_sha256},
               "predictions": json_rows,
               "skipped": [{"path": _show(s.path), "reason": s.reason} for s in skipped]}
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
    for s in skipped if not args.json else []:
        print(f"skipped {_show(s.path)}: {_show(s.reason)}", file=sys.stderr)
    if not count[0]:
        return 2
    return results.finish() if results is not None else 0


def _pred_dict(p, score_out_of_scope: bool = False) -> dict:
    """One prediction for ``--json``: as the CSV, an out-of-scope image has no label and
    no probabilities (null) unless ``score_out_of_scope``."""
    from medview.core.presentation import present

    shown = present(p, reveal=score_out_of_scope)
    return {"model_id": p.model_id, "model_version": p.model_version,
            "predicted": shown.label, "decision": shown.decision,
            "probabilities": shown.probabilities,
            "in_scope": p.in_scope, "ood_score": p.ood_score, "ood_limit": p.ood_limit,
            "scope_reasons": p.scope_reasons,
            "threshold": p.threshold, "input_sha256": p.input_sha256,
            "weights_sha256": p.weights_sha256, "computed_by": p.computed_by,
            "device": p.device,
            "backend": p.backend, "timings_ms": p.timings_ms, "warnings": p.warnings}


def cmd_explain(args: argparse.Namespace) -> int:
    from medview.core.progress import drain
    from medview.core.safeio import atomic_write_bytes
    from medview.explain.saliency import METHODS
    from medview.io import load
    from medview.reports.figures import saliency_png

    loaded = _session(args.model, args.device, args.backend)
    if loaded is None:
        return 2
    session, card = loaded
    result = load([args.path])
    if not result.volumes:
        for s in result.skipped:
            print(f"error: {_show(s.path)}: {_show(s.reason)}", file=sys.stderr)
        return 2
    v = result.volumes[0]
    index = v.default_index
    pred, prep = drain(session.predict(card, v, index, args.device, backend=args.backend))
    if pred.withheld and not args.score_out_of_scope:
        print("refused: the image is outside this model's scope, so no saliency map is "
              "drawn (--score-out-of-scope draws one anyway, stamped OUT OF SCOPE):",
              file=sys.stderr)
        for r in pred.scope_reasons:
            print(f"  {r}", file=sys.stderr)
        return 3
    pred = pred.revealed()
    target = args.target or pred.label
    if target not in card.classes:
        print(f"error: unknown class {target!r}; classes: {', '.join(card.classes)}",
              file=sys.stderr)
        return 2
    from medview.core.progress import CancelToken

    on_step, bar = progress_bar(f"saliency ({args.method})")
    token = CancelToken()
    token.on_progress = on_step  # one step per forward pass inside captum
    try:
        sal = drain(session.explain(card, v, index, args.method, target, args.device, prep,
                                    token, backend=args.backend))
    finally:
        bar.close()
    atomic_write_bytes(args.out, saliency_png(
        v, index, sal, model_id=card.id, model_version=card.version, target=target,
        method=args.method, method_name=METHODS[args.method], colormap=args.colormap,
        opacity=args.opacity, out_of_scope=pred.withheld))
    from medview.core import audit

    audit.record("saliency_saved", **audit.prediction_fields(
        pred, shown_anyway=pred.withheld), method=args.method, target=target, output="png")
    print(f"{pred.decision}\nsaliency ({args.method}) for {target} written to "
          f"{_show(args.out)}")
    from medview.explain.shortcut import note_for_slice

    note = note_for_slice(v, index, sal)
    if note:
        print(f"warning: {note}")
    for r in pred.scope_reasons:
        print(f"out of scope: {r}")
    for w in pred.warnings:
        print(f"warning: {w}")
    return 0


def cmd_audit_show(args: argparse.Namespace) -> int:
    from medview.core import audit

    since = args.since or ""
    if since and not (len(since) == 10 and since[4] == "-" and since[7] == "-"):
        print("error: --since takes a date as YYYY-MM-DD", file=sys.stderr)
        return 2
    print(f"audit log: {_show(audit.audit_dir())}", file=sys.stderr)
    for name, line, entry in audit.iter_entries():
        if entry is None:
            print(f"{name} line {line}: not a log entry", file=sys.stderr)
            continue
        if str(entry.get("time", "")) < since:
            continue
        if args.json:
            print(json.dumps(entry))
            continue
        fields = {k: v for k, v in entry.items()
                  if k not in ("seq", "time", "user", "event", "prev", "hash")}
        detail = ", ".join(f"{k}={_show(json.dumps(v) if not isinstance(v, str) else v)}"
                           for k, v in fields.items())
        print(f"{entry.get('seq')} {entry.get('time')} {_show(str(entry.get('user')))} "
              f"{entry.get('event')}: {detail}")
    return 0


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from medview.core import audit

    v = audit.verify()
    if v.ok:
        print(f"audit log intact: {v.entries} entries; newest hash {v.newest_hash}")
        return 0
    print(f"audit log BROKEN after {v.entries} intact entries: {_show(v.broken)}")
    return 1


def _train_options(tr: argparse.ArgumentParser) -> None:
    from medview.core.modeling import DEVICES
    from medview.models.pretrained import IMAGENET_BASES
    from medview.training.strategies import STRATEGIES

    tr.add_argument("data", nargs="?", help="folder of class subfolders, or a CSV manifest")
    tr.add_argument("--base", help=f"{', '.join(IMAGENET_BASES)}, a model id or a model folder")
    tr.add_argument("--strategy", choices=tuple(STRATEGIES))
    tr.add_argument("--epochs", type=int)
    tr.add_argument("--image-size", type=int, dest="image_size")
    tr.add_argument("--name")
    tr.add_argument("--out", help="directory the new model folder is written into")
    tr.add_argument("--config", help="JSON file with training settings")
    tr.add_argument("--device", choices=DEVICES,
                    help="where to train (default: auto, the config's device if it names "
                         "one: CUDA, then Apple MPS, then the CPU); printed at the start")
    tr.add_argument("--nproc", type=int, default=None,
                    help="train on N local processes (torchrun; DDP, gloo on CPU, NCCL on "
                         "CUDA; default: one per CUDA GPU, else 1)")
    tr.add_argument("--cluster-script", dest="cluster_script", metavar="DIR",
                    help="write train.json, run_torchrun.sh and run_slurm.sh into DIR for a "
                         "GPU server or cluster, and stop")
    tr.add_argument("--events-json", action="store_true", dest="events_json",
                    help=argparse.SUPPRESS)
    tr.add_argument("--result-json", dest="result_json", help=argparse.SUPPRESS)
    tr.set_defaults(func=cmd_train)


def _predict_options(pr: argparse.ArgumentParser) -> None:
    from medview import cli_pacs
    from medview.core.modeling import DEVICES

    pr.add_argument("paths", nargs="+", metavar="PATH")
    pr.add_argument("--model", required=True, help="model id or model folder")
    pr.add_argument("--csv", help="write a CSV worklist here")
    pr.add_argument("--json", action="store_true")
    pr.add_argument("--device", default="auto", choices=DEVICES)
    pr.add_argument("--backend", default="auto", choices=BACKENDS, help=BACKEND_HELP)
    pr.add_argument("--score-out-of-scope", action="store_true", dest="score_out_of_scope",
                    help="also fill in the label and probabilities of images outside the "
                         "model's scope (in_scope stays false)")
    pr.add_argument("--nproc", type=int, default=None,
                    help="score on N local processes (torchrun); needs --csv. Left out: "
                         "with --csv, one process per CUDA GPU, else one. More processes "
                         "than GPUs share them")
    cli_pacs.add_result_options(pr)
    pr.set_defaults(func=cmd_predict)


def _explain_options(ex: argparse.ArgumentParser) -> None:
    from medview.core.modeling import DEVICES
    from medview.explain.saliency import METHODS
    from medview.imaging.overlay import COLORMAPS

    ex.add_argument("path")
    ex.add_argument("--model", required=True)
    ex.add_argument("--method", default="gradcam", choices=tuple(METHODS))
    ex.add_argument("--target", help="class to explain (default: the predicted one)")
    ex.add_argument("--out", required=True, help="PNG file to write")
    ex.add_argument("--colormap", default="inferno", choices=tuple(COLORMAPS))
    ex.add_argument("--opacity", type=float, default=0.6)
    ex.add_argument("--device", default="auto", choices=DEVICES)
    ex.add_argument("--backend", default="auto", choices=BACKENDS, help=BACKEND_HELP)
    ex.add_argument("--score-out-of-scope", action="store_true", dest="score_out_of_scope",
                    help="draw the map for an image outside the model's scope too, greyed "
                         "and stamped OUT OF SCOPE")
    ex.set_defaults(func=cmd_explain)


#: The model commands whose options import the modules that list their choices: built
#: only for the command being run (``medview predict`` never imports the training code).
MODEL_COMMANDS = {
    "train": ("fine-tune a model on a labelled folder or manifest", _train_options),
    "predict": ("score every image/series under PATHs", _predict_options),
    "explain": ("write a saliency overlay PNG for one image", _explain_options),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command-line parser; with ``only``, the options of that one command (the
    others are listed, their options not built)."""
    from medview.io.samples import SAMPLES

    parser = argparse.ArgumentParser(
        prog="medview",
        description="Medical image viewer with local AI classifiers (research use only).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=("open the viewer:\n"
                "  medview [PATH...] [--sample [NAME]] [--model ID]\n"
                "      PATH: DICOM files or folders, NIfTI, NRRD, MetaImage, PNG/JPEG/TIFF\n"
                f"      --sample: a study shipped with medview ({', '.join(SAMPLES)}; "
                "default cr-chest)\n"
                "      --model: select this model and run it on every image shown\n"
                "  medview COMMAND --help   for one command's options"),
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command")
    info = sub.add_parser("info", help="list the series and skipped files under PATHs")
    info.add_argument("paths", nargs="+", metavar="PATH")
    info.add_argument("--json", action="store_true", help="print one JSON document")
    info.set_defaults(func=cmd_info)
    models = sub.add_parser("models", help="list the available models")
    models.add_argument("--json", action="store_true")
    models.set_defaults(func=cmd_models)
    for name, (text, options) in MODEL_COMMANDS.items():
        command = sub.add_parser(name, help=text)
        if only in (None, name):
            options(command)
    from medview import cli_pacs

    cli_pacs.add_parsers(sub)
    au = sub.add_parser("audit", help="show or verify the audit log of results shown, "
                                      "saved, sent and exported")
    asub = au.add_subparsers(dest="audit_command", required=True)
    show = asub.add_parser("show", help="print the log's entries")
    show.add_argument("--since", help="only entries from this date (YYYY-MM-DD) on")
    show.add_argument("--json", action="store_true", help="one JSON object per line")
    show.set_defaults(func=cmd_audit_show)
    ver = asub.add_parser("verify", help="check the hash chain; exit 1 and the first "
                                         "broken link when an entry was altered or removed")
    ver.set_defaults(func=cmd_audit_verify)
    st = sub.add_parser("selftest", help="check models, decoders, inference and saliency")
    st.set_defaults(func=lambda _a: __import__("medview.selftest", fromlist=["x"])
                    .run_selftest())
    return parser


def viewer_argv_problem(argv: list[str]) -> str | None:
    """Why ``medview ARGS`` cannot open the viewer, in one line (None if it can): an
    unknown sample, an unknown option, or a first word that is neither a command nor
    an existing file (a mistyped command such as ``infoo``)."""
    import difflib
    import os

    from medview.gui.app import build_parser as viewer_parser
    from medview.io.samples import SAMPLES

    args, unknown = viewer_parser().parse_known_args(argv)
    if unknown:
        return f"unknown option {_show(unknown[0])!r} (see medview --help)"
    if args.sample is not None and args.sample not in SAMPLES:
        return (f"unknown sample {_show(args.sample)!r}; samples: {', '.join(SAMPLES)}")
    if args.paths:
        first = args.paths[0]
        looks_like_word = not any(c in first for c in "./\\") and not first.startswith("~")
        if looks_like_word and not os.path.exists(first):
            close = difflib.get_close_matches(first, SUBCOMMANDS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            return (f"unknown command {_show(first)!r}{hint}; commands: "
                    f"{', '.join(SUBCOMMANDS)}; or a file or folder to open")
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not argv or (argv[0] not in SUBCOMMANDS and argv[0] not in ("-h", "--help", "--version")):
        problem = viewer_argv_problem(argv)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 2
        from medview.gui.app import main as gui_main

        return gui_main(argv)
    args = build_parser(argv[0] if argv[0] in SUBCOMMANDS else None).parse_args(argv)
    if args.version:
        from medview import __version__

        print(__version__)
        return 0
    from medview.core.errors import CancelledError, MedviewError

    try:
        return args.func(args)
    except CancelledError:
        raise
    except MedviewError as exc:  # a model, file, setting or PACS refused, with the reason
        print(f"error: {_show(str(exc))}", file=sys.stderr)
        return 2
    except OSError as exc:  # unwritable --out/--csv, a full disk, an unreadable --config
        where = f": {_show(exc.filename)}" if getattr(exc, "filename", None) else ""
        print(f"error: {exc.strerror or type(exc).__name__}{where}", file=sys.stderr)
        return 2


#: Subcommands that may end without the interpreter's teardown (see :func:`run`);
#: ``train`` only as a single process (a torchrun worker leaves its process group).
FAST_EXIT = ("info", "models", "predict", "explain", "train")


def run() -> None:
    """The console entry point: :func:`main`, then, after a headless command that is
    safe to end early, a fast exit.

    Tearing the interpreter down (collecting every module's objects: torch's alone took
    1.7 s after a one-film ``predict``) does no work the user needs once the command has
    returned: every file it writes is written atomically (temporary file, fsync, rename)
    and closed before ``main`` returns. So, for the commands in :data:`FAST_EXIT`, with
    no other non-daemon thread alive, standard output and error are flushed, the
    ``atexit`` handlers run (logging's, tqdm's...), and the process ends with
    ``os._exit`` (after ``medview train``, 1.3 s sooner: the model folder is written and
    synced by then). The viewer (Qt saves settings on teardown), a training worker of
    torchrun and the PACS commands always exit normally, as does everything with
    ``MEDVIEW_SLOW_EXIT=1``."""
    import os
    import threading

    argv = sys.argv[1:]
    rc = main(argv)
    worker = argv[:1] == ["train"] and "WORLD_SIZE" in os.environ  # under torchrun
    fast = (argv and argv[0] in FAST_EXIT and not os.environ.get("MEDVIEW_SLOW_EXIT")
            and not worker
            and all(t.daemon or t is threading.main_thread() for t in threading.enumerate()))
    if not fast:
        sys.exit(rc)
    import atexit

    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):  # a closed pipe: exit as Python would
        sys.exit(rc)
    atexit._run_exitfuncs()
    os._exit(rc if isinstance(rc, int) else 1)


if __name__ == "__main__":
    run()
