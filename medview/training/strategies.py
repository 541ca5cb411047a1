"""Transfer-learning strategies as objects: what is frozen when, which parameter groups
train, with which learning rates, and how a training batch reaches the head.

- ``feature``: frozen backbone; pooled features are computed once and cached, then only
  the new classifier head trains (later epochs cost seconds). No augmentation (cached).
  On several processes each computes the features of its share once and all gather
  the whole cache.
- ``partial``: the head plus the last ``unfreeze_blocks`` block groups train.
- ``full``: every layer trains.
- ``gradual``: the head trains first; each epoch unfreezes the next block group from the
  top, with discriminative learning rates (``lr * lr_decay ** depth``). No early stop
  (later epochs train layers the earlier ones could not).
- ``scratch``: random initialisation, everything trains (baseline).

Frozen batch-norm layers stay in eval mode. :data:`STRATEGIES` is the one list of them
(the engine, the wizard and the command line all read it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from medview.training.pipeline import StepInput, make_step_input
from medview.training.types import TrainEvent, TrainingError, TrainingRun


def layer_groups(model) -> list[list]:
    """Parameter-holding modules from the top (head first) to the stem."""
    head = model.get_classifier()
    if hasattr(model, "blocks") and hasattr(model, "conv_head"):
        blocks = list(model.blocks)
        groups = [[head], [model.conv_head, model.bn2, blocks[-1]]]
        groups += [[b] for b in reversed(blocks[1:-1])]
        groups.append([blocks[0], model.conv_stem, model.bn1])
        return groups
    rest = [m for _, m in model.named_children() if m is not head]
    return [[head]] + [[m] for m in reversed(rest)]


def set_trainable(model, n_groups: int | None) -> list[list]:
    """Make the top ``n_groups`` groups trainable (all when None); freeze the rest."""
    import torch

    groups = layer_groups(model)
    k = len(groups) if n_groups is None else min(n_groups, len(groups))
    model.train()
    for i, g in enumerate(groups):
        on = i < k
        for mod in g:
            for p in mod.parameters():
                p.requires_grad_(on)
            if not on:
                for sub in mod.modules():
                    if isinstance(sub, torch.nn.modules.batchnorm._BatchNorm):
                        sub.eval()
    return groups[:k]


def make_optimizer(cfg, groups: list[list], discriminative: bool):
    """AdamW over the trainable parameters of ``groups`` (top first); with
    ``discriminative`` each deeper group's learning rate is ``lr * lr_decay ** depth``."""
    import torch

    param_groups = []
    for depth, g in enumerate(groups):
        params = [p for mod in g for p in mod.parameters() if p.requires_grad]
        if params:
            lr = cfg.lr * (cfg.lr_decay ** depth if discriminative else 1.0)
            param_groups.append({"params": params, "lr": lr, "base_lr": lr})
    return torch.optim.AdamW(param_groups, weight_decay=cfg.weight_decay)


@dataclass
class Strategy:
    """Fine-tuning of the top layer groups (how many: :meth:`groups_at`)."""

    name: str
    label: str
    description: str
    pretrained: bool = True  # start from the base's weights
    augments: bool = True  # can use on-the-fly augmentation
    early_stopping: bool = True
    uses_blocks: bool = False  # reads TrainConfig.unfreeze_blocks
    discriminative: bool = False  # lower learning rates deeper down

    def groups_at(self, cfg, epoch: int) -> int | None:
        """How many groups from the top train in ``epoch`` (None: all)."""
        return None

    # -------------------------------------------------------------- the engine's calls
    def prepare(self, run: TrainingRun):
        """Before the first epoch (a generator: it may yield progress events)."""
        yield from ()

    def start_epoch(self, run: TrainingRun, epoch: int) -> None:
        """Freeze/unfreeze for ``epoch``; (re)build ``run.optimizer`` when needed."""
        groups = set_trainable(run.model, self.groups_at(run.cfg, epoch))  # train mode too
        if run.optimizer is None or self.groups_at(run.cfg, epoch) != self.groups_at(
                run.cfg, epoch - 1):
            run.optimizer = make_optimizer(run.cfg, groups, self.discriminative)
            # DDP fixes the set of trained parameters when it wraps: wrap again whenever
            # it changes (a new optimizer)
            run.train_model = run.wrap(run.model)

    def batch_input(self, run: TrainingRun, batch_idx, gen) -> StepInput:
        """The training batch ``batch_idx`` (indices into the train split) made ready
        for :meth:`train_logits` on a pipeline thread, its random draws from ``gen``
        (:mod:`medview.training.pipeline`)."""
        rows = run.train_idx[batch_idx.numpy()]
        films, drawn = run.images[rows], None
        if run.cfg.augment and self.augments:
            films, drawn = run.augment(films, rows, gen)  # may append counterfactual films
        return make_step_input(batch_idx, films, drawn, run.device, run.to_input)

    def train_logits(self, run: TrainingRun, batch: StepInput):
        """Logits for a training batch, then for any counterfactual films the
        augmentation appended (rows past ``len(batch.idx)``)."""
        return run.train_model(batch.model_input(run.device, run.to_input))

    def val_logits(self, run: TrainingRun):
        return run.predict_logits(run.val_idx)


