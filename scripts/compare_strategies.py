"""Compare transfer-learning strategies on one dataset with the same budget.

Usage: python scripts/compare_strategies.py CONFIG.json [--epochs N] [--image-size N]
       [--strategies feature,partial,...] [--json OUT.json]

Each strategy trains from the config's base with the same epochs, image size, batch size
and seed; the table reports validation and test AUC (95% CI), sensitivity/specificity at
the validation-chosen threshold, ECE, seconds per epoch and images per second. Nothing is
exported; the table is what goes into the model's README.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from medview.core.progress import drain
from medview.training.engine import train
from medview.training.strategies import STRATEGIES
from medview.training.types import TrainConfig


def run_one(cfg: TrainConfig) -> dict:
    t0 = time.monotonic()
    def show(ev) -> None:
        if ev.stage == "epoch":
            m = ev.metrics
            print(f"  [{cfg.strategy}] epoch {ev.epoch}: loss {m['loss']:.4f} "
                  f"val AUC {m['val_auc']:.4f} {m['epoch_seconds']}s", flush=True)

    result = drain(train(cfg), show)
    hist = result.history
    test = result.card.metrics.get("test", {})
    val = result.card.metrics["validation"]
    return {
        "strategy": cfg.strategy,
        "val_auc": val["auc"],
        "test_auc": test.get("auc"),
        "test_sensitivity": test.get("sensitivity"),
        "test_specificity": test.get("specificity"),
        "test_ece": test.get("ece"),
        "epochs_run": len(hist),
        "seconds_per_epoch": round(sum(h["epoch_seconds"] for h in hist) / len(hist), 1),
        "images_per_second": round(sum(h["images_per_second"] or 0 for h in hist) / len(hist),
                                   1),
        "feature_cache_seconds": hist[0].get("feature_cache_seconds"),
        "total_seconds": round(time.monotonic() - t0, 1),
    }


def fmt(m) -> str:
    if not m:
        return "-"
    return f"{m['value']:.3f} ({m['ci95'][0]:.3f}-{m['ci95'][1]:.3f})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--image-size", type=int, default=160)
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--json")
    args = ap.parse_args()
    rows = []
    for strategy in args.strategies.split(","):
        cfg = TrainConfig.from_file(args.config, strategy=strategy, epochs=args.epochs,
                                    image_size=args.image_size, patience=args.epochs,
                                    n_bootstrap=500)
        print(f"== {strategy}", flush=True)
        rows.append(run_one(cfg))
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"epochs": args.epochs, "image_size": args.image_size, "rows": rows},
                          f, indent=2)
    print(f"\n| strategy | val AUC | test AUC (95% CI) | test sens. | test spec. | test ECE | "
          f"s/epoch | img/s |  (budget: {args.epochs} epochs, {args.image_size} px)")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['strategy']} | {r['val_auc']['value']:.3f} | {fmt(r['test_auc'])} | "
              f"{fmt(r['test_sensitivity'])} | {fmt(r['test_specificity'])} | "
              f"{fmt(r['test_ece'])} | {r['seconds_per_epoch']} | {r['images_per_second']} |")


if __name__ == "__main__":
    main()
