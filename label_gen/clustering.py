"""Component clustering and label-map filtering (method-spec §2.6-2.7).

MeanShift on a fixed random projection of f_com, the alpha filter (clusters
need at least half as many members as there are training images), per-image
class-area histograms, HDBSCAN filtering of unreliable maps exactly as the
official `build_histogram`, and class pruning.

The scikit-learn calls run with one thread: their problems are small, and on a
shared CPU OpenMP thread pools made them tens of times slower (same results).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.cluster import HDBSCAN, MeanShift, estimate_bandwidth
from threadpoolctl import threadpool_limits

from csad_jax.errors import DataError
from label_gen.settings import ClusterSettings


def random_projection(dim_in: int, settings: ClusterSettings) -> np.ndarray:
    """The untrained Linear(dim_in -> proj_dim) weight, N(0, proj_std^2).

    It is drawn from its own `np.random.default_rng(projection_seed)`, so no
    other random draw can change it (the official projection is unseeded).

    Returns:
      float32 [dim_in, proj_dim]; features @ it is the projection (bias 0).
    """
    rng = np.random.default_rng(settings.projection_seed)
    weight = rng.normal(0.0, settings.proj_std, size=(settings.proj_dim, dim_in))
    return weight.T.astype(np.float32)


def min_members(n_images: int, settings: ClusterSettings) -> int:
    """Alpha: clusters with fewer members than int(0.5 * N_train) are dropped."""
    return int(settings.alpha_ratio * n_images)


def bandwidth_floor(projected: np.ndarray, settings: ClusterSettings) -> float:
    """Smallest automatic bandwidth: a fraction of the feature scale.

    The scale is the RMS distance of the projected features to their mean
    (`min_bandwidth_spread` of it) and, for sets whose points all coincide, the
    RMS feature norm (`min_bandwidth_norm` of it).
    """
    centred = projected - projected.mean(axis=0)
    spread = float(np.sqrt((centred.astype(np.float64) ** 2).sum(axis=1).mean()))
    norm = float(np.sqrt((projected.astype(np.float64) ** 2).sum(axis=1).mean()))
    return max(
        settings.min_bandwidth_spread * spread, settings.min_bandwidth_norm * norm
    )


def auto_bandwidth(
    projected: np.ndarray, n_images: int, settings: ClusterSettings
) -> tuple[float, float]:
    """MeanShift bandwidth from the data: scale * estimate_bandwidth, floored.

    The estimate is the mean distance to the alpha-th nearest neighbour, alpha
    being the smallest size a kept cluster may have, so it measures distances
    inside one component class; `auto_bandwidth_scale` (1.75) sits in the
    range that found every class on the synthetic train images (1.5-2.0).
    Identical training images make that distance ~0 (every component has exact
    copies), which would split each class into its single components (or make
    MeanShift fail); the result is therefore at least `bandwidth_floor` (0.05 x
    the feature spread; on the synthetic categories the estimate is 0.38-0.63 x
    the spread).

    Returns:
      (bandwidth used, unfloored estimate).
    """
    quantile = min(1.0, max(min_members(n_images, settings), 2) / len(projected))
    estimate = estimate_bandwidth(
        projected, quantile=quantile, random_state=settings.projection_seed
    )
    estimate = float(estimate) * settings.auto_bandwidth_scale
    bandwidth = max(estimate, bandwidth_floor(projected, settings))
    return (bandwidth if bandwidth > 0 else 1.0), estimate


@dataclass(frozen=True)
class Clusters:
    """MeanShift result: per-component labels (-1 = dropped) and the bandwidth.

    `estimate` is the automatic bandwidth before its floor (None when the
    bandwidth was given); `floored` says the floor replaced it.
    """

    labels: np.ndarray
    bandwidth: float
    raw_count: int
    estimate: float | None = None

    @property
    def floored(self) -> bool:
        """Whether the automatic estimate was raised to its floor."""
        return self.estimate is not None and self.estimate < self.bandwidth


def _mean_shift(projected: np.ndarray, bandwidth: float) -> np.ndarray:
    """sklearn MeanShift labels; its refusal of a tiny bandwidth is a DataError."""
    try:
        return MeanShift(bandwidth=bandwidth, cluster_all=True).fit_predict(projected)
    except ValueError as err:
        raise DataError(
            f"MeanShift failed with bandwidth {bandwidth:.3g} "
            f"({' '.join(str(err).split())}); give a larger --bandwidth"
        ) from None


def cluster_components(
    features: np.ndarray, n_images: int, settings: ClusterSettings
) -> Clusters:
    """MeanShift (every point a seed) on projected features, then alpha filter.

    Args:
      features: float [N_comp, C] f_com of all components of all images.
      n_images: number of training images N_train.
      settings: projection, bandwidth and alpha.

    Returns:
      Clusters with int64 labels [N_comp]; sklearn's ids, -1 where dropped.
    """
    if len(features) == 0:
        return Clusters(np.zeros(0, np.int64), 0.0, 0)
    projected = features.astype(np.float32) @ random_projection(
        features.shape[1], settings
    )
    with threadpool_limits(limits=1):
        bandwidth, estimate = settings.bandwidth, None
        if bandwidth is None:
            bandwidth, estimate = auto_bandwidth(projected, n_images, settings)
        if len(projected) == 1:
            labels = np.zeros(1, np.int64)
        else:
            labels = _mean_shift(projected, bandwidth)
    labels = labels.astype(np.int64)
    counts = np.bincount(labels)
    small = counts < min_members(n_images, settings)
    return Clusters(
        np.where(small[labels], -1, labels), float(bandwidth), len(counts), estimate
    )


def class_histograms(
    image_index: np.ndarray, labels: np.ndarray, areas: np.ndarray, n_images: int
) -> np.ndarray:
    """Per-image class-area histograms (Eq. 1; background and -1 not counted).

    Args:
      image_index: int [N_comp] image of each component.
      labels: int [N_comp] cluster label, -1 = dropped.
      areas: float [N_comp] component area as a fraction of its image.
      n_images: N_train.

    Returns:
      float64 [N_train, L], L = max label + 1 (0 when nothing is kept).
    """
    kept = labels >= 0
    width = int(labels[kept].max()) + 1 if kept.any() else 0
    hist = np.zeros((n_images, width))
    np.add.at(hist, (image_index[kept], labels[kept]), areas[kept])
    return hist


def _hdbscan_labels(hist: np.ndarray, settings: ClusterSettings) -> np.ndarray:
    """HDBSCAN labels, min_cluster_size int(0.1 N) decremented until a cluster."""
    n = len(hist)
    size = int(settings.hdbscan_ratio * n)
    # NOTE: sklearn needs min_cluster_size >= 2 and min_samples <= N; the
    # official code would fail on such small N; here the search stops at 2 and
    # a histogram set with no cluster even then counts as one cluster.
    size = min(max(size, 2), n)
    while size >= 2:
        with warnings.catch_warnings(), threadpool_limits(limits=1):
            warnings.simplefilter("ignore", RuntimeWarning)
            labels = HDBSCAN(min_cluster_size=size, copy=True).fit_predict(hist)
        if (labels >= 0).any():
            return labels
        size -= 1
    return np.zeros(n, np.int64)


@dataclass(frozen=True)
class MapFilter:
    """Which maps are reliable (labelled) and which classes survive."""

    labelled: np.ndarray  # sorted unique image indices
    largest_cluster: np.ndarray  # image indices in the largest HDBSCAN cluster
    kept_labels: np.ndarray  # original cluster labels kept, ascending
    hdbscan_labels: np.ndarray
    ranking: np.ndarray  # image indices, nearest the largest cluster's mean first


def filter_label_maps(hist: np.ndarray, settings: ClusterSettings) -> MapFilter:
    """HDBSCAN filtering of unreliable maps and class pruning (§2.7).

    Args:
      hist: float [N_train, L] class-area histograms.
      settings: hdbscan_ratio, good_ratio, filter_hist, min_class_area.

    Returns:
      MapFilter; with filter_hist the labelled images are the half of the
      largest cluster's size closest (L-inf, searched over all images) to its
      mean, otherwise the union of such lists over all clusters.
    """
    n = len(hist)
    if n == 0 or hist.shape[1] == 0:  # no class survived the alpha filter
        empty = np.zeros(0, np.int64)
        return MapFilter(
            empty, np.arange(n), empty, np.zeros(n, np.int64), np.arange(n)
        )
    labels = _hdbscan_labels(hist, settings)
    ids, counts = np.unique(labels[labels >= 0], return_counts=True)
    largest = int(ids[int(np.argmax(counts))])
    rankings, picks = {}, {}
    for cid, count in zip(ids, counts, strict=True):
        mean = hist[labels == cid].mean(axis=0)
        dist = np.abs(hist - mean).max(axis=1)
        rankings[int(cid)] = np.argsort(dist, kind="stable")
        picks[int(cid)] = rankings[int(cid)][: int(settings.good_ratio * count)]
    chosen = (
        picks[largest] if settings.filter_hist else np.concatenate(list(picks.values()))
    )
    members = np.flatnonzero(labels == largest)
    kept = np.flatnonzero(hist[members].mean(axis=0) > settings.min_class_area)
    return MapFilter(np.unique(chosen), members, kept, labels, rankings[largest])


def remap_labels(labels: np.ndarray, kept_labels: np.ndarray) -> np.ndarray:
    """Cluster labels -> final classes 1..N_cls (ascending), 0 when not kept."""
    lut = np.zeros(
        int(max(labels.max(initial=-1), kept_labels.max(initial=-1))) + 2, np.int64
    )
    lut[kept_labels + 1] = np.arange(1, len(kept_labels) + 1)
    return lut[labels + 1]
