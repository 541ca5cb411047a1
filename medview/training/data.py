"""Labelled datasets: a folder of class subfolders or a CSV manifest, read via medview.io.

Patients are identified by a manifest column, the DICOM Patient ID (kept only as a hash)
or a file-name pattern; splits are stratified by class and grouped by patient, and a check
reports any patient or identical image found in two splits.
"""

from __future__ import annotations

import csv
import os
import re
from collections import Counter, defaultdict
from collections.abc import Generator
from dataclasses import dataclass, field

import numpy as np

from medview.core.errors import MedviewError
from medview.core.progress import CancelToken, Progress, file_sha256
from medview.core.volume import SkippedFile
from medview.imaging.model_input import display_grey, resize_grey
from medview.io import load

#: Default file-name patterns that carry a patient id (first group).
DEFAULT_PATIENT_PATTERN = r"^(person\d+|NORMAL2-IM-\d+|IM-\d+)"
SPLITS = ("train", "val", "test")


class DatasetError(MedviewError):
    """The dataset cannot be used as it is (the message says what to fix)."""


@dataclass
class Sample:
    path: str
    label: str
    patient: str | None = None
    split: str | None = None
    sha256: str = ""


@dataclass
class Dataset:
    samples: list[Sample]
    classes: list[str]
    source: str
    skipped: list[SkippedFile] = field(default_factory=list)
    patient_source: str = "none"

    def counts(self, indices=None) -> dict[str, int]:
        picked = self.samples if indices is None else [self.samples[i] for i in indices]
        c = Counter(s.label for s in picked)
        return {k: int(c.get(k, 0)) for k in self.classes}


def _patient_from_name(path: str, pattern: str | None) -> str | None:
    if not pattern:
        return None
    m = re.search(pattern, os.path.basename(path))
    return m.group(1) if m else None


def from_folder(root: str, patient_pattern: str | None = DEFAULT_PATIENT_PATTERN) -> Dataset:
    """One subfolder per class (sorted names); files found recursively in each."""
    if not os.path.isdir(root):
        raise DatasetError(f"{root}: not a folder")
    classes = sorted(d for d in os.listdir(root)
                     if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))
    samples = []
    for cls in classes:
        for dirpath, dirnames, files in os.walk(os.path.join(root, cls)):
            dirnames.sort()
            for name in sorted(files):
                if name.startswith("."):
                    continue
                path = os.path.join(dirpath, name)
                samples.append(Sample(path, cls, _patient_from_name(path, patient_pattern)))
    ds = Dataset(samples, classes, source=root)
    ds.patient_source = "file names" if any(s.patient for s in samples) else "none"
    return ds


