"""Model cards: a declarative, versioned ``card.json`` next to the weights.

The card says everything needed to build, feed and interpret the model (architecture,
classes, preprocessing, calibration, thresholds) and everything a user must know before
trusting it (intended use, limitations, data, metrics with confidence intervals, lineage).
Cards hold data only, never code or expressions.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

from medview.core.errors import MedviewError
from medview.core.modeling import Preprocessing
from medview.core.safeio import UnsafeFileError, read_capped

SCHEMA_VERSION = 1
CARD_FILE = "card.json"
WEIGHTS_FILE = "weights.safetensors"
#: The trust gate's statistics (see ``ScopeSpec``); data only, sha256 in the card.
SCOPE_FILE = "scope.safetensors"
#: The exported graph (ONNX; see ``GraphSpec``): data only, sha256 in the card.
GRAPH_FILE = "graph.onnx"
#: Graph formats a card may name, and the largest agreement tolerance it may state.
GRAPH_FORMATS = ("onnx",)
MAX_GRAPH_TOLERANCE = 1e-3
#: Out-of-distribution methods a card may name (implemented in medview.inference.scope).
SCOPE_METHODS = ("mahalanobis", "knn", "energy", "combined", "multi_depth")
#: A feature stage is a module path inside the model: names and dots only.
STAGE_NAME = re.compile(r"[A-Za-z0-9_]{1,64}(\.[A-Za-z0-9_]{1,64}){0,7}")
README_FILE = "README.md"
#: A card is a few kB; anything far larger is refused unread.
MAX_CARD_BYTES = 1024 * 1024
MAX_README_BYTES = 1024 * 1024
#: Fewer test images than this, and a card's numbers are flagged as resting on a small set.
SMALL_TEST_SET = 100
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
    "scope": (dict, False),
    "graph": (dict, False),
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
    if "scope" in card:
        _validate_scope(card["scope"], where)
    if "graph" in card:
        _validate_graph(card["graph"], where)
    return card


def _validate_graph(graph: dict, where: str) -> None:
    if _require(graph, "graph.", "file", str, where) != GRAPH_FILE:
        raise CardError(where, f"graph.file must be {GRAPH_FILE}")
    if _require(graph, "graph.", "format", str, where) not in GRAPH_FORMATS:
        raise CardError(where, f"graph.format must be one of {', '.join(GRAPH_FORMATS)}")
    sha = _require(graph, "graph.", "sha256", str, where)
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise CardError(where, "graph.sha256 must be 64 lowercase hex digits")
    tol = _require(graph, "graph.", "tolerance", float, where)
    if not 0.0 < tol <= MAX_GRAPH_TOLERANCE:
        raise CardError(where, f"graph.tolerance must be in (0, {MAX_GRAPH_TOLERANCE}]")
    diff = _require(graph, "graph.", "max_abs_diff", float, where)
    if not (math.isfinite(diff) and diff >= 0):
        raise CardError(where, "graph.max_abs_diff must be a finite number >= 0")
    head = graph.get("cam_head", "")
    if not isinstance(head, str) or (head and not STAGE_NAME.fullmatch(head)):
        raise CardError(where, "graph.cam_head must be a module name (letters, digits, "
                               "underscores, dots) or empty")
    outputs = _require(graph, "graph.", "outputs", list, where)
    if len(outputs) > 16 or not all(isinstance(n, str) and STAGE_NAME.fullmatch(n)
                                    for n in outputs):
        raise CardError(where, "graph.outputs must be at most 16 output names")


def _validate_scope(scope: dict, where: str) -> None:
    method = _require(scope, "scope.", "method", str, where)
    if method not in SCOPE_METHODS:
        raise CardError(where, f"scope.method must be one of {', '.join(SCOPE_METHODS)}")
    if _require(scope, "scope.", "file", str, where) != SCOPE_FILE:
        raise CardError(where, f"scope.file must be {SCOPE_FILE}")
    sha = _require(scope, "scope.", "sha256", str, where)
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise CardError(where, "scope.sha256 must be 64 lowercase hex digits")
    limit = _require(scope, "scope.", "limit", float, where)
    if not math.isfinite(limit):
        raise CardError(where, "scope.limit must be a finite number")
    pct = _require(scope, "scope.", "percentile", float, where)
    if not 50.0 <= pct <= 100.0:
        raise CardError(where, "scope.percentile must be between 50 and 100")
    stages = scope.get("stages", [])
    if not isinstance(stages, list) or len(stages) > 8 or not all(
            isinstance(n, str) and STAGE_NAME.fullmatch(n) for n in stages):
        raise CardError(where, "scope.stages must be at most 8 module names (letters, digits, "
                               "underscores, dots)")
    for key in ("body_parts", "view_positions"):
        vals = scope.get(key, [])
        if not isinstance(vals, list) or not all(isinstance(v, str) and v for v in vals):
            raise CardError(where, f"scope.{key} must be a list of DICOM defined terms")
    age = scope.get("age_years")
    if age is not None and not (
            isinstance(age, list) and len(age) == 2
            and all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in age)
            and 0 <= age[0] <= age[1] <= 150):
        raise CardError(where, "scope.age_years must be [youngest, oldest] in years, 0 to 150")


def json_safe(value):
    """NaN/inf become null and numpy scalars plain numbers, so the card is strict JSON."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    return value


