"""Evaluation metrics of MVTec LOCO AD: image AUROC per anomaly kind and AUC-sPRO.

Image AUROC (official protocol, method-spec.md §6.2, ecosystem.md f.4): the
test images are split into good, logical and structural; AUROC is computed for
good (label 0) vs logical (label 1) and for good vs structural, with the same
good images in both, by scikit-learn's rank-based `roc_auc_score` (ties count
one half), so any real-valued score works and a monotone transform of the
scores leaves the AUROC unchanged. `mean` is the mean over the kinds present.

AUC-sPRO (MVTec LOCO evaluation code v2.0, ecosystem.md f.3). For one ground
truth channel (one defect region) of area A with config (s, relative):

    S = floor(s * A) if relative else min(s, A)         (saturation area)
    sPRO_k(t) = min(|{map > t} ∩ channel_k| / S, 1)
    FPR(t) = #{defect-free pixels with map > t} / #{defect-free pixels}

where defect-free pixels lie outside the union of all channels of their image
(every pixel of a good image) and both sums run over all images of the set.
The curve is (FPR(t), mean_k sPRO_k(t)) over all thresholds t, from
(0, 0) (t above every value) to (1, 1) (t below every value); AUC-sPRO at a
limit L is the trapezoidal area under the curve for FPR in [0, L], the curve
being linearly interpolated at FPR = L, divided by L so that it lies in [0, 1].

The official code evaluates the curve at adaptively refined thresholds until
neighbouring points are within `curve_max_distance` (0.001). Here the curve is
exact: it holds every point the official curve could hold (one per distinct map
value), so both agree up to that approximation. Only the values at which the
mean sPRO changes (the S_k largest values of each channel) need their own
points; between them the curve is horizontal and its trapezoids are rectangles,
so the defect-free pixels are only counted per interval of those values.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from sklearn.metrics import roc_auc_score

from csad_jax.data.loco import Sample, read_gt_regions
from csad_jax.errors import DataError
from csad_jax.models.layers import resize_bilinear

KINDS = ("good", "logical", "structural")
ANOMALY_KINDS = ("logical", "structural")
KIND_DIRS = {
    "good": "good",
    "logical": "logical_anomalies",
    "structural": "structural_anomalies",
}
SPRO_LIMITS = (0.01, 0.05, 0.1, 0.3, 1.0)


def canonical_kind(kind: str) -> str:
    """Map a kind name ("good", "logical[_anomalies]", ...) to good/logical/..."""
    for short, folder in KIND_DIRS.items():
        if kind in (short, folder):
            return short
    raise DataError(f"unknown image kind {kind!r}; expected one of {KINDS}")


def _canonical_kinds(kinds: Iterable[str]) -> np.ndarray:
    """Canonical kind of every image, as a string array."""
    return np.asarray([canonical_kind(k) for k in kinds], dtype=object)


def _as_scores(values, n: int, what: str) -> np.ndarray:
    """Return one finite score per image as float64 [N], or raise DataError."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.shape != (n,):
        raise DataError(f"{what}: expected {n} scores, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise DataError(f"{what}: scores contain NaN or infinite values")
    return arr


def image_auroc(scores, kinds: Sequence[str], what: str = "scores") -> dict:
    """Official image AUROC: good vs logical, good vs structural, and their mean.

    Args:
      scores: [N] real anomaly scores (higher = more anomalous), any scale.
      kinds: N kind names ("good", "logical"/"logical_anomalies", ...).
      what: name used in error messages.

    Returns:
      {"logical": a | None, "structural": a | None, "mean": m | None,
       "mean_over": [kinds present]}; a kind without test images is None and
      `mean` averages the present kinds only (None when none is present).
    """
    kinds_arr = _canonical_kinds(kinds)
    values = _as_scores(scores, len(kinds_arr), what)
    good = kinds_arr == "good"
    if not good.any():
        raise DataError(f"{what}: AUROC needs good test images, found none")
    result: dict = {}
    for kind in ANOMALY_KINDS:
        anomalous = kinds_arr == kind
        if not anomalous.any():
            result[kind] = None
            continue
        keep = good | anomalous
        result[kind] = float(roc_auc_score(anomalous[keep], values[keep]))
    present = [k for k in ANOMALY_KINDS if result[k] is not None]
    result["mean"] = float(np.mean([result[k] for k in present])) if present else None
    result["mean_over"] = present
    return result


def branch_aurocs(scores: Mapping[str, object], kinds: Sequence[str]) -> dict:
    """`image_auroc` for every named score array (branches and fused).

    Args:
      scores: name -> [N] scores, e.g. {"patch_histogram", "lgst", "fused"}.
      kinds: N kind names.

    Returns:
      name -> the dict returned by `image_auroc`.
    """
    return {name: image_auroc(s, kinds, what=name) for name, s in scores.items()}


# ----------------------------------------------------------------- AUC-sPRO


@dataclasses.dataclass(frozen=True)
class DefectRegion:
    """One ground-truth channel: a defect region and its saturation area S."""

    mask: np.ndarray  # bool [H, W]
    saturation_area: int
    pixel_value: int = 0


def saturation_area(defect_area: int, threshold: float, relative: bool) -> int:
    """S = floor(threshold * A) if relative else min(threshold, A).

    Args:
      defect_area: A, the number of pixels of the channel.
      threshold: `saturation_threshold` of defects_config.json; a fraction in
        (0, 1] when relative, else a pixel count.
      relative: `relative_saturation` of defects_config.json.
    """
    if relative:
        if not 0.0 < threshold <= 1.0:
            raise DataError(f"relative saturation_threshold {threshold} not in (0, 1]")
        return int(math.floor(threshold * defect_area))
    if threshold < 0 or threshold != int(threshold):
        raise DataError(f"absolute saturation_threshold {threshold} is not a count")
    return int(min(int(threshold), defect_area))


def _saturation_table(defects) -> dict[int, tuple[float, bool]]:
    """pixel_value -> (saturation_threshold, relative_saturation).

    `defects` holds `csad_jax.data.loco.DefectSpec`s or equivalent mappings.
    """
    table = {}
    for spec in defects:
        get = spec.__getitem__ if isinstance(spec, Mapping) else spec.__getattribute__
        try:
            table[int(get("pixel_value"))] = (
                float(get("saturation_threshold")),
                bool(get("relative_saturation")),
            )
        except (KeyError, AttributeError, TypeError, ValueError) as err:
            raise DataError(f"invalid defects_config entry {spec!r}: {err}") from None
    return table


def defect_regions(gt_regions, defects, source: str = "") -> list[DefectRegion]:
    """Attach the saturation area S to each ground-truth region of one image.

    Args:
      gt_regions: (pixel value, bool [H, W] region) pairs, as returned by
        `csad_jax.data.loco.read_gt_regions` (one per mask file and non-zero
        value in it).
      defects: the category's defects_config.json entries (`DefectSpec`s or
        mappings with pixel_value, saturation_threshold, relative_saturation).
      source: name of the image for error messages.

    Returns:
      list[DefectRegion] in the order of `gt_regions`.
    """
    if defects is None:
        raise DataError(f"{source}: sPRO needs the category's defects_config.json")
    table = _saturation_table(defects)
    regions = []
    for value, mask in gt_regions:
        if value not in table:
            raise DataError(
                f"{source}: mask value {value} is not listed in defects_config.json"
            )
        mask = np.asarray(mask, dtype=bool)
        area = saturation_area(int(mask.sum()), *table[value])
        regions.append(DefectRegion(mask, area, int(value)))
    return regions


def read_defect_regions(sample: Sample, defects) -> list[DefectRegion]:
    """The `DefectRegion`s of a test sample (empty for good images).

    Args:
      sample: a `csad_jax.data.loco.Sample`.
      defects: the category's defects_config entries (`CategoryData.defects_config`).
    """
    if not sample.mask_paths:
        return []
    return defect_regions(read_gt_regions(sample), defects, str(sample.path))


@dataclasses.dataclass(frozen=True)
class SproCurve:
    """Exact (FPR, mean sPRO) curve, FPR non-decreasing, from (0, 0) to (1, 1)."""

    fpr: np.ndarray  # float64 [P]
    spro: np.ndarray  # float64 [P]


def _checked_map(amap, regions: Sequence[DefectRegion], name: str) -> np.ndarray:
    """Return the anomaly map as finite float64 [H, W] matching its regions."""
    arr = np.asarray(amap)
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.number):
        raise DataError(
            f"{name}: anomaly map must be a real [H, W] array, "
            f"got shape {arr.shape} dtype {arr.dtype}"
        )
    arr = arr.astype(np.float64, copy=False)
    if not np.all(np.isfinite(arr)):
        raise DataError(f"{name}: anomaly map contains NaN or infinite values")
    for region in regions:
        if region.mask.shape != arr.shape:
            raise DataError(
                f"{name}: anomaly map is {arr.shape} but its ground "
                f"truth is {region.mask.shape}; resize the map to the "
                "original image size first"
            )
    return arr


