"""Export (or re-export) the exported graph of model folders: ``graph.onnx`` beside the
weights and the card's ``graph`` section (sha256, agreement with torch, Grad-CAM head,
speed), written atomically. Models saved by the wizard or ``medview train`` get theirs
when they are saved; this is for the bundled models and older folders.

    python scripts/export_graphs.py models/cxr-pneumonia models/cxr-pneumonia-type \
        --check-images ../shared/datasets/pediatric-cxr/val --n 48

Agreement is checked on ``--n`` images from ``--check-images`` (validation images,
never test images) plus random inputs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from medview.core.safeio import atomic_write_bytes
from medview.inference.graph_export import export_graph
from medview.inference.predictor import Predictor, load_gate
from medview.io import load
from medview.models.card import CARD_FILE, GRAPH_FILE, README_FILE, json_safe, read_card
from medview.training.export import GRAPH_SECTION, graph_section


def check_inputs(pred: Predictor, folder: str | None, n: int) -> np.ndarray | None:
    if not folder:
        return None
    files = []
    for root, _dirs, names in sorted(os.walk(folder)):
        files += [os.path.join(root, f) for f in sorted(names)
                  if f.lower().endswith((".png", ".jpg", ".jpeg", ".dcm"))]
    picked = files[:: max(1, len(files) // n)][:n]
    vols = load(picked).volumes
    return np.stack([pred.prepare(v, v.default_index).tensor for v in vols])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+")
    ap.add_argument("--check-images", help="a folder of validation images")
    ap.add_argument("--n", type=int, default=48)
    args = ap.parse_args(argv)
    for folder in args.folders:
        card = read_card(folder)
        pred = Predictor(card, "cpu", "torch")
        x = check_inputs(pred, args.check_images, args.n)
        gate = load_gate(card)
        data, spec = export_graph(pred.model, card.card, tuple(gate.stages) if gate else (),
                                  x, time_repeats=10)
        atomic_write_bytes(os.path.join(folder, GRAPH_FILE), data)
        new = card.card.replace(graph=spec)
        atomic_write_bytes(os.path.join(folder, CARD_FILE), (json.dumps(
            json_safe(new.to_dict()), indent=2, allow_nan=False) + "\n").encode())
        readme = os.path.join(folder, README_FILE)
        with open(readme, encoding="utf-8") as f:
            text = f.read()
        text = re.sub(re.escape(GRAPH_SECTION) + r".*?(?=\n## |\Z)", "", text, flags=re.S).rstrip()
        atomic_write_bytes(readme, (text + "\n\n" + graph_section(spec)).encode())
        print(f"{card.id}: max |dp| {spec.max_abs_diff:.2g} on {spec.checked_on} inputs, "
              f"cam head {spec.cam_head or '-'}, speed {spec.speed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