@dataclass
class PartialStrategy(Strategy):
    uses_blocks: bool = True

    def groups_at(self, cfg, epoch: int) -> int | None:
        return 1 + cfg.unfreeze_blocks


@dataclass
class GradualStrategy(Strategy):
    early_stopping: bool = False
    discriminative: bool = True

    def groups_at(self, cfg, epoch: int) -> int | None:
        return 1 + max(epoch, 0)


@dataclass
class FeatureStrategy(Strategy):
    """The backbone runs once over the data; only the head trains on cached features."""

    augments: bool = False
    cache: Any = field(default=None, repr=False)

    def prepare(self, run: TrainingRun):
        import time

        import torch

        yield TrainEvent("features", message="computing backbone features once")
        t0 = time.monotonic()
        train = run.features(run.train_idx)
        val = run.features(run.val_idx)
        run.feature_seconds = time.monotonic() - t0
        self.cache = (train, val)
        head = run.model.get_classifier()
        for p in run.model.parameters():
            p.requires_grad_(False)
        for p in head.parameters():
            p.requires_grad_(True)
        run.optimizer = torch.optim.AdamW(head.parameters(), lr=run.cfg.lr,
                                          weight_decay=run.cfg.weight_decay)
        for g in run.optimizer.param_groups:
            g["base_lr"] = run.cfg.lr
        run.train_model = run.wrap(head)

    def start_epoch(self, run: TrainingRun, epoch: int) -> None:
        run.model.get_classifier().train()

    def batch_input(self, run: TrainingRun, batch_idx, gen) -> StepInput:
        return StepInput(batch_idx)

    def train_logits(self, run: TrainingRun, batch: StepInput):
        feats = self.cache[0]
        return run.train_model(feats[batch.idx.to(feats.device)])

    def val_logits(self, run: TrainingRun):
        import torch

        head = run.model.get_classifier()
        head.eval()
        with torch.inference_mode():
            return head(self.cache[1]).float().cpu().numpy()


def _all() -> dict[str, Strategy]:
    return {s.name: s for s in (
        FeatureStrategy("feature", "Feature extraction",
                        "Feature extraction: keep the ImageNet network frozen, train only a "
                        "new output layer (fast, small data)."),
        PartialStrategy("partial", "Fine-tune last blocks",
                        "Fine-tune the last blocks: adapt the top of the network, keep early "
                        "layers (good default)."),
        Strategy("full", "Full fine-tuning",
                 "Full fine-tuning: adapt every layer (most data and time; best when data "
                 "is plentiful)."),
        GradualStrategy("gradual", "Gradual unfreezing",
                        "Gradual unfreezing: start with the output layer, unfreeze one block "
                        "per epoch, lower learning rates deeper down."),
        Strategy("scratch", "From scratch (baseline)",
                 "From scratch: no pretrained weights (baseline only; needs far more data).",
                 pretrained=False),
    )}


#: name -> strategy, in the order they are offered
STRATEGIES: dict[str, Strategy] = _all()


def strategy_for(name: str) -> Strategy:
    """A fresh strategy object (strategies may hold per-run state, e.g. feature caches);
    :class:`TrainingError` naming the choices for an unknown name."""
    strategies = _all()
    if name not in strategies:
        raise TrainingError(f"unknown strategy {name!r}; use one of {', '.join(strategies)}")
    return strategies[name]
