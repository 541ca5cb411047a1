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
import stat
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, Self

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
#: The calibration temperature a card may hold: logits divided by more than this are a
#: coin toss, by less than this saturate every probability (fitting never leaves it)
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 20.0
#: Out-of-distribution methods a card may name (implemented in medview.inference.scope).
#: The trust gate's out-of-distribution methods (medview.inference.scope implements them;
#: this is the one list, read by the card's checks, the gate fitting and the scripts)
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


def _hex64(value: str, where: str, name: str) -> None:
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise CardError(where, f"{name} must be 64 lowercase hex digits")


def _type_ok(value: Any, tp: Any) -> bool:
    """Whether a JSON value has the type a card field declares (the outer type: lists'
    and objects' contents are checked by the section's rules)."""
    import types
    import typing

    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is Any:
        return True
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is list:
        return isinstance(value, list)
    if origin is dict or hasattr(tp, "__dataclass_fields__"):
        return isinstance(value, dict)
    return isinstance(value, tp)


def _type_name(tp: Any) -> str:
    import typing

    tp = next((a for a in typing.get_args(tp) if a is not type(None)), tp)
    origin = typing.get_origin(tp) or tp
    if origin is list:
        return "list"
    if origin is dict or hasattr(tp, "__dataclass_fields__"):
        return "dict"
    return getattr(origin, "__name__", str(origin))


class Section:
    """A part of the card that parses and validates itself: :meth:`parse` checks that
    every required field is there, that no unknown one is, and each field's type (from
    the dataclass's own annotations), builds the section (nested sections parsed the
    same way) and runs :meth:`check`, the section's value rules."""

    @classmethod
    def parse(cls, data: Any, where: str = "card.json", path: str = "") -> Self:
        import types
        import typing

        if not isinstance(data, dict):
            raise CardError(where, f"{path.rstrip('.') or 'a card'} must be a JSON object")
        hints = typing.get_type_hints(cls)
        spec: Any = cls  # a dataclass (every section is one)
        names = {f.name for f in fields(spec)}
        unknown = set(data) - names
        if unknown:
            inside = f" in {path.rstrip('.')}" if path else ""
            raise CardError(where, f"unknown field(s){inside}: {', '.join(sorted(unknown))}")
        kwargs: dict[str, Any] = {}
        for f in fields(spec):
            required = f.default is MISSING and f.default_factory is MISSING
            if f.name not in data:
                if required:
                    raise CardError(where, f"missing field {path}{f.name}")
                continue
            value, tp = data[f.name], hints[f.name]
            if not _type_ok(value, tp):
                raise CardError(where, f"field {path}{f.name} must be {_type_name(tp)}")
            options = (typing.get_args(tp) if typing.get_origin(tp) in (
                typing.Union, types.UnionType) else (tp,))
            section = next((a for a in options
                            if isinstance(a, type) and issubclass(a, Section)), None)
            if section is not None and value is not None:
                value = section.parse(value, where, f"{path}{f.name}.")
            elif typing.get_origin(tp) is list:
                (item,) = typing.get_args(tp)
                if isinstance(item, type) and issubclass(item, Section):
                    value = [item.parse(v, where, f"{path}{f.name}[{k}].")
                             for k, v in enumerate(value)]
            kwargs[f.name] = value
        obj = cls(**kwargs)
        obj.check(where)
        return obj

    def check(self, where: str) -> None:
        """The section's value rules (:class:`CardError` when one fails)."""


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
# One typed definition of the card: each section is a :class:`Section` that parses and
# checks itself (types from its annotations, values in its ``check``); ``Card.from_dict``
# builds the typed card from a JSON document, ``to_dict`` writes it back, and
# ``card_json_schema`` derives the checked-in JSON Schema (``card.schema.json``) from
# these classes. New sections go here.


@dataclass(frozen=True)
class ClassSpec(Section):
    name: str
    description: str


