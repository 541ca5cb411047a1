"""Refit the trust gate of a trained model folder the way training fits it now
(``medview.training.gatefit.fit_trust_gate``), without training again.

    python scripts/refit_bundled_gate.py models/cxr-pneumonia [--max-train N]

Reads the folder's ``train.json`` (its data, split and settings), every image as training
reads it, the model's own weights; writes ``scope.safetensors`` and the card's ``scope``
(population fields kept) atomically. Run ``scripts/finish_bundled.py`` afterwards for the
benchmark figures and the README.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("folder")
    ap.add_argument("--max-train", type=int, default=None)
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from medview.core.progress import CancelToken, drain
    from medview.core.safeio import atomic_write_bytes
    from medview.models.card import CARD_FILE, SCOPE_FILE, json_safe, read_card
    from medview.models.loading import load_model
    from medview.training import gatefit
    from medview.training import metrics as M
    from medview.training.engine import _predict_logits, _to_input, prepare_data
    from medview.training.types import TrainConfig

    folder = os.path.abspath(args.folder)
    cfg = TrainConfig.from_file(os.path.join(folder, "train.json"))
    mc = read_card(folder)
    card = mc.card
    if args.max_train:
        gatefit.MAX_FIT_IMAGES = args.max_train
    data = drain(prepare_data(cfg, CancelToken()))
    model = load_model(mc)
    model.eval()
    pre = mc.preprocessing
    images = torch.from_numpy(data.images)
    classes = data.classes
    if classes != mc.classes:
        print(f"error: the data's classes {classes} are not the model's {mc.classes}",
              file=sys.stderr)
        return 2
    positive = classes.index(card.decision.positive_class) if (
        card.decision.positive_class) else None
    test_logits = _predict_logits(model, images[data.test_idx], pre.mean, pre.std, 32)
    test_probs = M.softmax(test_logits, card.calibration.temperature)
    gate, spec = gatefit.fit_trust_gate(
        model, images, data.y, data.train_idx, data.val_idx, data.test_idx,
        lambda b: _to_input(b, pre.mean, pre.std), 32, positive, test_probs, cfg.seed)
    blob = gate.to_bytes()
    old = card.scope
    spec["sha256"] = gate.sha256()
    for key in ("body_parts", "view_positions", "age_years", "known_failures"):
        spec[key] = cfg.card.get(key, getattr(old, key) if old is not None else None)
    new = card.replace(scope=json_safe(spec))
    atomic_write_bytes(os.path.join(folder, SCOPE_FILE), blob)
    atomic_write_bytes(os.path.join(folder, CARD_FILE), (json.dumps(
        json_safe(new.to_dict()), indent=2, allow_nan=False) + "\n").encode())
    print(json.dumps(json_safe(spec["checked"]), indent=1))
    print(f"limit {gate.limit:.4f}; test in scope "
          f"{spec['checked'].get('internal_test', {}).get('in_scope')}; "
          f"{np.round(gate.in_distribution_pass_rate, 4)} of validation films pass")
    return 0


if __name__ == "__main__":
    sys.exit(main())