# ---------------------------------------------------------------------- typed card
# One typed definition of the card. ``validate_card`` checks a JSON document against the
# rules above; ``Card.from_dict`` builds the typed object from a valid one, ``to_dict``
# writes it back, and ``card_json_schema`` derives the checked-in JSON Schema
# (``card.schema.json``) from these classes. New sections go here.


@dataclass(frozen=True)
class ClassSpec:
    name: str
    description: str


@dataclass(frozen=True)
class Architecture:
    """A timm architecture from the local registry and its whitelisted arguments."""

    name: str
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Decision:
    rule: str
    positive_class: str | None = None


@dataclass(frozen=True)
class Calibration:
    temperature: float
    method: str = ""


@dataclass(frozen=True)
class InputSpec:
    modalities: list[str]
    dimensionality: str
    photometric: str = ""
    value_range: list[float] = field(default_factory=lambda: [0, 1])


@dataclass(frozen=True)
class PreprocessingSpec:
    size: list[int]
    channels: int
    mean: list[float]
    std: list[float]
    interpolation: str = "bilinear"
    window: str = "display"


@dataclass(frozen=True)
class WeightsSpec:
    file: str
    sha256: str


@dataclass(frozen=True)
class ScopeSpec:
    """The trust gate: where the model may answer.

    Content: an out-of-distribution ``method`` over the model's own features, its
    statistics in ``file`` (safetensors, ``sha256``), and the ``limit`` (the
    ``percentile`` of the validation images' scores; ``in_distribution_pass_rate`` is
    the share of validation images under it). Population: the DICOM Body Part Examined,
    View Position and patient age (whole years, both ends included) the model is for;
    modality, photometric and dimensionality are ``input``'s. Empty = not restricted.
    ``checked`` says where the model was checked (internal test, the out-of-distribution
    benchmark per category) and ``known_failures`` what is known to go wrong."""

    method: str
    file: str
    sha256: str
    limit: float
    percentile: float
    in_distribution_pass_rate: float
    stages: list[str] = field(default_factory=list)
    body_parts: list[str] = field(default_factory=list)
    view_positions: list[str] = field(default_factory=list)
    age_years: list[float] | None = None
    checked: dict[str, Any] = field(default_factory=dict)
    known_failures: str = ""


@dataclass(frozen=True)
class GraphSpec:
    """The model exported as a graph for a faster runtime (ONNX Runtime on the CPU).

    ``file`` (``sha256``) holds the same network as the weights with ``outputs``: the
    logits, the pre-logit embedding, the last feature maps and the trust gate's stage
    statistics, from one pass. ``max_abs_diff`` is the largest difference in any class
    probability against the torch model, measured at export on ``checked_on`` images
    (validation images where there were any); the graph is only chosen automatically
    while that is within ``tolerance``. ``cam_head`` names the linear classifier that
    follows a global average pool, when that was verified: Grad-CAM is then the class
    activation map of the feature maps with that layer's weights (no autograd);
    empty = Grad-CAM runs on torch. ``speed`` records the per-image times measured at
    export (milliseconds, batch 1, the exporting machine's CPU)."""

    file: str
    sha256: str
    format: str
    opset: int
    outputs: list[str]
    tolerance: float
    max_abs_diff: float
    checked_on: int
    cam_head: str = ""
    speed: dict[str, float] = field(default_factory=dict)


