"""Segmentation quality: confusion counts, mIoU, and mIoU under class matching.

Pseudo-label class ids are arbitrary (cluster numbers), so comparing them with
true component maps needs a one-to-one matching of foreground classes first:
`matched_miou` finds the matching that maximises the summed IoU
(`scipy.optimize.linear_sum_assignment`), keeps background 0 matched to 0, and
then scores the remapped prediction. IoU is accumulated over the whole set of
maps (intersection and union summed over images), as in PASCAL VOC.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from csad_jax.errors import DataError


def _as_map_list(maps, name: str) -> list[np.ndarray]:
    """A list of 2-D integer maps from a list or a [N, H, W] array."""
    if isinstance(maps, np.ndarray) and maps.ndim == 2:
        maps = [maps]
    out = [np.asarray(m) for m in maps]
    for i, m in enumerate(out):
        if m.ndim != 2 or not np.issubdtype(m.dtype, np.integer):
            raise DataError(
                f"{name}[{i}] must be a 2-D integer map, got {m.dtype} {m.shape}"
            )
        if m.size and m.min() < 0:
            raise DataError(f"{name}[{i}] has negative class ids")
    return out


def confusion_matrix(
    pred_maps: Iterable[np.ndarray] | np.ndarray,
    true_maps: Iterable[np.ndarray] | np.ndarray,
) -> np.ndarray:
    """Pixel counts of (true class, predicted class) pairs over all maps.

    Args:
      pred_maps: N integer maps [H, W] (a list, or an array [N, H, W]).
      true_maps: N integer maps of the same shapes.

    Returns:
      int64 [T, P]: entry (t, p) counts pixels with true class t and
      predicted class p; T, P = 1 + the largest id seen on each side.

    Raises:
      DataError: counts or shapes of the two lists differ, or a map is not 2-D.
    """
    preds = _as_map_list(pred_maps, "pred_maps")
    trues = _as_map_list(true_maps, "true_maps")
    if len(preds) != len(trues):
        raise DataError(f"{len(preds)} predicted maps but {len(trues)} true maps")
    if not preds:
        raise DataError("no maps to compare")
    n_true = 1 + max(int(t.max()) for t in trues)
    n_pred = 1 + max(int(p.max()) for p in preds)
    counts = np.zeros(n_true * n_pred, np.int64)
    for i, (p, t) in enumerate(zip(preds, trues, strict=True)):
        if p.shape != t.shape:
            raise DataError(f"map {i}: prediction {p.shape} vs truth {t.shape}")
        idx = t.astype(np.int64).ravel() * n_pred + p.astype(np.int64).ravel()
        counts += np.bincount(idx, minlength=n_true * n_pred)
    return counts.reshape(n_true, n_pred)


def iou_from_confusion(conf: np.ndarray) -> np.ndarray:
    """IoU of each class of a square confusion matrix; NaN if absent on both sides.

    Args:
      conf: int [C, C], rows = truth, columns = prediction, same label space.

    Returns:
      float64 [C].
    """
    inter = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.maximum(union, 1), np.nan)


def miou(
    pred_maps, true_maps, num_classes: int | None = None
) -> tuple[float, np.ndarray]:
    """Mean IoU in a shared label space (no matching), background included.

    Args:
      pred_maps, true_maps: N integer maps [H, W] each (lists or [N, H, W]).
      num_classes: K; default 1 + the largest id seen.

    Returns:
      (mean IoU over classes present in either side, per-class IoU float64 [K]
      with NaN for classes absent from both).
    """
    conf = confusion_matrix(pred_maps, true_maps)
    k = max(conf.shape) if num_classes is None else int(num_classes)
    if max(conf.shape) > k:
        raise DataError(f"a map has class id >= num_classes={k}")
    square = np.zeros((k, k), np.int64)
    square[: conf.shape[0], : conf.shape[1]] = conf
    iou = iou_from_confusion(square)
    return float(np.nanmean(iou)), iou


def match_classes(conf: np.ndarray) -> dict[int, int]:
    """One-to-one foreground matching predicted -> true maximising summed IoU.

    Args:
      conf: int [T, P] confusion counts (rows truth, columns prediction).

    Returns:
      {predicted id: true id}, always containing 0 -> 0; predicted classes
      left without a partner are absent.
    """
    inter = conf[1:, 1:].astype(np.float64)
    union = conf[1:].sum(1)[:, None] + conf[:, 1:].sum(0)[None, :] - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    mapping = {0: 0}
    if iou.size:
        rows, cols = linear_sum_assignment(iou, maximize=True)
        mapping.update(
            {int(c) + 1: int(r) + 1 for r, c in zip(rows, cols, strict=True)}
        )
    return mapping


def matched_miou(
    pred_maps: Sequence[np.ndarray] | np.ndarray,
    true_maps: Sequence[np.ndarray] | np.ndarray,
) -> tuple[float, dict[int, int], dict[int, float]]:
    """Mean IoU after optimal one-to-one matching of foreground classes.

    Background 0 is matched to 0. Predicted classes without a partner count as
    wrong wherever they appear; true classes without a partner get IoU 0.

    Args:
      pred_maps: N integer maps [H, W] with arbitrary class ids (0 = background).
      true_maps: N integer maps [H, W], 0 = background, 1..T = true classes.

    Returns:
      (miou, mapping, per_class_iou): miou is the mean over the true classes
      present in `true_maps`, background included; mapping is
      {predicted id: true id}; per_class_iou is {true id: IoU}.
    """
    conf = confusion_matrix(pred_maps, true_maps)
    mapping = match_classes(conf)
    n_true = conf.shape[0]
    # Remapped confusion: predicted columns merged onto their true partner,
    # unmatched predicted columns go to an extra "no class" column.
    remapped = np.zeros((n_true, n_true + 1), np.int64)
    for p in range(conf.shape[1]):
        remapped[:, mapping.get(p, n_true)] += conf[:, p]
    inter = np.diag(remapped[:, :n_true]).astype(np.float64)
    union = remapped.sum(1) + remapped[:, :n_true].sum(0) - inter
    present = conf.sum(1) > 0
    per_class = {
        int(t): float(inter[t] / union[t]) for t in range(n_true) if present[t]
    }
    return float(np.mean(list(per_class.values()))), mapping, per_class
