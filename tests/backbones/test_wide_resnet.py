"""WideResNet-50-2: parity with torchvision (random weights, random BN stats)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from csad_jax.backbones.weights import from_state_dict
from csad_jax.backbones.wide_resnet import WideResNet50x2
from tests.backbones.conftest import random_images, relative_error, run_jitted

STAGES = ("layer1", "layer2", "layer3", "layer4")


@pytest.fixture(scope="module")
def torch_wrn():
    """torchvision wide_resnet50_2, random init with non-trivial BN statistics."""
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.wide_resnet50_2().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.1)
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    return model


@pytest.fixture(scope="module")
def jax_wrn(torch_wrn):
    state = {k: v.numpy() for k, v in torch_wrn.state_dict().items()}
    return from_state_dict("wide_resnet50_2", state)


def _torch_stages(model, images):
    import torch

    x = torch.from_numpy(images).permute(0, 3, 1, 2)
    out = {}
    with torch.no_grad():
        x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
        for name in STAGES:
            x = getattr(model, name)(x)
            out[name] = x.permute(0, 2, 3, 1).numpy()
        logits = model.fc(torch.flatten(model.avgpool(x), 1)).numpy()
    return out, logits


@pytest.mark.torch
@pytest.mark.parametrize(
    "shape",
    [
        (1, 256, 256),
        (4, 96, 128),  # smaller: layer4 side < 3, where XLA's CPU conv crawls
        pytest.param((4, 224, 288), marks=pytest.mark.slow),
    ],
)
def test_stage_outputs_match_torchvision(torch_wrn, jax_wrn, shape):
    images = random_images(*shape, seed=sum(shape))
    expected, logits = _torch_stages(torch_wrn, images)
    ours, our_logits = run_jitted(jax_wrn, images, STAGES)
    for name in STAGES:
        assert relative_error(ours[name], expected[name]) < 1e-4, name
    assert relative_error(our_logits, logits) < 1e-4


def test_channels_strides_and_shapes():
    model = WideResNet50x2(rngs=None)
    assert model.channels == {
        "layer1": 256,
        "layer2": 512,
        "layer3": 1024,
        "layer4": 2048,
    }
    assert model.strides == {"layer1": 4, "layer2": 8, "layer3": 16, "layer4": 32}
    shapes = jax.eval_shape(
        lambda x: model(x, stages=STAGES), jax.ShapeDtypeStruct((2, 64, 96, 3), "f4")
    )
    for name in STAGES:
        s = model.strides[name]
        assert shapes[name].shape == (2, 64 // s, 96 // s, model.channels[name])


def _count_convs(model, stages) -> int:
    x = np.zeros((1, 64, 64, 3), np.float32)
    jaxpr = jax.make_jaxpr(lambda im: model(im, stages=stages))(x)
    return sum(e.primitive.name == "conv_general_dilated" for e in jaxpr.eqns)


def test_only_stages_up_to_the_deepest_requested_are_computed():
    model = WideResNet50x2(rngs=None)
    # stem 1 + layer1: 3 blocks x 3 convs + 1 projection
    assert _count_convs(model, ("layer1",)) == 1 + 10
    assert _count_convs(model, ("layer1", "layer2")) == 1 + 10 + 13
    assert _count_convs(model, ("layer3",)) == 1 + 10 + 13 + 19
    assert set(model(np.zeros((1, 32, 32, 3), np.float32), ("layer2",))) == {"layer2"}


def test_layer3_only_model_refuses_layer4():
    from csad_jax.errors import ConfigError

    model = WideResNet50x2(last_stage="layer3", rngs=None)
    assert "layer4" not in model.channels
    with pytest.raises(ConfigError, match="layer4"):
        model(np.zeros((1, 32, 32, 3), np.float32), stages=("layer4",))
    with pytest.raises(ConfigError, match=r"\[B, H, W, 3\]"):
        model(np.zeros((1, 3, 32, 32), np.float32))