_OPTIONAL = ("flags", "description", "changelog", "scope", "graph")
_SECTIONS = {"architecture": Architecture, "decision": Decision, "calibration": Calibration,
             "input": InputSpec, "preprocessing": PreprocessingSpec, "weights": WeightsSpec,
             "scope": ScopeSpec, "graph": GraphSpec}


@dataclass(frozen=True)
class Card:
    """Everything a model card says, typed. Free-form reports (metrics per split,
    training data, recipe, lineage) stay JSON objects."""

    schema_version: int
    id: str
    name: str
    version: str
    parent: dict[str, Any]
    architecture: Architecture
    classes: list[ClassSpec]
    output_activation: str
    thresholds: dict[str, float]
    decision: Decision
    calibration: Calibration
    input: InputSpec
    preprocessing: PreprocessingSpec
    metrics: dict[str, Any]
    training_data: dict[str, Any]
    training: dict[str, Any]
    intended_use: str
    out_of_scope: str
    limitations: list[str]
    weights: WeightsSpec
    license: str
    flags: list[str] | None = None
    description: str | None = None
    changelog: list[Any] | None = None
    scope: ScopeSpec | None = None
    graph: GraphSpec | None = None

    @classmethod
    def from_dict(cls, data: Any, where: str = "card.json") -> Card:
        """The typed card of a JSON document, validated (:class:`CardError` otherwise)."""
        data = validate_card(data, where)
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in data:
                continue
            value = data[f.name]
            section = _SECTIONS.get(f.name)
            if section is not None:
                known = {sf.name for sf in fields(section)}
                extra = set(value) - known
                if extra:
                    raise CardError(where, f"unknown field(s) in {f.name}: "
                                           f"{', '.join(sorted(extra))}")
                value = section(**value)
            elif f.name == "classes":
                value = [ClassSpec(c["name"], c["description"]) for c in value]
            kwargs[f.name] = value
        return cls(**kwargs)

    def to_dict(self) -> dict:
        """The card as the JSON document it is stored as (optional fields left out when
        absent)."""
        out = asdict(self)
        for key in _OPTIONAL:
            if out[key] is None:
                del out[key]
        return out

    def replace(self, **changes) -> Card:
        """A copy with ``changes``, validated like a card read from disk (an optional
        section set to None is removed)."""
        data = {**self.to_dict(), **{
            k: (asdict(v) if hasattr(v, "__dataclass_fields__") else v)
            for k, v in changes.items()}}
        return Card.from_dict({k: v for k, v in data.items()
                               if not (v is None and k in _OPTIONAL)})

    # -------------------------------------------------------------- derived values
    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def threshold(self) -> float | None:
        """The operating threshold of the positive class, if the card has one."""
        pos = self.decision.positive_class
        return self.thresholds.get(pos) if pos else None

    @property
    def evidence_warning(self) -> str:
        """A plain warning when the card's numbers rest on few images (empty otherwise):
        fewer than SMALL_TEST_SET test images, or fewer than 10 of some class."""
        m = self.headline_metrics
        n = m.get("n")
        counts = [v for v in (m.get("counts") or {}).values() if isinstance(v, int)]
        split = "test" if self.metrics.get("test") else "validation"
        if not isinstance(n, int):
            return f"no {split} metrics: performance unknown"
        if n < SMALL_TEST_SET or (counts and min(counts) < 10):
            return (f"SMALL {split.upper()} SET (n={n}"
                    + (f", smallest class {min(counts)}" if counts else "")
                    + "): its numbers are very uncertain")
        return ""

    @property
    def headline_metrics(self) -> dict:
        """The test split's metrics, else the validation split's (``{}`` if neither)."""
        return self.metrics.get("test") or self.metrics.get("validation") or {}


def population_text(card: Card) -> str:
    """The population a card declares, in one line (modality, view, body part, age)."""
    mods = [m for m in card.input.modalities if m.upper() != "OT"] or card.input.modalities
    parts = [f"modality {'/'.join(mods)} (PNG/JPEG: unknown, the content check decides)"
             if "OT" in [m.upper() for m in card.input.modalities] else
             f"modality {'/'.join(mods)}", f"{card.input.dimensionality} grey images"]
    sc = card.scope
    if sc is not None:
        if sc.body_parts:
            parts.append(f"body part {'/'.join(sc.body_parts)}")
        if sc.view_positions:
            parts.append(f"view {'/'.join(sc.view_positions)}")
        if sc.age_years is not None:
            parts.append(f"age {sc.age_years[0]:g}-{sc.age_years[1]:g} years")
    return "; ".join(parts)


