"""The training engine's data types: the run's configuration, its progress events, its
result, and the state a transfer-learning strategy works on. They import nothing of the
engine, so the strategies, the distributed runner and the GUI can all use them."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

import numpy as np

from medview.core.errors import MedviewError
from medview.inference.scope import ScopeGate
from medview.models.card import Card
from medview.training import data as tdata

if TYPE_CHECKING:
    from torch import Generator, Tensor
    from torch.nn import Module
    from torch.optim import Optimizer

    from medview.training.pipeline import Augmentation


class TrainingError(MedviewError):
    """Training cannot start or go on (the message says why)."""


@dataclass
class TrainConfig:
    data: str = ""
    base: str = "efficientnet-lite0"
    weights_file: str | None = None  # local safetensors for a "timm:<arch>" base
    strategy: str = "partial"
    epochs: int = 8
    image_size: int = 224
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    unfreeze_blocks: int = 2
    lr_decay: float = 0.5
    augment: bool = True
    #: the robust recipe (with ``augment``): hospital variations, lungs pasted into
    #: other films, and lung-hidden films trained towards "cannot tell"
    #: (:mod:`medview.training.robust`)
    robust: bool = True
    counterfactual_weight: float = 1.0
    #: with ``robust``: the weight of the agreement between two variations of the same
    #: film (the Jensen-Shannon consistency of AugMix, Hendrycks et al. 2020, weight 12
    #: there); 0 turns the second views off
    consistency_weight: float = 12.0
    #: the shortcut audit on the test split (:mod:`medview.training.audit`)
    audit: bool = True
    rotation_deg: float = 10.0
    scale_range: tuple[float, float] = (0.9, 1.1)
    translate: float = 0.05
    brightness: float = 0.1
    contrast: float = 0.1
    hflip: bool = False
    balance: str = "weights"  # weights | sampler | none
    patience: int = 3
    seed: int = 0
    label_column: str = "label"
    label_map: dict = field(default_factory=dict)
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    min_per_class: int = 10
    positive_class: str | None = None
    min_sensitivity: float = 0.95
    name: str | None = None
    id: str | None = None
    version: str = "1.0.0"
    out: str | None = None
    device: str = "auto"  # CUDA, then Apple MPS, then the CPU (medview.training.placement)
    #: the training steps' arithmetic: "auto" (bfloat16 autocast on CUDA, float32
    #: elsewhere), "float32" or "bfloat16"; evaluation, calibration and the trust gate
    #: always run in float32 (recorded in the card's ``numerics``)
    precision: str = "auto"
    num_threads: int | None = None
    max_train_images: int | None = None
    n_bootstrap: int = 1000
    card: dict = field(default_factory=dict)

    @classmethod
    def from_file(cls, path: str, **overrides) -> TrainConfig:
        from medview.core.safeio import read_capped

        try:
            raw = json.loads(read_capped(path, 1024 * 1024).decode("utf-8"))
        except (ValueError, RecursionError) as exc:  # JSON and UTF-8 errors
            raise TrainingError("the config file is not valid JSON") from exc
        if not isinstance(raw, dict):
            raise TrainingError("the config file must hold a JSON object")
        names = {f.name for f in fields(cls)}
        unknown = set(raw) - names
        if unknown:
            raise TrainingError(f"{path}: unknown config key(s): {', '.join(sorted(unknown))}")
        if "data" in raw and not os.path.isabs(raw["data"]):
            raw["data"] = os.path.normpath(os.path.join(os.path.dirname(path), raw["data"]))
        for key in ("scale_range", "split_fractions"):
            if key in raw:
                raw[key] = tuple(raw[key])
        raw.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**raw)

    def validate(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.image_size < 16:
            raise TrainingError("epochs, batch size and image size must be positive")
        if not 0.0 <= self.counterfactual_weight <= 100.0:
            raise TrainingError("counterfactual_weight must be between 0 and 100")
        if not 0.0 <= self.consistency_weight <= 100.0:
            raise TrainingError("consistency_weight must be between 0 and 100")
        if self.balance not in ("weights", "sampler", "none"):
            raise TrainingError("balance must be weights, sampler or none")
        if self.precision not in ("auto", "float32", "bfloat16"):
            raise TrainingError("precision must be auto, float32 or bfloat16")


@dataclass
class TrainEvent:
    """One progress report: stage, epoch/step counters, loss and validation metrics."""

    stage: str
    epoch: int = 0
    epochs: int = 0
    step: int = 0
    steps: int = 0
    loss: float | None = None
    metrics: dict = field(default_factory=dict)
    eta_s: float | None = None
    message: str = ""

    @property
    def milestone(self) -> bool:
        """An event every listener must see (an epoch's end, early stopping, ...), as
        opposed to the frequent per-step ones that may be thinned."""
        return self.stage not in ("load", "train")


@dataclass
class TrainResult:
    model: object
    config: TrainConfig
    classes: list[str]
    card: Card
    history: list[dict]
    val_probs: np.ndarray
    val_y: np.ndarray
    test_probs: np.ndarray
    test_y: np.ndarray
    warnings: list[str]
    dataset: tdata.Dataset
    splits: dict[str, list[int]]
    #: the trust gate fitted on this run's features (written beside the weights)
    gate: ScopeGate | None = None
    #: the exported graph and its card section, checked against torch on validation
    #: images (:func:`medview.training.export.prepare_graph`); None when not exported
    graph: tuple | None = None


@dataclass
class TrainingRun:
    """What a strategy works on during one training run (built by the engine)."""

    cfg: TrainConfig
    model: Module
    images: Tensor  # uint8 (N, H, W) of all images
    train_idx: np.ndarray
    val_idx: np.ndarray
    device: str
    to_input: Callable[[Tensor], Tensor]  # (B, H, W) images -> normalised model input
    #: (B, H, W) images, their rows in ``images`` and a generator -> (the varied uint8
    #: films, followed by the robust recipe's lung-hidden counterfactual films and second
    #: views (if any; ``engine.appended`` says how many), their drawn augmentation)
    #: (``engine.make_variations``)
    augment: Callable[[Tensor, np.ndarray, Generator], tuple[Tensor, Augmentation]]
    predict_logits: Callable[[np.ndarray], np.ndarray]  # indices -> logits, eval mode
    features: Callable[[np.ndarray], Tensor]  # indices -> pooled backbone features
    #: module -> the module to train with (DDP on several processes)
    wrap: Callable[[Module], Module] | None = None
    optimizer: Optimizer | None = None
    #: what training batches run through (set with the optimizer)
    train_model: Module | None = None
    feature_seconds: float | None = None
    #: the training steps' arithmetic ("float32" or "bfloat16": autocast)
    precision: str = "float32"

    def __post_init__(self) -> None:
        if self.wrap is None:
            self.wrap = _identity


def _identity(module: Module) -> Module:
    return module
