"""Component crops and rotation-averaged CNN features f_com (method-spec §2.5).

A component is cut out of its image (pixels outside the mask set to 0), scaled
so the diagonal of its minimum-area rectangle becomes `crop_size` (65), padded
to crop_size x crop_size, rotated R times, and passed through the last stage of
a pretrained CNN; f_com is the feature map averaged over H, W and R. The
minimum-area rectangle uses a convex hull and rotating calipers (no OpenCV).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
from PIL import Image
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from csad_jax.data.image_io import IMAGENET_MEAN, IMAGENET_STD
from label_gen.refine import Region
from label_gen.settings import FeatureSettings

_EIGHT = np.ones((3, 3), dtype=bool)


class FeatureExtractor(Protocol):
    """Pooled last-stage CNN features of normalised crops."""

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        """float32 [B, S, S, 3] ImageNet-normalised -> float32 [B, C]."""
        ...


def min_area_rect_size(points: np.ndarray) -> tuple[float, float]:
    """Side lengths of the minimum-area rectangle around 2-D points.

    Args:
      points: float [N, 2] (any coordinate order).

    Returns:
      (long side, short side); zeros for a single point.
    """
    points = np.unique(np.asarray(points, dtype=np.float64), axis=0)
    try:
        hull = points[ConvexHull(points).vertices]
    except (QhullError, ValueError):  # fewer than 3 points, or all collinear
        span = points.max(axis=0) - points.min(axis=0)
        return float(np.hypot(*span)), 0.0
    edges = np.roll(hull, -1, axis=0) - hull
    edges /= np.linalg.norm(edges, axis=1, keepdims=True)
    normals = np.stack([-edges[:, 1], edges[:, 0]], axis=1)
    along = hull @ edges.T  # [vertices, edges]
    across = hull @ normals.T
    widths = along.max(axis=0) - along.min(axis=0)
    heights = across.max(axis=0) - across.min(axis=0)
    best = int(np.argmin(widths * heights))
    return float(max(widths[best], heights[best])), float(
        min(widths[best], heights[best])
    )


def _largest_piece(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected piece of a bool mask (OpenCV's external contour)."""
    labels, count = ndimage.label(mask, structure=_EIGHT)
    if count <= 1:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    return labels == int(np.argmax(sizes)) + 1


