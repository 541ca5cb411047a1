"""Transfer-learning engine: a generator of progress events with a cancel check.

Training is split into a config (:class:`TrainConfig`), data preparation (reading,
checks, patient-level splits), a strategy object per transfer-learning type
(:mod:`medview.training.strategies`: what is frozen when, which parameter groups train,
with which learning rates), one epoch of training, evaluation and calibration, and the
card (:func:`medview.models.card.build_card`). Runs are seeded: same seed, same data and
same machine give the same weights.
"""

from __future__ import annotations

import copy
import json
import math
import os
import platform
import time
from collections import Counter
from collections.abc import Generator
from dataclasses import asdict, dataclass

import numpy as np

from medview.core.modeling import Preprocessing
from medview.core.progress import CancelToken, relay
from medview.inference.scope import LOGITS
from medview.models.card import Card, json_safe
from medview.training import audit, gatefit, pipeline
from medview.training import data as tdata
from medview.training import metrics as M
from medview.training.export import prepare_graph
from medview.training.pipeline import apply_augmentation, draw_augmentation
from medview.training.strategies import STRATEGIES, strategy_for
from medview.training.types import (
    TrainConfig,
    TrainEvent,
    TrainingError,
    TrainingRun,
    TrainResult,
)


# ----------------------------------------------------------------------------- model
def build_base(cfg: TrainConfig, n_classes: int, classes: list[str]):
    """(model, parent info, mean, std) for ``cfg.base``."""
    import timm

    from medview.models.pretrained import IMAGENET_BASES, load_imagenet_base

    if cfg.base in IMAGENET_BASES:
        if not STRATEGIES[cfg.strategy].pretrained:
            base = IMAGENET_BASES[cfg.base]
            model = timm.create_model(base.architecture, pretrained=False,
                                      num_classes=n_classes)
            parent = {"kind": "none", "id": None, "weights_sha256": None,
                      "note": f"random initialisation of {base.architecture}"}
            return model, parent, list(base.mean), list(base.std)
        model, info = load_imagenet_base(cfg.base, num_classes=n_classes)
        parent = {"kind": "imagenet", "id": info["id"], "weights_sha256": info["weights_sha256"],
                  "architecture": info["architecture"], "source": info["source"],
                  "license": info["license"]}
        return model, parent, info["mean"], info["std"]
    if cfg.base.startswith("timm:"):
        from medview.models.card import ARCH_NAME

        arch = cfg.base.split(":", 1)[1]
        if not ARCH_NAME.fullmatch(arch) or not timm.is_model(arch):
            raise TrainingError(f"unknown timm architecture {arch!r} (built-in names only)")
        model = timm.create_model(arch, pretrained=False, num_classes=n_classes)
        if cfg.weights_file and STRATEGIES[cfg.strategy].pretrained:
            return model, *_load_local_weights(model, arch, cfg.weights_file)
        parent = {"kind": "none", "id": None, "weights_sha256": None,
                  "note": f"random initialisation of {arch}"}
        return model, parent, [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]
    from medview.models.loading import load_model
    from medview.models.registry import discover_models

    card = discover_models().get(cfg.base)
    model = load_model(card)
    if card.classes != classes:
        model.reset_classifier(n_classes)
    pre = card.preprocessing
    parent = {"kind": "model", "id": card.id, "version": card.version,
              "weights_sha256": card.weights_sha256, "architecture": card.architecture}
    return model, parent, list(pre.mean), list(pre.std)


def _load_local_weights(model, arch: str, path: str):
    """Backbone weights from a local safetensors file (the classifier is left new).

    Tensors whose name and shape match are loaded; every backbone tensor must be present.
    Normalisation is the architecture's own (timm's pretrained config).
    """
    from safetensors.torch import load_file

    from medview.core.progress import file_sha256
    from medview.models.weights import WeightsError, check_safetensors_file

    check_safetensors_file(path)  # a regular, complete safetensors file; never a pickle
    state = load_file(path, device="cpu")
    target = model.state_dict()
    head = {f"{n}.weight" for n, _ in [(model.default_cfg.get("classifier", "classifier"), 0)]}
    head |= {h.replace(".weight", ".bias") for h in head}
    usable = {k: v for k, v in state.items() if k in target and v.shape == target[k].shape}
    missing = [k for k in target if k not in usable and k not in head
               and not k.endswith("num_batches_tracked")]
    if missing:
        raise WeightsError(f"the weights file does not fit {arch}: {len(missing)} tensor(s) "
                           f"missing or of another shape, e.g. {missing[0]}")
    model.load_state_dict(usable, strict=False)
    cfg = model.pretrained_cfg
    parent = {"kind": "local-file", "id": None,
              "weights_sha256": file_sha256(path), "architecture": arch}
    return parent, list(cfg.get("mean", (0.485, 0.456, 0.406))), list(
        cfg.get("std", (0.229, 0.224, 0.225)))


# ----------------------------------------------------------------------------- tensors
def model_array(batch_u8: np.ndarray, mean, std, channels: int = 3) -> np.ndarray:
    """A (B, H, W) uint8 batch as the model's input array (B, C, H, W) float32, through
    the same normalisation as inference (:func:`medview.imaging.model_input.normalise`)."""
    from medview.imaging.model_input import normalise

    spec = Preprocessing(size=tuple(batch_u8.shape[-2:]), channels=channels,
                         mean=tuple(mean), std=tuple(std))
    return normalise(batch_u8, spec)