@dataclass(frozen=True)
class Architecture(Section):
    """A timm architecture from the local registry and its whitelisted arguments."""

    name: str
    args: dict[str, Any] = field(default_factory=dict)

    def check(self, where: str) -> None:
        if not ARCH_NAME.fullmatch(self.name):
            raise CardError(where, "architecture.name must be a plain timm model name "
                                   "(letters, digits, underscores; no hub or folder prefixes)")
        for key, value in self.args.items():
            rule = ARCH_ARGS.get(key)
            if rule is None:
                raise CardError(where, f"architecture.args.{key} is not allowed (allowed: "
                                       f"{', '.join(ARCH_ARGS)})")
            if not rule(value):
                raise CardError(where, f"architecture.args.{key} has an invalid value "
                                       f"{value!r}")


@dataclass(frozen=True)
class Decision(Section):
    rule: str
    positive_class: str | None = None

    def check(self, where: str) -> None:
        if not self.rule:
            raise CardError(where, "decision.rule must say how the label is chosen")


@dataclass(frozen=True)
class Calibration(Section):
    temperature: float
    method: str = ""

    def check(self, where: str) -> None:
        if not MIN_TEMPERATURE <= self.temperature <= MAX_TEMPERATURE:
            raise CardError(where, f"calibration.temperature must be between "
                                   f"{MIN_TEMPERATURE} and {MAX_TEMPERATURE} (a positive, "
                                   "finite scale of the logits)")


@dataclass(frozen=True)
class InputSpec(Section):
    modalities: list[str]
    dimensionality: str
    photometric: str = ""
    value_range: list[float] = field(default_factory=lambda: [0, 1])


@dataclass(frozen=True)
class PreprocessingSpec(Section):
    size: list[int]
    channels: int
    mean: list[float]
    std: list[float]
    interpolation: str = "bilinear"
    window: str = "display"

    def check(self, where: str) -> None:
        if len(self.size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool)
                                          and 8 <= v <= MAX_INPUT_SIDE for v in self.size):
            raise CardError(where, f"preprocessing.size must be [height, width], each 8 to "
                                   f"{MAX_INPUT_SIDE} pixels")
        if self.channels not in (1, 3):
            raise CardError(where, "preprocessing.channels must be 1 or 3")
        for key in ("mean", "std"):
            vals = getattr(self, key)
            if len(vals) != self.channels or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
                raise CardError(where, f"preprocessing.{key} needs one number per channel")
        if any(v <= 0 for v in self.std):
            raise CardError(where, "preprocessing.std must be positive")
        if self.interpolation not in ("bilinear", "bicubic", "nearest", "area"):
            raise CardError(where, "preprocessing.interpolation is not supported")
        if self.window != "display":
            raise CardError(where, "preprocessing.window must be 'display'")


@dataclass(frozen=True)
class WeightsSpec(Section):
    file: str
    sha256: str

    def check(self, where: str) -> None:
        _hex64(self.sha256, where, "weights.sha256")
        if self.file != WEIGHTS_FILE:
            raise CardError(where, f"weights.file must be {WEIGHTS_FILE}")


@dataclass(frozen=True)
class ScopeSpec(Section):
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

    def check(self, where: str) -> None:
        if self.method not in SCOPE_METHODS:
            raise CardError(where, f"scope.method must be one of {', '.join(SCOPE_METHODS)}")
        if self.file != SCOPE_FILE:
            raise CardError(where, f"scope.file must be {SCOPE_FILE}")
        _hex64(self.sha256, where, "scope.sha256")
        if not math.isfinite(self.limit):
            raise CardError(where, "scope.limit must be a finite number")
        if not 50.0 <= self.percentile <= 100.0:
            raise CardError(where, "scope.percentile must be between 50 and 100")
        if len(self.stages) > 8 or not all(isinstance(n, str) and STAGE_NAME.fullmatch(n)
                                           for n in self.stages):
            raise CardError(where, "scope.stages must be at most 8 module names (letters, "
                                   "digits, underscores, dots)")
        for key in ("body_parts", "view_positions"):
            if not all(isinstance(v, str) and v for v in getattr(self, key)):
                raise CardError(where, f"scope.{key} must be a list of DICOM defined terms")
        age = self.age_years
        if age is not None and not (
                len(age) == 2
                and all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in age)
                and 0 <= age[0] <= age[1] <= 150):
            raise CardError(where, "scope.age_years must be [youngest, oldest] in years, "
                                   "0 to 150")