def from_manifest(csv_path: str, label_column: str = "label",
                  patient_pattern: str | None = DEFAULT_PATIENT_PATTERN,
                  label_map: dict[str, str] | None = None) -> Dataset:
    """A CSV with ``path`` and a label column; optional ``patient_id`` and ``split``.

    ``label_map`` renames label values (e.g. ``{"virus": "viral"}``)."""
    base = os.path.dirname(os.path.abspath(csv_path))
    try:
        with open(csv_path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        raise DatasetError(f"{csv_path}: unreadable manifest ({exc})") from exc
    if not rows or "path" not in rows[0] or label_column not in rows[0]:
        raise DatasetError(f"{csv_path}: the manifest needs columns 'path' and "
                           f"{label_column!r}")
    samples = []
    for r in rows:
        path = r["path"] if os.path.isabs(r["path"]) else os.path.join(base, r["path"])
        patient = (r.get("patient_id") or "").strip() or _patient_from_name(path, patient_pattern)
        split = (r.get("split") or "").strip() or None
        if split is not None and split not in SPLITS:
            raise DatasetError(f"{csv_path}: unknown split {split!r} (use train/val/test)")
        label = r[label_column].strip()
        label = (label_map or {}).get(label, label)
        samples.append(Sample(path, label, patient, split,
                              (r.get("sha256") or "").strip()))
    classes = sorted({s.label for s in samples})
    ds = Dataset(samples, classes, source=csv_path)
    ds.patient_source = "manifest" if "patient_id" in rows[0] else (
        "file names" if any(s.patient for s in samples) else "none")
    return ds


def open_dataset(path: str, label_column: str = "label",
                 label_map: dict[str, str] | None = None) -> Dataset:
    if os.path.isfile(path) and path.lower().endswith(".csv"):
        return from_manifest(path, label_column, label_map=label_map)
    return from_folder(path)


def load_images(ds: Dataset, size: tuple[int, int], interpolation: str = "bilinear",
                cancel: CancelToken | None = None, readers: int | None = None
                ) -> Generator[Progress, None, np.ndarray]:
    """Read every sample through medview.io as the viewer shows it, resized to ``size``.

    Unreadable files move to ``ds.skipped`` (and out of ``ds.samples``). Returns a uint8
    array ``(N, H, W)`` in the samples' order. The file hash of each sample is filled in
    for leakage checks. ``readers`` threads decode side by side (decoding, resizing and
    hashing release the interpreter lock; default: the cores, at most 8), at most
    ``4 * readers`` files ahead of the one reported.
    """
    from medview.core.ahead import InOrder

    n_readers = max(1, readers if readers is not None else min(8, os.cpu_count() or 1))

    def read(s: Sample):
        result = load([s.path])
        if not result.volumes:
            reason = result.skipped[0].reason if result.skipped else "no image found"
            return s, None, reason, None, None
        vol = result.volumes[0]
        index = vol.n_slices // 2
        image = resize_grey(display_grey(vol, index), size, interpolation)
        return s, image, "", vol.patient_key, (s.sha256 or file_sha256(s.path))

    images = []
    kept = []
    n = len(ds.samples)
    with InOrder(read, ds.samples, n_readers, 4 * n_readers, "medview-images") as done:
        for k, (s, image, reason, patient_key, sha) in enumerate(done):
            if cancel is not None:
                cancel.raise_if_cancelled()
            if image is None:
                ds.skipped.append(SkippedFile(s.path, reason))
            else:
                if not s.patient and patient_key:
                    s.patient = patient_key  # DICOM Patient ID, hashed
                s.sha256 = sha
                images.append(image)
                kept.append(s)
            if k % 16 == 0 or k == n - 1:
                yield Progress(k + 1, n, "reading images")
    ds.samples = kept
    if ds.patient_source == "none" and any(s.patient for s in kept):
        ds.patient_source = "DICOM Patient ID"
    if not images:
        return np.zeros((0, *size), np.uint8)
    return np.stack(images)


def check_dataset(ds: Dataset, min_per_class: int = 10) -> tuple[list[str], list[str]]:
    """(blocking problems, warnings) in plain words, with counts."""
    problems, warns = [], []
    counts = ds.counts()
    if len(ds.classes) < 2:
        problems.append(f"found {len(ds.classes)} class folder(s); at least 2 are needed")
    few = {c: n for c, n in counts.items() if n < min_per_class}
    if few:
        problems.append("too few images per class (need at least "
                        f"{min_per_class}): " + ", ".join(f"{c}: {n}" for c, n in few.items()))
    if counts and len(ds.classes) >= 2:
        hi, lo = max(counts.values()), max(min(counts.values()), 1)
        if hi / lo >= 3:
            warns.append("strong class imbalance: " + ", ".join(f"{c}: {n}" for c, n in
                                                                 counts.items()))
    if ds.skipped:
        warns.append(f"{len(ds.skipped)} unreadable file(s) skipped")
    if ds.patient_source == "none":
        warns.append("no patient ids: images are split individually, so one patient's "
                     "images may land in different splits")
    return problems, warns


def assign_splits(ds: Dataset, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
                  seed: int = 0) -> dict[str, list[int]]:
    """Indices per split. A manifest's own split column is honoured when every row has one;
    otherwise patients are shuffled per class (their majority label) and allotted by
    ``fractions``, so all images of a patient share a split."""
    if ds.samples and all(s.split for s in ds.samples):
        out = {sp: [i for i, s in enumerate(ds.samples) if s.split == sp] for sp in SPLITS}
        return out
    groups: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(ds.samples):
        groups[s.patient or f"image:{i}"].append(i)
    by_class: dict[str, list[str]] = defaultdict(list)
    for g, idx in sorted(groups.items()):
        label = Counter(ds.samples[i].label for i in idx).most_common(1)[0][0]
        by_class[label].append(g)
    rng = np.random.default_rng(seed)
    out = {sp: [] for sp in SPLITS}
    total = sum(fractions)
    for cls in sorted(by_class):
        pats = list(by_class[cls])
        rng.shuffle(pats)
        n = len(pats)
        n_train = round(n * fractions[0] / total)
        n_val = round(n * fractions[1] / total)
        if n >= 3 and fractions[1] > 0:
            n_val = max(n_val, 1)
        if n >= 3 and fractions[2] > 0:
            n_train = min(n_train, n - n_val - 1)
        parts = {"train": pats[:n_train], "val": pats[n_train:n_train + n_val],
                 "test": pats[n_train + n_val:]}
        for sp, plist in parts.items():
            for g in plist:
                out[sp].extend(groups[g])
    for sp in out:
        out[sp].sort()
    return out


def leakage_report(ds: Dataset, splits: dict[str, list[int]]) -> list[str]:
    """Patients or byte-identical images that appear in more than one split."""
    where_patient: dict[str, set[str]] = defaultdict(set)
    where_hash: dict[str, set[str]] = defaultdict(set)
    for sp, idx in splits.items():
        for i in idx:
            s = ds.samples[i]
            if s.patient:
                where_patient[s.patient].add(sp)
            if s.sha256:
                where_hash[s.sha256].add(sp)
    shared_p = sorted(p for p, sps in where_patient.items() if len(sps) > 1)
    shared_h = [h for h, sps in where_hash.items() if len(sps) > 1]
    out = []
    if shared_p:
        out.append(f"{len(shared_p)} patient(s) appear in more than one split")
    if shared_h:
        out.append(f"{len(shared_h)} identical image(s) appear in more than one split")
    return out


def duplicate_count(ds: Dataset) -> int:
    c = Counter(s.sha256 for s in ds.samples if s.sha256)
    return sum(n - 1 for n in c.values() if n > 1)