def _to_input(batch_u8, mean, std, channels: int = 3):
    """A (B, H, W) batch of 0-255 images (a torch tensor, on any device) as the model's
    input tensor (B, C, H, W) float32 on that device, channels_last: the same numbers as
    :func:`model_array` (checked bit for bit on the CPU)."""
    import torch

    x = batch_u8.to(torch.float32) / torch.tensor(255.0, dtype=torch.float32)
    x = x.unsqueeze(1).expand(-1, channels, -1, -1)
    m = torch.tensor(tuple(mean), dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(tuple(std), dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return ((x - m) / s).contiguous(memory_format=torch.channels_last)  # as the weights


def augment_batch(batch_u8, cfg: TrainConfig, gen):
    """Radiograph-safe augmentation on a uint8 batch (B, H, W): small rotation, scale and
    shift, brightness/contrast; horizontal flip only if enabled (anatomy is lateralised).
    (:func:`medview.training.pipeline.draw_augmentation`, applied where the batch is.)"""
    return apply_augmentation(batch_u8, draw_augmentation(len(batch_u8), cfg, gen))


def cannot_tell_loss(logits):
    """Per film: the cross-entropy to the uniform distribution minus its minimum (log K),
    so 0 when every class is equally likely: "a film without lungs cannot tell"."""
    import torch.nn.functional as F

    logp = F.log_softmax(logits.float(), dim=1)
    return -logp.mean(dim=1) - math.log(logp.shape[1])


def consistency_loss(a, b):
    """Per pair of rows: the Jensen-Shannon divergence between the predicted
    distributions of two variations of the same film (0 when they agree)."""
    import torch.nn.functional as F

    pa, pb = F.softmax(a.float(), dim=1), F.softmax(b.float(), dim=1)
    log_m = ((pa + pb) / 2).clamp_min(1e-7).log()
    return (F.kl_div(log_m, pa, reduction="none").sum(1)
            + F.kl_div(log_m, pb, reduction="none").sum(1)) / 2


def appended(n: int, cfg: TrainConfig) -> tuple[int, int]:
    """How many films the robust recipe appends after a batch of ``n``: (lung-hidden
    counterfactuals, second views of the first films for the consistency term)."""
    if not (cfg.augment and cfg.robust):
        return 0, 0
    from medview.training import robust

    return (math.ceil(n * robust.COUNTERFACTUAL_SHARE) if cfg.counterfactual_weight else 0,
            math.ceil(n * robust.CONSISTENCY_SHARE) if cfg.consistency_weight else 0)


def make_variations(cfg: TrainConfig, masks):
    """The training augmentation as ``vary(batch_u8, rows, gen) -> (films, drawn)``: with
    ``cfg.robust``, the hospital variations, the lungs pasted into other films of the
    batch and, appended after the batch, its lung-hidden counterfactual films
    (:mod:`medview.training.robust`), then a second, independent variation of the first
    films (:func:`appended` says how many of each), as uint8 films; ``drawn``: their
    geometric and brightness augmentation, drawn but not applied
    (:func:`medview.training.pipeline.apply_augmentation` applies it where the films
    are). ``masks`` are the lung-field estimates of the training rows
    (:func:`lung_masks`), or None."""
    import torch

    from medview.training import robust

    def vary(batch_u8, rows, gen):
        if cfg.robust:
            rng = np.random.default_rng(int(torch.randint(0, 2 ** 62, (1,), generator=gen)))
            raw = batch_u8.numpy()
            m = None if masks is None else masks.of(rows)
            films = robust.vary_batch(robust.swap_outside(raw, m, rng), rng)
            k, c = appended(len(raw), cfg)
            parts = [films]
            if k:
                parts.append(robust.vary_batch(robust.lungs_hidden(
                    raw[:k], None if m is None else m[:k], rng), rng))
            if c:
                parts.append(robust.vary_batch(raw[:c], rng))
            films = np.concatenate(parts) if len(parts) > 1 else films
            batch_u8 = torch.from_numpy(np.ascontiguousarray(films))
        return batch_u8, draw_augmentation(len(batch_u8), cfg, gen)

    return vary


def make_augment(cfg: TrainConfig, gen, masks):
    """:func:`make_variations` with the augmentation applied, drawing from ``gen``:
    ``augment(batch_u8, rows) -> float films (B', H, W)``."""
    vary = make_variations(cfg, masks)

    def augment(batch_u8, rows):
        return apply_augmentation(*vary(batch_u8, rows, gen))

    return augment


@dataclass
class LungMasks:
    """Lung-field estimates of some rows of the image array, stored for those rows only."""

    masks: np.ndarray  # bool (len(rows), H, W)
    position: np.ndarray  # row of the image array -> index into masks (-1: none)

    def of(self, rows) -> np.ndarray:
        pos = self.position[np.asarray(rows)]
        if (pos < 0).any():
            raise ValueError("no lung-field estimate for a row that was not estimated")
        return self.masks[pos]


def lung_masks(images: np.ndarray, rows, cancel=None) -> LungMasks:
    """Lung-field estimates for ``rows`` of ``images`` (uint8 (N, H, W))."""
    from medview.imaging.lungs import lung_field

    rows = np.asarray(list(rows), int)
    out = np.zeros((len(rows), *images.shape[1:]), bool)
    for k, r in enumerate(rows):
        if cancel is not None:
            cancel.raise_if_cancelled()
        out[k] = lung_field(images[r])[0]
    position = np.full(len(images), -1, int)
    position[rows] = np.arange(len(rows))
    return LungMasks(out, position)


def _device_of(model):
    return next(model.parameters()).device


def _batched(model, images_u8, mean, std, batch: int, fn, cancel=None) -> list:
    """``fn(model, x)`` over ``images_u8`` in batches, in eval and inference mode."""
    import torch

    model.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(images_u8), batch):
            if cancel is not None:
                cancel.raise_if_cancelled()
            x = _to_input(images_u8[i:i + batch], mean, std).to(_device_of(model))
            out.append(fn(model, x))
    return out


def _predict_logits(model, images_u8, mean, std, batch: int, cancel=None) -> np.ndarray:
    out = _batched(model, images_u8, mean, std, batch,
                   lambda m, x: m(x).float().cpu().numpy(), cancel)
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def _features(model, images_u8, mean, std, batch: int, cancel=None):
    import torch

    out = _batched(model, images_u8, mean, std, batch,
                   lambda m, x: m.forward_head(m.forward_features(x), pre_logits=True), cancel)
    return torch.cat(out) if out else torch.zeros(0)


# ----------------------------------------------------------------------------- train
@dataclass
class PreparedData:
    """The images of a labelled folder or manifest, checked and split by patient."""

    dataset: tdata.Dataset
    images: np.ndarray  # uint8 (N, H, W)
    classes: list[str]
    y: np.ndarray  # class index per image
    splits: dict[str, list[int]]
    train_idx: np.ndarray
    val_idx: np.ndarray
    test_idx: np.ndarray
    warnings: list[str]


def prepare_data(cfg: TrainConfig, cancel: CancelToken
                 ) -> Generator[TrainEvent, None, PreparedData]:
    """Read every image once (as the viewer shows it, at the training size), block on
    unusable data, split by patient, and collect the warnings (leakage, duplicates)."""
    ds = tdata.open_dataset(cfg.data, cfg.label_column, cfg.label_map)
    images = yield from relay(
        tdata.load_images(ds, (cfg.image_size, cfg.image_size), cancel=cancel),
        lambda p: TrainEvent("load", step=p.done, steps=p.total, message="reading images"))
    problems, warns = tdata.check_dataset(ds, cfg.min_per_class)
    if problems:
        raise TrainingError("; ".join(problems))
    label_idx = {c: k for k, c in enumerate(ds.classes)}
    y_all = np.array([label_idx[s.label] for s in ds.samples])
    splits = tdata.assign_splits(ds, cfg.split_fractions, cfg.seed)
    for sp in ("train", "val"):
        if not splits[sp]:
            raise TrainingError(f"the {sp} split is empty; add images or change the split")
    warns += tdata.leakage_report(ds, splits)
    dups = tdata.duplicate_count(ds)
    if dups:
        warns.append(f"{dups} exact duplicate image(s) in the data")
    train_idx = np.array(splits["train"])
    if cfg.max_train_images and len(train_idx) > cfg.max_train_images:
        rng = np.random.default_rng(cfg.seed)
        train_idx = np.sort(rng.choice(train_idx, cfg.max_train_images, replace=False))
    return PreparedData(ds, images, ds.classes, y_all, splits, train_idx,
                        np.array(splits["val"]), np.array(splits["test"]), warns)


@dataclass
class Evaluation:
    temperature: float
    calibration_method: str
    val_probs: np.ndarray
    test_probs: np.ndarray
    thresholds: dict[str, float]
    rule: str
    metrics: dict
    warnings: list[str]


def evaluate_and_calibrate(cfg: TrainConfig, data: PreparedData, positive: int | None,
                           val_logits: np.ndarray, test_logits: np.ndarray) -> Evaluation:
    """Temperature, operating threshold and decision rule from the validation split only;
    metrics with patient-level bootstrap CIs on validation and test."""
    classes, ds, y = data.classes, data.dataset, data.y
    val_y = y[data.val_idx]
    warns: list[str] = []
    temperature = M.fit_temperature(val_logits, val_y)
    calibration = "temperature scaling fitted on the validation split"
    problem = M.calibration_problem(val_logits, temperature)
    if problem:
        # the likelihood kept improving as outputs saturate to 0/1 while the reported ECE
        # looked fine. Refuse, and say so.
        warns.append(f"not calibrated: {problem}, as on a small or perfectly separated "
                     "validation set; the model's own probabilities are used (temperature 1)")
        calibration = (f"none: {problem} on the validation split (too small or separable); "
                       "temperature 1")
        temperature = 1.0
    val_probs = M.softmax(val_logits, temperature)
    test_probs = M.softmax(test_logits, temperature) if len(data.test_idx) else test_logits
    thresholds, rule = {}, "argmax of the calibrated probabilities"
    threshold = None
    if positive is not None:
        threshold = M.choose_threshold(val_y == positive, val_probs[:, positive],
                                       cfg.min_sensitivity)
        thresholds = {classes[positive]: round(threshold, 6)}
        rule = (f"{classes[positive]} when its calibrated probability >= the threshold, "
                f"chosen on the validation split as the highest threshold with "
                f"sensitivity >= {cfg.min_sensitivity:.2f}")
    groups_val = np.array([ds.samples[i].patient or f"i{i}" for i in data.val_idx])
    groups_test = np.array([ds.samples[i].patient or f"i{i}" for i in data.test_idx])
    metrics = {"validation": M.evaluate(val_y, val_probs, classes, positive, threshold,
                                        groups_val, cfg.n_bootstrap, cfg.seed)}
    if len(data.test_idx):
        metrics["test"] = M.evaluate(y[data.test_idx], test_probs, classes, positive,
                                     threshold, groups_test, cfg.n_bootstrap, cfg.seed)
    else:
        warns.append("no test split: metrics are on validation data only")
    return Evaluation(temperature, calibration, val_probs, test_probs, thresholds, rule,
                      metrics, warns)


def _train_one_epoch(run: TrainingRun, strategy, loss_fn, class_weights, y_t, order,
                     epoch: int, steps: int, cancel: CancelToken, comm):
    """One pass over this process's share of the training split; yields progress, returns
    (summed loss, images, seconds the steps waited for their input) over all processes
    (the waits of this process). The batches are made ahead on pipeline threads
    (:mod:`medview.training.pipeline`).

    The loss of a step is the class-weighted mean over the whole effective batch (all
    processes): each process divides its weighted sum by the batch's total weight
    (one all-reduce of a scalar) and multiplies by the world size, so DDP's gradient
    average is exactly the gradient of the one-process loss of the same batch."""
    cfg = run.cfg
    total_loss, seen, waited = 0.0, 0, 0.0
    t_epoch = time.monotonic()
    batches = pipeline.batches_ahead(
        lambda idx, gen: strategy.batch_input(run, idx, gen), order, cfg.batch_size, steps,
        (cfg.seed, comm.rank, epoch), pipeline.pipeline_workers(run.device))
    with batches:
        for step in range(steps):
            cancel.raise_if_cancelled()
            t_wait = time.monotonic()
            batch = next(batches)
            waited += time.monotonic() - t_wait
            with step_autocast(run):
                loss, per_sample, local_w = _step_loss(run, strategy, batch, y_t, loss_fn,
                                                       class_weights, comm)
            run.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            run.optimizer.step()
            n = len(batch.idx)
            total_loss += float(per_sample.detach().float().sum()) / max(local_w, 1e-12) * n
            seen += n
            per_step = (time.monotonic() - t_epoch) / (step + 1)
            remaining = (per_step * (steps - step - 1)
                         + per_step * steps * (cfg.epochs - epoch - 1))
            if step % 5 == 0 or step == steps - 1:
                yield TrainEvent("train", epoch + 1, cfg.epochs, step + 1, steps,
                                 total_loss / seen, eta_s=remaining)
    if comm.world > 1:
        total_loss, seen = comm.sum([total_loss, float(seen)])
    return total_loss, int(seen), waited


def _step_loss(run, strategy, batch, y_t, loss_fn, class_weights, comm):
    """(loss to differentiate, per-film losses, this process's total film weight) of one
    training batch (a :class:`medview.training.pipeline.StepInput`)."""
    cfg = run.cfg
    idx = batch.idx
    out = strategy.train_logits(run, batch)
    n = len(idx)
    k, c = appended(n, cfg) if len(out) > n else (0, 0)
    # the films, their lung-hidden counterfactuals, second views of the first films
    logits, hidden, second = out[:n], out[n:n + k], out[n + k:n + k + c]
    target = y_t[run.train_idx[idx.numpy()]].to(run.device)
    per_sample = loss_fn(logits, target)  # weight[target] * nll, no reduction
    w = class_weights[target] if class_weights is not None else None
    local_w = float(w.sum()) if w is not None else float(len(idx))
    counts = [local_w, float(len(hidden)), float(len(second))]
    total_w, total_h, total_c = comm.sum(counts) if comm.world > 1 else counts
    loss = per_sample.sum() * (comm.world / total_w)
    if len(hidden) and cfg.counterfactual_weight > 0:
        loss = loss + cfg.counterfactual_weight * cannot_tell_loss(hidden).sum() * (
            comm.world / max(total_h, 1.0))
    if len(second) and cfg.consistency_weight > 0:
        loss = loss + cfg.consistency_weight * consistency_loss(
            logits[:len(second)], second).sum() * (comm.world / max(total_c, 1.0))
    return loss, per_sample, local_w


def step_autocast(run):
    """The context a training step's forward pass and loss run in: bfloat16 autocast when
    ``run.precision`` says so (the backward pass follows the forward's types), else
    nothing. Evaluation passes never run in it."""
    import contextlib

    import torch

    if run.precision != "bfloat16":
        return contextlib.nullcontext()
    return torch.autocast(str(run.device).split(":")[0], dtype=torch.bfloat16)


def training_precision(requested: str, device: str, bf16_ok: bool, warns: list[str]) -> str:
    """"bfloat16" or "float32": the training steps' arithmetic. "auto" is bfloat16
    autocast on a CUDA GPU that supports it (2-3x the float32 throughput of a recent GPU,
    no loss scaling needed) and float32 elsewhere; bfloat16 asked for where it is not
    supported falls back to float32 with a warning."""
    if requested in ("auto", "", None):
        return "bfloat16" if device == "cuda" and bf16_ok else "float32"
    if requested == "bfloat16" and not bf16_ok:
        warns.append(f"bfloat16 training is not supported on {device.upper()} here: "
                     "trained in float32")
        return "float32"
    return requested


def _bf16_supported(torch, device: str) -> bool:
    if device == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return device == "cpu"  # CPU autocast computes in bfloat16 (slowly without AMX)


def epoch_order(n: int, epoch: int, cfg: TrainConfig, comm, sample_weights=None):
    """This process's training order for ``epoch``: torch's DistributedSampler over the
    ``n`` training images (shuffled by seed and epoch, padded to a multiple of the world
    size, every ``world``-th from ``rank``), so the union of the processes' k-th batches
    is the k-th batch of a one-process run with their combined batch size. With
    ``balance: sampler`` the order is drawn with replacement, by class weight."""
    import torch
    from torch.utils.data import DistributedSampler

    if sample_weights is not None:  # padded like the sampler: equal shares per process
        g = torch.Generator().manual_seed(cfg.seed + epoch)
        full = torch.multinomial(torch.tensor(sample_weights), -(-n // comm.world) * comm.world,
                                 replacement=True, generator=g)
        return comm.shard(full)
    sampler = DistributedSampler(range(n), num_replicas=comm.world, rank=comm.rank,
                                 shuffle=True, seed=cfg.seed, drop_last=False)
    sampler.set_epoch(epoch)
    return torch.tensor(list(sampler), dtype=torch.long)


def checkpoint_dir_for(cfg: TrainConfig, out: str) -> str:
    """Where a run keeps its checkpoint: one folder per settings (the same command run
    again finds it), inside the output folder."""
    from medview.training.checkpoint import config_digest

    return os.path.join(out, ".medview-checkpoints", config_digest(cfg)[:16])


def print_event(ev: TrainEvent, as_json: bool = False) -> None:
    """One line per event on stdout (``medview train`` and its workers); JSON lines for
    a program reading them (the wizard running on several processes)."""
    if as_json:
        print(json.dumps(json_safe({"stage": ev.stage, "epoch": ev.epoch,
                                    "epochs": ev.epochs, "step": ev.step,
                                    "steps": ev.steps, "loss": ev.loss,
                                    "metrics": ev.metrics, "message": ev.message})),
              flush=True)
    elif ev.stage == "load" and (ev.step == ev.steps or ev.step % 512 < 16):
        print(f"reading images {ev.step}/{ev.steps}", flush=True)
    elif ev.stage == "epoch":
        m = ev.metrics
        print(f"epoch {ev.epoch}/{ev.epochs}  loss {m['loss']:.4f}  val AUC {m['val_auc']:.4f}"
              f"  val acc {m['val_accuracy']:.4f}  {m['epoch_seconds']:.0f}s "
              f"({m['images_per_second']} img/s) {ev.message}", flush=True)
    elif ev.stage in ("features", "early_stop", "evaluate", "done", "resume"):
        print(ev.message, flush=True)


def train(cfg: TrainConfig, cancel: CancelToken | None = None, comm=None,
          checkpoint_dir: str | None = None
          ) -> Generator[TrainEvent, None, TrainResult | None]:
    """Train per ``cfg``; yields :class:`TrainEvent`, returns a :class:`TrainResult`.

    Nothing is written to disk here but the checkpoint (when ``checkpoint_dir`` is given:
    after every epoch, and read back at the start to resume); see
    :func:`medview.training.export.export_model`. Runs are seeded: the same seed, data
    and machine give bit-identical weights. With ``comm`` (a
    :class:`medview.training.comm.Comm` of several processes) every process
    trains its share under DDP; only rank 0 evaluates, fits the gate, writes the
    checkpoint and returns the result (the others return None).
    """
    import torch

    from medview.training import checkpoint as ckpt
    from medview.training.comm import Comm

    cfg.validate()
    strategy_for(cfg.strategy)  # an unknown name fails before any data is read
    comm = comm or Comm()
    cancel = cancel or CancelToken()
    torch.manual_seed(cfg.seed)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    deterministic_algorithms()

    data = yield from prepare_data(cfg, cancel)
    ds, images, classes, y_all, splits, warns = (data.dataset, data.images, data.classes,
                                                 data.y, data.splits, data.warnings)
    label_idx = {c: k for k, c in enumerate(classes)}
    train_idx, val_idx, test_idx = data.train_idx, data.val_idx, data.test_idx
    images_t = torch.from_numpy(images)
    y_t = torch.from_numpy(y_all).long()

    positive = None
    if len(classes) == 2:
        positive = (label_idx.get(cfg.positive_class, 1))

    import timm  # noqa: F401  (imported before seeding: imports may draw random numbers)

    torch.manual_seed(cfg.seed)
    model, parent, mean, std = build_base(cfg, len(classes), classes)
    torch.manual_seed(cfg.seed + 1)
    device = _training_device(cfg.device, warns)
    # NHWC convolutions: 1.5x faster training steps and eval passes on the CPU than
    # NCHW (benchmarks/bench_cpu.py), the layout GPUs prefer too; the saved weights and
    # the exported graph are the same either way (put back to NCHW before export)
    model.to(device)
    if device in ("cpu", "cuda"):
        model.to(memory_format=torch.channels_last)
    if device == "cuda":
        from medview.inference.devices import full_precision_cuda

        full_precision_cuda()  # evaluation and the gate in full float32
    precision = training_precision(cfg.precision, device, _bf16_supported(torch, device),
                                   warns)
    counts = np.bincount(y_all[train_idx], minlength=len(classes)).astype(np.float64)
    weights = torch.tensor(len(train_idx) / (len(classes) * np.maximum(counts, 1)),
                           dtype=torch.float32)
    class_weights = weights.to(device) if cfg.balance == "weights" else None
    loss_fn = torch.nn.CrossEntropyLoss(weight=class_weights, reduction="none")

    history: list[dict] = []
    best_auc, best_nll, best_state, best_epoch, stale = -1.0, math.inf, None, 0, 0
    started = time.monotonic()
    val_y = y_all[val_idx]

    sample_weights = ((1.0 / np.maximum(counts, 1))[y_all[train_idx]]
                      if cfg.balance == "sampler" else None)

    def sharded_logits(idx) -> np.ndarray:
        """Logits of ``idx``: each process scores its share, all get the whole."""
        local = _predict_logits(model, images_t[comm.shard(idx)], mean, std, cfg.batch_size,
                                cancel)
        if comm.world == 1:
            return local
        if local.size == 0:
            local = np.zeros((0, len(classes)), np.float32)
        return comm.gather_strided(local, len(idx)).astype(np.float32)

    def sharded_features(idx):
        local = _features(model, images_t[comm.shard(idx)], mean, std, cfg.batch_size,
                          cancel)
        if comm.world == 1:
            return local
        whole = comm.gather_strided(local.float().cpu().numpy(), len(idx))
        return torch.from_numpy(whole).float().to(device)

    strategy = strategy_for(cfg.strategy)
    masks = None
    if cfg.augment and cfg.robust and strategy.augments:
        yield TrainEvent("features", message="estimating the lung fields of the training "
                                             "films (robust recipe)")
        masks = lung_masks(images, train_idx, cancel)
    run = TrainingRun(
        cfg=cfg, model=model, images=images_t, train_idx=train_idx, val_idx=val_idx,
        device=device, to_input=lambda b: _to_input(b, mean, std),
        augment=make_variations(cfg, masks),
        predict_logits=sharded_logits, features=sharded_features, wrap=comm.wrap,
        precision=precision)
    yield from strategy.prepare(run)

    n_train = len(train_idx)
    first_epoch = 0
    digest = ckpt.config_digest(cfg)
    saved = ckpt.load(checkpoint_dir, digest) if checkpoint_dir else None
    if saved is not None:
        state, tensors = saved
        first_epoch = int(state["epoch"])
        model.load_state_dict(ckpt.prefixed(tensors, "model."))
        strategy.start_epoch(run, first_epoch - 1)  # the optimizer as it was
        ckpt.restore_optimizer(run.optimizer, state, tensors)
        history = state["history"]
        best_auc, best_nll = state["best_auc"], state["best_nll"]
        best_epoch, stale = state["best_epoch"], state["stale"]
        best_state = ckpt.prefixed(tensors, "best.") if state["has_best"] else None
        if state.get("world_size", 1) != comm.world:
            warns.append(f"resumed a run of {state.get('world_size')} process(es) on "
                         f"{comm.world}: the data order after the checkpoint differs")
        yield TrainEvent("resume", first_epoch, cfg.epochs,
                         message=f"resuming after epoch {first_epoch} (checkpoint)")
    steps = -(-len(epoch_order(n_train, 0, cfg, comm, sample_weights)) // cfg.batch_size)
    stopped = saved is not None and stale >= cfg.patience and strategy.early_stopping
    for epoch in range(first_epoch, first_epoch if stopped else cfg.epochs):
        cancel.raise_if_cancelled()
        strategy.start_epoch(run, epoch)
        factor = 0.5 * (1 + math.cos(math.pi * epoch / cfg.epochs))
        for g in run.optimizer.param_groups:
            g["lr"] = g.get("base_lr", cfg.lr) * factor
        t_epoch = time.monotonic()
        # augmentation draws are a function of (seed, process, epoch, step): a resumed
        # run draws what the uninterrupted one would have
        total_loss, seen, waited = yield from _train_one_epoch(
            run, strategy, loss_fn, class_weights, y_t,
            epoch_order(n_train, epoch, cfg, comm, sample_weights), epoch, steps, cancel,
            comm)
        epoch_s = time.monotonic() - t_epoch
        val_logits = strategy.val_logits(run)
        val_probs = M.softmax(val_logits)
        pm = M.point_metrics(val_y, val_probs, classes, None, None)
        val_nll = float(-np.mean(np.log(np.clip(val_probs[np.arange(len(val_y)), val_y],
                                                1e-12, 1.0))))
        record = {"epoch": epoch + 1, "loss": total_loss / max(seen, 1),
                  "val_auc": pm["auc_macro"], "val_accuracy": pm["accuracy"],
                  "epoch_seconds": round(epoch_s, 4),
                  "images_per_second": round(n_train / epoch_s, 1) if epoch_s else None,
                  # time the steps waited for the pipeline (high: input-bound)
                  "input_wait_seconds": round(waited, 4)}
        history.append(record)
        record["val_loss"] = round(val_nll, 5)
        # best = highest validation AUC; ties are broken by the lower validation log-loss
        auc = pm["auc_macro"] if not math.isnan(pm["auc_macro"]) else 0.0
        improved = auc > best_auc + 1e-4 or (abs(auc - best_auc) <= 1e-4 and val_nll < best_nll)
        # every process computed this from the same gathered logits; rank 0's word is
        # the one decision all follow
        improved = bool(comm.broadcast([float(improved)])[0]) if comm.world > 1 else improved
        if improved:
            best_auc, best_nll, best_epoch, stale = auc, val_nll, epoch + 1, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
        stopped = stale >= cfg.patience and strategy.early_stopping
        if checkpoint_dir and comm.is_main:
            ckpt.save(checkpoint_dir, epoch=epoch + 1, model=model, best_state=best_state,
                      optimizer=run.optimizer, digest=digest,
                      meta={"history": history, "best_auc": best_auc, "best_nll": best_nll,
                            "best_epoch": best_epoch, "stale": stale,
                            "world_size": comm.world})
        comm.barrier()
        yield TrainEvent("epoch", epoch + 1, cfg.epochs, steps, steps, record["loss"],
                         metrics=record, message="best so far" if improved else "")
        if stopped:
            yield TrainEvent("early_stop", epoch + 1, cfg.epochs,
                             message=f"early stop: no validation AUC gain for {stale} epochs")
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    if not comm.is_main:
        return None  # rank 0 evaluates, fits the gate and exports
    # after training, every pass over the films (evaluation, the shortcut audit, the
    # gate's checks) is one pass of the final model with the gate's stage tap: the gate
    # costs only the passes over the training films its statistics need
    passes = gatefit.FinalPasses(model, lambda b: _to_input(b, mean, std), cfg.batch_size,
                                 cancel, prepare=lambda a: model_array(a, mean, std))
    graph_bytes = None
    try:
        if device == "cpu":  # on a CPU the passes run on the graph, exported once here
            yield TrainEvent("evaluate", message="exporting the graph for fast CPU inference")
            graph_bytes = _export_for_passes(model, passes, images[val_idx[:32]],
                                             cfg.image_size)
        yield TrainEvent("evaluate", message="fitting the trust gate (what this model may "
                                             "answer)")
        val_f = passes.features(images[val_idx])
        gate, fitted_on = gatefit.fit_gate(passes, images, y_all, data.train_idx, val_f,
                                           cfg.seed)
        passes.fitted(gate)
        yield TrainEvent("evaluate", message="calibrating and evaluating")
        test_logits, test_in = (passes.scored(images[test_idx]) if len(test_idx) else
                                (np.zeros((0, len(classes))), None))
        ev = evaluate_and_calibrate(cfg, data, positive, val_f[LOGITS], test_logits)
        temperature, val_probs, test_probs = ev.temperature, ev.val_probs, ev.test_probs
        thresholds, rule, metrics = ev.thresholds, ev.rule, ev.metrics
        warns += ev.warnings
        for name, m in metrics.items():
            if m["n"] < 100:
                warns.append(f"small {name} set ({m['n']} images): wide confidence intervals")
        if run.feature_seconds is not None:
            history[0]["feature_cache_seconds"] = round(run.feature_seconds, 2)
        films_idx = test_idx if len(test_idx) else val_idx
        films_scored = ((test_probs, test_in) if len(test_idx) else
                        (val_probs, gate.in_scope(val_f)))
        reliance = None
        variations = None
        if cfg.audit:
            yield TrainEvent("evaluate", message="shortcut audit: what the model relies on "
                                                 "(lungs hidden, edges hidden, re-encoded "
                                                 "films)")
            threshold = thresholds.get(classes[positive]) if positive is not None else None

            def calibrated(arr):
                logits, inside = passes.scored(arr)
                return M.softmax(logits, temperature), inside

            reliance = audit.shortcut_audit(
                calibrated, images[films_idx], y_all[films_idx], classes, positive,
                threshold, "test" if len(test_idx) else "validation", cancel,
                films=films_scored)
            variations = reliance.pop("in_scope", None)  # the gate's check, not reliance
            warns += reliance["warnings"]
        checked = {"fitted_on": fitted_on, **gatefit.gate_checks(
            passes, images[films_idx], test_in, y_all[films_idx], positive,
            test_probs if len(test_idx) else None, variations)}
    finally:
        passes.close()
    scope_spec = gatefit.scope_spec(gate, checked)
    card = _make_card(cfg, ds, splits, classes, parent, mean, std, temperature, thresholds,
                      rule, positive, metrics, history, best_epoch, warns,
                      time.monotonic() - started, model, scope_spec, ev.calibration_method,
                      comm, reliance, precision)
    model.to("cpu", memory_format=torch.contiguous_format)
    yield TrainEvent("evaluate", message=(
        "exporting the graph for fast CPU inference" if graph_bytes is None else
        "checking the exported graph against the model"))
    graph = prepare_graph(model, card, gate, _to_input(images_t[val_idx[:32]], mean,
                                                       std).numpy(), data=graph_bytes)
    yield TrainEvent("done", best_epoch, cfg.epochs, message="training finished")
    return TrainResult(model, cfg, classes, card, history, val_probs, val_y, test_probs,
                       y_all[test_idx] if len(test_idx) else np.zeros(0, int), warns, ds, splits,
                       gate, graph)


def _numerics(model, precision: str = "float32") -> dict[str, str]:
    """How the training arithmetic ran, for the card: the training steps' precision and
    the memory layout of the convolutions (NHWC on CPU and CUDA)."""
    import torch

    spatial = next((p for p in model.parameters() if p.dim() == 4 and min(p.shape[2:]) > 1),
                   None)
    nhwc = spatial is not None and not spatial.is_contiguous() and spatial.is_contiguous(
        memory_format=torch.channels_last)
    text = ("float32" if precision == "float32" else
            "bfloat16 autocast (training steps); evaluation, calibration and the trust gate "
            "in float32")
    return {"precision": text, "memory_format": "channels_last" if nhwc else "NCHW"}


def _export_for_passes(model, passes, sample: np.ndarray, size: int) -> bytes | None:
    """The model's graph (with the gate's stages), exported once, for the passes after
    training and the saved model; None (the passes stay on torch) when it cannot be
    exported or does not give the model's probabilities on ``sample``."""
    from medview.inference.graph_export import GraphExportError, export_bytes

    try:
        data = export_bytes(model, 3, (size, size), passes.stages)
    except GraphExportError:
        return None  # said again, with the reason, when the model is saved
    return data if passes.use_graph(data, sample) else None


def deterministic_algorithms() -> None:
    """``torch.use_deterministic_algorithms(True, warn_only=True)`` without importing the
    compiler stack (torch._inductor, dynamo, sympy: 1.8 s of a short training run here)
    that the public call imports only to set the compiler's copy of the flag. Training
    compiles nothing; if a later step imports the compiler, it reads the same flag from
    ``TORCHINDUCTOR_DETERMINISTIC``. On CUDA, cuBLAS is deterministic only with a fixed
    workspace (``CUBLAS_WORKSPACE_CONFIG``, read when its first handle is made): set
    unless the user chose one."""
    import sys

    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if setter is None or "torch._inductor.config" in sys.modules:
        torch.use_deterministic_algorithms(True, warn_only=True)
        return
    os.environ.setdefault("TORCHINDUCTOR_DETERMINISTIC", "1")
    setter(True, warn_only=True)


def _training_device(requested: str, warns: list[str]) -> str:
    """The device to train on: "auto" picks CUDA, then MPS, then the CPU (as the panel
    does); a requested device that is not available falls back to the CPU with a
    warning."""
    from medview.inference.devices import auto_device, available_devices

    have = available_devices()
    if requested in ("auto", "", None):
        return auto_device(have)
    if requested not in have:
        warns.append(f"{requested.upper()} was requested but is not available: trained on "
                     "the CPU")
        return "cpu"
    return requested


def _versions() -> dict[str, str]:
    import timm
    import torch

    from medview import __version__

    return {"medview": __version__, "torch": torch.__version__, "timm": timm.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


#: TrainConfig fields that only matter when augmentation runs
AUGMENT_KEYS = ("rotation_deg", "scale_range", "translate", "brightness", "contrast", "hflip",
                "robust", "counterfactual_weight", "consistency_weight")

#: the card text a config may set (``TrainConfig.card``); anything else is refused
CARD_TEXT_KEYS = ("class_descriptions", "intended_use", "out_of_scope", "limitations",
                  "license", "description", "body_parts", "view_positions", "age_years",
                  "known_failures")
#: of those, the population the model is declared for (the card's ``scope``)
POPULATION_KEYS = ("body_parts", "view_positions", "age_years", "known_failures")


def _make_card(cfg, ds, splits, classes, parent, mean, std, temperature, thresholds, rule,
               positive, metrics, history, best_epoch, warns, seconds, model,
               scope_spec: dict | None = None,
               calibration_method: str = "temperature scaling fitted on the validation split",
               comm=None, reliance: dict | None = None, precision: str = "float32") -> Card:
    from medview.models.card import build_card

    arch = model.pretrained_cfg["architecture"]
    # Default names never come from paths: a training folder may be named after a patient,
    # and the id, name, README and weights metadata travel with a shared model.
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = parent.get("id") or arch
    model_id = cfg.id or _slug(cfg.name or f"{base}-{cfg.strategy}-{stamp}")
    text = dict(cfg.card)
    unknown = set(text) - set(CARD_TEXT_KEYS)
    if unknown:
        raise TrainingError(f"unknown card setting(s): {', '.join(sorted(unknown))}")
    class_desc = text.get("class_descriptions", {})
    recipe = {k: v for k, v in asdict(cfg).items()
              if k not in ("data", "out", "card", "name", "id", "version", "device",
                           "weights_file", "num_threads", "precision")}
    # the recipe records what ran: no augmentation settings when none was applied, no
    # block count for a strategy that does not read it
    strategy = strategy_for(cfg.strategy)
    if parent.get("kind") == "model" and ("/" in cfg.base or os.sep in cfg.base):
        # a model folder: the card names the parent (id, version, weights sha256 in
        # ``parent``), never a local path
        recipe["base"] = f"{parent['id']} {parent['version']}"
    recipe["augment"] = bool(cfg.augment and strategy.augments)
    if not recipe["augment"]:
        for key in AUGMENT_KEYS:
            recipe.pop(key, None)
    if not strategy.uses_blocks:
        recipe.pop("unfreeze_blocks", None)
    world = comm.world if comm is not None else 1
    recipe["numerics"] = _numerics(model, precision)
    recipe.update(best_epoch=best_epoch, history=history,
                  training_seconds=round(seconds, 1), library_versions=_versions(),
                  world_size=world, effective_batch_size=cfg.batch_size * world,
                  distributed=(f"DistributedDataParallel, {comm.backend}, {world} processes"
                               if world > 1 else "one process"))
    training_data = {
        "source": data_source(ds),
        "content_sha256": data_content_sha256(ds),
        "counts": {sp: ds.counts(idx) for sp, idx in splits.items()},
        "patients": {sp: len({ds.samples[i].patient for i in idx if ds.samples[i].patient})
                     for sp, idx in splits.items()},
        "split_rule": ("the manifest's own split column" if all(s.split for s in ds.samples)
                       else f"stratified by class, grouped by patient "
                            f"({ds.patient_source}), fractions {list(cfg.split_fractions)},"
                            f" seed {cfg.seed}"),
        "skipped_files": len(ds.skipped),
        "warnings": warns,
    }
    return build_card(
        id=model_id, name=cfg.name or f"{base} fine-tuned ({cfg.strategy}), {stamp[:8]}",
        version=cfg.version, parent=parent, architecture=arch,
        classes=[(c, class_desc.get(c, c)) for c in classes],
        thresholds=json_safe(thresholds), rule=rule,
        positive_class=classes[positive] if positive is not None else None,
        temperature=temperature,
        calibration_method=calibration_method,
        input_spec={"modalities": ["CR", "DX", "OT"], "dimensionality": "2D",
                    "photometric": "grey (MONOCHROME2 after display)", "value_range": [0, 1]},
        preprocessing=Preprocessing(size=(cfg.image_size, cfg.image_size), channels=3,
                                    mean=tuple(mean), std=tuple(std)),
        metrics=json_safe(metrics), training_data=json_safe(training_data),
        training=json_safe(recipe),
        intended_use=text.get("intended_use", "Research and education: a locally trained "
                              "classifier whose output is a second look, never a diagnosis."),
        out_of_scope=text.get("out_of_scope", "Clinical decision making; populations, views "
                              "or modalities not in the training data."),
        limitations=text.get("limitations", [
            "Locally trained, not clinically validated.",
            "Performance outside the training data's population is unknown."]),
        license=text.get("license", "Apache-2.0"),
        flags=["locally trained, not clinically validated"],
        description=text.get("description"),
        scope=None if scope_spec is None else {
            **scope_spec, **{k: text[k] for k in POPULATION_KEYS if k in text}},
        reliance=None if reliance is None else json_safe(reliance))


def final_card(result: TrainResult, name: str, threshold: float | None = None,
               n_bootstrap: int = 1000) -> Card:
    """The card to save for a training result under ``name`` (its id is derived from it).

    A ``threshold`` that differs from the engine's validation-chosen one is a user's
    choice: the decision rule says so and the test metrics are re-evaluated at it."""
    from dataclasses import replace

    card = result.card.replace(name=name, id=_slug(name))
    pos = card.decision.positive_class
    if not pos or threshold is None or abs(threshold - card.thresholds[pos]) <= 1e-9:
        return card
    k = result.classes.index(pos)
    metrics = dict(card.metrics)
    if len(result.test_y):
        groups = np.array([result.dataset.samples[i].patient or f"i{i}"
                           for i in result.splits["test"]])
        metrics["test"] = M.evaluate(result.test_y, result.test_probs, result.classes, k,
                                     threshold, groups, n_bootstrap)
    return card.replace(
        thresholds={pos: threshold}, metrics=json_safe(metrics),
        decision=replace(card.decision,
                         rule=f"{pos} when its calibrated probability >= {threshold:.2f}, "
                              "a threshold the user chose on validation data"))


def data_content_sha256(ds) -> str:
    """One hash of the training data's content: the sorted (label, file sha256) pairs.
    It identifies the data without naming a file, folder or patient."""
    import hashlib

    h = hashlib.sha256()
    for label, sha in sorted((s.label, s.sha256) for s in ds.samples):
        h.update(f"{label}\t{sha}\n".encode())
    return h.hexdigest()


def data_source(ds) -> str:
    """The data source for the card as counts only (never a path or folder name)."""
    counts = Counter(s.label for s in ds.samples)
    return (f"a local labelled collection of {len(ds.samples)} images in {len(counts)} "
            f"classes (identified by its content hash, not by name)")


def _slug(text: str) -> str:
    out = "".join(ch.lower() if ch.isalnum() else "-" for ch in text)
    while "--" in out:
        out = out.replace("--", "-")
    return out.strip("-") or "model"
