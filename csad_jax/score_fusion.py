"""Trimmed z-normalisation of anomaly scores and their fusion by summation.

One definition serves every place the official code normalises scores (six
copies there): the two patch-histogram detectors (§4.4 of method-spec.md), the
branch scores of the final fusion (§6.1) and the exported model (§6.3).

The rule, on validation scores v of one detector or branch:

1. q_low, q_high = NumPy linear quantiles `low`, `high` of v (0.2, 0.8);
2. V = {v : q_low < v < q_high} (strict inequalities);
3. mean = mean(V), std = population std of V (ddof 0);
4. std is replaced by 1 when std <= `std_floor`. `std_floor=0.0`
   (`TRAINING_STD_FLOOR`, the default) is the official training/benchmark rule
   "skip the division when std == 0"; `std_floor=1e-3` (`EXPORT_STD_FLOOR`) is
   the rule of the official exported model.

Fallback: when V holds fewer than MIN_DISTINCT (3) distinct values, mean and
std are taken over ALL validation scores instead, then step 4 applies.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from csad_jax.errors import ConfigError, DataError

log = logging.getLogger(__name__)

TRAINING_STD_FLOOR = 0.0
EXPORT_STD_FLOOR = 1e-3
MIN_DISTINCT = 3


@struct.dataclass
class TrimmedStats:
    """Mean and std used to z-normalise one detector's or branch's scores."""

    mean: jax.Array  # [] float32
    std: jax.Array  # [] float32, never 0 (already replaced by 1 if too small)


def _as_scores(values, what: str) -> np.ndarray:
    """Return values as a finite, non-empty float64 vector, or raise DataError."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise DataError(f"{what}: expected a non-empty 1-D array, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise DataError(f"{what}: contains NaN or infinite values")
    return arr


def trimmed_values(
    val_scores, low: float = 0.2, high: float = 0.8
) -> tuple[np.ndarray, bool]:
    """Validation scores strictly inside the [low, high] quantile range.

    Args:
      val_scores: [N] raw validation scores.
      low, high: quantile levels (NumPy linear interpolation).

    Returns:
      (kept [M] float64, fallback) where fallback is True when fewer than
      MIN_DISTINCT distinct values were inside the range, in which case `kept`
      is all validation scores.
    """
    if not 0.0 <= low < high <= 1.0:
        raise ConfigError(
            f"trimmed range needs 0 <= low < high <= 1, got {low}, {high}"
        )
    scores = _as_scores(val_scores, "validation scores")
    q_low, q_high = np.quantile(scores, [low, high])
    kept = scores[(scores > q_low) & (scores < q_high)]
    # NOTE: the official code takes the mean of an empty V (NaN scores) or the
    # spread of 1-2 values here; we fall back to all scores (docs/fidelity.md).
    if np.unique(kept).size < MIN_DISTINCT:
        return scores, True
    return kept, False


def fit_trimmed_stats(
    val_scores,
    low: float = 0.2,
    high: float = 0.8,
    *,
    std_floor: float = TRAINING_STD_FLOOR,
) -> TrimmedStats:
    """Trimmed mean and population std of validation scores (rule in module doc).

    Args:
      val_scores: [N] raw validation scores of one detector or branch.
      low, high: quantile levels of the trimming (0.2, 0.8 officially).
      std_floor: std <= std_floor is replaced by 1 (0.0 training rule,
        1e-3 export rule).

    Returns:
      TrimmedStats with float32 scalars.
    """
    kept, fallback = trimmed_values(val_scores, low, high)
    if fallback:
        log.warning(
            "fewer than %d distinct validation scores inside the %.2f-%.2f "
            "quantile range; normalising with all %d validation scores",
            MIN_DISTINCT,
            low,
            high,
            kept.size,
        )
    mean = float(np.mean(kept))
    std = float(np.std(kept))
    if std <= std_floor:
        std = 1.0
    return TrimmedStats(
        mean=jnp.asarray(mean, jnp.float32), std=jnp.asarray(std, jnp.float32)
    )


def normalize(scores: jax.Array, stats: TrimmedStats) -> jax.Array:
    """Z-normalise scores with trimmed validation statistics.

    Args:
      scores: [B] raw scores.
      stats: statistics of the same detector or branch.

    Returns:
      [B] (scores - mean) / std.
    """
    return (jnp.asarray(scores) - stats.mean) / stats.std


def fuse(
    branch_scores: Mapping[object, jax.Array], stats: Mapping[object, TrimmedStats]
) -> jax.Array:
    """Sum of the z-normalised scores of several detectors or branches.

    Args:
      branch_scores: name -> [B] raw scores.
      stats: name -> TrimmedStats; must have exactly the same names.

    Returns:
      [B] fused score.
    """
    if set(branch_scores) != set(stats):
        raise ConfigError(
            f"score fusion: scores for {sorted(map(str, branch_scores))} but "
            f"statistics for {sorted(map(str, stats))}"
        )
    if not branch_scores:
        raise ConfigError("score fusion: no scores to fuse")
    parts = [normalize(branch_scores[k], stats[k]) for k in branch_scores]
    return sum(parts[1:], parts[0])
