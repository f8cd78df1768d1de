"""PyTorch parity of the shared layers (padding, resize, pooling, init bound)."""

import jax
import numpy as np
import pytest
from flax import nnx

from csad_jax.models import layers

torch = pytest.importorskip("torch")
F = torch.nn.functional


def _nchw(x):
    return torch.from_numpy(np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2))))


@pytest.mark.parametrize(
    "src,dst", [((16, 16), (64, 64)), ((127, 127), (64, 64)), ((3, 5), (8, 15))]
)
def test_resize_bilinear_matches_torch(src, dst):
    x = np.random.default_rng(0).normal(size=(2, *src, 3)).astype(np.float32)
    ours = np.asarray(layers.resize_bilinear(x, dst))
    ref = F.interpolate(_nchw(x), size=dst, mode="bilinear", align_corners=False)
    np.testing.assert_allclose(ours, ref.numpy().transpose(0, 2, 3, 1), atol=1e-5)


@pytest.mark.parametrize("window,stride,pad", [(3, 1, 1), (2, 2, 1), (2, 2, 0)])
def test_avg_pool_counts_padding_like_torch(window, stride, pad):
    x = np.random.default_rng(1).normal(size=(2, 9, 7, 4)).astype(np.float32)
    ours = np.asarray(layers.avg_pool(x, window, stride, pad))
    ref = F.avg_pool2d(_nchw(x), window, stride, pad).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_conv2d_matches_torch_with_same_weights():
    conv = layers.conv2d(3, 5, 4, padding=3, rngs=nnx.Rngs(0))
    x = np.random.default_rng(2).normal(size=(1, 10, 12, 3)).astype(np.float32)
    ref = torch.nn.Conv2d(3, 5, 4, padding=3)
    with torch.no_grad():
        ref.weight.copy_(
            torch.from_numpy(np.array(conv.kernel[...]).transpose(3, 2, 0, 1).copy())
        )
        ref.bias.copy_(torch.from_numpy(np.array(conv.bias[...])))
    with jax.default_matmul_precision("highest"):
        ours = np.asarray(conv(x))
    want = ref(_nchw(x)).detach().numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(ours, want, atol=1e-5)


def test_conv2d_init_bound_is_torch_default():
    conv = layers.conv2d(16, 8, 3, rngs=nnx.Rngs(0))
    bound = 1.0 / np.sqrt(16 * 9)
    kernel = np.asarray(conv.kernel[...])
    assert np.abs(kernel).max() <= bound
    assert np.abs(kernel).max() > 0.9 * bound