def resize_linear(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize without antialiasing, half-pixel centres (cv2 INTER_LINEAR).

    Args:
      image: uint8 [H, W, C].
      size: output (h, w).

    Returns:
      uint8 [h, w, C].
    """

    def taps(n_in: int, n_out: int):
        """Source indices (low, high) and weights of one axis."""
        pos = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
        lo = np.floor(pos).astype(int)
        frac = pos - lo
        frac[lo < 0], lo[lo < 0] = 0.0, 0
        top = lo >= n_in - 1
        frac[top], lo[top] = 0.0, n_in - 1
        return lo, np.minimum(lo + 1, n_in - 1), frac

    y0, y1, fy = taps(image.shape[0], size[0])
    x0, x1, fx = taps(image.shape[1], size[1])
    img = image.astype(np.float32)
    rows = img[y0] * (1 - fy)[:, None, None] + img[y1] * fy[:, None, None]
    out = rows[:, x0] * (1 - fx)[None, :, None] + rows[:, x1] * fx[None, :, None]
    return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)


def component_crop(image: np.ndarray, region: Region, size: int = 65) -> np.ndarray:
    """The masked component, diagonal scaled to `size`, zero-padded (§2.5 1-4).

    Args:
      image: uint8 [H, W, 3] full image.
      region: the component.
      size: output side (official 65).

    Returns:
      uint8 [size, size, 3].
    """
    masked = image[region.box] * region.mask[:, :, None]
    piece = _largest_piece(region.mask)
    ys, xs = np.nonzero(piece)
    diag = float(np.hypot(*min_area_rect_size(np.stack([xs, ys], axis=1))))
    crop = masked[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    scale = size / (diag + 1.0)
    new_h = int(np.clip(np.floor(crop.shape[0] * scale), 1, size))
    new_w = int(np.clip(np.floor(crop.shape[1] * scale), 1, size))
    crop = resize_linear(crop, (new_h, new_w))
    bottom, right = (size - new_h) // 2, (size - new_w) // 2
    pad = ((size - new_h - bottom, bottom), (size - new_w - right, right), (0, 0))
    return np.pad(crop, pad)


def rotation_angles(settings: FeatureSettings) -> np.ndarray:
    """R angles in degrees: linspace(0, 360, R), with or without 360 itself."""
    return np.linspace(
        0.0, 360.0, settings.rotations, endpoint=settings.rotation_endpoint
    )


def rotated_crops(crop: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """PIL bilinear rotations (counter-clockwise, same canvas, black fill).

    Args:
      crop: uint8 [S, S, 3].
      angles: [R] degrees.

    Returns:
      uint8 [R, S, S, 3].
    """
    pil = Image.fromarray(crop)
    return np.stack(
        [np.asarray(pil.rotate(float(a), resample=Image.BILINEAR)) for a in angles]
    )


def normalize_crops(crops: np.ndarray) -> np.ndarray:
    """uint8 [..., 3] -> float32 ImageNet-normalised (ToTensor + Normalize)."""
    x = crops.astype(np.float32) / 255.0
    mean = np.asarray(IMAGENET_MEAN, np.float32)
    return (x - mean) / np.asarray(IMAGENET_STD, np.float32)


def component_features(
    image: np.ndarray,
    regions: Sequence[Region],
    extractor: FeatureExtractor,
    settings: FeatureSettings,
) -> np.ndarray:
    """f_com of every component of one image.

    Args:
      image: uint8 [H, W, 3].
      regions: the image's components.
      extractor: pooled CNN features of normalised crops.
      settings: crop size, rotations, batch size.

    Returns:
      float32 [len(regions), C]; [0, 0] when there are no components.
    """
    if not regions:
        return np.zeros((0, 0), dtype=np.float32)
    angles = rotation_angles(settings)
    crops = np.concatenate(
        [
            rotated_crops(component_crop(image, r, settings.crop_size), angles)
            for r in regions
        ]
    )
    x = normalize_crops(crops)
    feats = np.concatenate(
        [
            np.asarray(extractor(x[i : i + settings.batch_size]), dtype=np.float32)
            for i in range(0, len(x), settings.batch_size)
        ]
    )
    return feats.reshape(len(regions), len(angles), -1).mean(axis=1)


class BackboneFeatures:
    """A csad_jax backbone stage, pooled over H and W (fixed batch, one compile)."""

    def __init__(
        self,
        name: str,
        stage: str = "layer4",
        weights=None,
        batch_size: int = 64,
        backbone=None,
    ):
        import jax
        from flax import nnx

        if backbone is None:
            from csad_jax.backbones import load_backbone

            kwargs = {} if weights is None else {"weights": weights}
            backbone = load_backbone(name, **kwargs)
        self.batch_size = batch_size
        graphdef, state = nnx.split(backbone)
        self._state = state

        def pooled(state, x):
            """Stage output averaged over H and W: [B, C]."""
            model = nnx.merge(graphdef, state)
            return model(x, stages=(stage,))[stage].mean(axis=(1, 2))

        self._fn = jax.jit(pooled)

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        """float32 [B, S, S, 3] normalised -> float32 [B, C]."""
        n = len(crops)
        out = []
        for i in range(0, n, self.batch_size):
            chunk = crops[i : i + self.batch_size]
            pad = self.batch_size - len(chunk)
            if pad:
                chunk = np.concatenate(
                    [chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)]
                )
            out.append(
                np.asarray(self._fn(self._state, chunk))[: self.batch_size - pad]
            )
        return np.concatenate(out)
