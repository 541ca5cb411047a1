"""A plain fine-tuning script, written as a user would write it outside medview: a
manifest (path,label,split), a torch Dataset that decodes each film with Pillow, a
DataLoader, timm's EfficientNet-Lite0 from the offline ImageNet weights (built with
medview's weight mapping, the one part a user could not write from scratch), AdamW,
class-weighted cross-entropy, then the validation and test probabilities and the test AUC.
The benchmarks run it against ``medview train`` at the same settings."""

import argparse
import csv
import os
import time

import numpy as np
import torch
from PIL import Image

from medview.models.pretrained import load_imagenet_base


class Films(torch.utils.data.Dataset):
    def __init__(self, rows, root, classes, size):
        self.rows, self.root, self.classes, self.size = rows, root, classes, size

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        row = self.rows[i]
        img = Image.open(os.path.join(self.root, row["path"])).convert("L")
        x = np.asarray(img.resize((self.size, self.size), Image.Resampling.BILINEAR),
                       np.float32) / 255.0
        x = torch.from_numpy((x - 0.5) / 0.5)[None].repeat(3, 1, 1)
        return x, self.classes.index(row["label"])


def auc(y, p):
    order = np.argsort(p)
    ranks = np.empty(len(p))
    ranks[order] = np.arange(1, len(p) + 1)
    pos = y == 1
    return (ranks[pos].sum() - pos.sum() * (pos.sum() + 1) / 2) / (pos.sum() * (~pos).sum())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("manifest")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(0)
    root = os.path.dirname(os.path.abspath(args.manifest))
    with open(args.manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    classes = sorted({r["label"] for r in rows})
    split = {s: [r for r in rows if r["split"] == s] for s in ("train", "val", "test")}
    loaders = {s: torch.utils.data.DataLoader(
        Films(split[s], root, classes, args.image_size), batch_size=args.batch,
        shuffle=s == "train", num_workers=args.workers) for s in split}
    model, _ = load_imagenet_base("efficientnet-lite0", num_classes=len(classes))
    counts = np.bincount([classes.index(r["label"]) for r in split["train"]],
                         minlength=len(classes))
    weight = torch.tensor(len(split["train"]) / (len(classes) * counts), dtype=torch.float32)
    loss_fn = torch.nn.CrossEntropyLoss(weight=weight)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    t = time.perf_counter()
    for _epoch in range(args.epochs):
        model.train()
        for x, y in loaders["train"]:
            loss = loss_fn(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    train_s = time.perf_counter() - t
    model.eval()
    probs = {}
    with torch.inference_mode():
        for s in ("val", "test"):
            probs[s] = (torch.cat([model(x).softmax(1) for x, _y in loaders[s]]).numpy(),
                        np.array([classes.index(r["label"]) for r in split[s]]))
    p, y = probs["test"]
    print(f"train {train_s:.1f} s; test AUC {auc(y, p[:, 1]):.3f}")


if __name__ == "__main__":
    main()