def _top_values(maps, regions, names) -> tuple[np.ndarray, np.ndarray, int]:
    """The S_k largest map values of every channel k and their weights 1/S_k.

    A channel's sPRO at threshold t is (number of its S_k largest values > t)
    / S_k, so the mean sPRO is a weighted count of these values. S_k = 0 is
    raised to 1 (see docs/fidelity.md).
    """
    values, weights = [], []
    for i, channels in enumerate(regions):
        if not channels:
            continue
        amap = _checked_map(maps[i], channels, names[i])
        for region in channels:
            inside = amap[region.mask]
            if inside.size == 0:
                raise DataError(f"{names[i]}: a ground-truth region is empty")
            # NOTE: S = 0 (official: 0/0 = NaN points) counts as S = 1.
            s = max(min(region.saturation_area, inside.size), 1)
            values.append(np.partition(inside, inside.size - s)[inside.size - s :])
            weights.append(np.full(s, 1.0 / s))
    if not values:
        return np.zeros(0), np.zeros(0), 0
    return np.concatenate(values), np.concatenate(weights), len(values)


def _reverse_cumsum(x: np.ndarray) -> np.ndarray:
    """out[j] = sum(x[j:])."""
    return np.cumsum(x[::-1])[::-1]


def _defect_free_counts(maps, regions, names, thresholds: np.ndarray):
    """Defect-free pixel counts above each threshold, over all images.

    Returns:
      (above [M], at_or_above [M], total): #{x > u_j}, #{x >= u_j} and the
      number of defect-free pixels, for the sorted unique thresholds u.
    """
    m = thresholds.size
    above = np.zeros(m + 1, np.int64)
    at_or_above = np.zeros(m + 1, np.int64)
    total = 0
    for i, channels in enumerate(regions):
        amap = _checked_map(maps[i], channels, names[i])
        defect_free = np.ones(amap.shape, bool)
        for region in channels:
            defect_free &= ~region.mask
        x = amap[defect_free]
        below = np.searchsorted(thresholds, x, side="left")  # #{u < x}
        equal = thresholds[np.minimum(below, m - 1)] == x
        above += np.bincount(below, minlength=m + 1)
        at_or_above += np.bincount(below + equal, minlength=m + 1)  # #{u <= x}
        total += x.size
    # x > u_j  <=>  #{u < x} >= j + 1; likewise x >= u_j with #{u <= x}.
    return _reverse_cumsum(above)[1:], _reverse_cumsum(at_or_above)[1:], total


