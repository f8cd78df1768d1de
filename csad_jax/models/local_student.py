"""LGST local student: a PDN-style CNN with a 33x33 receptive field, two heads.

Layer by layer as the official `LocalStudent` (method-spec §5.2); p = 1 with
padding (used in training and the fused model), 0 without:

  conv1 4x4 pad 3p -> ReLU -> avgpool 2 s2 pad p -> conv2 4x4 pad 3p -> ReLU ->
  avgpool 2 s2 pad p -> conv3 1x1 -> ReLU -> conv4 3x3 pad p -> ReLU ->
  conv5 4x4 -> ReLU -> bilinear resize to the grid (input / 4) ->
  local head (official `conv_st`) and global head (official `conv_ae`), 1x1.

Official widths are 256 (conv1) and 512 (conv2..conv5, heads); both are
configurable so that a narrower student fits a CPU budget.

Stride-1 convolutions of both students run through `conv_fast_weight_grad`:
the same forward convolution, but a kernel gradient computed as a sum of k*k
shifted matrix products, because XLA:CPU's kernel gradient for padded 4x4
convolutions is 10-70x slower than the forward pass.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from csad_jax.errors import ConfigError
from csad_jax.models.layers import avg_pool, conv2d, resize_bilinear

_NHWC = ("NHWC", "HWIO", "NHWC")


def _conv_s1(x, w, padding):
    return jax.lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=_NHWC)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_s1_fast_grad(x, w, padding):
    return _conv_s1(x, w, padding)


def _conv_fwd(x, w, padding):
    return _conv_s1(x, w, padding), (x, w)


def _conv_bwd(padding, residuals, g):
    x, w = residuals
    (dx,) = jax.vjp(lambda x_: _conv_s1(x_, w, padding), x)[1](g)
    xp = jnp.pad(x, ((0, 0), *padding, (0, 0)))
    kh, kw = w.shape[:2]
    h, wd = g.shape[1:3]
    rows = [
        jnp.stack(
            [
                jnp.einsum("bhwc,bhwo->co", xp[:, i : i + h, j : j + wd], g)
                for j in range(kw)
            ]
        )
        for i in range(kh)
    ]
    return dx, jnp.stack(rows).astype(w.dtype)


_conv_s1_fast_grad.defvjp(_conv_fwd, _conv_bwd)


def conv_fast_weight_grad(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count=1,
    precision=None,
    **kwargs,
):
    """`lax.conv_general_dilated` with a fast kernel gradient on CPU.

    Used as `nnx.Conv(conv_general_dilated=...)`. Plain NHWC/HWIO stride-1
    convolutions with explicit padding get a custom VJP (identical forward);
    anything else is passed to `lax.conv_general_dilated` unchanged.
    """
    plain = (
        tuple(window_strides) == (1, 1)
        and all(d in (None, 1) for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
        and feature_group_count == 1
        and not isinstance(padding, str)
        and dimension_numbers
        == jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
    )
    if not plain:
        return jax.lax.conv_general_dilated(
            lhs,
            rhs,
            window_strides,
            padding,
            lhs_dilation,
            rhs_dilation,
            dimension_numbers,
            feature_group_count,
            precision=precision,
            **kwargs,
        )
    padding = tuple(tuple(int(p) for p in pair) for pair in padding)
    return _conv_s1_fast_grad(lhs, rhs, padding)


def fast_conv2d(*args, **kwargs) -> nnx.Conv:
    """`layers.conv2d` (PyTorch init and padding) using `conv_fast_weight_grad`."""
    conv = conv2d(*args, **kwargs)
    conv.conv_general_dilated = conv_fast_weight_grad
    return conv


class LocalStudent(nnx.Module):
    """PDN-style local student with `local_head` and `global_head` outputs.

    Args:
      out_dim: head channels D (the teacher's projection size).
      widths: (conv1 channels, conv2..conv5 channels); official (256, 512).
      padding: the official padding=True variant (grid = input / 4).
      rngs: NNX random streams for initialisation.
    """

    def __init__(
        self,
        out_dim: int = 512,
        widths: tuple[int, int] = (256, 512),
        padding: bool = True,
        *,
        rngs: nnx.Rngs,
    ):
        p = int(padding)
        self.p = p
        w1, w2 = widths
        self.conv1 = fast_conv2d(3, w1, 4, padding=3 * p, rngs=rngs)
        self.conv2 = fast_conv2d(w1, w2, 4, padding=3 * p, rngs=rngs)
        self.conv3 = fast_conv2d(w2, w2, 1, rngs=rngs)
        self.conv4 = fast_conv2d(w2, w2, 3, padding=p, rngs=rngs)
        self.conv5 = fast_conv2d(w2, w2, 4, rngs=rngs)
        self.local_head = fast_conv2d(w2, out_dim, 1, rngs=rngs)
        self.global_head = fast_conv2d(w2, out_dim, 1, rngs=rngs)

    def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
        """Local-student features.

        Args:
          images: [B, H, W, 3] ImageNet-normalised, H and W divisible by 4.

        Returns:
          {"local_head": [B, H/4, W/4, D], "global_head": [B, H/4, W/4, D]}.
        """
        _, h, w, _ = images.shape
        if h % 4 or w % 4 or min(h, w) < 32:
            raise ConfigError(
                f"local student input {h}x{w}: sides must be >= 32 and divisible by 4"
            )
        x = jax.nn.relu(self.conv1(images))
        x = avg_pool(x, 2, 2, self.p)
        x = jax.nn.relu(self.conv2(x))
        x = avg_pool(x, 2, 2, self.p)
        x = jax.nn.relu(self.conv3(x))
        x = jax.nn.relu(self.conv4(x))
        x = jax.nn.relu(self.conv5(x))
        x = resize_bilinear(x, (h // 4, w // 4))
        return {"local_head": self.local_head(x), "global_head": self.global_head(x)}
