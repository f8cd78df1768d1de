"""The five segmentation losses of the component segmentor, as the official code.

Logits are NHWC, `[B, H, W, K]` with K = N_cls + 1 (channel 0 = background);
label maps are integer `[B, H, W]`. Every loss returns a float32 scalar.

Supervised (labelled images): cross-entropy on probabilities, class-balanced
Dice and focal loss. Unsupervised (unlabelled images): histogram matching
against a random labelled map and entropy.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

SMOOTH = 1e-5


def _one_hot(labels: jax.Array, k: int) -> jax.Array:
    return jax.nn.one_hot(labels, k, dtype=jnp.float32)


def cross_entropy_on_probabilities(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """CE with one-hot targets applied to softmax probabilities (double softmax).

    # NOTE: reproduces the official loss, which feeds probabilities (not
    # logits) to a cross-entropy that applies its own log-softmax.

    Args:
      logits: [B, H, W, K].
      labels: int [B, H, W] in [0, K).

    Returns:
      scalar: mean over B, H, W of -log softmax(softmax(logits))[label].
    """
    probs = jax.nn.softmax(logits, axis=-1)
    log_q = jax.nn.log_softmax(probs, axis=-1)
    y = _one_hot(labels, logits.shape[-1])
    return -jnp.mean(jnp.sum(y * log_q, axis=-1))


def class_balanced_dice_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Soft Dice per sample and class, weighted by batch inverse class frequency.

    Weights w_c = (1 / (n_c + 1e-5)) / sum_k 1 / (n_k + 1e-5) with n_c the
    batch pixel count of class c (no gradient). A class absent from the whole
    batch takes almost all the weight, as in the official code.

    Args:
      logits: [B, H, W, K].
      labels: int [B, H, W] in [0, K).

    Returns:
      scalar: mean over the B x K entries of w_c * (1 - dice_{b,c}).
    """
    probs = jax.nn.softmax(logits, axis=-1)
    y = _one_hot(labels, logits.shape[-1])
    counts = jnp.sum(y, axis=(0, 1, 2))
    inv = 1.0 / (counts + SMOOTH)
    weights = jax.lax.stop_gradient(inv / jnp.sum(inv))
    inter = jnp.sum(probs * y, axis=(1, 2))
    denom = jnp.sum(probs, axis=(1, 2)) + jnp.sum(y, axis=(1, 2)) + SMOOTH
    dice = (2.0 * inter + SMOOTH) / (denom + SMOOTH)
    return jnp.mean(weights[None, :] * (1.0 - dice))


def focal_loss(logits: jax.Array, labels: jax.Array, gamma: float = 2.0) -> jax.Array:
    """Focal loss with a clamped one-hot target (alpha = 1 for every class).

    Args:
      logits: [B, H, W, K], K >= 2.
      labels: int [B, H, W] in [0, K).
      gamma: focusing exponent.

    Returns:
      scalar: mean over pixels of -(1 - p_t)^gamma log(p_t), where
      p_t = sum_c clip(y_c, 1e-5 / (K - 1), 1 - 1e-5) p_c + 1e-5.
    """
    k = logits.shape[-1]
    probs = jax.nn.softmax(logits, axis=-1)
    y = jnp.clip(_one_hot(labels, k), SMOOTH / (k - 1), 1.0 - SMOOTH)
    pt = jnp.sum(y * probs, axis=-1) + SMOOTH
    return jnp.mean(-jnp.power(1.0 - pt, gamma) * jnp.log(pt))


def class_histogram_of_labels(labels: jax.Array, k: int) -> jax.Array:
    """Fraction of pixels of each class per map.

    Args:
      labels: int [B, H, W] in [0, k).
      k: number of classes K.

    Returns:
      float32 [B, K], rows sum to 1.
    """
    return jnp.mean(_one_hot(labels, k), axis=(1, 2))


def histogram_loss(logits: jax.Array, rand_gt: jax.Array) -> jax.Array:
    """L1 distance between predicted and reference class histograms.

    # NOTE: the official code sums over foreground classes and averages over
    # the batch; the paper's formula averages over classes.

    Args:
      logits: [B, H, W, K] of unlabelled images.
      rand_gt: int [B, H, W], label maps of random labelled images (any
        resolution; only their class fractions matter).

    Returns:
      scalar: (1 / B) sum_b sum_{c >= 1} |mean_hw p_{b,c} - hist(rand_gt_b)_c|.
    """
    k = logits.shape[-1]
    pred = jnp.mean(jax.nn.softmax(logits, axis=-1), axis=(1, 2))
    target = class_histogram_of_labels(rand_gt, k)
    diff = jnp.abs(pred - target)[:, 1:]
    return jnp.sum(diff) / logits.shape[0]


def entropy_loss(logits: jax.Array) -> jax.Array:
    """Mean prediction entropy term.

    Args:
      logits: [B, H, W, K].

    Returns:
      scalar: mean over B, H, W, K of -p log(p + 1e-5).
    """
    probs = jax.nn.softmax(logits, axis=-1)
    return jnp.mean(-probs * jnp.log(probs + SMOOTH))


@dataclasses.dataclass(frozen=True)
class LossWeights:
    """Weights of the five losses and which published convention they follow.

    Attributes:
      ce, focal, dice, hist, entropy: lambda of each term.
      convention: "official_code" (CE 0.5, Focal 10, Dice 1, Hist 10, Ent 1,
        the YAML values the official code trains with) or "paper_text" (the
        paper's assignment, Dice 10 and Focal 1), or "custom".
    """

    ce: float = 0.5
    focal: float = 10.0
    dice: float = 1.0
    hist: float = 10.0
    entropy: float = 1.0
    convention: str = "official_code"

    @classmethod
    def paper_text(cls) -> LossWeights:
        """The paper's λ assignment (swaps the Dice and Focal weights)."""
        return cls(focal=1.0, dice=10.0, convention="paper_text")


def segmentor_loss(
    logits_l: jax.Array,
    labels_l: jax.Array,
    logits_u: jax.Array,
    rand_gt: jax.Array,
    weights: LossWeights,
    unsup_on: jax.Array,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Total training loss of one iteration and its parts.

    total = ce·CE + focal·Focal + dice·Dice on the labelled batch, plus, once
    `unsup_on` is 1 (after the supervised-only epochs), hist·Hist(unlabelled,
    rand_gt) + entropy·(Ent(unlabelled) + Ent(labelled)).

    Args:
      logits_l: [B, H, W, K] labelled-batch logits.
      labels_l: int [B, H, W] labelled-batch pseudo-labels.
      logits_u: [B, H, W, K] unlabelled-batch logits.
      rand_gt: int [B, h, w] random labelled maps (histogram targets).
      weights: the loss weights.
      unsup_on: float scalar, 0 during the supervised-only phase, else 1.

    Returns:
      (total scalar, {"ce", "focal", "dice", "hist", "entropy_u",
      "entropy_l"} unweighted scalars).
    """
    parts = {
        "ce": cross_entropy_on_probabilities(logits_l, labels_l),
        "focal": focal_loss(logits_l, labels_l),
        "dice": class_balanced_dice_loss(logits_l, labels_l),
        "hist": histogram_loss(logits_u, rand_gt),
        "entropy_u": entropy_loss(logits_u),
        "entropy_l": entropy_loss(logits_l),
    }
    sup = (
        weights.ce * parts["ce"]
        + weights.focal * parts["focal"]
        + weights.dice * parts["dice"]
    )
    unsup = weights.hist * parts["hist"] + weights.entropy * (
        parts["entropy_u"] + parts["entropy_l"]
    )
    return sup + unsup_on * unsup, parts
