"""Layers with PyTorch semantics: symmetric padding, bilinear resize, pooling.

Every convolution ported from the official code uses explicit symmetric padding
(never 'SAME'), PyTorch's default initialisation, and bilinear resizes follow
`F.interpolate(mode="bilinear", align_corners=False)` without antialiasing.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx


def torch_uniform_init(fan_in: int):
    """PyTorch's default conv init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

    kaiming_uniform with a = sqrt(5) reduces to this bound for the weights, and
    PyTorch draws biases from the same interval.
    """
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def conv2d(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    *,
    stride: int = 1,
    padding: int = 0,
    dilation: int = 1,
    use_bias: bool = True,
    rngs: nnx.Rngs,
) -> nnx.Conv:
    """A `torch.nn.Conv2d` equivalent in NHWC with HWIO kernels.

    Args:
      in_channels, out_channels: channel counts.
      kernel_size: square kernel side.
      stride, padding, dilation: as in PyTorch; padding is symmetric.
      use_bias: add a bias (PyTorch's `bias=`).
      rngs: NNX random streams for initialisation.
    """
    init = torch_uniform_init(in_channels * kernel_size * kernel_size)
    return nnx.Conv(
        in_channels,
        out_channels,
        kernel_size=(kernel_size, kernel_size),
        strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
        kernel_dilation=(dilation, dilation),
        use_bias=use_bias,
        kernel_init=init,
        bias_init=init,
        rngs=rngs,
    )


def resize_bilinear(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Bilinear resize matching PyTorch `align_corners=False`, no antialiasing.

    Args:
      x: [B, H, W, C].
      size: (h, w) target.

    Returns:
      [B, h, w, C] in x's dtype.
    """
    b, h, w, c = x.shape
    if (h, w) == tuple(size):
        return x
    return jax.image.resize(
        x, (b, size[0], size[1], c), method="bilinear", antialias=False
    )


def avg_pool(x: jax.Array, window: int, stride: int, padding: int) -> jax.Array:
    """Average pooling that counts padded zeros (PyTorch `AvgPool2d` default).

    Args:
      x: [B, H, W, C].
      window, stride, padding: square pooling window, stride and symmetric pad.

    Returns:
      [B, h, w, C] with h = (H + 2 * padding - window) // stride + 1.
    """
    if padding:
        x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    summed = jax.lax.reduce_window(
        x,
        0.0,
        jax.lax.add,
        (1, window, window, 1),
        (1, stride, stride, 1),
        "VALID",
    )
    return summed / float(window * window)
