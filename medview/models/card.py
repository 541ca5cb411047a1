"""Model cards: a declarative, versioned ``card.json`` next to the weights.

The card says everything needed to build, feed and interpret the model (architecture,
classes, preprocessing, calibration, thresholds) and everything a user must know before
trusting it (intended use, limitations, data, metrics with confidence intervals, lineage).
Cards hold data only, never code or expressions.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any

from medview.core.errors import MedviewError
from medview.core.modeling import Preprocessing
from medview.core.safeio import UnsafeFileError, read_capped

SCHEMA_VERSION = 1
CARD_FILE = "card.json"
WEIGHTS_FILE = "weights.safetensors"
README_FILE = "README.md"
#: A card is a few kB; anything far larger is refused unread.
MAX_CARD_BYTES = 1024 * 1024
MAX_README_BYTES = 1024 * 1024
#: The largest model input side accepted (a 1024x1024x3 float32 input is 12 MiB).
MAX_INPUT_SIDE = 1024

#: An architecture is a plain name from timm's local registry: letters, digits and
#: underscores. No ``hf-hub:``/``local-dir:`` prefixes, no pretrained tags, no paths.
ARCH_NAME = re.compile(r"[A-Za-z0-9_]{1,64}")
#: The only architecture arguments a card may pass to the model constructor, with the
#: check each value must pass. Anything else (``checkpoint_path``, ``pretrained_cfg``,
#: ``pretrained_cfg_overlay``, ...) could make the library read files or the network.
ARCH_ARGS: dict[str, Any] = {
    "num_classes": lambda v: isinstance(v, int) and not isinstance(v, bool) and 2 <= v <= 1000,
    "in_chans": lambda v: v in (1, 3) and not isinstance(v, bool),
    "drop_rate": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
    and 0.0 <= v < 1.0,
    "drop_path_rate": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
    and 0.0 <= v < 1.0,
    "global_pool": lambda v: v in ("avg", "max", "avgmax", "catavgmax"),
}


class CardError(MedviewError):
    """A model card is missing, malformed or fails validation."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where}: {reason}")
        self.where = where
        self.reason = reason


# field -> (type(s), required)
_TOP: dict[str, tuple[Any, bool]] = {
    "schema_version": (int, True),
    "id": (str, True),
    "name": (str, True),
    "version": (str, True),
    "parent": (dict, True),
    "architecture": (dict, True),
    "classes": (list, True),
    "output_activation": (str, True),
    "thresholds": (dict, True),
    "decision": (dict, True),
    "calibration": (dict, True),
    "input": (dict, True),
    "preprocessing": (dict, True),
    "metrics": (dict, True),
    "training_data": (dict, True),
    "training": (dict, True),
    "intended_use": (str, True),
    "out_of_scope": (str, True),
    "limitations": (list, True),
    "weights": (dict, True),
    "license": (str, True),
    "flags": (list, False),
    "description": (str, False),
    "changelog": (list, False),
}


def _require(card: dict, path: str, key: str, typ, where: str):
    if key not in card:
        raise CardError(where, f"missing field {path}{key}")
    value = card[key]
    if typ is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        ok = isinstance(value, typ) and not (typ is int and isinstance(value, bool))
    if not ok:
        name = typ.__name__ if isinstance(typ, type) else str(typ)
        raise CardError(where, f"field {path}{key} must be {name}")
    return value


