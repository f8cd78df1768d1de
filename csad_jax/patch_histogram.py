"""Class and patch histograms of component maps and their Gaussian scoring.

The patch histogram branch of CSAD (method-spec.md §4): a component label map
[B, H, W] (0 = background, 1..K-1 = component classes) becomes, for a P x P grid
of equal patches, the concatenation of per-patch class-area fractions. Grid 1 is
the paper's "class histogram", grid 2 its "patch histogram" (official patch
sizes 256 and 128 on a 256 x 256 map). A Gaussian fitted on train/good maps
scores a map by the Mahalanobis distance; the two detector distances are
z-normalised with trimmed validation statistics and summed (§4.4).

Patch order (as the official code, which walks the x-offset in the outer loop
and the y-offset in the inner loop): patch index = column * P + row, so for a
2 x 2 grid [top-left, bottom-left, top-right, bottom-right]. The vector is
patch-major: [patch 0 classes 0..K-1, patch 1 classes 0..K-1, ...].

Background slot: `background="zero"` (default, the official training and
scoring code) keeps slot 0 of every patch at 0; `background="fraction"` stores
the background area fraction there, as the official fused export does (§8).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from sklearn.covariance import LedoitWolf

from csad_jax import score_fusion
from csad_jax.errors import ConfigError, DataError

BACKGROUND_MODES = ("zero", "fraction")
GAUSSIAN_METHODS = ("pinv", "ledoit_wolf")
DEFAULT_GRIDS = (1, 2)
PINV_RTOL = 1e-15  # NumPy's default cutoff, relative to the largest singular value
# Maps counted per bincount: a whole large batch leaves the CPU cache and runs
# several times slower per map (experiments/bench_histogram.py).
_MAPS_PER_STEP = 8


def grids_from_patch_sizes(patch_sizes: Sequence[int], map_size: int = 256):
    """Grid sides P for official-style square patch sizes on a square map.

    Args:
      patch_sizes: patch sides in pixels, e.g. (256, 128).
      map_size: side of the label map (256 in the official pipeline).

    Returns:
      tuple of grid sides, e.g. (1, 2).
    """
    for size in patch_sizes:
        if size <= 0 or map_size % size:
            raise ConfigError(
                f"patch size {size} does not tile a {map_size}x{map_size} map"
            )
    return tuple(map_size // size for size in patch_sizes)


def check_label_maps(label_maps, num_classes: int) -> np.ndarray:
    """Refuse label maps a histogram cannot represent; return them as NumPy.

    Args:
      label_maps: [B, H, W] integer component labels in 0..num_classes-1.
      num_classes: K, number of classes including background 0.

    Returns:
      the maps as a NumPy array (unchanged values).
    """
    _check_num_classes(num_classes)
    maps = np.asarray(label_maps)
    if maps.ndim != 3:
        raise DataError(f"label maps must be [B, H, W], got shape {maps.shape}")
    if not np.issubdtype(maps.dtype, np.integer):
        raise DataError(f"label maps must hold integers, got dtype {maps.dtype}")
    if maps.size:
        low, high = int(maps.min()), int(maps.max())
        if low < 0 or high >= num_classes:
            bad = low if low < 0 else high
            raise DataError(
                f"label maps contain label {bad}, outside 0..{num_classes - 1} "
                f"(num_classes={num_classes})"
            )
    return maps


def _check_num_classes(num_classes: int) -> None:
    if not isinstance(num_classes, int | np.integer) or num_classes < 2:
        raise ConfigError(f"num_classes must be an integer >= 2, got {num_classes}")


def _check_static(shape, num_classes: int, grid: int, background: str) -> None:
    """Trace-time checks on shapes and static options."""
    _check_num_classes(num_classes)
    if background not in BACKGROUND_MODES:
        raise ConfigError(f"background must be one of {BACKGROUND_MODES}")
    if len(shape) != 3:
        raise DataError(f"label maps must be [B, H, W], got shape {tuple(shape)}")
    if not isinstance(grid, int) or grid < 1:
        raise ConfigError(f"grid must be a positive integer, got {grid}")
    if shape[1] % grid or shape[2] % grid:
        raise ConfigError(
            f"a {grid}x{grid} grid needs H and W divisible by {grid}, "
            f"got {shape[1]}x{shape[2]}"
        )


def patch_histogram(
    label_maps: jax.Array,
    num_classes: int,
    grid: int = 2,
    background: str = "zero",
) -> jax.Array:
    """Per-patch class-area fractions of a P x P grid, concatenated.

    Labels outside 0..K-1 count for no class here (a jitted function cannot
    raise on values); use `checked_patch_histogram` on concrete inputs.

    Args:
      label_maps: [B, H, W] integer labels; H and W divisible by grid.
      num_classes: K, including background 0.
      grid: P, patches per side.
      background: "zero" (slot 0 = 0, official scoring) or "fraction".

    Returns:
      [B, P*P*K] float32, patch order column-major (TL, BL, TR, BR for P=2).
    """
    return grid_histograms(label_maps, num_classes, (grid,), background)[0]


@functools.partial(jax.jit, static_argnames=("num_classes", "grids", "background"))
def grid_histograms(
    label_maps: jax.Array,
    num_classes: int,
    grids: Sequence[int],
    background: str = "zero",
) -> tuple[jax.Array, ...]:
    """`patch_histogram` for several grids, counting pixels once per base grid.

    A grid dividing another requested grid (1 divides 2) is summed from the
    finer grid's integer counts, which is exact.

    Args:
      label_maps: [B, H, W] integer labels.
      num_classes: K, including background 0.
      grids: tuple of grid sides P (static, hashable).
      background: "zero" or "fraction".

    Returns:
      one [B, P*P*K] float32 array per grid, in the order of `grids`.
    """
    if not grids:
        raise ConfigError("no grids requested")
    for grid in grids:
        _check_static(label_maps.shape, num_classes, grid, background)
    if not jnp.issubdtype(label_maps.dtype, jnp.integer):
        raise DataError(f"label maps must hold integers, got {label_maps.dtype}")
    b, h, w = label_maps.shape
    base = {g: max(f for f in grids if f % g == 0) for g in grids}
    counts = {g: _patch_counts(label_maps, num_classes, g) for g in set(base.values())}
    out = []
    for grid in grids:
        fine = base[grid]
        c = counts[fine].reshape(b, grid, fine // grid, grid, fine // grid, -1)
        c = c.sum(axis=(2, 4)).reshape(b, grid * grid, num_classes)
        fractions = c.astype(jnp.float32) / (h * w // (grid * grid))
        if background == "zero":
            fractions = fractions.at[..., 0].set(0.0)
        out.append(fractions.reshape(b, grid * grid * num_classes))
    return tuple(out)


def _patch_counts(label_maps: jax.Array, num_classes: int, grid: int) -> jax.Array:
    """[B, H, W] labels -> [B, col, row, K] int32 counts (unknown labels dropped).

    Maps are counted _MAPS_PER_STEP at a time: one bincount over the whole
    batch leaves the CPU cache and is several times slower per map.
    """
    b, h, w = label_maps.shape
    per_map = grid * grid * num_classes
    rows = jnp.arange(h) // (h // grid)
    cols = jnp.arange(w) // (w // grid)
    patch = (cols[None, :] * grid + rows[:, None]) * num_classes  # [H, W]

    def count(maps: jax.Array) -> jax.Array:
        n = maps.shape[0]
        labels = maps.astype(jnp.int32)
        key = jnp.arange(n)[:, None, None] * per_map + patch + labels
        key = jnp.where((labels >= 0) & (labels < num_classes), key, n * per_map)
        hist = jnp.bincount(key.ravel(), length=n * per_map + 1)[:-1]
        return hist.reshape(n, grid, grid, num_classes)

    step = min(b, _MAPS_PER_STEP)
    full = b - b % step
    counts = jax.lax.map(count, label_maps[:full].reshape(-1, step, h, w))
    counts = counts.reshape(full, grid, grid, num_classes)
    if full < b:
        counts = jnp.concatenate([counts, count(label_maps[full:])])
    return counts


def class_histogram(
    label_maps: jax.Array, num_classes: int, background: str = "zero"
) -> jax.Array:
    """Class-area fractions of whole maps (the 1 x 1 grid).

    Args:
      label_maps: [B, H, W] integer labels.
      num_classes: K, including background 0.
      background: "zero" or "fraction" (see module docstring).

    Returns:
      [B, K] float32.
    """
    return patch_histogram(label_maps, num_classes, 1, background)


def checked_patch_histogram(
    label_maps, num_classes: int, grid: int = 2, background: str = "zero"
) -> jax.Array:
    """`patch_histogram` after refusing out-of-range labels (eager inputs only).

    Args:
      label_maps: [B, H, W] concrete integer labels.
      num_classes, grid, background: as `patch_histogram`.

    Returns:
      [B, P*P*K] float32.
    """
    maps = check_label_maps(label_maps, num_classes)
    return patch_histogram(jnp.asarray(maps), num_classes, grid, background)


# ---------------------------------------------------------------------------
# Gaussian model and Mahalanobis distance
# ---------------------------------------------------------------------------


@struct.dataclass
class HistogramGaussian:
    """Mean and precision (pseudo-inverse covariance) of histogram vectors.

    Computed once in float64 NumPy by `fit`, stored in float32 for scoring.
    """

    mean: jax.Array  # [D] float32
    precision: jax.Array  # [D, D] float32

    @classmethod
    def fit(
        cls, vectors, *, method: str = "pinv", unseen_std: float | None = None
    ) -> HistogramGaussian:
        """Fit on training histograms (rules in `fit_precision`).

        Args:
          vectors: [N, D] histogram vectors of train/good maps.
          method: "pinv" (official: np.cov + np.linalg.pinv) or "ledoit_wolf".
          unseen_std: None (official) or the std assumed for directions
            without any training variance (see `fit_precision`).

        Returns:
          HistogramGaussian with float32 arrays.
        """
        x = np.asarray(vectors, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] == 0:
            raise DataError(f"histogram vectors must be [N>=1, D], got {x.shape}")
        if not np.all(np.isfinite(x)):
            raise DataError("histogram vectors contain NaN or infinite values")
        precision = fit_precision(x, method=method, unseen_std=unseen_std)
        return cls(
            mean=jnp.asarray(x.mean(axis=0), jnp.float32),
            precision=jnp.asarray(precision, jnp.float32),
        )

    def distance(self, vectors: jax.Array) -> jax.Array:
        """Mahalanobis distance of each vector; see `mahalanobis`."""
        return mahalanobis(self, vectors)


def fit_precision(
    x: np.ndarray, *, method: str = "pinv", unseen_std: float | None = None
) -> np.ndarray:
    """Precision matrix of [N, D] float64 vectors, in float64.

    pinv: np.cov (unbiased) then np.linalg.pinv with NumPy's cutoff (singular
    values <= 1e-15 * largest are dropped). Directions without training
    variance (the zero background slot, a class never or always equally seen)
    get weight 0, as in the official code. ledoit_wolf: scikit-learn's
    shrunk covariance, then the same pseudo-inverse.

    Degenerate statistics (N = 1, or all training vectors identical): the
    covariance is zero, so every direction lacks variance; instead of the
    official NaN (N = 1) or all-zero distances we use the identity, i.e. the
    Euclidean distance to the mean, the official code's own NaN fallback
    (divided by unseen_std when that is set).

    Args:
      x: [N, D] float64 finite training vectors.
      method: "pinv" or "ledoit_wolf".
      unseen_std: None (official), or the std given to directions without
        training variance (the null space of the covariance): their precision
        becomes 1 / unseen_std**2 instead of 0, so a class unseen in training
        raises the distance. With N <= D this null space also holds directions
        merely unexplored by the few training maps.

    Returns:
      [D, D] float64 precision.
    """
    if method not in GAUSSIAN_METHODS:
        raise ConfigError(f"method must be one of {GAUSSIAN_METHODS}, got {method!r}")
    if unseen_std is not None and not (np.isfinite(unseen_std) and unseen_std > 0):
        raise ConfigError(f"unseen_std must be a positive number, got {unseen_std}")
    n, d = x.shape
    null_weight = 1.0 if unseen_std is None else 1.0 / unseen_std**2
    if n < 2 or not np.any(x != x[0]):
        return null_weight * np.eye(d)
    if method == "pinv":
        cov = np.atleast_2d(np.cov(x, rowvar=False))
    else:
        cov = LedoitWolf(store_precision=False).fit(x).covariance_
    precision = np.linalg.pinv(cov, rtol=PINV_RTOL)
    if unseen_std is not None:
        # The same SVD call as inside np.linalg.pinv, so the same cutoff.
        _, s, vt = np.linalg.svd(cov, full_matrices=False)
        null = vt[~(s > PINV_RTOL * s.max())]
        precision = precision + null_weight * (null.T @ null)
    return precision


@jax.jit
def mahalanobis(gaussian: HistogramGaussian, vectors: jax.Array) -> jax.Array:
    """Mahalanobis distances d = sqrt(max(δᵀ P δ, 0)), δ = x - mean.

    The clamp replaces the official per-image NaN -> Euclidean fallback, which
    fires only when rounding makes δᵀ P δ negative.

    Args:
      gaussian: fitted HistogramGaussian of dimension D.
      vectors: [B, D] histogram vectors.

    Returns:
      [B] float32 distances.
    """
    d = gaussian.mean.shape[-1]
    if vectors.ndim != 2 or vectors.shape[1] != d:
        raise DataError(f"expected [B, {d}] histogram vectors, got {vectors.shape}")
    delta = vectors.astype(jnp.float32) - gaussian.mean
    quad = jnp.einsum(
        "bi,ij,bj->b",
        delta,
        gaussian.precision,
        delta,
        precision=jax.lax.Precision.HIGHEST,
    )
    return jnp.sqrt(jnp.maximum(quad, 0.0))


# ---------------------------------------------------------------------------
# The patch histogram branch: one detector per grid, fused by trimmed z-scores
# ---------------------------------------------------------------------------


def _in_batches(fn, maps: np.ndarray, batch_size: int) -> np.ndarray:
    """Apply fn to fixed-size batches of maps (last one zero-padded); concat."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    n = maps.shape[0]
    size = min(batch_size, n)
    outputs = []
    for start in range(0, n, size):
        chunk = maps[start : start + size]
        pad = size - chunk.shape[0]
        if pad:
            chunk = np.concatenate([chunk, np.zeros_like(maps[:pad])])
        outputs.append(np.asarray(fn(jnp.asarray(chunk)))[: size - pad])
    return np.concatenate(outputs)


