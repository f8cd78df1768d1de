"""Offline proposals: components without foundation-model weights.

The offline backend replaces Grounded-SAM/SAM (method-spec §2.2-2.3) by
classical image analysis with scikit-image and SciPy, for products lying on a
fairly uniform surface:

1. background: a smooth (quadratic) colour model of the surface, fitted to the
   image border and refined on the pixels it explains; pixels far from it in
   CIELAB are foreground;
2. over-segmentation: Felzenszwalb's graph segmentation of the foreground;
3. grouping: adjacent segments are merged most-similar-first while their mean
   colours are closer than `merge_distance` (shading and texture vanish,
   differently coloured parts stay apart), then segments smaller than the
   minimum component area are absorbed by the neighbour they share most border
   with.

Each remaining segment is one component; stages e-h (features, clustering,
filtering) are the same as for the foundation backend.
"""

from __future__ import annotations

import heapq

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage import color, measure, segmentation
from threadpoolctl import threadpool_limits

from label_gen.refine import Proposals
from label_gen.settings import OfflineSettings


def _working_image(image: np.ndarray, max_side: int) -> np.ndarray:
    """The image at the working resolution (long side <= max_side)."""
    h, w = image.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1.0:
        return image
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))


def _design(ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Quadratic surface basis [N, 6] at normalised coordinates in [-1, 1]."""
    return np.stack([np.ones_like(xs), xs, ys, xs * xs, xs * ys, ys * ys], axis=1)


def background_distance(lab: np.ndarray, s: OfflineSettings) -> tuple:
    """CIELAB distance of each pixel to a smooth model of the surface colour.

    The quadratic model (one per channel) is fitted on a coarse pixel grid:
    first on the border band, then twice more on the grid pixels it explains.

    Args:
      lab: float [H, W, 3] CIELAB image.
      s: border width, quantile and margin.

    Returns:
      (distance float [H, W], threshold) — foreground is distance > threshold.
    """
    h, w = lab.shape[:2]
    step = max(1, min(h, w) // 64)
    ys, xs = np.linspace(-1, 1, h), np.linspace(-1, 1, w)
    gy, gx = np.meshgrid(ys[::step], xs[::step], indexing="ij")
    grid = lab[::step, ::step].reshape(-1, 3)
    basis = _design(gy.ravel(), gx.ravel())
    band = max(1, int(round(s.border_frac * min(h, w))))
    rows, cols = np.arange(0, h, step), np.arange(0, w, step)
    inner_r = (rows >= band) & (rows < h - band)
    inner_c = (cols >= band) & (cols < w - band)
    sample = ~(inner_r[:, None] & inner_c[None, :]).ravel()
    for _ in range(3):
        coef, *_ = np.linalg.lstsq(basis[sample], grid[sample], rcond=None)
        dist = np.linalg.norm(grid - basis @ coef, axis=1)
        quant = float(np.quantile(dist[sample], s.background_quantile))
        threshold = quant + s.background_margin
        sample = dist <= threshold
    fy, fx = np.meshgrid(ys, xs, indexing="ij")
    model = (_design(fy.ravel(), fx.ravel()) @ coef).reshape(h, w, 3)
    return np.linalg.norm(lab - model, axis=2), threshold


def foreground_mask(lab: np.ndarray, s: OfflineSettings) -> np.ndarray:
    """Foreground pixels: far from the surface model, cleaned up.

    Returns:
      bool [H, W].
    """
    dist, threshold = background_distance(lab, s)
    # A pixel belongs to an object when it is at least half as far from the
    # surface as the object pixels next to it: mixed edge pixels then follow
    # the 50 % coverage rule instead of forming a halo.
    local = ndimage.maximum_filter(dist, size=5)
    fg = (dist > threshold) & (dist >= 0.5 * local)
    fg = ndimage.binary_opening(fg, structure=np.ones((3, 3)))
    fg = _drop_small(fg, s.min_area_frac * fg.size)
    return ~_drop_small(~fg, s.hole_area_frac * fg.size)


def _drop_small(mask: np.ndarray, max_size: float) -> np.ndarray:
    """`mask` without its 4-connected pieces of at most `max_size` pixels."""
    labels, _ = ndimage.label(mask)
    sizes = np.bincount(labels.ravel())
    keep = sizes > max_size
    keep[0] = False
    return keep[labels]


def _adjacency(labels: np.ndarray) -> dict[tuple[int, int], int]:
    """(a, b) with a < b -> number of 4-neighbour pixel pairs between them."""
    pairs = [
        np.stack([labels[:, :-1].ravel(), labels[:, 1:].ravel()], 1),
        np.stack([labels[:-1].ravel(), labels[1:].ravel()], 1),
    ]
    pairs = np.concatenate(pairs)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    pairs.sort(axis=1)
    uniq, counts = np.unique(pairs, axis=0, return_counts=True)
    return {(int(a), int(b)): int(c) for (a, b), c in zip(uniq, counts, strict=True)}


class _Regions:
    """Union-find over segment labels with area and mean colour per root."""

    def __init__(self, labels: np.ndarray, lab: np.ndarray, lightness_weight: float):
        n = int(labels.max()) + 1
        self.weights = np.array([lightness_weight, 1.0, 1.0])
        self.parent = np.arange(n)
        flat = labels.ravel()
        self.area = np.bincount(flat, minlength=n).astype(np.float64)
        # pixels whose 5x5 neighbourhood lies inside their own segment
        same = ndimage.minimum_filter(labels, 5) == ndimage.maximum_filter(labels, 5)
        self.deep = np.bincount(flat[same.ravel()], minlength=n).astype(np.float64)
        sums = [np.bincount(flat, lab[..., c].ravel(), n) for c in range(3)]
        self.mean = np.stack(sums, 1) / np.maximum(self.area, 1)[:, None]
        self.edges: dict[int, dict[int, int]] = {i: {} for i in range(n)}
        for (a, b), count in _adjacency(labels).items():
            if a and b:  # label 0 is the background
                self.edges[a][b] = count
                self.edges[b][a] = count

    def find(self, i: int) -> int:
        """Root of label i (with path halving)."""
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return int(i)

    def distance(self, a: int, b: int) -> float:
        """Weighted CIELAB distance between the mean colours of two roots."""
        return float(np.linalg.norm((self.mean[a] - self.mean[b]) * self.weights))

    def union(self, a: int, b: int) -> int:
        """Merge root b into root a; returns a."""
        total = self.area[a] + self.area[b]
        self.mean[a] = (
            self.mean[a] * self.area[a] + self.mean[b] * self.area[b]
        ) / total
        self.area[a] = total
        self.deep[a] += self.deep[b]
        self.parent[b] = a
        for nb, count in self.edges.pop(b).items():
            self.edges[nb].pop(b, None)
            if nb != a:
                self.edges[a][nb] = self.edges[a].get(nb, 0) + count
                self.edges[nb][a] = self.edges[a][nb]
        return a


def _merge_similar(regions: _Regions, max_distance: float) -> None:
    """Merge adjacent regions, most similar first, while closer than max_distance."""
    heap = [
        (regions.distance(a, b), a, b)
        for a, nbs in regions.edges.items()
        for b in nbs
        if a < b
    ]
    heapq.heapify(heap)
    while heap:
        dist, a, b = heapq.heappop(heap)
        if dist >= max_distance:
            break
        if regions.find(a) != a or regions.find(b) != b or b not in regions.edges[a]:
            continue  # one side was merged away
        now = regions.distance(a, b)
        if now != dist:  # a side grew since this entry was pushed
            heapq.heappush(heap, (now, a, b))
            continue
        root = regions.union(a, b)
        for nb in regions.edges[root]:
            heapq.heappush(
                heap, (regions.distance(root, nb), min(root, nb), max(root, nb))
            )


def _absorb_small(regions: _Regions, min_area: float) -> set[int]:
    """Give small or thin regions to the neighbour they share most border with.

    Thin regions (no pixel 2 px inside them) are edge fringes, pins, slots or
    threads of a larger part; a thin region without neighbours stays.

    Returns:
      Roots of small regions with no neighbour (dropped).
    """
    dropped, kept = set(), set()
    while True:
        roots = [
            r for r in regions.edges
            if r and r not in dropped and r not in kept
            and (regions.area[r] < min_area or regions.deep[r] == 0)
        ]  # fmt: skip
        if not roots:
            return dropped
        small = min(roots, key=lambda r: regions.area[r])
        if regions.edges[small]:
            nbs = regions.edges[small]
            regions.union(max(nbs, key=lambda nb: nbs[nb]), small)
        elif regions.area[small] < min_area:
            dropped.add(small)
        else:
            kept.add(small)


def colour_components(
    lab: np.ndarray, rgb: np.ndarray, fg: np.ndarray, s
) -> np.ndarray:
    """Split the foreground into colour-homogeneous components.

    Args:
      lab: float [H, W, 3] CIELAB (smoothed).
      rgb: uint8 [H, W, 3] (smoothed) for the graph segmentation.
      fg: bool [H, W] foreground.
      s: OfflineSettings.

    Returns:
      int32 [H, W] component ids 1..M (0 = background), largest first.
    """
    segs = segmentation.felzenszwalb(rgb, scale=s.segment_scale, sigma=0.0, min_size=8)
    labels = measure.label(np.where(fg, segs + 1, 0), background=0, connectivity=1)
    regions = _Regions(labels, lab, s.lightness_weight)
    _merge_similar(regions, s.merge_distance)
    dropped = _absorb_small(regions, s.min_area_frac * fg.size)
    roots = np.array([regions.find(i) for i in range(len(regions.parent))])
    roots[0] = 0
    roots[list(dropped)] = 0
    merged = roots[labels]
    ids, areas = np.unique(merged[merged > 0], return_counts=True)
    lut = np.zeros(len(roots), np.int32)
    lut[ids[np.argsort(-areas, kind="stable")]] = np.arange(1, len(ids) + 1)
    return lut[merged]


def offline_proposals(image: np.ndarray, s: OfflineSettings) -> Proposals:
    """Components and background of one image, at its original resolution.

    Args:
      image: uint8 [H, W, 3].
      s: OfflineSettings.

    Returns:
      Proposals (components = instances; background = not foreground).
    """
    h, w = image.shape[:2]
    work = _working_image(image, s.max_side)
    smooth = ndimage.gaussian_filter(
        work.astype(np.float32), (s.smooth_sigma, s.smooth_sigma, 0)
    )
    lab = color.rgb2lab(smooth / 255.0)
    fg = foreground_mask(lab, s)
    comps = colour_components(lab, np.clip(smooth, 0, 255).astype(np.uint8), fg, s)
    if comps.shape != (h, w):
        comps = np.asarray(Image.fromarray(comps).resize((w, h), Image.NEAREST))
    comps = comps.astype(np.uint16)
    background = ~fg
    if background.shape != (h, w):
        small = Image.fromarray(background.astype(np.uint8))
        background = np.asarray(small.resize((w, h), Image.NEAREST)).astype(bool)
    info = {"components": int(comps.max())}
    return Proposals(comps, comps, background, info)


class OfflineProposer:
    """`Proposals` of one image from the offline backend."""

    def __init__(self, settings: OfflineSettings):
        self.settings = settings

    def __call__(self, image: np.ndarray) -> Proposals:
        """Proposals of uint8 [H, W, 3] `image` (one BLAS/OpenMP thread)."""
        with threadpool_limits(limits=1):
            return offline_proposals(image, self.settings)
