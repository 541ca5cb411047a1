"""A bare ONNX Runtime scoring script, written as a user would write it outside medview:
Pillow decodes each film, the card's preprocessing is applied by hand, the exported graph
scores batches of ``--batch`` films, and a temperature-scaled softmax gives the
probabilities, printed one CSV line per film. The benchmarks run it against ``medview
predict`` on the same films and check that the probabilities are identical."""

import argparse
import json
import os
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model_folder")
    ap.add_argument("films", nargs="+")
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    with open(os.path.join(args.model_folder, "card.json")) as f:
        card = json.load(f)
    pre = card["preprocessing"]
    h, w = pre["size"]
    mean = np.array(pre["mean"], np.float32).reshape(1, -1, 1, 1)
    std = np.array(pre["std"], np.float32).reshape(1, -1, 1, 1)
    temperature = card["calibration"]["temperature"]
    session = ort.InferenceSession(os.path.join(args.model_folder, "graph.onnx"),
                                   providers=["CPUExecutionProvider"])
    out = sys.stdout
    for i in range(0, len(args.films), args.batch):
        names = args.films[i:i + args.batch]
        grey = np.stack([np.asarray(Image.open(p).convert("L").resize(
            (w, h), Image.Resampling.BILINEAR)) for p in names])
        x = np.repeat(grey[:, None].astype(np.float32) / np.float32(255.0), 3, axis=1)
        x = (x - mean) / std
        logits = session.run(["logits"], {"x": x})[0].astype(np.float64) / temperature
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs = e / e.sum(axis=1, keepdims=True)
        for name, p in zip(names, probs, strict=True):
            out.write(name + "," + ",".join(f"{v:.6f}" for v in p) + "\n")


if __name__ == "__main__":
    main()
