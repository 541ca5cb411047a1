"""The offline ImageNet weights map onto timm and name real photographs correctly."""

import numpy as np
import pytest
import torch
from PIL import Image

from medview.models.pretrained import (
    IMAGENET_BASES,
    BaseWeightsError,
    load_imagenet_base,
    map_state_dict_in_order,
)


def _prepare(arr: np.ndarray, size: int) -> torch.Tensor:
    img = Image.fromarray(arr).convert("RGB")
    w, h = img.size
    s = size / min(w, h)
    img = img.resize((round(w * s), round(h * s)), Image.Resampling.BICUBIC)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    img = img.crop((left, top, left + size, top + size))
    x = torch.from_numpy(np.asarray(img, np.float32) / 255.0).permute(2, 0, 1)[None]
    return (x - 0.5) / 0.5


# ImageNet-1k class indices: 281-285 are domestic cats, 967 is espresso.
CATS = {281, 282, 283, 284, 285}


def test_lite0_every_key_loads_and_names_real_photographs():
    import skimage.data
    import timm

    model, info = load_imagenet_base("efficientnet-lite0")
    reference = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    loaded = model.state_dict()
    assert list(loaded) == list(reference)
    assert all(loaded[k].shape == reference[k].shape for k in reference)
    assert len(info["weights_sha256"]) == 64 and info["mean"] == [0.5, 0.5, 0.5]
    model.eval()
    with torch.no_grad():
        cat = model(_prepare(skimage.data.chelsea(), 224)).softmax(1)[0]
        coffee = model(_prepare(skimage.data.coffee(), 224)).softmax(1)[0]
    assert int(cat.argmax()) in CATS
    assert float(cat[list(CATS)].sum()) > 0.7
    assert int(coffee.argmax()) == 967


@pytest.mark.parametrize("base_id", ["efficientnet-lite1", "efficientnet-lite2"])
def test_lite1_lite2_load_strictly(base_id):
    model, info = load_imagenet_base(base_id, num_classes=3)
    assert info["architecture"] == IMAGENET_BASES[base_id].architecture
    assert model.get_classifier().out_features == 3


def test_shape_mismatch_is_refused():
    src = {"a": torch.zeros(2, 3), "b": torch.zeros(4)}
    with pytest.raises(BaseWeightsError, match="shape"):
        map_state_dict_in_order(src, ["x", "y"], {"x": (2, 3), "y": (5,)})
    with pytest.raises(BaseWeightsError, match="tensors"):
        map_state_dict_in_order(src, ["x"], {"x": (2, 3)})


def test_unknown_base_is_a_clear_error():
    with pytest.raises(BaseWeightsError, match="unknown ImageNet base"):
        load_imagenet_base("resnet-9000")
