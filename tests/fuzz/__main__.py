"""``python -m tests.fuzz [--seconds N] [--seed S] [--save DIR] [--json] [--replay]
[--self-check]``: fuzz the readers, replay the kept regression inputs, or check the
harness. Exit code 1 if anything crashed or hung."""

from __future__ import annotations

import argparse
import json
import sys

from tests.fuzz.runner import REGRESSIONS, campaign, replay, self_check


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.fuzz")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save", default=REGRESSIONS,
                    help="where crashing/hanging inputs are kept (default: the regression "
                         "corpus, tests/data/regressions)")
    ap.add_argument("--json", action="store_true", help="print one JSON document")
    ap.add_argument("--replay", action="store_true", help="run the regression corpus only")
    ap.add_argument("--self-check", action="store_true", dest="self_check")
    args = ap.parse_args(argv)
    if args.self_check:
        doc = self_check()
        print(json.dumps(doc))
        return 0
    if args.replay:
        rows = replay()
        bad = [r for r in rows if r["status"] != "ok"]
        if args.json:
            print(json.dumps({"files": rows}))
        else:
            for r in rows:
                print(f"{r['status']:5}  {r['max_rss_mib']:7.1f} MiB  {r['file']}  {r['detail']}")
        return 1 if bad else 0
    report = campaign(args.seconds, args.seed, args.save)
    if args.json:
        print(json.dumps(report))
    else:
        print(f"fuzzed {report['inputs']} inputs in {report['seconds']:.0f} s "
              f"({report['inputs_per_second']}/s) from {report['seeds']} seeds")
        print(f"crashes {report['crashes']}, hangs {report['hangs']}, over memory "
              f"{report['over_memory']}, fast/full header disagreements "
              f"{report['disagreements']}, peak RSS {report['peak_rss_mib']} MiB")
        print("per format: " + ", ".join(f"{k} {v}" for k, v in
                                         sorted(report["per_format"].items())))
        for f in report["findings"]:
            print(f"  {f.get('status')}: {f.get('file') or f.get('seed')} "
                  f"({f.get('mutations', 'seed')}): {f['detail']}")
    return 1 if report["findings"] else 0


if __name__ == "__main__":
    sys.exit(main())
