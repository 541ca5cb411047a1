"""Build a model from its card and load its verified weights.

A model folder is untrusted. The card has already been validated (a plain architecture
name, whitelisted arguments only); here the name must also be in timm's local registry,
and the weights are checked in this order before the real model is built: regular file
inside the folder, safetensors header, tensor names and shapes against a weightless
(``meta`` device) skeleton of the architecture, sha256. Nothing from a card reaches a
function that can load a pickle or open the network.
"""

from __future__ import annotations

import os

from medview.models.card import ARCH_ARGS, ARCH_NAME, ModelCard
from medview.models.weights import (
    WEIGHT_DTYPES,
    WeightsError,
    load_into,
    load_verified_state_dict,
)

#: The most memory a model's parameters may take once built (float32), so that a tiny
#: model folder naming a huge architecture is refused before anything is allocated.
#: ``MEDVIEW_MAX_MODEL_MEMORY`` (bytes) overrides; the bundled models take 14 MB.
MODEL_BUDGET_ENV = "MEDVIEW_MAX_MODEL_MEMORY"
DEFAULT_MODEL_BUDGET = 1024**3


def model_budget() -> int:
    try:
        return max(1, int(os.environ.get(MODEL_BUDGET_ENV, DEFAULT_MODEL_BUDGET)))
    except ValueError:
        return DEFAULT_MODEL_BUDGET


def _model_kwargs(card: ModelCard) -> tuple[str, dict]:
    """The architecture name and constructor arguments, re-checked here so that no caller
    can hand the library anything but a registry name and whitelisted values."""
    import timm

    name = card.architecture
    if not ARCH_NAME.fullmatch(name) or not timm.is_model(name):
        raise WeightsError(f"unknown or unsupported architecture {name!r} (only timm's "
                           "built-in architectures are accepted)")
    args = dict(card.data["architecture"].get("args", {}))
    bad = [k for k, v in args.items() if k not in ARCH_ARGS or not ARCH_ARGS[k](v)]
    if bad:
        raise WeightsError(f"architecture argument(s) not allowed: {', '.join(bad)}")
    args.setdefault("num_classes", len(card.classes))
    if args["num_classes"] != len(card.classes):
        raise WeightsError("the card's architecture args disagree with its class list")
    return name, args


def _create(name: str, args: dict):
    import timm

    try:
        return timm.create_model(name, pretrained=False, **args)
    except Exception as exc:
        raise WeightsError(f"unknown or unsupported architecture {name!r}: {exc}") from exc


def build_from_card(card: ModelCard):
    """The card's timm architecture, randomly initialised (no download, no file read)."""
    return _create(*_model_kwargs(card))


def expected_shapes(card: ModelCard) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of the card's architecture, from a skeleton on the ``meta``
    device (no memory, no weights)."""
    import torch

    name, args = _model_kwargs(card)
    with torch.device("meta"):
        skeleton = _create(name, args)
    shapes = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    need = 4 * sum(int(v.numel()) for v in skeleton.state_dict().values())
    if need > model_budget():
        raise WeightsError(f"refused: architecture {name!r} needs {need / 1024**2:.0f} MiB "
                           f"for its parameters alone, over the model memory budget of "
                           f"{model_budget() / 1024**2:.0f} MiB ({MODEL_BUDGET_ENV})")
    return shapes


def load_model(card: ModelCard):
    """The model of ``card`` with weights checked against the card's sha256, in eval mode."""
    shapes = expected_shapes(card)  # refuses an architecture over the memory budget
    state = load_verified_state_dict(card.weights_path, card.weights_sha256, shapes,
                                     root=card.folder, dtypes=WEIGHT_DTYPES)
    model = build_from_card(card)
    load_into(model, state)
    model.eval()
    return model
