"""LGST teacher: frozen backbone stages + fixed random 1x1 projection.

Follows the official `ResNetTeacher` (method-spec §5.1): two backbone stages
(strides 8 and 16) are bilinearly resized to the feature grid (input / 4),
concatenated, average pooled 3x3 (stride 1, pad 1, padded zeros counted) and
projected by a 1x1 convolution that is randomly initialised with PyTorch's
default and never trained. Teacher outputs are used normalised by the channel
statistics of the training images (`TeacherStats`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from csad_jax.errors import ConfigError
from csad_jax.models.layers import avg_pool, resize_bilinear, torch_uniform_init

# fold_in constant giving the projection its own random stream.
PROJECTION_STREAM = 0x7EAC


class Buffer(nnx.Variable):
    """A fixed array saved with the model but never trained (a PyTorch buffer)."""


@struct.dataclass
class TeacherStats:
    """Channel mean and std of teacher features over the training images.

    Attributes:
      mean, std: float32 [1, 1, 1, D].
    """

    mean: jax.Array
    std: jax.Array

    def normalize(self, features: jax.Array) -> jax.Array:
        """(t - mean) / std for teacher features [B, h, w, D]."""
        return (features - self.mean) / self.std


class Teacher(nnx.Module):
    """Frozen backbone stages resized, pooled and projected to D channels.

    Args:
      backbone: callable `backbone(images, stages=(...)) -> {stage: [B, h, w, C]}`
        (e.g. `csad_jax.backbones.load_backbone(...)`); its weights should not be
        `nnx.Param` so that they stay frozen.
      channels: stage name -> channel count (`backbone.channels`).
      stages: the two stages used (official: layer2 and layer3).
      out_dim: projection channels D (official 512).
      seed: seed of the projection's own random stream.
    """

    def __init__(
        self,
        backbone: Callable[..., Mapping[str, jax.Array]],
        channels: Mapping[str, int],
        *,
        stages: Iterable[str] = ("layer2", "layer3"),
        out_dim: int = 512,
        seed: int = 0,
    ):
        self.backbone = backbone
        self.stages = tuple(stages)
        missing = [s for s in self.stages if s not in channels]
        if missing:
            raise ConfigError(
                f"teacher stages {missing} not in backbone stages {sorted(channels)}"
            )
        in_dim = sum(int(channels[s]) for s in self.stages)
        key = jax.random.fold_in(jax.random.key(seed), PROJECTION_STREAM)
        kernel_key, bias_key = jax.random.split(key)
        init = torch_uniform_init(in_dim)
        self.proj_kernel = Buffer(init(kernel_key, (in_dim, out_dim)))
        self.proj_bias = Buffer(init(bias_key, (out_dim,)))
        self.out_dim = out_dim

    def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
        """Teacher features.

        Args:
          images: [B, H, W, 3] ImageNet-normalised, H and W divisible by 4.

        Returns:
          dict with the backbone stages used (as returned by the backbone) and
          "proj": [B, H/4, W/4, D], not normalised, gradient stopped.
        """
        _, h, w, _ = images.shape
        if h % 4 or w % 4:
            raise ConfigError(f"teacher input {h}x{w} is not divisible by 4")
        feats = dict(self.backbone(images, stages=self.stages))
        feats["proj"] = jax.lax.stop_gradient(self.head(feats, (h // 4, w // 4)))
        return feats

    def head(self, features: Mapping[str, jax.Array], grid: tuple[int, int]):
        """The teacher head on precomputed backbone features.

        Args:
          features: {stage: [B, h, w, C]} containing `self.stages`.
          grid: (H / 4, W / 4) feature grid.

        Returns:
          [B, H/4, W/4, D] unnormalised teacher features.
        """
        x = [resize_bilinear(features[s], tuple(grid)) for s in self.stages]
        x = avg_pool(jnp.concatenate(x, axis=-1), 3, 1, 1)
        return x @ self.proj_kernel[...] + self.proj_bias[...]


def fit_teacher_stats(
    teacher_fn: Callable[[jax.Array], jax.Array], batches: Iterable
) -> TeacherStats:
    """Channel mean/std of teacher features over training batches (spec §5.1).

    As official: mean = average over batches of the per-batch mean over
    (B, h, w); var = average over batches of the per-batch mean of (t - mean)^2;
    std = sqrt(var). Computed in one pass via the exact identity
    mean_b (t - mean)^2 = var_b + (mean_b - mean)^2, accumulated in float64.

    Args:
      teacher_fn: images -> projected teacher features [B, h, w, D].
      batches: iterable of image batches [B, H, W, 3] (ImageNet-normalised).

    Returns:
      TeacherStats with float32 [1, 1, 1, D] mean and std.
    """
    batch_means, batch_vars = [], []
    for images in batches:
        t = teacher_fn(images)
        mean_b = jnp.mean(t, axis=(0, 1, 2))
        var_b = jnp.mean(jnp.square(t - mean_b), axis=(0, 1, 2))
        batch_means.append(np.asarray(mean_b, np.float64))
        batch_vars.append(np.asarray(var_b, np.float64))
    if not batch_means:
        raise ConfigError("teacher statistics need at least one training image")
    means, variances = np.stack(batch_means), np.stack(batch_vars)
    mean = means.mean(axis=0)
    var = (variances + np.square(means - mean)).mean(axis=0)
    shape = (1, 1, 1, -1)
    return TeacherStats(
        mean=jnp.asarray(mean.reshape(shape), jnp.float32),
        std=jnp.asarray(np.sqrt(var).reshape(shape), jnp.float32),
    )
