"""Build a model from its card and load its verified weights."""

from __future__ import annotations

from medview.models.card import ModelCard
from medview.models.weights import WeightsError, load_into, load_verified_state_dict


def build_from_card(card: ModelCard):
    """The card's timm architecture, randomly initialised (no download)."""
    import timm

    args = dict(card.data["architecture"].get("args", {}))
    args.setdefault("num_classes", len(card.classes))
    if args["num_classes"] != len(card.classes):
        raise WeightsError("the card's architecture args disagree with its class list")
    try:
        return timm.create_model(card.architecture, pretrained=False, **args)
    except Exception as exc:
        raise WeightsError(f"unknown or unsupported architecture {card.architecture!r}: "
                           f"{exc}") from exc


def load_model(card: ModelCard):
    """The model of ``card`` with weights checked against the card's sha256, in eval mode."""
    model = build_from_card(card)
    state = load_verified_state_dict(card.weights_path, card.weights_sha256)
    load_into(model, state)
    model.eval()
    return model
