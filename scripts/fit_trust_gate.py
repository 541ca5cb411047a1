"""Fit (or refit) the trust gate of a bundled model on its development data, compare the
out-of-distribution methods, and write the statistics and the card's ``scope``.

    python scripts/fit_trust_gate.py DEV_FOLDER --model cxr-pneumonia [--write]
        [--body-parts CHEST] [--views AP] [--ages 1 5] [--known-failures TEXT]
        [--out report.json]

DEV_FOLDER holds ``train/``, ``val/``, ``test/`` with one subfolder per class (the
development split the model was trained on). Statistics: every training image; limit:
the validation split; reported: the test split and the offline out-of-distribution
benchmark of ``benchmarks/bench_trust_gate.py``. Nothing is tuned on the test split.
With ``--write``, ``scope.safetensors``, ``card.json`` (scope section with sha256) and the
README's "Where this model was checked" section are rewritten (atomically).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import bench_trust_gate as B
from medview.inference import scope
from medview.models.card import SCOPE_METHODS


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("dev")
    ap.add_argument("--model", default="cxr-pneumonia")
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--body-parts", nargs="*", default=["CHEST"])
    ap.add_argument("--views", nargs="*", default=["AP"])
    ap.add_argument("--ages", nargs=2, type=float, default=None)
    ap.add_argument("--known-failures", default="")
    ap.add_argument("--out")
    args = ap.parse_args(argv)

    from medview.core.safeio import atomic_write_bytes
    from medview.inference.features import StageTap, gate_stages
    from medview.inference.predictor import Predictor
    from medview.models.card import (
        CARD_FILE,
        README_FILE,
        SCOPE_FILE,
        checked_section,
        json_safe,
    )
    from medview.models.registry import discover_models

    t0 = time.time()
    card = discover_models().get(args.model)
    pred = Predictor(card, "cpu")
    stages = gate_stages(pred.model)
    tap = StageTap(pred.model, stages)
    sets = B.dev_features(pred, tap, args.dev)
    print(f"dev split embedded ({time.time() - t0:.0f} s)", flush=True)
    tr, ty, _ = sets["train"]
    va, _, _ = sets["val"]
    te, yte, test_paths = sets["test"]
    ood_items, benign_items = B.proxy_sets(test_paths)
    ood = {k: B.embed(pred, tap, v) for k, v in ood_items.items() if v}
    benign = {k: B.embed(pred, tap, v) for k, v in benign_items.items()}
    print(f"benchmark embedded ({time.time() - t0:.0f} s)", flush=True)
    folder_classes = sorted(os.listdir(os.path.join(args.dev, "test")))
    same = [c.upper() for c in card.classes] == [c.upper() for c in folder_classes]
    probs = pred.probabilities(te[scope.LOGITS]) if same else None  # AUC only if comparable
    positive = card.classes.index(card.positive_class) if card.positive_class else 1
    compare = {}
    for method in SCOPE_METHODS:
        for pct in (97.5, 99.0):
            gate = scope.fit_gate(method, tr, ty, va, pct, stages)
            rep = B.benchmark(gate, te, yte, probs, ood, benign, positive)
            compare[f"{method} p{pct:g}"] = rep
            cats = rep["ood_benchmark"]
            print(f"{method:12s} p{pct:<5g} test in scope {rep['internal_test']['in_scope']:.3f}"
                  f"  OOD withheld {rep['ood_all_but_adult_proxy_withheld']:.3f}  "
                  + "  ".join(f"{k[:12]} {c['withheld']:.2f}" for k, c in cats.items())
                  + "  | benign min "
                  f"{min(c['in_scope'] for c in rep['benign_variations'].values()):.2f}",
                  flush=True)
    gate = scope.fit_gate(scope.DEFAULT_METHOD, tr, ty, va, scope.DEFAULT_PERCENTILE, stages)
    rep = B.benchmark(gate, te, yte, probs, ood, benign, positive)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"chosen": rep, "compare": compare}, f, indent=2)
    if not args.write:
        return 0
    data = gate.to_bytes()
    checked = {"fitted_on": {"train_images": len(ty), "validation_images":
                             len(va[scope.LOGITS])},
               "internal_test": rep["internal_test"], "ood_benchmark": rep["ood_benchmark"],
               "benign_variations": rep["benign_variations"]}
    spec = {"method": gate.method, "file": SCOPE_FILE, "sha256": gate.sha256(),
            "limit": round(gate.limit, 6), "percentile": gate.percentile,
            "in_distribution_pass_rate": round(gate.in_distribution_pass_rate, 4),
            "stages": list(stages), "body_parts": args.body_parts,
            "view_positions": args.views,
            "age_years": list(args.ages) if args.ages else None,
            "checked": checked, "known_failures": args.known_failures}
    new = card.card.replace(scope=spec)
    folder = card.folder
    atomic_write_bytes(os.path.join(folder, SCOPE_FILE), data)
    atomic_write_bytes(os.path.join(folder, CARD_FILE), (json.dumps(
        json_safe(new.to_dict()), indent=2, allow_nan=False) + "\n").encode())
    readme_path = os.path.join(folder, README_FILE)
    with open(readme_path, encoding="utf-8") as f:
        readme = f.read()
    section = "\n".join(checked_section(new)) + "\n"
    start = readme.find("## Where this model was checked")
    if start >= 0:
        end = readme.find("## ", start + 3)
        readme = readme[:start] + section + readme[end:]
    else:
        at = readme.find("## Limitations")
        readme = readme[:at] + section + readme[at:]
    atomic_write_bytes(readme_path, readme.encode("utf-8"))
    print(f"wrote {SCOPE_FILE} ({len(data)} bytes), card and README of {card.id} "
          f"({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
