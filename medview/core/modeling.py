"""Plain data classes shared by models, inference, training and the GUI (no torch)."""

from __future__ import annotations

from dataclasses import dataclass, field

#: Where a model can run; "auto" picks CUDA, then MPS, then the CPU.
DEVICES = ("auto", "cpu", "cuda", "mps")


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes a model input; derived from a model card, never hard-coded.

    ``window`` is ``"display"``: the image as the viewer shows it by default (the file's
    own window, MONOCHROME1 inverted, 8-bit raster files at full scale), converted to grey.
    """

    size: tuple[int, int]
    channels: int = 3
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    interpolation: str = "bilinear"
    window: str = "display"


@dataclass
class Prediction:
    """The outcome of one model run on one image."""

    model_id: str
    model_version: str
    weights_sha256: str
    classes: list[str]
    probabilities: list[float]
    label: str
    decision: str
    threshold: float | None
    input_sha256: str
    device: str
    #: what computed the outputs: "torch" or "onnx" (the exported graph on ONNX Runtime)
    backend: str = "torch"
    timings_ms: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    #: The trust gate: True inside the model's scope, False outside (the label and
    #: decision are then withheld: empty, kept in ``withheld_label``/``withheld_decision``
    #: for a deliberate "show anyway"), None when the model has no content gate.
    in_scope: bool | None = None
    #: The out-of-distribution score and its limit (score > limit: unlike the training
    #: images); None without a content gate.
    ood_score: float | None = None
    ood_limit: float | None = None
    #: Why the image is out of scope, in plain words (empty when in scope).
    scope_reasons: list[str] = field(default_factory=list)
    withheld_label: str = ""
    withheld_decision: str = ""
    #: the model file that computed the outputs and its sha256, verified when the model
    #: was loaded: {"file": "graph.onnx" | "weights.safetensors", "sha256": ...}
    computed_by: dict[str, str] = field(default_factory=dict)

    @property
    def withheld(self) -> bool:
        return self.in_scope is False

    def probability(self, cls: str) -> float:
        return self.probabilities[self.classes.index(cls)]

    def revealed(self) -> Prediction:
        """The result of an out-of-scope image, for a user who chose to see it anyway:
        label and decision restored, the decision marked OUT OF SCOPE."""
        if not self.withheld:
            return self
        from dataclasses import replace

        return replace(self, label=self.withheld_label,
                       decision=f"OUT OF SCOPE (shown on request): {self.withheld_decision}")
