"""What the wizard shows before training: a summary of a labelled folder, and augmented
copies of a few of its images. Qt-free generator jobs (the wizard runs them in workers)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Generator
from dataclasses import dataclass, field

import numpy as np

from medview.core.progress import CancelToken, Progress, file_sha256
from medview.training import data as tdata


@dataclass
class ScanReport:
    """What the data page found (all counts; no patient data)."""

    dataset: tdata.Dataset
    sizes: Counter = field(default_factory=Counter)
    modalities: Counter = field(default_factory=Counter)
    duplicates: int = 0
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def scan_dataset(path: str, min_per_class: int, label_column: str = "label", cancel=None):
    """Generator job: read every file header/pixels once and summarise the dataset."""
    from medview.io import load

    ds = tdata.open_dataset(path, label_column)
    report = ScanReport(ds)
    kept = []
    for k, s in enumerate(ds.samples):
        if cancel is not None:
            cancel.raise_if_cancelled()
        result = load([s.path])
        if result.volumes:
            v = result.volumes[0]
            if not s.patient and v.patient_key:
                s.patient = v.patient_key
            report.sizes[f"{v.rows}x{v.cols}"] += 1
            report.modalities[v.modality] += 1
            s.sha256 = file_sha256(s.path)
            kept.append(s)
        else:
            reason = result.skipped[0].reason if result.skipped else "no image"
            ds.skipped.append(tdata.SkippedFile(s.path, reason))
        if k % 8 == 0 or k == len(ds.samples) - 1:
            yield Progress(k + 1, len(ds.samples), "scanning")
    ds.samples = kept
    if ds.patient_source == "none" and any(s.patient for s in kept):
        ds.patient_source = "DICOM Patient ID"
    ds.classes = sorted({s.label for s in kept}) if kept else ds.classes
    report.duplicates = tdata.duplicate_count(ds)
    report.problems, report.warnings = tdata.check_dataset(ds, min_per_class)
    if report.duplicates:
        report.warnings.append(f"{report.duplicates} exact duplicate image(s)")
    return report


def augmentation_preview(paths: list[str], size: int, augment: bool = True,
                         cancel: CancelToken | None = None
                         ) -> Generator[Progress, None, np.ndarray]:
    """The images at ``paths`` as the model would see them (``size`` px), passed through
    the training augmentation (the default robust recipe: hospital variations, lungs
    pasted into another of these films) with a fresh seed: uint8 ``(N, size, size)``."""
    import torch

    from medview.imaging.model_input import display_grey, resize_grey
    from medview.io import load
    from medview.training.engine import augment_batch, lung_masks, make_augment
    from medview.training.types import TrainConfig

    imgs = []
    for k, path in enumerate(paths):
        if cancel is not None:
            cancel.raise_if_cancelled()
        v = load([path]).volumes[0]
        imgs.append(resize_grey(display_grey(v, v.default_index), (size, size)))
        yield Progress(k + 1, len(paths) + 1, "reading")
    batch = torch.from_numpy(np.stack(imgs))
    cfg = TrainConfig(augment=augment)
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence().entropy % 2**31))
    if augment:  # the default (robust) recipe, as training runs it; its films only
        masks = lung_masks(batch.numpy(), range(len(batch)), cancel)
        out = make_augment(cfg, gen, masks)(batch, np.arange(len(batch)))[:len(batch)]
    else:
        out = augment_batch(batch, cfg, gen)
    return out.round().clamp(0, 255).to(torch.uint8).numpy()