@dataclass(frozen=True)
class GraphSpec(Section):
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
    #: the weights file (sha256) the graph was exported from: a graph is used only with
    #: exactly these weights (empty in cards written before graphs were bound)
    weights_sha256: str = ""

    def check(self, where: str) -> None:
        if self.weights_sha256:
            _hex64(self.weights_sha256, where, "graph.weights_sha256")
        if self.file != GRAPH_FILE:
            raise CardError(where, f"graph.file must be {GRAPH_FILE}")
        if self.format not in GRAPH_FORMATS:
            raise CardError(where, f"graph.format must be one of {', '.join(GRAPH_FORMATS)}")
        _hex64(self.sha256, where, "graph.sha256")
        if not 0.0 < self.tolerance <= MAX_GRAPH_TOLERANCE:
            raise CardError(where, f"graph.tolerance must be in (0, {MAX_GRAPH_TOLERANCE}]")
        if not (math.isfinite(self.max_abs_diff) and self.max_abs_diff >= 0):
            raise CardError(where, "graph.max_abs_diff must be a finite number >= 0")
        if self.cam_head and not STAGE_NAME.fullmatch(self.cam_head):
            raise CardError(where, "graph.cam_head must be a module name (letters, digits, "
                                   "underscores, dots) or empty")
        if len(self.outputs) > 16 or not all(isinstance(n, str) and STAGE_NAME.fullmatch(n)
                                             for n in self.outputs):
            raise CardError(where, "graph.outputs must be at most 16 output names")


@dataclass(frozen=True)
class RelianceSpec(Section):
    """What the model relies on: the shortcut audit of training
    (:mod:`medview.training.audit`) on the ``split`` (``n`` films). ``auc`` is on the
    films as they are; ``masked_auc`` with parts of them hidden (the lungs, the
    periphery, burned-in markers); ``flip_rate`` the share of decisions that change
    under each benign variation; ``lung_estimate`` how often the lung-field estimate
    found two lungs; ``warnings`` the findings in words."""

    split: str
    n: int
    auc: float | None
    masked_auc: dict[str, Any]
    flip_rate: dict[str, float]
    lung_estimate: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def check(self, where: str) -> None:
        values = [self.auc, *self.masked_auc.values(), *self.flip_rate.values()]
        if not all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)
                                 and 0.0 <= v <= 1.0) for v in values):
            raise CardError(where, "reliance AUCs and flip rates must be numbers in [0, 1]")
        if self.n < 0 or len(self.masked_auc) > 16 or len(self.flip_rate) > 32:
            raise CardError(where, "reliance: too many entries or a negative count")
        share = self.lung_estimate.get("estimated_share")
        if share is not None and not (isinstance(share, (int, float))
                                      and not isinstance(share, bool) and 0 <= share <= 1):
            raise CardError(where, "reliance.lung_estimate.estimated_share must be in [0, 1]")
        if not all(isinstance(w, str) for w in self.warnings):
            raise CardError(where, "reliance.warnings must be text")


_OPTIONAL = ("flags", "description", "changelog", "scope", "graph", "reliance")