def _image_names(names, n: int) -> list[str]:
    """The given image names, or "image <i>" for error messages."""
    return list(names) if names is not None else [f"image {i}" for i in range(n)]


class _Subset(Sequence):
    """A lazy view of some items of a sequence (maps are loaded on access)."""

    def __init__(self, items: Sequence, indices: Sequence[int]):
        self._items, self._indices = items, list(indices)

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, i):
        return self._items[self._indices[i]]


def spro_curve(anomaly_maps, regions, names=None) -> SproCurve | None:
    """Exact FPR / mean-sPRO curve of a set of images.

    Args:
      anomaly_maps: sequence of N real maps [H_i, W_i] at ground-truth size
        (read twice, so a lazily loading sequence works).
      regions: N lists of `DefectRegion` (empty for good images).
      names: optional N image names for error messages.

    Returns:
      The curve, or None when the set has no defect channel (good images only)
      or no defect-free pixel (FPR undefined).
    """
    if len(anomaly_maps) != len(regions):
        raise DataError(
            f"{len(anomaly_maps)} anomaly maps but {len(regions)} ground-truth entries"
        )
    names = _image_names(names, len(regions))
    top, weights, n_channels = _top_values(anomaly_maps, regions, names)
    if n_channels == 0:
        return None
    thresholds, index = np.unique(top, return_inverse=True)
    at_or_above = _reverse_cumsum(np.bincount(index, weights=weights)) / n_channels
    spro_above = np.append(at_or_above[1:], 0.0)
    neg_above, neg_at_or_above, total = _defect_free_counts(
        anomaly_maps, regions, names, thresholds
    )
    if total == 0:
        return None
    # Points by decreasing threshold: map > u_j, then map >= u_j (= map > u_{j-1}).
    fpr = np.stack([neg_above, neg_at_or_above], axis=1)[::-1].ravel() / total
    spro = np.stack([spro_above, at_or_above], axis=1)[::-1].ravel()
    return SproCurve(
        np.concatenate([[0.0], fpr, [1.0]]), np.concatenate([[0.0], spro, [1.0]])
    )