def where_checked(card: Card) -> list[tuple[str, str, str]]:
    """Rows (where, images, result) of "where this model was checked": the internal
    test, the out-of-distribution benchmark per category, the quick check made at
    training, and benign variations that should stay in scope. Only numbers the card
    holds (measured runs); empty without a trust gate."""
    sc = card.scope
    if sc is None:
        return []
    rows: list[tuple[str, str, str]] = []
    checked = sc.checked or {}
    it = checked.get("internal_test")
    if isinstance(it, dict):
        res = f"in scope {it.get('in_scope')}"
        if "auc_all" in it:
            res += f"; AUC all {it.get('auc_all')}, in scope {it.get('auc_in_scope')}"
        rows.append(("internal test split (unseen patients)", str(it.get("n", "")), res))
    for key, label in (("ood_benchmark", "out of distribution"),
                       ("quick_check", "out of distribution (quick check)")):
        for name, c in (checked.get(key) or {}).items():
            if not isinstance(c, dict):
                continue
            res = f"withheld {c.get('withheld')}"
            if "auroc" in c:
                res += f" (AUROC {c.get('auroc')}, FPR at 95% TPR {c.get('fpr_at_95_tpr')})"
            rows.append((f"{label}: {name}", str(c.get("n", "")), res))
    for name, c in (checked.get("benign_variations") or {}).items():
        if isinstance(c, dict):
            rows.append((f"benign variation (should pass): {name}", str(c.get("n", "")),
                         f"in scope {c.get('in_scope')}"))
    return rows


NO_GATE = ("This model has no trust gate: nothing checks whether an image is like its "
           "training images.")
NOT_CHECKED = ("Not checked: anything not in this table (other hospitals, scanners and "
               "populations).")


def gate_summary(card: Card) -> str:
    """The trust gate and the population in one paragraph (README, card dialog, wizard);
    the caller checks that the card has a ``scope``."""
    sc = card.scope
    return (f"{sc.method} out-of-distribution score, limit {sc.limit:.4g} (the "
            f"{sc.percentile:g}th percentile of the validation images' scores; "
            f"{sc.in_distribution_pass_rate:.1%} of them pass). Population: "
            f"{population_text(card)}. Images outside either are withheld.")


def checked_section(card: Card) -> list[str]:
    """README lines: the trust gate and where this model was checked."""
    sc = card.scope
    if sc is None:
        return ["## Where this model was checked", "", NO_GATE, ""]
    lines = ["## Where this model was checked", "", f"Trust gate: {gate_summary(card)}", "",
             "| where | images | result |", "|---|---|---|"]
    lines += [f"| {w} | {n} | {r} |" for w, n, r in where_checked(card)]
    if sc.known_failures:
        lines += ["", f"Known failure modes: {sc.known_failures}"]
    lines += ["", NOT_CHECKED, ""]
    return lines


def preprocessing_of(card: Card) -> Preprocessing:
    """How an image becomes this model's input: the one function that training,
    inference, the command line and the panel all use to read the card's preprocessing."""
    p = card.preprocessing
    return Preprocessing(size=(int(p.size[0]), int(p.size[1])), channels=int(p.channels),
                         mean=tuple(float(v) for v in p.mean),
                         std=tuple(float(v) for v in p.std),
                         interpolation=p.interpolation, window=p.window)


def build_card(*, id: str, name: str, version: str, parent: dict, architecture: str,
               classes: list[tuple[str, str]], thresholds: dict[str, float], rule: str,
               positive_class: str | None, temperature: float, calibration_method: str,
               input_spec: dict, preprocessing: Preprocessing, metrics: dict,
               training_data: dict, training: dict, intended_use: str, out_of_scope: str,
               limitations: list[str], license: str, flags: list[str] | None = None,
               arch_args: dict | None = None, weights_sha256: str = "0" * 64,
               description: str | None = None, scope: dict | None = None) -> Card:
    """The one builder of new cards (the training engine's, the wizard's edits go through
    :meth:`Card.replace`). The weights hash is filled in when the weights are written."""
    data = {
        "schema_version": SCHEMA_VERSION, "id": id, "name": name, "version": version,
        "parent": parent,
        "architecture": {"name": architecture,
                         "args": dict(arch_args or {"num_classes": len(classes)})},
        "classes": [{"name": n, "description": d} for n, d in classes],
        "output_activation": "softmax", "thresholds": dict(thresholds),
        "decision": {"rule": rule, "positive_class": positive_class},
        "calibration": {"temperature": round(float(temperature), 6),
                        "method": calibration_method},
        "input": dict(input_spec),
        "preprocessing": {"window": preprocessing.window, "size": list(preprocessing.size),
                          "interpolation": preprocessing.interpolation,
                          "channels": preprocessing.channels,
                          "mean": list(preprocessing.mean), "std": list(preprocessing.std)},
        "metrics": metrics, "training_data": training_data, "training": training,
        "intended_use": intended_use, "out_of_scope": out_of_scope,
        "limitations": list(limitations),
        "weights": {"file": WEIGHTS_FILE, "sha256": weights_sha256}, "license": license,
    }
    if flags is not None:
        data["flags"] = list(flags)
    if description is not None:
        data["description"] = description
    if scope is not None:
        data["scope"] = scope
    return Card.from_dict(data, f"{id}/{CARD_FILE}")


