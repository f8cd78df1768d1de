"""Component segmentation network: frozen backbone + DeepLabV3+-style decoder.

The decoder follows the official `Segmentor` (method-spec §3.2): a 1x1 low-level
reduction of layer1, ASPP on layer3 (1x1, three dilated 3x3, image pooling),
a 1x1 fusion, upsampling to the layer1 grid, two 3x3 conv-BN-ReLU, a 1x1
classifier with bias, and bilinear upsampling to the input size. It outputs
K = N_cls + 1 logits per pixel (channel 0 = background).

How the backbone is held: `ComponentSegmentor` keeps a reference to a frozen
backbone (its weights are `csad_jax.backbones.Frozen`, so `nnx.Param` filters
select the decoder only) and a separate `decoder` sub-module holding every
trained weight and BatchNorm statistic. `__call__(images)` runs both;
`decode(features)` takes precomputed backbone features, so a fused model can
run one shared backbone pass for the segmentor and the LGST teacher. Training
and checkpoints handle `model.decoder` alone.

BatchNorm reproduces PyTorch's training semantics (`TorchBatchNorm`): momentum
0.999 in PyTorch's convention (running stats are almost the last batch's) and an
unbiased running variance.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from csad_jax.errors import ConfigError
from csad_jax.models import layers


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    """Decoder widths and BatchNorm settings.

    Attributes:
      aspp_channels: channels of every ASPP branch and of the fusion (256).
      low_channels: channels of the low-level reduction (48).
      head_channels: channels of the two 3x3 head convolutions (256).
      aspp_rates: dilations of the three 3x3 ASPP branches (6, 12, 18).
      bn_momentum: PyTorch-convention momentum, the weight of the NEW batch
        statistic in the running average (official 0.999).
      bn_eps: BatchNorm epsilon.
      unbiased_running_var: update running variances with n / (n - 1) times
        the batch variance, as PyTorch does.
    """

    aspp_channels: int = 256
    low_channels: int = 48
    head_channels: int = 256
    aspp_rates: tuple[int, ...] = (6, 12, 18)
    bn_momentum: float = 0.999
    bn_eps: float = 1e-5
    unbiased_running_var: bool = True


class TorchBatchNorm(nnx.Module):
    """BatchNorm over [B, H, W, C] with PyTorch's running-statistics update.

    Training mode normalises with the biased batch variance and updates
    running_mean += m (mean - running_mean), running_var likewise with the
    unbiased variance (PyTorch momentum m; Flax's momentum would be 1 - m).
    """

    def __init__(self, channels: int, cfg: DecoderConfig):
        self.scale = nnx.Param(jnp.ones((channels,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((channels,), jnp.float32))
        self.mean = nnx.BatchStat(jnp.zeros((channels,), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones((channels,), jnp.float32))
        self.momentum = cfg.bn_momentum
        self.eps = cfg.bn_eps
        self.unbiased = cfg.unbiased_running_var

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """Normalises x [B, H, W, C]; in training also updates running stats."""
        if train:
            mean = jnp.mean(x, axis=(0, 1, 2))
            var = jnp.mean(jnp.square(x - mean), axis=(0, 1, 2))
            n = x.shape[0] * x.shape[1] * x.shape[2]
            run_var = var * (n / max(n - 1, 1)) if self.unbiased else var
            m = self.momentum
            self.mean[...] = jax.lax.stop_gradient(
                (1.0 - m) * self.mean[...] + m * mean
            )
            self.var[...] = jax.lax.stop_gradient(
                (1.0 - m) * self.var[...] + m * run_var
            )
        else:
            mean, var = self.mean[...], self.var[...]
        inv = self.scale[...] * jax.lax.rsqrt(var + self.eps)
        return (x - mean) * inv + self.bias[...]


class ConvBNReLU(nnx.Module):
    """Bias-free conv (PyTorch init, symmetric padding) -> BatchNorm -> ReLU."""

    def __init__(self, cin, cout, kernel, cfg, *, padding=0, dilation=1, rngs):
        self.conv = layers.conv2d(
            cin,
            cout,
            kernel,
            padding=padding,
            dilation=dilation,
            use_bias=False,
            rngs=rngs,
        )
        self.bn = TorchBatchNorm(cout, cfg)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """x [B, H, W, cin] -> [B, H', W', cout]."""
        return jax.nn.relu(self.bn(self.conv(x), train=train))


class ASPP(nnx.Module):
    """Atrous spatial pyramid pooling: 1x1, dilated 3x3 branches, image pool."""

    def __init__(self, cin: int, cfg: DecoderConfig, *, rngs: nnx.Rngs):
        c = cfg.aspp_channels
        self.c0 = ConvBNReLU(cin, c, 1, cfg, rngs=rngs)
        self.atrous = nnx.List(
            [
                ConvBNReLU(cin, c, 3, cfg, padding=r, dilation=r, rngs=rngs)
                for r in cfg.aspp_rates
            ]
        )
        self.pool = ConvBNReLU(cin, c, 1, cfg, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """x [B, h, w, cin] -> [B, h, w, (2 + n_rates) * aspp_channels]."""
        b, h, w, _ = x.shape
        outs = [self.c0(x, train=train)]
        outs += [branch(x, train=train) for branch in self.atrous]
        pooled = self.pool(jnp.mean(x, axis=(1, 2), keepdims=True), train=train)
        outs.append(layers.resize_bilinear(pooled, (h, w)))
        return jnp.concatenate(outs, axis=-1)


class SegmentationDecoder(nnx.Module):
    """The trained part of the segmentor (DeepLabV3+-style head).

    Args:
      low_in: channels of the low-level (stride 4) feature.
      high_in: channels of the high-level (stride 16) feature.
      num_outputs: K = N_cls + 1.
      cfg: widths and BatchNorm settings.
      rngs: random streams for PyTorch-default initialisation.
    """

    def __init__(self, low_in, high_in, num_outputs, cfg: DecoderConfig, *, rngs):
        n_branches = 2 + len(cfg.aspp_rates)
        self.reduce = ConvBNReLU(low_in, cfg.low_channels, 1, cfg, rngs=rngs)
        self.aspp = ASPP(high_in, cfg, rngs=rngs)
        self.fc1 = ConvBNReLU(
            n_branches * cfg.aspp_channels, cfg.aspp_channels, 1, cfg, rngs=rngs
        )
        self.fc2_conv1 = ConvBNReLU(
            cfg.aspp_channels + cfg.low_channels,
            cfg.head_channels,
            3,
            cfg,
            padding=1,
            rngs=rngs,
        )
        self.fc2_conv2 = ConvBNReLU(
            cfg.head_channels, cfg.head_channels, 3, cfg, padding=1, rngs=rngs
        )
        self.classifier = layers.conv2d(
            cfg.head_channels, num_outputs, 1, use_bias=True, rngs=rngs
        )

    def __call__(
        self,
        low: jax.Array,
        high: jax.Array,
        out_size: tuple[int, int],
        *,
        train: bool = False,
    ) -> jax.Array:
        """Logits from the two backbone features.

        Args:
          low: [B, h4, w4, low_in] stride-4 feature (layer1).
          high: [B, h16, w16, high_in] stride-16 feature (layer3).
          out_size: (H, W) of the input image.
          train: batch statistics + running-stat update (True) or running stats.

        Returns:
          [B, H, W, K] logits.
        """
        h, w = out_size
        low = self.reduce(low, train=train)
        high = layers.resize_bilinear(high, (h // 16, w // 16))
        x = self.fc1(self.aspp(high, train=train), train=train)
        x = layers.resize_bilinear(x, low.shape[1:3])
        x = jnp.concatenate([x, low], axis=-1)
        x = self.fc2_conv2(self.fc2_conv1(x, train=train), train=train)
        return layers.resize_bilinear(self.classifier(x), (h, w))


class ComponentSegmentor(nnx.Module):
    """Frozen backbone + trained decoder; predicts K = N_cls + 1 class logits.

    Args:
      backbone: a frozen backbone (`csad_jax.backbones.load_backbone`), called
        as `backbone(images, stages=...)` and exposing `channels`.
      num_classes: N_cls, the number of foreground component classes.
      cfg: decoder widths and BatchNorm settings.
      stages: (low-level stride-4 stage, high-level stride-16 stage).
      rngs: random streams for the decoder's initialisation.
    """

    def __init__(
        self,
        backbone,
        num_classes: int,
        cfg: DecoderConfig = DecoderConfig(),
        *,
        stages: tuple[str, str] = ("layer1", "layer3"),
        rngs: nnx.Rngs,
    ):
        if num_classes < 1:
            raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
        missing = [s for s in stages if s not in backbone.channels]
        if len(stages) != 2 or missing:
            raise ConfigError(
                f"segmentor stages {stages} not offered by the backbone "
                f"(available: {', '.join(backbone.channels)})"
            )
        self.backbone = backbone
        self.stages = tuple(stages)
        self.num_outputs = num_classes + 1
        self.decoder = SegmentationDecoder(
            backbone.channels[stages[0]],
            backbone.channels[stages[1]],
            self.num_outputs,
            cfg,
            rngs=rngs,
        )

    def features(self, images: jax.Array) -> dict[str, jax.Array]:
        """Backbone features {stage: [B, h, w, C]} of normalised images [B,H,W,3]."""
        return self.backbone(images, stages=self.stages)

    def decode(
        self,
        features: dict[str, jax.Array],
        out_size: tuple[int, int],
        *,
        train: bool = False,
    ) -> jax.Array:
        """Logits [B, H, W, K] from precomputed backbone features.

        Args:
          features: {stage: [B, h, w, C]} holding at least `self.stages`.
          out_size: (H, W) of the images the features come from.
          train: BatchNorm in training mode (updates running statistics).
        """
        low, high = (features[s] for s in self.stages)
        return self.decoder(low, high, out_size, train=train)

    def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
        """Logits [B, H, W, K] of ImageNet-normalised images [B, H, W, 3]."""
        b, h, w, c = images.shape
        return self.decode(self.features(images), (h, w), train=train)


@nnx.jit
def segment(
    model: ComponentSegmentor, images: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Inference (running BatchNorm statistics): logits and label map.

    Args:
      model: a trained segmentor.
      images: [B, H, W, 3] float32, ImageNet-normalised.

    Returns:
      (logits [B, H, W, K] float32, label_map [B, H, W] int32 = argmax).
    """
    logits = model(images, train=False)
    return logits, jnp.argmax(logits, axis=-1).astype(jnp.int32)
