"""LGST global student: the official `AutoEncoder` (method-spec §5.3).

Encoder: five 4x4 stride-2 convolutions (pad 1) and a bottleneck convolution
whose kernel covers the remaining S/32 x S/32 map, giving a 1x1 code. Decoder:
six (bilinear resize -> 4x4 conv pad 2 -> ReLU -> dropout 0.2) blocks, a resize
to the feature grid S/4 and two 3x3 convolutions. For S = 256 the resize targets
are 3, 8, 15, 32, 63, 127 and then 64, exactly as official; for another size S
(a multiple of 64, at least 128) they follow the same formula in f = S/4:
f/16 - 1, f/8, f/4 - 1, f/2, f - 1, 2f - 1, then f. Convolutions use
`fast_conv2d` (see `local_student`) for a fast kernel gradient on CPU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from csad_jax.errors import ConfigError
from csad_jax.models.layers import resize_bilinear
from csad_jax.models.local_student import fast_conv2d

DROPOUT_RATE = 0.2


def check_image_size(size: int) -> None:
    """Raises ConfigError unless the global student accepts `size`."""
    if size < 128 or size % 64:
        raise ConfigError(
            f"global student cannot take {size}x{size} images; it accepts square "
            "sizes that are multiples of 64 and at least 128 (128, 192, 256, ...)"
        )


def decoder_sizes(size: int) -> tuple[int, ...]:
    """Resize targets of the decoder for input side `size` (256 -> 3, ..., 64)."""
    check_image_size(size)
    f = size // 4
    return (f // 16 - 1, f // 8, f // 4 - 1, f // 2, f - 1, 2 * f - 1, f)


class GlobalStudent(nnx.Module):
    """Autoencoder predicting teacher features from a 1x1 bottleneck code.

    Args:
      image_size: square input side S (see `check_image_size`).
      out_dim: output channels D.
      base_dim: channels of enconv3..6 and the decoder (official 64); enconv1
        and enconv2 use base_dim // 2.
      dropout_rate: dropout after deconv1..6 in training (official 0.2).
      rngs: NNX random streams for initialisation.
    """

    def __init__(
        self,
        image_size: int = 256,
        out_dim: int = 512,
        base_dim: int = 64,
        dropout_rate: float = DROPOUT_RATE,
        *,
        rngs: nnx.Rngs,
    ):
        self.sizes = decoder_sizes(image_size)
        self.image_size = image_size
        self.dropout_rate = dropout_rate
        half, c = base_dim // 2, base_dim
        enc = [(3, half), (half, half), (half, c), (c, c), (c, c)]
        self.encoder = nnx.List(
            [fast_conv2d(i, o, 4, stride=2, padding=1, rngs=rngs) for i, o in enc]
        )
        self.bottleneck = fast_conv2d(c, c, image_size // 32, rngs=rngs)
        self.decoder = nnx.List(
            [fast_conv2d(c, c, 4, padding=2, rngs=rngs) for _ in range(6)]
        )
        self.deconv7 = fast_conv2d(c, c, 3, padding=1, rngs=rngs)
        self.deconv8 = fast_conv2d(c, out_dim, 3, padding=1, rngs=rngs)

    def __call__(self, images: jax.Array, *, dropout_rng=None) -> jax.Array:
        """Reconstructed teacher features.

        Args:
          images: [B, S, S, 3] ImageNet-normalised.
          dropout_rng: PRNG key enabling training-mode dropout; None = eval.

        Returns:
          [B, S/4, S/4, D].
        """
        _, h, w, _ = images.shape
        if (h, w) != (self.image_size, self.image_size):
            raise ConfigError(
                f"global student built for {self.image_size}x{self.image_size} "
                f"images got {h}x{w}"
            )
        x = images
        for conv in self.encoder:
            x = jax.nn.relu(conv(x))
        x = self.bottleneck(x)
        keys = [None] * 6 if dropout_rng is None else jax.random.split(dropout_rng, 6)
        for conv, size, key in zip(self.decoder, self.sizes[:6], keys, strict=True):
            x = jax.nn.relu(conv(resize_bilinear(x, (size, size))))
            x = self._dropout(x, key)
        x = resize_bilinear(x, (self.sizes[6], self.sizes[6]))
        x = jax.nn.relu(self.deconv7(x))
        return self.deconv8(x)

    def _dropout(self, x: jax.Array, key) -> jax.Array:
        """PyTorch-style inverted dropout; identity when `key` is None."""
        if key is None or self.dropout_rate == 0:
            return x
        keep = jax.random.bernoulli(key, 1.0 - self.dropout_rate, x.shape)
        return jnp.where(keep, x / (1.0 - self.dropout_rate), 0.0)
