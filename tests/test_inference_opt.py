"""csad_jax.inference_opt: fast depthwise convolutions with identical numbers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from csad_jax import inference_opt as io
from csad_jax import model as model_lib
from csad_jax.backbones import FrozenConv, tf_same_padding


@pytest.mark.parametrize(
    ("kernel", "stride", "size", "pads"),
    [
        (3, 1, 9, ((1, 1), (1, 1))),
        (5, 2, 10, tf_same_padding(10, 5, 2)),
        (3, 2, 8, ((0, 1), (0, 1))),
        (5, 1, 6, ((0, 0), (2, 3))),
    ],
)
def test_depthwise_conv2d_equals_the_grouped_convolution(kernel, stride, size, pads):
    if isinstance(pads[0], int):  # tf_same_padding gives one (lo, hi) pair
        pads = (pads, pads)
    rng = np.random.default_rng(kernel * 10 + stride)
    x = jnp.asarray(rng.standard_normal((2, size, size, 6)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((kernel, kernel, 1, 6)), jnp.float32)
    expected = jax.lax.conv_general_dilated(
        x,
        w,
        (stride, stride),
        pads,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=6,
        precision=jax.lax.Precision.HIGHEST,
    )
    got = io.depthwise_conv2d(x, w, stride, pads)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


class Net(nnx.Module):
    """Depthwise convs as an attribute and inside a List, plus a plain conv."""

    def __init__(self):
        rngs = nnx.Rngs(0)
        self.dw = FrozenConv(4, 4, 3, padding=1, groups=4, rngs=rngs)
        self.blocks = nnx.List(
            [FrozenConv(4, 4, 5, stride=2, padding="tf_same", groups=4, rngs=rngs)]
        )
        self.pw = FrozenConv(4, 8, 1, rngs=rngs)
        self.grouped = FrozenConv(4, 4, 3, padding=1, groups=2, rngs=rngs)

    def __call__(self, x):
        return self.pw(self.blocks[0](self.grouped(self.dw(x))))


def test_swapped_network_keeps_state_and_outputs():
    net = Net()
    x = jnp.asarray(np.random.default_rng(0).standard_normal((1, 11, 11, 4)))
    x = x.astype(jnp.float32)
    before = net(x)
    digest = model_lib.weights_hash(net)
    copy, changes = io.optimized_copy(net)
    assert changes == {"depthwise_convs": 2}
    assert type(net.dw) is FrozenConv  # the original is left alone
    assert isinstance(copy.dw, io.ShiftedDepthwiseConv)
    assert isinstance(copy.blocks[0], io.ShiftedDepthwiseConv)
    assert type(copy.pw) is FrozenConv and type(copy.grouped) is FrozenConv
    assert copy.dw.kernel.get_value() is net.dw.kernel.get_value()
    assert model_lib.weights_hash(copy) == digest
    np.testing.assert_allclose(copy(x), before, rtol=1e-5, atol=1e-6)
    assert io.use_fast_depthwise(copy) == 0  # idempotent


def test_efficientnet_lite0_depthwise_convolutions_are_all_found():
    from csad_jax.backbones.efficientnet_lite import EfficientNetLite

    lite = nnx.eval_shape(lambda: EfficientNetLite(classifier=False))
    assert io.use_fast_depthwise(lite) == 16  # one per block of Lite0
    assert all(not io.is_depthwise(m) for _, m in nnx.iter_modules(lite))