@dataclass(frozen=True)
class Card(Section):
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
    reliance: RelianceSpec | None = None

    @classmethod
    def from_dict(cls, data: Any, where: str = "card.json") -> Card:
        """The typed card of a JSON document, validated (:class:`CardError` otherwise)."""
        if not isinstance(data, dict):
            raise CardError(where, "a card must be a JSON object")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:  # before anything else: a newer card has new fields
            raise CardError(where, f"unsupported schema_version {version!r} (expected "
                                   f"{SCHEMA_VERSION})")
        return cls.parse(data, where)

    def check(self, where: str) -> None:
        if not self.id or any(c in self.id for c in "/\\:") or self.id.startswith("."):
            raise CardError(where, "id must be a plain name (no slashes)")
        names = [c.name for c in self.classes]
        if len(names) < 2:
            raise CardError(where, "a classifier needs at least two classes")
        if len(set(names)) != len(names):
            raise CardError(where, "class names must be unique")
        if self.output_activation not in ("softmax", "sigmoid"):
            raise CardError(where, "output_activation must be softmax or sigmoid")
        for cls, thr in self.thresholds.items():
            if cls not in names:
                raise CardError(where, f"threshold for unknown class {cls!r}")
            if not isinstance(thr, (int, float)) or isinstance(thr, bool) \
                    or not 0.0 <= thr <= 1.0:
                raise CardError(where, f"threshold for {cls!r} must be in [0, 1]")
        positive = self.decision.positive_class
        if positive is not None and positive not in names:
            raise CardError(where, f"decision.positive_class {positive!r} is not a class")

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
        raw_counts = m.get("counts")
        counts = [v for v in (raw_counts.values() if isinstance(raw_counts, dict) else [])
                  if isinstance(v, int) and not isinstance(v, bool)]
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
        """The test split's metrics, else the validation split's (``{}`` if neither, or if
        the card holds something else there: the metrics are free-form JSON)."""
        for split in ("test", "validation"):
            m = self.metrics.get(split)
            if isinstance(m, dict) and m:
                return m
        return {}


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
    return [(w, n, r) for w, n, r, _c in checked_rows(card)]


def _fraction(value) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if 0.0 <= v <= 1.0 else None


def checked_rows(card: Card) -> list[tuple[str, str, str, float]]:
    """:func:`where_checked` with each row's concern (0 = as it should be, 1 = the worst):
    for out-of-distribution images the share the gate let through, for in-scope images
    (the internal test, benign variations) the share it withheld (0 when the card has
    no number)."""
    sc = card.scope
    if sc is None:
        return []
    rows: list[tuple[str, str, str, float]] = []
    checked = sc.checked or {}
    it = checked.get("internal_test")
    if isinstance(it, dict):
        res = f"in scope {it.get('in_scope')}"
        if "auc_all" in it:
            res += f"; AUC all {it.get('auc_all')}, in scope {it.get('auc_in_scope')}"
        kept = _fraction(it.get("in_scope"))
        rows.append(("internal test split (unseen patients)", str(it.get("n", "")), res,
                     0.0 if kept is None else 1.0 - kept))
    for key, label in (("ood_benchmark", "out of distribution"),
                       ("quick_check", "out of distribution (quick check)")):
        for name, c in (checked.get(key) or {}).items():
            if not isinstance(c, dict):
                continue
            res = f"withheld {c.get('withheld')}"
            if "auroc" in c:
                res += f" (AUROC {c.get('auroc')}, FPR at 95% TPR {c.get('fpr_at_95_tpr')})"
            withheld = _fraction(c.get("withheld"))
            rows.append((f"{label}: {name}", str(c.get("n", "")), res,
                         0.0 if withheld is None else 1.0 - withheld))
    for name, c in (checked.get("benign_variations") or {}).items():
        if isinstance(c, dict):
            flips = (f"; decisions changed {c['decision_flips']}" if "decision_flips" in c
                     else "")
            kept = _fraction(c.get("in_scope"))
            rows.append((f"benign variation (should pass): {name}", str(c.get("n", "")),
                         f"in scope {c.get('in_scope')}{flips}",
                         0.0 if kept is None else 1.0 - kept))
    return rows