@struct.dataclass
class PatchHistogramScorer:
    """Gaussian detectors over class/patch histograms and their calibration.

    A pytree: the Gaussians and statistics are leaves (checkpointable, usable
    inside jit); classes, grids and background mode are static.
    """

    num_classes: int = struct.field(pytree_node=False)
    grids: tuple[int, ...] = struct.field(pytree_node=False)
    background: str = struct.field(pytree_node=False)
    gaussians: tuple[HistogramGaussian, ...]
    stats: tuple[score_fusion.TrimmedStats, ...] | None = None

    @classmethod
    def fit(
        cls,
        train_maps,
        num_classes: int,
        *,
        grids: Sequence[int] = DEFAULT_GRIDS,
        background: str = "zero",
        method: str = "pinv",
        unseen_std: float | None = None,
        batch_size: int = 64,
    ) -> PatchHistogramScorer:
        """Fit one HistogramGaussian per grid on train/good label maps.

        Args:
          train_maps: [N, H, W] integer labels in 0..num_classes-1.
          num_classes: K including background.
          grids: grid sides, (1, 2) = official patch sizes 256 and 128.
          background, method, unseen_std: see module and `fit_precision`.
          batch_size: maps per jitted histogram call.

        Returns:
          an uncalibrated scorer (stats None); call `calibrate` next.
        """
        grids = tuple(int(g) for g in grids)
        if not grids or len(set(grids)) != len(grids):
            raise ConfigError(f"grids must be distinct and non-empty, got {grids}")
        maps = check_label_maps(train_maps, num_classes)
        if maps.shape[0] == 0:
            raise DataError("no training label maps to fit the patch histogram")

        def all_grids(batch: jax.Array) -> jax.Array:
            hists = grid_histograms(batch, num_classes, grids, background)
            return jnp.concatenate(hists, axis=1)

        vectors = _in_batches(all_grids, maps, batch_size)
        splits = np.cumsum([g * g * num_classes for g in grids])[:-1]
        gaussians = [
            HistogramGaussian.fit(v, method=method, unseen_std=unseen_std)
            for v in np.split(vectors, splits, axis=1)
        ]
        return cls(num_classes, grids, background, tuple(gaussians))

    def raw_scores(self, label_maps) -> dict[int, jax.Array]:
        """Mahalanobis distance of each map under each grid's Gaussian.

        Concrete inputs are checked for out-of-range labels; traced inputs
        (inside jit) cannot be, see `patch_histogram`.

        Args:
          label_maps: [B, H, W] integer labels.

        Returns:
          grid -> [B] float32 distances.
        """
        if not isinstance(label_maps, jax.core.Tracer):
            label_maps = jnp.asarray(check_label_maps(label_maps, self.num_classes))
        matrix = _raw_score_matrix(self, label_maps)
        return {grid: matrix[:, j] for j, grid in enumerate(self.grids)}

    def calibrate(
        self,
        val_maps,
        *,
        low: float = 0.2,
        high: float = 0.8,
        std_floor: float = score_fusion.TRAINING_STD_FLOOR,
        batch_size: int = 64,
    ) -> PatchHistogramScorer:
        """Per-detector trimmed statistics from validation/good label maps.

        Args:
          val_maps: [N, H, W] integer labels.
          low, high, std_floor: see `score_fusion.fit_trimmed_stats`.
          batch_size: maps per jitted call.

        Returns:
          a copy of this scorer with `stats` set.
        """
        maps = check_label_maps(val_maps, self.num_classes)
        if maps.shape[0] == 0:
            raise DataError("no validation label maps to calibrate on")
        raw = _in_batches(functools.partial(_raw_score_matrix, self), maps, batch_size)
        stats = tuple(
            score_fusion.fit_trimmed_stats(raw[:, j], low, high, std_floor=std_floor)
            for j in range(len(self.grids))
        )
        return self.replace(stats=stats)

    def score(self, label_maps) -> jax.Array:
        """Branch score: sum over grids of trimmed z-normalised distances.

        Args:
          label_maps: [B, H, W] integer labels.

        Returns:
          [B] float32 patch histogram scores.
        """
        if self.stats is None:
            raise ConfigError("the patch histogram scorer is not calibrated yet")
        stats = dict(zip(self.grids, self.stats, strict=True))
        return score_fusion.fuse(self.raw_scores(label_maps), stats)


@jax.jit
def _raw_score_matrix(scorer: PatchHistogramScorer, label_maps: jax.Array):
    """[B, H, W] labels -> [B, G] distances, one column per grid (unchecked)."""
    hists = grid_histograms(
        label_maps, scorer.num_classes, scorer.grids, scorer.background
    )
    columns = [
        mahalanobis(gaussian, hist)
        for gaussian, hist in zip(scorer.gaussians, hists, strict=True)
    ]
    return jnp.stack(columns, axis=1)
