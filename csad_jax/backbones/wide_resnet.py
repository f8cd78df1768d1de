"""WideResNet-50-2 (torchvision layout), frozen, NHWC, inference only.

Attribute names mirror torchvision's state-dict names (`conv1`, `bn1`,
`layer1..layer4`, `fc`) so that `convert.convert_wide_resnet` is a short list of
explicit renaming rules. BatchNorm uses its eval statistics with eps 1e-5.
"""

from __future__ import annotations

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
_BLOCKS = (3, 4, 6, 3)
_WIDTHS = (128, 256, 512, 1024)  # bottleneck width: planes * 2 ("wide")
_EXPANSION = 4  # block output = planes * 4 = width * 2
BN_EPS = 1e-5


def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    """`nn.MaxPool2d(3, stride=2, padding=1)`: pads with -inf, symmetric.

    Args:
      x: [B, H, W, C].

    Returns:
      [B, (H - 1) // 2 + 1, (W - 1) // 2 + 1, C].
    """
    return jax.lax.reduce_window(
        x,
        -jnp.inf,
        jax.lax.max,
        (1, 3, 3, 1),
        (1, 2, 2, 1),
        ((0, 0), (1, 1), (1, 1), (0, 0)),
    )


class Downsample(nnx.Module):
    """The 1x1 strided projection shortcut (torchvision `downsample.0/1`)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, *, rngs=None):
        """1x1 conv with the block's stride, then BatchNorm."""
        self.conv = FrozenConv(in_ch, out_ch, 1, stride=stride, rngs=rngs)
        self.bn = FrozenBatchNorm(out_ch, eps=BN_EPS)

    def __call__(self, x: jax.Array) -> jax.Array:
        """[B, H, W, Cin] -> [B, H / stride, W / stride, Cout]."""
        return self.bn(self.conv(x))


class Bottleneck(nnx.Module):
    """torchvision's Bottleneck (ResNet v1.5: the stride sits on the 3x3 conv)."""

    def __init__(self, in_ch: int, width: int, stride: int, *, rngs=None):
        """1x1 reduce to `width`, 3x3 (stride), 1x1 expand to 2 * width."""
        out_ch = width * _EXPANSION // 2
        self.conv1 = FrozenConv(in_ch, width, 1, rngs=rngs)
        self.bn1 = FrozenBatchNorm(width, eps=BN_EPS)
        self.conv2 = FrozenConv(width, width, 3, stride=stride, padding=1, rngs=rngs)
        self.bn2 = FrozenBatchNorm(width, eps=BN_EPS)
        self.conv3 = FrozenConv(width, out_ch, 1, rngs=rngs)
        self.bn3 = FrozenBatchNorm(out_ch, eps=BN_EPS)
        needs_proj = stride != 1 or in_ch != out_ch
        self.downsample = (
            Downsample(in_ch, out_ch, stride, rngs=rngs) if needs_proj else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        """[B, H, W, Cin] -> [B, H / stride, W / stride, 2 * width]."""
        y = jax.nn.relu(self.bn1(self.conv1(x)))
        y = jax.nn.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        shortcut = x if self.downsample is None else self.downsample(x)
        return jax.nn.relu(y + shortcut)


class WideResNet50x2(nnx.Module):
    """Frozen WideResNet-50-2 returning named stage outputs.

    Attributes:
      channels: stage name -> channels (256, 512, 1024, 2048).
      strides: stage name -> stride (4, 8, 16, 32).
      stages: the stages these weights provide (the official CSAD export stops
        at layer3).
    """

    def __init__(
        self,
        *,
        last_stage: str = "layer4",
        classifier: bool = False,
        rngs: nnx.Rngs | None = None,
    ):
        """Builds the trunk up to `last_stage`, plus the ImageNet `fc` if asked.

        Args:
          last_stage: deepest stage to build ("layer3" or "layer4").
          classifier: build the 1000-way `fc` head (needs layer4).
          rngs: PyTorch-default random init if given, zeros if None.
        """
        n_stages = STAGES.index(last_stage) + 1
        self.stages = STAGES[:n_stages]
        self.channels = {s: w * 2 for s, w in zip(self.stages, _WIDTHS, strict=False)}
        self.strides = {s: 4 * 2**i for i, s in enumerate(self.stages)}
        self.conv1 = FrozenConv(3, 64, 7, stride=2, padding=3, rngs=rngs)
        self.bn1 = FrozenBatchNorm(64, eps=BN_EPS)
        in_ch = 64
        for i, stage in enumerate(self.stages):
            blocks = []
            for j in range(_BLOCKS[i]):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(Bottleneck(in_ch, _WIDTHS[i], stride, rngs=rngs))
                in_ch = _WIDTHS[i] * 2
            setattr(self, stage, nnx.List(blocks))
        has_fc = classifier and last_stage == "layer4"
        self.fc = FrozenLinear(2048, 1000, rngs=rngs) if has_fc else None

    def __call__(
        self, images: jax.Array, stages: tuple[str, ...] = DEFAULT_STAGES
    ) -> dict[str, jax.Array]:
        """Runs the trunk up to the deepest requested stage.

        Args:
          images: [B, H, W, 3] float32, ImageNet-normalised.
          stages: names among `layer1..layer4`.

        Returns:
          dict stage -> [B, ceil(H / stride), ceil(W / stride), channels].
        """
        check_images(images, "wide_resnet50_2")
        stages = check_stages(stages, self.stages, "wide_resnet50_2")
        deepest = max(self.stages.index(s) for s in stages)
        x = jax.nn.relu(self.bn1(self.conv1(images)))
        x = max_pool_3x3_s2(x)
        out = {}
        for stage in self.stages[: deepest + 1]:
            for block in getattr(self, stage):
                x = block(x)
            if stage in stages:
                out[stage] = x
        return out

    def classify(self, images: jax.Array) -> jax.Array:
        """ImageNet logits.

        Args:
          images: [B, H, W, 3] float32, ImageNet-normalised.

        Returns:
          [B, 1000] logits.
        """
        if self.fc is None:
            raise ConfigError("wide_resnet50_2: built without the ImageNet fc head")
        x = self(images, stages=("layer4",))["layer4"]
        return self.fc(x.mean(axis=(1, 2)))
