"""Finish a retrained bundled model: the population from its ``train.json``, the
benchmark's figures in its card, and its README regenerated.

    python scripts/finish_bundled.py models/cxr-pneumonia [--every K] [--keep-section TITLE]

After ``medview train --config models/<id>/train.json`` wrote a new model folder and its
files were copied into ``models/<id>/``: the card's ``scope`` gets the population
(``body_parts``, ``view_positions``, ``age_years``, ``known_failures`` from the config's
``card``; a model trained before they were in the config lacks them) and, under
``checked``, the robustness benchmark's numbers on the development test split
(``benchmarks/bench_robustness.py``: every out-of-distribution category and adult proxy
withheld, every benign variation written as a file and read back); the README is
rendered again from the card, keeping any hand-written sections named with
``--keep-section`` (e.g. the strategy comparison). Card and README are written
atomically; the weights and the gate's statistics are not touched.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from dataclasses import asdict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def kept_sections(readme: str, titles: list[str]) -> str:
    out = []
    for title in titles:
        start = readme.find(f"## {title}")
        if start < 0:
            continue
        end = readme.find("\n## ", start + 3)
        out.append(readme[start:] if end < 0 else readme[start:end + 1])
    return "\n".join(s.rstrip() + "\n" for s in out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("folder")
    ap.add_argument("--every", type=int, default=1)
    ap.add_argument("--keep-section", action="append", default=[])
    args = ap.parse_args(argv)

    from benchmarks import bench_robustness as B
    from medview.core.safeio import atomic_write_bytes
    from medview.models.card import CARD_FILE, README_FILE, json_safe, read_card
    from medview.training.engine import POPULATION_KEYS
    from medview.training.export import render_readme

    folder = os.path.abspath(args.folder)
    with open(os.path.join(folder, "train.json"), encoding="utf-8") as f:
        config = json.load(f)
    text = config.get("card", {})
    card = read_card(folder).card
    dev = B.dev_folder()
    if dev is None:
        print("error: no development data (set MEDVIEW_DEV_DATA)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        data = B.prepare_data(dev, args.every, tmp)
        m = B.measure(read_card(folder), data)
    scope = card.scope
    if scope is None:
        print("error: the model has no trust gate", file=sys.stderr)
        return 2
    n_films = len(data["films"])
    n_sample = len(next(iter(data["adult"].values())))
    checked = dict(scope.checked)
    checked["ood_benchmark"] = {
        name: {"n": len(items) if name in data["ood"] else n_sample,
               "withheld": round(m["withheld"][name], 4)}
        for name, items in {**data["ood"], **data["adult"]}.items()}
    checked["benign_variations"] = {
        name: {"n": n_films, "in_scope": round(m["in_scope"][name], 4),
               "decision_flips": round(m["flips"][name], 4)}
        for name in data["benign"]}
    checked.pop("quick_check", None)  # superseded by the benchmark's categories
    new_scope = {**asdict(scope), "checked": checked,
                 **{k: text[k] for k in POPULATION_KEYS if k in text}}
    new = card.replace(scope=json_safe(new_scope))
    atomic_write_bytes(os.path.join(folder, CARD_FILE), (json.dumps(
        json_safe(new.to_dict()), indent=2, allow_nan=False) + "\n").encode())
    readme_path = os.path.join(folder, README_FILE)
    old = ""
    if os.path.exists(readme_path):
        with open(readme_path, encoding="utf-8") as f:
            old = f.read()
    extra = kept_sections(old, args.keep_section)
    atomic_write_bytes(readme_path, (render_readme(new) + ("\n" + extra if extra else ""))
                       .encode("utf-8"))
    print(json.dumps(json_safe(m), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