def area_under_curve(fpr: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoidal area under y(fpr) on [0, limit], divided by limit.

    fpr must be non-decreasing from 0 to 1. When `limit` is not a point of the
    curve, y(limit) is interpolated linearly between the last point with
    fpr <= limit and the next one (as the official `trapz`).
    """
    if not 0.0 < limit <= 1.0:
        raise DataError(f"FPR limit {limit} not in (0, 1]")
    n = int(np.searchsorted(fpr, limit, side="right"))
    x, v = fpr[:n], y[:n]
    area = float(np.sum(0.5 * (v[1:] + v[:-1]) * np.diff(x)))
    if x[-1] < limit:
        slope = (y[n] - v[-1]) / (fpr[n] - x[-1])
        y_limit = v[-1] + slope * (limit - x[-1])
        area += 0.5 * (y_limit + v[-1]) * (limit - x[-1])
    return float(min(max(area / limit, 0.0), 1.0))


def auc_spro(anomaly_maps, regions, limits=SPRO_LIMITS, names=None):
    """AUC-sPRO of one image set at each FPR limit, normalised to [0, 1].

    Args:
      anomaly_maps, regions, names: as for `spro_curve`.
      limits: FPR integration limits in (0, 1].

    Returns:
      {limit: auc} (auc None when no defect-free pixel exists), or None when
      the set has no defect channel.
    """
    if not any(len(r) for r in regions):
        return None
    curve = spro_curve(anomaly_maps, regions, names)
    if curve is None:
        return {float(limit): None for limit in limits}
    return {
        float(limit): area_under_curve(curve.fpr, curve.spro, limit) for limit in limits
    }


def auc_spro_by_kind(anomaly_maps, regions, kinds, limits=SPRO_LIMITS, names=None):
    """AUC-sPRO of good + logical and of good + structural images.

    Args:
      anomaly_maps, regions, names: as for `spro_curve`, over the whole test set.
      kinds: N kind names.
      limits: FPR integration limits.

    Returns:
      {"logical": {limit: auc} | None, "structural": ...}; None for a kind
      without test images.
    """
    kinds_arr = _canonical_kinds(kinds)
    if len(kinds_arr) != len(regions):
        raise DataError(f"{len(kinds_arr)} kinds but {len(regions)} images")
    names = _image_names(names, len(regions))
    result = {}
    for kind in ANOMALY_KINDS:
        picked = np.flatnonzero((kinds_arr == "good") | (kinds_arr == kind))
        if not np.any(kinds_arr == kind):
            result[kind] = None
            continue
        result[kind] = auc_spro(
            _Subset(anomaly_maps, picked),
            [regions[i] for i in picked],
            limits,
            [names[i] for i in picked],
        )
    return result


def resize_anomaly_map(amap, size: tuple[int, int]) -> np.ndarray:
    """Resize anomaly maps to ground-truth size with bilinear interpolation.

    Follows PyTorch `F.interpolate(mode="bilinear", align_corners=False)`
    without antialiasing (`csad_jax.models.layers.resize_bilinear`).

    Args:
      amap: [h, w] or [B, h, w] map(s).
      size: (H, W), the original image size.

    Returns:
      float32 [H, W] or [B, H, W].
    """
    arr = np.asarray(amap, dtype=np.float32)
    if arr.ndim not in (2, 3):
        raise DataError(f"anomaly map must be [h, w] or [B, h, w], got {arr.shape}")
    batch = arr.reshape((-1, *arr.shape[-2:], 1))
    out = np.asarray(resize_bilinear(batch, tuple(size)))[..., 0]
    return out[0] if arr.ndim == 2 else out
