"""Frozen ImageNet backbones (WideResNet-50-2, EfficientNet-Lite) in Flax NNX.

Every pretrained weight and statistic is a `Frozen` variable, so optimisers built
with `wrt=nnx.Param` never train them. Backbones take ImageNet-normalised NHWC
images and return a dict of named stage outputs `layer1..layer4` (strides 4, 8,
16, 32). See docs/architecture.md ("Backbones") for the contract.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from csad_jax.errors import ConfigError


class Frozen(nnx.Variable):
    """A pretrained backbone weight or BatchNorm statistic: never trained."""


def torch_uniform(rngs: nnx.Rngs | None, fan_in: int, shape) -> jax.Array:
    """PyTorch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)) init, drawn in NumPy.

    Same distribution as `layers.torch_uniform_init`, but seeded from one key of
    `rngs.params` and drawn with NumPy: eager jax.random would compile once per
    weight shape (~20 s for a backbone on CPU), NumPy needs well under a second.
    Zeros (a placeholder for `convert.merge_strict`) if rngs is None.
    """
    if rngs is None:
        return jnp.zeros(shape, jnp.float32)
    seed = np.asarray(jax.random.key_data(rngs.params())).ravel().tolist()
    bound = 1.0 / math.sqrt(fan_in)
    draw = np.random.default_rng(seed).uniform(-bound, bound, shape)
    return jnp.asarray(draw, jnp.float32)


def tf_same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow 'SAME' padding of one spatial axis as an explicit (lo, hi) pair.

    The total is max((ceil(size / stride) - 1) * stride + kernel - size, 0); the
    odd pixel goes to the bottom/right, as in TensorFlow.
    """
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class FrozenConv(nnx.Module):
    """A bias-free `torch.nn.Conv2d` in NHWC with a frozen HWIO kernel."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int = 1,
        padding: int | str = 0,
        groups: int = 1,
        rngs: nnx.Rngs | None = None,
    ):
        """Builds the kernel [k, k, in / groups, out].

        Args:
          in_channels, out_channels, kernel_size, stride, groups: as in PyTorch.
          padding: symmetric pixels per side, or "tf_same" for TensorFlow-style
            padding computed from the input size (explicit, possibly asymmetric).
          rngs: PyTorch-default uniform init if given; zeros (to be filled by
            `convert.merge_strict`) if None.
        """
        shape = (kernel_size, kernel_size, in_channels // groups, out_channels)
        fan_in = in_channels // groups * kernel_size * kernel_size
        self.kernel = Frozen(torch_uniform(rngs, fan_in, shape))
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.groups = groups

    def _pads(self, h: int, w: int) -> tuple[tuple[int, int], tuple[int, int]]:
        if self.padding == "tf_same":
            k, s = self.kernel_size, self.stride
            return tf_same_padding(h, k, s), tf_same_padding(w, k, s)
        p = int(self.padding)
        return (p, p), (p, p)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Convolves x [B, H, W, Cin] -> [B, h, w, Cout]."""
        return jax.lax.conv_general_dilated(
            x,
            self.kernel[...],
            window_strides=(self.stride, self.stride),
            padding=self._pads(x.shape[1], x.shape[2]),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=self.groups,
        )


class FrozenBatchNorm(nnx.Module):
    """Inference-only BatchNorm with frozen affine parameters and statistics."""

    def __init__(self, channels: int, *, eps: float = 1e-5):
        """PyTorch's initial values: scale 1, bias 0, mean 0, var 1."""
        self.scale = Frozen(jnp.ones((channels,), jnp.float32))
        self.bias = Frozen(jnp.zeros((channels,), jnp.float32))
        self.mean = Frozen(jnp.zeros((channels,), jnp.float32))
        self.var = Frozen(jnp.ones((channels,), jnp.float32))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        """Normalises x [..., C] with the stored (eval) statistics."""
        inv = self.scale[...] * jax.lax.rsqrt(self.var[...] + self.eps)
        return (x - self.mean[...]) * inv + self.bias[...]


class FrozenLinear(nnx.Module):
    """A `torch.nn.Linear` with a frozen [in, out] kernel and bias."""

    def __init__(self, in_features: int, out_features: int, *, rngs=None):
        """PyTorch-default uniform init if rngs is given, zeros otherwise."""
        self.kernel = Frozen(
            torch_uniform(rngs, in_features, (in_features, out_features))
        )
        self.bias = Frozen(torch_uniform(rngs, in_features, (out_features,)))

    def __call__(self, x: jax.Array) -> jax.Array:
        """Maps x [..., in] -> [..., out]."""
        return x @ self.kernel[...] + self.bias[...]


def check_stages(
    stages: tuple[str, ...], available: tuple[str, ...], name: str
) -> tuple[str, ...]:
    """Validates requested stage names; returns them as a tuple."""
    stages = (stages,) if isinstance(stages, str) else tuple(stages)
    bad = [s for s in stages if s not in available]
    if bad or not stages:
        raise ConfigError(
            f"{name}: unknown or unavailable stage(s) {bad or '(none requested)'};"
            f" available: {', '.join(available)}"
        )
    return stages


def check_images(images: jax.Array, name: str) -> None:
    """Raises ConfigError unless images is [B, H, W, 3]."""
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ConfigError(
            f"{name}: images must be [B, H, W, 3] (NHWC), got shape "
            f"{tuple(images.shape)}"
        )


# The loaders import the modules above, so they come last.
from csad_jax.backbones.weights import (  # noqa: E402
    BACKBONES,
    WEIGHT_SETS,
    load_backbone,
    load_params,
)

__all__ = [
    "BACKBONES",
    "WEIGHT_SETS",
    "Frozen",
    "FrozenBatchNorm",
    "FrozenConv",
    "FrozenLinear",
    "load_backbone",
    "load_params",
]