def validate_card(card: Any, where: str = "card.json") -> dict:
    """Check a card's structure and values; return it unchanged or raise :class:`CardError`."""
    if not isinstance(card, dict):
        raise CardError(where, "a card must be a JSON object")
    version = card.get("schema_version")
    if version != SCHEMA_VERSION:
        raise CardError(where, f"unsupported schema_version {version!r} (expected "
                               f"{SCHEMA_VERSION})")
    for key, (typ, required) in _TOP.items():
        if required or key in card:
            _require(card, "", key, typ, where)
    unknown = set(card) - set(_TOP)
    if unknown:
        raise CardError(where, f"unknown field(s): {', '.join(sorted(unknown))}")
    if not card["id"] or any(c in card["id"] for c in "/\\:") or card["id"].startswith("."):
        raise CardError(where, "id must be a plain name (no slashes)")
    arch = card["architecture"]
    arch_name = _require(arch, "architecture.", "name", str, where)
    if not ARCH_NAME.fullmatch(arch_name):
        raise CardError(where, "architecture.name must be a plain timm model name (letters, "
                               "digits, underscores; no hub or folder prefixes)")
    for key, value in _require(arch, "architecture.", "args", dict, where).items():
        check = ARCH_ARGS.get(key)
        if check is None:
            raise CardError(where, f"architecture.args.{key} is not allowed (allowed: "
                                   f"{', '.join(ARCH_ARGS)})")
        if not check(value):
            raise CardError(where, f"architecture.args.{key} has an invalid value {value!r}")
    classes = card["classes"]
    if len(classes) < 2:
        raise CardError(where, "a classifier needs at least two classes")
    names = []
    for k, c in enumerate(classes):
        if not isinstance(c, dict):
            raise CardError(where, f"classes[{k}] must be an object")
        names.append(_require(c, f"classes[{k}].", "name", str, where))
        _require(c, f"classes[{k}].", "description", str, where)
    if len(set(names)) != len(names):
        raise CardError(where, "class names must be unique")
    if card["output_activation"] not in ("softmax", "sigmoid"):
        raise CardError(where, "output_activation must be softmax or sigmoid")
    for cls, thr in card["thresholds"].items():
        if cls not in names:
            raise CardError(where, f"threshold for unknown class {cls!r}")
        if not isinstance(thr, (int, float)) or not 0.0 <= thr <= 1.0:
            raise CardError(where, f"threshold for {cls!r} must be in [0, 1]")
    decision = card["decision"]
    rule = _require(decision, "decision.", "rule", str, where)
    positive = decision.get("positive_class")
    if positive is not None and positive not in names:
        raise CardError(where, f"decision.positive_class {positive!r} is not a class")
    if not rule:
        raise CardError(where, "decision.rule must say how the label is chosen")
    temp = _require(card["calibration"], "calibration.", "temperature", float, where)
    if not temp > 0:
        raise CardError(where, "calibration.temperature must be positive")
    pre = card["preprocessing"]
    size = _require(pre, "preprocessing.", "size", list, where)
    if len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool)
                                 and 8 <= s <= MAX_INPUT_SIDE for s in size):
        raise CardError(where, f"preprocessing.size must be [height, width], each 8 to "
                               f"{MAX_INPUT_SIDE} pixels")
    channels = _require(pre, "preprocessing.", "channels", int, where)
    if channels not in (1, 3):
        raise CardError(where, "preprocessing.channels must be 1 or 3")
    for key in ("mean", "std"):
        vals = _require(pre, "preprocessing.", key, list, where)
        if len(vals) != channels or not all(isinstance(v, (int, float)) for v in vals):
            raise CardError(where, f"preprocessing.{key} needs one number per channel")
    if any(v <= 0 for v in pre["std"]):
        raise CardError(where, "preprocessing.std must be positive")
    if pre.get("interpolation", "bilinear") not in ("bilinear", "bicubic", "nearest", "area"):
        raise CardError(where, "preprocessing.interpolation is not supported")
    if pre.get("window", "display") != "display":
        raise CardError(where, "preprocessing.window must be 'display'")
    inp = card["input"]
    _require(inp, "input.", "modalities", list, where)
    _require(inp, "input.", "dimensionality", str, where)
    weights = card["weights"]
    sha = _require(weights, "weights.", "sha256", str, where)
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise CardError(where, "weights.sha256 must be 64 lowercase hex digits")
    if _require(weights, "weights.", "file", str, where) != WEIGHTS_FILE:
        raise CardError(where, f"weights.file must be {WEIGHTS_FILE}")
    return card


@dataclass(frozen=True)
class ModelCard:
    """A validated card and the folder it lives in."""

    data: dict
    folder: str
    source: str = "bundled"  # "bundled" or "user"

    @property
    def id(self) -> str:
        return self.data["id"]

    @property
    def name(self) -> str:
        return self.data["name"]

    @property
    def version(self) -> str:
        return self.data["version"]

    @property
    def classes(self) -> list[str]:
        return [c["name"] for c in self.data["classes"]]

    @property
    def temperature(self) -> float:
        return float(self.data["calibration"]["temperature"])

    @property
    def weights_sha256(self) -> str:
        return self.data["weights"]["sha256"]

    @property
    def weights_path(self) -> str:
        return os.path.join(self.folder, WEIGHTS_FILE)

    @property
    def architecture(self) -> str:
        return self.data["architecture"]["name"]

    @property
    def positive_class(self) -> str | None:
        return self.data["decision"].get("positive_class")

    @property
    def preprocessing(self) -> Preprocessing:
        p = self.data["preprocessing"]
        return Preprocessing(
            size=(int(p["size"][0]), int(p["size"][1])),
            channels=int(p["channels"]),
            mean=tuple(float(v) for v in p["mean"]),
            std=tuple(float(v) for v in p["std"]),
            interpolation=p.get("interpolation", "bilinear"),
            window=p.get("window", "display"),
        )

    def summary(self) -> dict:
        """The fields ``medview models`` lists."""
        d = self.data
        return {
            "id": d["id"],
            "name": d["name"],
            "version": d["version"],
            "classes": self.classes,
            "input": {**d["input"], "size": d["preprocessing"]["size"],
                      "channels": d["preprocessing"]["channels"]},
            "intended_use": d["intended_use"],
            "metrics": d["metrics"],
            "weights_sha256": self.weights_sha256,
            "source": self.source,
            "folder": self.folder,
        }


def read_card(folder: str, source: str = "bundled") -> ModelCard:
    """Read and validate ``folder/card.json``."""
    path = os.path.join(folder, CARD_FILE)
    where = os.path.join(os.path.basename(os.path.normpath(folder)), CARD_FILE)
    try:
        data = json.loads(read_capped(path, MAX_CARD_BYTES, root=folder).decode("utf-8"))
    except FileNotFoundError as exc:
        raise CardError(where, "no card.json in the model folder") from exc
    except UnsafeFileError as exc:
        raise CardError(where, exc.reason) from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise CardError(where, f"unreadable card: {reason}") from exc
    return ModelCard(validate_card(data, where), os.path.abspath(folder), source)
