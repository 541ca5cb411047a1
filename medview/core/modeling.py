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
    timings_ms: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def probability(self, cls: str) -> float:
        return self.probabilities[self.classes.index(cls)]
