"""Logical Synthetic Anomalies (LSA) and the labelled-batch jitter, on the host.

LSA pastes one or two rotated copies of components of a labelled image at
distant positions inside the object (image and label map together), so the
segmentor learns classes from appearance rather than position. Afterwards the
labelled image gets the small ShiftScaleRotate and brightness/contrast jitter
of the official pipeline. Everything is NumPy/SciPy on uint8 images, driven by
a seeded `numpy.random.Generator`.

Deliberate fixes of the official code (see docs/fidelity.md): a copy is pasted
only when a valid position was found; labels are warped with nearest
neighbour, never bilinear; an image without usable components is returned
unchanged instead of crashing.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

MASK_THRESHOLD = 200.0 / 255.0  # official: bilinear uint8 mask > 200


@dataclasses.dataclass(frozen=True)
class LSAConfig:
    """LSA and jitter settings; defaults are the official YAML / dataloader.

    Attributes:
      probability: chance of applying LSA to an image (official LSA_ratio 1).
      min_distance: minimum normalised distance source centre -> target
        (official 0.2, screw_bag 0.1).
      min_pastes, max_pastes: mandatory and total number of pasted copies.
      boundary: targets are drawn in [boundary, 1 - boundary]^2.
      weight_power: candidate sampling weight area^power (0 = uniform).
      min_area_fraction: candidates need more than this share of the image.
      min_foreground_overlap: share of a candidate on labelled foreground.
      max_unlabelled_fraction: a candidate with more of its pixels on label 0
        than this share of the image is skipped (official 100 px at 256^2).
      attempts: placement attempts per candidate.
      target_points: uniform points drawn per attempt.
      max_background_overlap: accept a placement whose share on the image
        background is below this, for the mandatory and the optional copies.
      shift, scale, rotate_deg, ssr_p: ShiftScaleRotate limits and probability.
      brightness, contrast, bc_p: RandomBrightnessContrast limits, probability.
    """

    probability: float = 1.0
    min_distance: float = 0.2
    min_pastes: int = 1
    max_pastes: int = 2
    boundary: float = 0.1
    weight_power: float = 0.0
    min_area_fraction: float = 0.001
    min_foreground_overlap: float = 0.9
    max_unlabelled_fraction: float = 100.0 / 65536.0
    attempts: int = 500
    target_points: int = 10_000
    max_background_overlap: tuple[float, float] = (0.5, 0.9)
    shift: float = 0.01
    scale: float = 0.01
    rotate_deg: float = 2.0
    ssr_p: float = 0.5
    brightness: float = 0.05
    contrast: float = 0.05
    bc_p: float = 0.5


@dataclasses.dataclass(frozen=True)
class _Candidate:
    mask: np.ndarray  # bool [H, W]
    bbox: tuple[int, int, int, int]  # y0, x0, y1, x1 (exclusive)
    area: int


# ---------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------


def _rotation(angle_deg: float) -> np.ndarray:
    """2x2 rotation acting on (y, x) pixel coordinates."""
    t = np.deg2rad(angle_deg)
    return np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])


def _warp_window(cand: _Candidate, centre, target, angle, shape):
    """Window and inverse map of the paste: rotate about `centre`, move to target.

    Returns:
      (y0, x0, y1, x1) output window clipped to `shape` (or None if empty),
      and (matrix, offset) mapping window coordinates to source coordinates.
    """
    rot = _rotation(angle)
    y0, x0, y1, x1 = cand.bbox
    corners = np.array([[y0, x0], [y0, x1], [y1, x0], [y1, x1]], np.float64)
    moved = (corners - centre) @ rot.T + target
    lo = np.maximum(np.floor(moved.min(0)).astype(int) - 1, 0)
    hi = np.minimum(np.ceil(moved.max(0)).astype(int) + 2, shape)
    if np.any(hi <= lo):
        return None, None
    inv = rot.T
    offset = inv @ (lo - target) + centre
    return (lo[0], lo[1], hi[0], hi[1]), (inv, offset)


def _warp(plane: np.ndarray, window, transform, order: int) -> np.ndarray:
    """Samples `plane` ([H, W] or [H, W, C]) over `window` with zero border."""
    y0, x0, y1, x1 = window
    inv, offset = transform
    out_shape = (y1 - y0, x1 - x0)
    if plane.ndim == 2:
        return ndimage.affine_transform(
            plane, inv, offset, out_shape, order=order, mode="constant", cval=0
        )
    return np.stack(
        [_warp(plane[..., c], window, transform, order) for c in range(plane.shape[2])],
        axis=-1,
    )


# ---------------------------------------------------------------------------
# LSA
# ---------------------------------------------------------------------------


def _candidates(labels, instances, cfg: LSAConfig) -> list[_Candidate]:
    """Instance masks large enough and lying on labelled foreground."""
    h, w = labels.shape
    out = []
    found = ndimage.find_objects(instances.astype(np.int64))
    for idx, box in enumerate(found, start=1):
        if box is None:
            continue
        mask = instances == idx
        area = int(mask.sum())
        if area <= cfg.min_area_fraction * h * w:
            continue
        if np.count_nonzero(labels[mask] > 0) / area <= cfg.min_foreground_overlap:
            continue
        bbox = (box[0].start, box[1].start, box[0].stop, box[1].stop)
        out.append(_Candidate(mask, bbox, area))
    return out


def _draw_target(centre_norm, rng, cfg: LSAConfig):
    """A normalised (y, x) target far from the source, or None if impossible."""
    pts = rng.uniform(cfg.boundary, 1.0 - cfg.boundary, (cfg.target_points, 2))
    d2 = np.sum((pts - centre_norm) ** 2, axis=1)
    weight = np.where(d2 < cfg.min_distance**2, 0.0, d2)
    total = weight.sum()
    if total <= 0:
        return None
    return pts[rng.choice(len(pts), p=weight / total)]


def _place(cand, background, rng, cfg: LSAConfig, max_overlap: float):
    """Searches a placement; returns (window, transform, mask) or None."""
    shape = np.array(background.shape)
    y0, x0, y1, x1 = cand.bbox
    centre = np.array([y0 + (y1 - y0) // 2, x0 + (x1 - x0) // 2], np.float64)
    source = cand.mask.astype(np.float32)
    for _ in range(cfg.attempts):
        point = _draw_target(centre / shape, rng, cfg)
        if point is None:
            continue
        angle = float(rng.integers(0, 360))
        window, transform = _warp_window(cand, centre, point * shape, angle, shape)
        if window is None:
            continue
        mask = _warp(source, window, transform, order=1) > MASK_THRESHOLD
        n = np.count_nonzero(mask)
        wy0, wx0, wy1, wx1 = window
        if n and np.count_nonzero(mask & background[wy0:wy1, wx0:wx1]) / n < (
            max_overlap
        ):
            return window, transform, mask
    return None


def _paste(out_img, out_lab, src_img, src_lab, cand, placement) -> None:
    """Writes the warped component (RGB bilinear, labels nearest) in place."""
    window, transform, mask = placement
    y0, x0, y1, x1 = window
    masked_img = np.where(cand.mask[..., None], src_img, 0).astype(np.float32)
    masked_lab = np.where(cand.mask, src_lab, 0)
    rgb = np.clip(np.rint(_warp(masked_img, window, transform, 1)), 0, 255)
    lab = _warp(masked_lab, window, transform, 0)
    out_img[y0:y1, x0:x1][mask] = rgb[mask].astype(np.uint8)
    out_lab[y0:y1, x0:x1][mask] = lab[mask]


def _pop_candidate(cands: list[_Candidate], rng, power: float) -> _Candidate:
    weights = np.array([c.area for c in cands], np.float64) ** power
    return cands.pop(int(rng.choice(len(cands), p=weights / weights.sum())))


def logical_synthetic_anomaly(
    image: np.ndarray,
    labels: np.ndarray,
    instances: np.ndarray,
    background: np.ndarray,
    rng: np.random.Generator,
    cfg: LSAConfig = LSAConfig(),
) -> tuple[np.ndarray, np.ndarray]:
    """Pastes rotated copies of the image's own components elsewhere on it.

    Args:
      image: uint8 [H, W, 3].
      labels: integer [H, W] class map (0 = background).
      instances: integer [H, W] component instance ids (0 = none).
      background: bool [H, W], True on the image background.
      rng: the random generator (the only source of randomness).
      cfg: settings.

    Returns:
      (image uint8 [H, W, 3], labels [H, W] of labels' dtype), new arrays.
    """
    out_img, out_lab = image.copy(), labels.copy()
    if rng.random() >= cfg.probability:
        return out_img, out_lab
    cands = _candidates(labels, instances, cfg)
    max_off = cfg.max_unlabelled_fraction * labels.size
    for attempt in range(cfg.max_pastes):
        mandatory = attempt < cfg.min_pastes
        overlap = cfg.max_background_overlap[0 if mandatory else 1]
        while cands:
            cand = _pop_candidate(cands, rng, cfg.weight_power)
            placement = None
            if np.count_nonzero(labels[cand.mask] == 0) <= max_off:
                placement = _place(cand, background, rng, cfg, overlap)
            if placement is not None:
                _paste(out_img, out_lab, image, labels, cand, placement)
                break
            if not mandatory:
                break
    return out_img, out_lab


# ---------------------------------------------------------------------------
# Photometric and geometric jitter (albumentations equivalents)
# ---------------------------------------------------------------------------


def shift_scale_rotate(
    image: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    cfg: LSAConfig = LSAConfig(),
) -> tuple[np.ndarray, np.ndarray]:
    """With probability ssr_p, a small similarity warp about the image centre.

    Shift in [-shift, shift] of the size, scale 1 + [-scale, scale], angle in
    [-rotate_deg, rotate_deg]; bilinear for the image, nearest for labels,
    zero border (albumentations ShiftScaleRotate with constant border 0).

    Args:
      image: uint8 [H, W, 3].
      labels: integer [H, W].
      rng: random generator.
      cfg: settings.

    Returns:
      (image uint8 [H, W, 3], labels [H, W]).
    """
    if rng.random() >= cfg.ssr_p:
        return image, labels
    angle = rng.uniform(-cfg.rotate_deg, cfg.rotate_deg)
    scale = rng.uniform(1.0 - cfg.scale, 1.0 + cfg.scale)
    dx, dy = rng.uniform(-cfg.shift, cfg.shift, 2)
    h, w = labels.shape
    centre = np.array([h / 2.0 - 0.5, w / 2.0 - 0.5])
    shift = np.array([dy * h, dx * w])
    inv = _rotation(angle).T / scale
    offset = centre - inv @ (centre + shift)
    full = (0, 0, h, w)
    warped = _warp(image.astype(np.float32), full, (inv, offset), order=1)
    out_img = np.clip(np.rint(warped), 0, 255).astype(np.uint8)
    return out_img, _warp(labels, full, (inv, offset), order=0)


def brightness_contrast(
    image: np.ndarray, rng: np.random.Generator, cfg: LSAConfig = LSAConfig()
) -> np.ndarray:
    """With probability bc_p, x * (1 + c) + 255 * b with c, b small (uint8 LUT).

    Args:
      image: uint8 [H, W, 3].
      rng: random generator.
      cfg: settings.

    Returns:
      uint8 [H, W, 3].
    """
    if rng.random() >= cfg.bc_p:
        return image
    alpha = 1.0 + rng.uniform(-cfg.contrast, cfg.contrast)
    beta = rng.uniform(-cfg.brightness, cfg.brightness)
    lut = np.clip(np.arange(256) * alpha + beta * 255.0, 0, 255).astype(np.uint8)
    return lut[image]


def augment_labelled(
    image: np.ndarray,
    labels: np.ndarray,
    instances: np.ndarray,
    background: np.ndarray,
    rng: np.random.Generator,
    cfg: LSAConfig = LSAConfig(),
) -> tuple[np.ndarray, np.ndarray]:
    """The full labelled-image augmentation: LSA, then the two jitters.

    Args:
      image: uint8 [H, W, 3].
      labels: integer [H, W] class map.
      instances: integer [H, W] instance ids.
      background: bool [H, W].
      rng: random generator.
      cfg: settings.

    Returns:
      (image uint8 [H, W, 3], labels [H, W]).
    """
    image, labels = logical_synthetic_anomaly(
        image, labels, instances, background, rng, cfg
    )
    image, labels = shift_scale_rotate(image, labels, rng, cfg)
    return brightness_contrast(image, rng, cfg), labels
