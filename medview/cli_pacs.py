"""Command line for the PACS: ``medview pacs echo|find|get|send``, ``medview export
--deidentify``, and the DICOM results of ``medview predict`` (``--sr-dir``, ``--sc``,
``--send``).

Exit codes: 0 done, 1 a retrieve or send that finished incomplete (rerun to resume),
2 an error (message on stderr), 130 cancelled with Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

from medview.core.safeio import plain_text


def _err(msg: str) -> int:
    print(f"error: {plain_text(msg)}", file=sys.stderr)
    return 2


def _settings(args):
    from medview.pacs import load_settings

    s = load_settings()
    if getattr(args, "ae_title", None):
        s.ae_title = args.ae_title
    if getattr(args, "port", None):
        s.port = args.port
    if getattr(args, "timeout", None):
        s.timeout_s = args.timeout
    return s.validate()


def _client(args):
    from medview.pacs import connect

    return connect(args.server, _settings(args))


def cmd_echo(args: argparse.Namespace) -> int:
    r = _client(args).echo()
    print(f"{r.server}: OK ({r.detail}), round trip {r.ms:.0f} ms")
    return 0


def cmd_find(args: argparse.Namespace) -> int:
    from medview.pacs import Query

    client = _client(args)
    if args.series:
        rows = [s.as_dict() for s in client.find_series(args.series)]
        cols = ("number", "modality", "n_instances", "description", "series_uid")
    else:
        q = Query(patient_id=args.patient_id or "", patient_name=args.patient_name or "",
                  modality=args.modality or "", study_date=args.study_date or "",
                  accession=args.accession or "")
        rows = [s.as_dict() for s in client.find_studies(q)]
        cols = ("study_date", "patient_id", "patient_name", "modalities", "n_series",
                "n_instances", "description", "study_uid")
    if args.json:
        json.dump({"server": str(client.server), "results": rows}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    print("\t".join(cols))
    for r in rows:
        print("\t".join(plain_text(",".join(v) if isinstance(v, list) else
                                   "" if v is None else str(v)) for v in
                        (r[c] for c in cols)))
    print(f"{len(rows)} {'series' if args.series else 'study/studies'} found",
          file=sys.stderr)
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    from medview.cli_common import progress_bar
    from medview.core.progress import drain
    from medview.pacs.retrieve import iter_retrieve_series

    settings = _settings(args)
    client = _client(args)
    dest = args.out or settings.cache_root()
    limit = None if args.out else settings.cache_limit_mb * 1024**2
    on_step, bar = progress_bar("retrieving")
    try:
        done = drain(iter_retrieve_series(client, [(args.study_uid, args.series)], dest,
                                          method=args.method, cache_limit_bytes=limit),
                     on_step)
    except KeyboardInterrupt:
        bar.close()
        print("cancelled: instances received so far are kept; run the same command again "
              "to fetch the rest", file=sys.stderr)
        return 130
    finally:
        bar.close()
    if done.evicted:
        print(f"cache limit: removed {len(done.evicted)} older study/studies",
              file=sys.stderr)
    folders: dict[str, str] = {}
    for r in done.results:
        print(r.summary())
        folders.update(r.series_folders)
    if done.results:
        print(f"files in {plain_text(done.results[0].folder)}")
    if args.open and folders:
        from medview.gui.app import main as gui_main

        return gui_main(list(folders.values()))
    return 0 if done.complete else 1


def cmd_send(args: argparse.Namespace) -> int:
    from medview.core.progress import drain
    from medview.io.loader import discover

    files, skipped = discover(args.paths)
    for s in skipped:
        print(f"skipped {plain_text(s.path)}: {s.reason}", file=sys.stderr)
    if not files:
        return _err("nothing to send")
    r = drain(_client(args).iter_store(files))
    print(f"sent {r.sent} of {len(files)} to {args.server}")
    for m in r.messages:
        print(f"warning: {plain_text(m)}", file=sys.stderr)
    return 0 if r.ok else 1


def cmd_export(args: argparse.Namespace) -> int:
    from medview.cli_common import progress_bar
    from medview.core.progress import drain
    from medview.reports.deid import iter_export

    if not args.deidentify:
        return _err("medview export writes de-identified copies only: add --deidentify")
    on_step, bar = progress_bar("de-identifying")
    try:
        r = drain(iter_export(args.paths, args.out, keep_burned_in=args.keep_burned_in,
                              retain_modified_dates=args.retain_dates,
                              clean_descriptors=args.clean_descriptors,
                              on_file=lambda rep: print(f"{plain_text(rep.output)}: "
                                                        f"{rep.summary()}")), on_step)
    finally:
        bar.close()
    for path, reason in r.skipped:
        print(f"skipped {plain_text(path)}: {plain_text(reason)}", file=sys.stderr)
    if r.burned_in:
        print(f"warning: {r.burned_in} image(s) flagged with burned-in annotation "
              f"({'kept: check their pixels' if args.keep_burned_in else 'left out'})",
              file=sys.stderr)
    print(f"wrote {len(r.written)} de-identified file(s) under {plain_text(args.out)} "
          f"({'; '.join(r.options)})")
    if r.report_path:
        print(f"report (what was removed, replaced, shifted, kept per file): "
              f"{plain_text(r.report_path)}")
    return 0 if r.written else 2


def add_network_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ae-title", dest="ae_title", help="medview's AE title (default: Settings, "
                   "else MEDVIEW)")
    p.add_argument("--port", type=int, help="port medview listens on for C-MOVE")
    p.add_argument("--timeout", type=float, help="seconds to wait for the server")


def add_parsers(sub) -> None:
    pacs = sub.add_parser("pacs", help="query, retrieve from and send to a PACS",
                          description="SERVER is dicom://AET@host:port (DIMSE), "
                          "http(s)://host:port/dicom-web (DICOMweb) or a saved server's name")
    psub = pacs.add_subparsers(dest="pacs_command", required=True)
    echo = psub.add_parser("echo", help="check a server answers (C-ECHO or a QIDO request)")
    echo.add_argument("server", metavar="SERVER")
    add_network_options(echo)
    echo.set_defaults(func=cmd_echo)
    find = psub.add_parser("find", help="list studies (or a study's series)")
    find.add_argument("server", metavar="SERVER")
    find.add_argument("--patient-id", dest="patient_id")
    find.add_argument("--patient-name", dest="patient_name", help="wildcards * and ? allowed")
    find.add_argument("--modality", help="e.g. CR")
    find.add_argument("--study-date", dest="study_date", help="YYYYMMDD or YYYYMMDD-YYYYMMDD")
    find.add_argument("--accession")
    find.add_argument("--series", metavar="STUDY_UID", help="list this study's series")
    find.add_argument("--json", action="store_true")
    add_network_options(find)
    find.set_defaults(func=cmd_find)
    get = psub.add_parser("get", help="retrieve a study or series (resumable)")
    get.add_argument("server", metavar="SERVER")
    get.add_argument("study_uid", metavar="STUDY_UID")
    get.add_argument("--series", help="only this series")
    get.add_argument("--out", help="folder (default: medview's PACS cache, size-limited)")
    get.add_argument("--method", default="auto", choices=("auto", "get", "move"),
                     help="DIMSE: C-GET, falling back to C-MOVE (auto)")
    get.add_argument("--open", action="store_true", help="open the retrieved series")
    add_network_options(get)
    get.set_defaults(func=cmd_get)
    send = psub.add_parser("send", help="store DICOM files (C-STORE or STOW-RS)")
    send.add_argument("server", metavar="SERVER")
    send.add_argument("paths", nargs="+", metavar="PATH")
    add_network_options(send)
    send.set_defaults(func=cmd_send)
    ex = sub.add_parser("export", help="write de-identified copies of DICOM studies")
    ex.add_argument("paths", nargs="+", metavar="PATH")
    ex.add_argument("--deidentify", action="store_true", required=False)
    ex.add_argument("--out", required=True, help="folder to write into")
    ex.add_argument("--keep-burned-in", action="store_true", dest="keep_burned_in",
                    help="also export images flagged with burned-in annotation, or likely "
                         "to show burned-in text (secondary captures, ultrasound)")
    ex.add_argument("--retain-dates", action="store_true", dest="retain_dates",
                    help="PS3.15 option: Retain Longitudinal Temporal Information with "
                         "Modified Dates (dates shifted by one offset, not removed)")
    ex.add_argument("--clean-descriptors", action="store_true", dest="clean_descriptors",
                    help="PS3.15 option: Clean Descriptors (study/series descriptions kept, "
                         "with the file's names, IDs and dates cut out)")
    ex.set_defaults(func=cmd_export)


def add_result_options(pr: argparse.ArgumentParser) -> None:
    pr.add_argument("--sr-dir", dest="sr_dir", help="write a DICOM Structured Report per "
                    "scored DICOM image into this folder")
    pr.add_argument("--sc", action="store_true", help="also write the heat-map as a DICOM "
                    "Secondary Capture image (with its caption)")
    pr.add_argument("--send", metavar="SERVER", help="store the SRs (and heat-maps) in this "
                    "PACS")
    add_network_options(pr)


def results_wanted(args) -> bool:
    return bool(args.sr_dir or args.send or args.sc)


def _sop_of(path: str) -> str:
    """``SR:<SOP Instance UID>`` of a result file (named ``SR_<uid>.dcm``)."""
    kind, _sep, rest = os.path.basename(path).partition("_")
    return f"{kind}:{rest.removesuffix('.dcm')}"


class ResultWriter:
    """SR (and SC) files for each scored DICOM image as it is scored, then ``--send``."""

    def __init__(self, args, session, card) -> None:
        self.args, self.session, self.card = args, session, card
        self.folder = args.sr_dir or tempfile.mkdtemp(prefix="medview-results-")
        self.series: dict = {}
        self.files: list[str] = []
        self.written: list[tuple] = []  # (prediction, its result files), for the audit
        self.problems = 0
        self.count = 0

    def add(self, item) -> None:
        """Write the result files of one scored image; a failure costs this image only
        (a line on stderr), never the batch."""
        self.count += 1
        try:
            self._add(item)
        except Exception as exc:  # any failure: this file only
            from medview.reports.dicom_results import NoDicomSource

            self.problems += 1
            why = str(exc) if isinstance(exc, NoDicomSource) else type(exc).__name__
            print(f"no DICOM result for {plain_text(item.path)}: {plain_text(why)}",
                  file=sys.stderr)

    def _add(self, item) -> None:
        from medview.core.progress import drain
        from medview.reports.dicom_results import write_result
        from medview.reports.figures import saliency_figure

        args, card = self.args, self.card
        p = item.prediction
        figure = None
        if args.sc and (not p.withheld or args.score_out_of_scope):
            shown = p.revealed()
            sal = drain(self.session.explain(card, item.volume, item.index, "gradcam",
                                             shown.label, args.device,
                                             backend=getattr(args, "backend", "auto")))
            figure = saliency_figure(item.volume, item.index, sal, model_id=card.id,
                                     model_version=card.version, target=shown.label,
                                     method_name="Grad-CAM", out_of_scope=p.withheld)
        files = write_result(
            self.folder, item.volume.source_of(item.index), p,
            frame=item.index + 1 if item.volume.multiframe else None, figure=figure,
            series_by_study=self.series, reveal=args.score_out_of_scope)
        self.files += files
        self.written.append((p, files))

    def finish(self) -> int:
        """Send what was written (``--send``); 0, or 1 when something was not written
        or not sent."""
        from medview.cli_common import progress_bar
        from medview.core import audit
        from medview.core.progress import drain

        args = self.args
        print(f"wrote {len(self.files)} DICOM result file(s) to {plain_text(self.folder)}",
              file=sys.stderr)
        audit.record_many([("result_written", {
            **audit.prediction_fields(p, shown_anyway=bool(args.score_out_of_scope
                                                           and p.withheld)),
            "objects": [_sop_of(f) for f in files]}) for p, files in self.written])
        if args.send and self.files:
            from medview.pacs import PacsError, connect

            on_step, bar = progress_bar("sending")
            try:
                r = drain(connect(args.send, _settings(args)).iter_store(self.files), on_step)
            except PacsError as exc:
                print(f"error: results not sent: {plain_text(str(exc))}", file=sys.stderr)
                return 1
            finally:
                bar.close()
            print(f"sent {r.sent} of {len(self.files)} result file(s) to {args.send}",
                  file=sys.stderr)
            audit.record("result_sent", destination=audit.server_text(args.send),
                         objects=[_sop_of(f) for f in self.files], sent=r.sent,
                         failed=r.failed)
            for m in r.messages:
                print(f"warning: {plain_text(m)}", file=sys.stderr)
            self.problems += r.failed
        return 1 if self.problems else 0