_JSON_TYPES = {str: {"type": "string"}, int: {"type": "integer"}, float: {"type": "number"},
               bool: {"type": "boolean"}, Any: {}}


def _schema_of(tp) -> dict:
    import types
    import typing

    origin = typing.get_origin(tp)
    if tp in _JSON_TYPES:
        return dict(_JSON_TYPES[tp])
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        inner = _schema_of(options[0]) if len(options) == 1 else {
            "anyOf": [_schema_of(a) for a in options]}
        return {"anyOf": [inner, {"type": "null"}]}
    if origin is list:
        (item,) = typing.get_args(tp)
        return {"type": "array", "items": _schema_of(item)}
    if origin is dict:
        _key, value = typing.get_args(tp)
        return {"type": "object", "additionalProperties": _schema_of(value)}
    if hasattr(tp, "__dataclass_fields__"):
        hints = typing.get_type_hints(tp)
        props = {f.name: _schema_of(hints[f.name]) for f in fields(tp)}
        required = [f.name for f in fields(tp)
                    if f.default is MISSING and f.default_factory is MISSING]
        return {"type": "object", "properties": props, "required": required,
                "additionalProperties": False}
    raise TypeError(f"no JSON Schema for {tp!r}")


def card_json_schema() -> dict:
    """The JSON Schema of ``card.json``, derived from :class:`Card` (checked in as
    ``medview/models/card.schema.json``; a test keeps the two equal)."""
    schema = _schema_of(Card)
    schema["properties"]["schema_version"] = {"const": SCHEMA_VERSION}
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "medview model card", **schema}


@dataclass(frozen=True)
class ModelCard:
    """A validated, typed card and the folder it lives in."""

    card: Card
    folder: str
    source: str = "bundled"  # "bundled" or "user"

    @property
    def data(self) -> dict:
        """The card as a JSON document (a fresh copy)."""
        return self.card.to_dict()

    @property
    def id(self) -> str:
        return self.card.id

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def version(self) -> str:
        return self.card.version

    @property
    def classes(self) -> list[str]:
        return self.card.class_names

    @property
    def temperature(self) -> float:
        return float(self.card.calibration.temperature)

    @property
    def weights_sha256(self) -> str:
        return self.card.weights.sha256

    @property
    def weights_path(self) -> str:
        return os.path.join(self.folder, WEIGHTS_FILE)

    @property
    def architecture(self) -> str:
        return self.card.architecture.name

    @property
    def positive_class(self) -> str | None:
        return self.card.decision.positive_class

    @property
    def preprocessing(self) -> Preprocessing:
        return preprocessing_of(self.card)

    @property
    def scope_path(self) -> str:
        return os.path.join(self.folder, SCOPE_FILE)

    @property
    def graph_path(self) -> str:
        return os.path.join(self.folder, GRAPH_FILE)

    def summary(self) -> dict:
        """The fields ``medview models`` lists."""
        c = self.card
        return {
            "id": c.id,
            "name": c.name,
            "version": c.version,
            "classes": self.classes,
            "input": {**asdict(c.input), "size": list(c.preprocessing.size),
                      "channels": c.preprocessing.channels},
            "intended_use": c.intended_use,
            "metrics": c.metrics,
            "scope": None if c.scope is None else asdict(c.scope),
            "graph": None if c.graph is None else asdict(c.graph),
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
    return ModelCard(Card.from_dict(data, where), os.path.abspath(folder), source)