NO_GATE = ("This model has no trust gate: nothing checks whether an image is like its "
           "training images.")
NOT_CHECKED = ("Not checked: anything not in this table (other hospitals, scanners and "
               "populations).")


def gate_summary(card: Card) -> str:
    """The trust gate and the population in one paragraph (README, card dialog, wizard);
    :data:`NO_GATE` for a card without a ``scope``."""
    sc = card.scope
    if sc is None:
        return NO_GATE
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


#: what the audit's masks are called in words for clinicians
_HIDDEN_WORDS = {
    "lungs hidden (central chest box)": "with the central chest (where the lungs are) "
                                        "replaced by grey",
    "lungs hidden (lung-field estimate)": "with the lung fields (as estimated) replaced by "
                                          "grey",
    "periphery hidden (outer 15%)": "with the edges of the film (outer 15%) replaced by "
                                    "grey",
    "markers and text removed": "with burned-in markers and text removed",
}


def reliance_lines(card: Card) -> list[str]:
    """What the model relies on, in sentences for clinicians (README, card dialog,
    wizard); a line saying it was not checked when the card has no audit."""
    r = card.reliance
    if r is None:
        return ["Not checked: this model's card has no shortcut audit (what it relies on "
                "is unknown)."]
    what = "the classes" if card.decision.positive_class is None else (
        f"{card.decision.positive_class} from the rest")
    out = [f"Checked on the {r.split} split ({r.n} films), full films: AUC "
           f"{r.auc if r.auc is not None else 'n/a'}. How well it still tells {what} "
           "(AUC; 0.50 is chance):"]
    for key, v in r.masked_auc.items():
        out.append(f"- {_HIDDEN_WORDS.get(key, key)}: {v if v is not None else 'n/a'}")
    if r.flip_rate:
        worst = max(r.flip_rate.items(), key=lambda kv: kv[1])
        out.append(f"Decisions that change when the same film is re-encoded, resized, "
                   f"blurred, rotated, cropped or windowed differently: at most "
                   f"{worst[1]:.1%} ({worst[0]}); "
                   + ", ".join(f"{k} {v:.1%}" for k, v in r.flip_rate.items()) + ".")
    le = r.lung_estimate
    if le.get("estimated_share") is not None:
        out.append(f"The lung-field estimate found two lungs on {le['estimated_share']:.0%} "
                   "of these films (the central box was used on the rest).")
    out += [f"Warning: {w}" for w in r.warnings]
    return out


def reliance_section(card: Card) -> list[str]:
    """README lines: what the model relies on."""
    return ["## What the model relies on (shortcut audit)", "", *reliance_lines(card), ""]


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
               description: str | None = None, scope: dict | None = None,
               reliance: dict | None = None) -> Card:
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
    if reliance is not None:
        data["reliance"] = reliance
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
            "reliance": None if c.reliance is None else asdict(c.reliance),
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


def check_weights_file(card: ModelCard, where: str = "") -> None:
    """The weights file must be a regular, non-empty file of a plausible size inside the
    model folder - checked from its metadata, never by opening it (a FIFO would block,
    a device would never end). The contents are verified when the model is loaded."""
    from medview.core.safeio import inside
    from medview.models.weights import MAX_WEIGHTS_BYTES

    where = where or os.path.join(os.path.basename(card.folder), WEIGHTS_FILE)
    path = card.weights_path
    try:
        st = os.stat(path)
    except OSError as exc:
        raise CardError(where, "the weights file is missing") from exc
    if not inside(path, card.folder):
        raise CardError(where, "the weights file lies outside the model folder")
    if not stat.S_ISREG(st.st_mode):
        raise CardError(where, "the weights file is not a regular file (FIFO, device or "
                               "socket?)")
    if not 0 < st.st_size <= MAX_WEIGHTS_BYTES:
        raise CardError(where, f"the weights file has an implausible size ({st.st_size} "
                               "bytes)")
