"""Inference speed-up of the networks that keeps their numbers.

XLA's CPU backend runs a depthwise convolution (`feature_group_count` equal
to the channels) through a slow generic grouped-convolution path. Written as
k x k shifted, strided slices times per-channel weights, summed, XLA fuses
the depthwise convolution into one vectorised loop instead. Measured on this
2-core CPU (jax 0.10.2, interleaved, machine shared): EfficientNet-Lite0 up
to layer3 at 128 px 0.63 -> 0.10 s at batch 8, 0.12 -> 0.06 s at batch 1;
fused inference of the former 128 px fast preset 0.51 -> 0.22 s at batch 8
(`csad bench --compare-plain`). Training uses it too (Lite0 layer1 + layer3 at 192 px,
batch 4: 0.35 -> 0.08 s, measured while another job ran). The result equals
the convolution up to float32 summation order (~5e-7 relative on Lite0
layer3).

`use_fast_depthwise(module)` swaps every depthwise `FrozenConv` inside a module
for `ShiftedDepthwiseConv`, which shares the same frozen kernel variable (same
state paths, same weights hash). WideResNet-50-2 has no depthwise convolution.

`optimized_copy(nets)` does this on a copy of the networks (arrays are
shared, not copied).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from csad_jax.backbones import FrozenConv


def depthwise_conv2d(
    x: jax.Array,
    kernel: jax.Array,
    stride: int,
    padding: tuple[tuple[int, int], tuple[int, int]],
) -> jax.Array:
    """Depthwise convolution as a fused sum of shifted, strided slices.

    Args:
      x: [B, H, W, C].
      kernel: [k, k, 1, C] (HWIO with one input channel per group).
      stride: spatial stride.
      padding: ((top, bottom), (left, right)) zero padding.

    Returns:
      [B, (H + top + bottom - k) // stride + 1, (W + ...) // stride + 1, C],
      equal to `lax.conv_general_dilated(..., feature_group_count=C)`.
    """
    kh, kw, _, c = kernel.shape
    x = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
    b, hp, wp, _ = x.shape
    h, w = (hp - kh) // stride + 1, (wp - kw) // stride + 1
    out = None
    for i in range(kh):
        for j in range(kw):
            tap = jax.lax.slice(
                x,
                (0, i, j, 0),
                (b, i + (h - 1) * stride + 1, j + (w - 1) * stride + 1, c),
                (1, stride, stride, 1),
            )
            term = tap * kernel[i, j, 0]
            out = term if out is None else out + term
    return out


class ShiftedDepthwiseConv(FrozenConv):
    """A depthwise `FrozenConv` computed by `depthwise_conv2d`."""

    @classmethod
    def like(cls, conv: FrozenConv) -> ShiftedDepthwiseConv:
        """The same convolution, sharing `conv.kernel` (no copy)."""
        k, _, _, channels = conv.kernel.get_value().shape
        new = cls(
            channels,
            channels,
            k,
            stride=conv.stride,
            padding=conv.padding,
            groups=conv.groups,
            rngs=None,
        )
        new.kernel = conv.kernel
        return new

    def __call__(self, x: jax.Array) -> jax.Array:
        """Convolves x [B, H, W, C] -> [B, h, w, C]."""
        pads = self._pads(x.shape[1], x.shape[2])
        return depthwise_conv2d(x, self.kernel[...], self.stride, pads)


def is_depthwise(conv) -> bool:
    """True for a FrozenConv with one input channel per group (groups > 1)."""
    if not isinstance(conv, FrozenConv) or isinstance(conv, ShiftedDepthwiseConv):
        return False
    shape = conv.kernel.get_value().shape
    return conv.groups > 1 and shape[2] == 1 and shape[3] == conv.groups


def use_fast_depthwise(module: nnx.Module) -> int:
    """Swaps every depthwise FrozenConv in `module` in place; returns the count.

    The swapped convolutions share their kernel variables, so the module's
    state (paths and values) is unchanged; only its graph definition differs.
    Split the module again (`nnx.split`) after calling this.
    """
    swaps = []
    for _, parent in nnx.iter_modules(module):
        if isinstance(parent, nnx.List):
            children = list(enumerate(parent))
        else:
            children = list(vars(parent).items())
        swaps += [(parent, key, c) for key, c in children if is_depthwise(c)]
    for parent, key, conv in swaps:
        if isinstance(parent, nnx.List):
            parent[key] = ShiftedDepthwiseConv.like(conv)
        else:
            setattr(parent, key, ShiftedDepthwiseConv.like(conv))
    return len(swaps)


def optimized_copy(module: nnx.Module) -> tuple[nnx.Module, dict[str, int]]:
    """A copy of `module` with fast depthwise convolutions, and the swap count.

    Returns:
      (copy, {"depthwise_convs": n}); the arrays are shared with `module`,
      which is left as it was.
    """
    copy = nnx.clone(module)
    return copy, {"depthwise_convs": use_fast_depthwise(copy)}
