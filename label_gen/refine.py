"""Mask refinement: connected components, background removal, filter-by-combine.

Method-spec §2.2 step 6 and §2.3 steps 2-8. Masks are held as `Region`s (the
bounding box and the boolean crop inside it), so a few hundred component masks
of a 1700x1000 image need memory for their boxes only.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from scipy import ndimage

MAX_COMPONENTS = 255  # the official id maps are uint8 PNGs
MIN_CC_AREA = 50  # connected pieces must have more pixels than this
MAX_BOX_FRAC = 0.95  # ... and a bounding box smaller than this image fraction
KEEP_RATIO = 0.9  # filter_by_combine and the grounding-filter threshold
DROP_RATIO = 0.95  # components this much inside a background are dropped


class Region:
    """A binary mask stored as its bounding box and the crop inside it."""

    __slots__ = ("y0", "x0", "mask", "area")

    def __init__(self, y0: int, x0: int, mask: np.ndarray):
        self.y0, self.x0 = int(y0), int(x0)
        self.mask = np.ascontiguousarray(mask, dtype=bool)
        self.area = int(self.mask.sum())

    @property
    def box(self) -> tuple[slice, slice]:
        """The (rows, cols) slices of the bounding box in the full image."""
        h, w = self.mask.shape
        return slice(self.y0, self.y0 + h), slice(self.x0, self.x0 + w)

    @classmethod
    def from_full(cls, mask: np.ndarray) -> Region | None:
        """The region of a full-size boolean mask [H, W], or None if empty."""
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        if rows.size == 0:
            return None
        y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        return cls(y0, x0, mask[y0:y1, x0:x1])

    def full(self, shape: tuple[int, int]) -> np.ndarray:
        """The mask as a full-size boolean array of `shape`."""
        out = np.zeros(shape, dtype=bool)
        out[self.box] = self.mask
        return out

    def overlap(self, full_mask: np.ndarray) -> int:
        """Number of this region's pixels that are set in a full-size mask."""
        return int(np.count_nonzero(full_mask[self.box] & self.mask))


def intersect_ratio(inter: int, area_a: int, area_b: int) -> float:
    """|A ∩ B| / min(|A|, |B|), or 0 when they do not overlap (official)."""
    if inter <= 0:
        return 0.0
    return inter / min(area_a, area_b)


def merge_regions(
    regions: Sequence[Region], shape: tuple[int, int], min_frac: float
) -> np.ndarray:
    """Paint regions into an id map, largest first (official `merge_masks`).

    Regions of area <= min_frac * H * W are dropped; the rest are sorted by
    decreasing area and region i is painted with i + 1, so smaller regions
    overwrite larger ones.

    Returns:
      uint16 [H, W] id map, 0 = no region.
    """
    limit = min_frac * shape[0] * shape[1]
    kept = sorted((r for r in regions if r.area > limit), key=lambda r: -r.area)
    out = np.zeros(shape, dtype=np.uint16)
    for i, region in enumerate(kept):
        view = out[region.box]
        view[region.mask] = i + 1
    return out


def regions_from_id_map(id_map: np.ndarray, min_frac: float) -> list[Region]:
    """One region per id 1..max with area > min_frac * H * W (official split).

    Args:
      id_map: integer [H, W], 0 = none.
      min_frac: minimum area as a fraction of the image.

    Returns:
      Regions in increasing id order.
    """
    limit = min_frac * id_map.shape[0] * id_map.shape[1]
    out = []
    for i, box in enumerate(ndimage.find_objects(id_map.astype(np.int64)), start=1):
        if box is None:
            continue
        region = Region(box[0].start, box[1].start, id_map[box] == i)
        if region.area > limit:
            out.append(region)
    return out


def _complement_region(mask: np.ndarray, max_box: float) -> Region | None:
    """The official loop's label 0: the complement of the mask, if it passes."""
    region = Region.from_full(~mask)
    if region is None or region.area <= MIN_CC_AREA:
        return None
    h, w = region.mask.shape
    return region if h * w < max_box else None


def connected_regions(mask: np.ndarray) -> list[Region]:
    """Split a mask into 4-connected pieces (§2.3 step 2).

    A piece is kept if its bounding box covers < 95 % of the image and it has
    more than 50 pixels.

    Args:
      mask: bool [H, W].

    Returns:
      The kept pieces, the mask's complement first when it passes the rules.
    """
    # NOTE: the official loop also visits OpenCV's label 0 (the complement of
    # the mask); it is kept here too so the same proposals come out.
    max_box = MAX_BOX_FRAC * mask.shape[0] * mask.shape[1]
    labels, _ = ndimage.label(mask)
    out = []
    complement = _complement_region(mask, max_box)
    if complement is not None:
        out.append(complement)
    for i, box in enumerate(ndimage.find_objects(labels), start=1):
        h, w = box[0].stop - box[0].start, box[1].stop - box[1].start
        if h * w >= max_box:
            continue
        region = Region(box[0].start, box[1].start, labels[box] == i)
        if region.area > MIN_CC_AREA:
            out.append(region)
    return out


def filter_by_combine(
    regions: Sequence[Region], shape: tuple[int, int], min_frac: float
) -> list[Region]:
    """The fine-grained refinement (§2.3 step 7): drop masks explained by others.

    Masks are visited from small to large; one is accepted while less than 90 %
    of it (relative to the smaller of it and the running union) is covered;
    the others get a second chance, in order, against the final union.

    Returns:
      The accepted regions (smallest first, then the late acceptances).
    """
    limit = min_frac * shape[0] * shape[1]
    ordered = sorted((r for r in regions if r.area > limit), key=lambda r: r.area)
    union = np.zeros(shape, dtype=bool)
    union_area = 0
    accepted, deferred = [], []
    for region in ordered:
        inter = region.overlap(union)
        if intersect_ratio(inter, union_area, region.area) < KEEP_RATIO:
            accepted.append(region)
            union[region.box] |= region.mask
            union_area += region.area - inter
        else:
            deferred.append(region)
    for region in deferred:
        inter = region.overlap(union)
        if inter / region.area < KEEP_RATIO:
            accepted.append(region)
            union[region.box] |= region.mask
            union_area += region.area - inter
    return accepted


def _inside(region: Region, mask: np.ndarray, mask_area: int) -> float:
    """intersect_ratio(region, mask)."""
    return intersect_ratio(region.overlap(mask), region.area, mask_area)


def select_components(
    proposals: Iterable[np.ndarray],
    foreground: np.ndarray | None,
    backgrounds: Sequence[np.ndarray],
) -> list[Region]:
    """§2.3 steps 2-6: split, grounding filter, background removal, top 255.

    Args:
      proposals: bool [H, W] masks, consumed one at a time.
      foreground: bool [H, W] grounding foreground, or None (no grounding filter).
      backgrounds: bool [H, W] backgrounds (SAM corner-point, grounding), applied
        in order.

    Returns:
      At most 255 regions, largest first.
    """
    fg_area = None if foreground is None else int(foreground.sum())
    bg_areas = [int(b.sum()) for b in backgrounds]
    kept = []
    for mask in proposals:
        for region in connected_regions(mask):
            if foreground is not None and not (
                _inside(region, foreground, fg_area) > KEEP_RATIO
            ):
                continue
            if any(
                _inside(region, bg, area) >= DROP_RATIO
                for bg, area in zip(backgrounds, bg_areas, strict=True)
            ):
                continue
            kept.append(region)
    kept.sort(key=lambda r: -r.area)
    return kept[:MAX_COMPONENTS]


def refine_fine(
    components: Sequence[Region], shape: tuple[int, int], min_frac: float
) -> np.ndarray:
    """Fine mode output (`refined_masks`): filter_by_combine, then merge.

    Returns:
      uint16 [H, W] instance id map.
    """
    return merge_regions(
        filter_by_combine(components, shape, min_frac), shape, min_frac
    )


def refine_coarse(grounding_map: np.ndarray, min_frac: float) -> np.ndarray:
    """Coarse mode instances (§2.3 step 8): split, connected pieces, combine, merge.

    Args:
      grounding_map: integer [H, W] id map of the grounded box masks.
      min_frac: minimum area as a fraction of the image.

    Returns:
      uint16 [H, W] instance id map.
    """
    shape = grounding_map.shape
    pieces = []
    for region in regions_from_id_map(grounding_map, min_frac):
        pieces.extend(connected_regions(region.full(shape)))
    return refine_fine(pieces, shape, min_frac)


class Proposals:
    """One image's proposal-stage output, the input of feature extraction.

    Attributes:
      components: uint16 [H, W] id map whose ids are clustered (0 = none).
      instances: uint16 [H, W] instance ids written for LSA (0 = none).
      background: bool [H, W] image background.
      info: JSON-ready counts and matched background phrases.
    """

    __slots__ = ("components", "instances", "background", "info")

    def __init__(self, components, instances, background, info=None):
        self.components = np.asarray(components, dtype=np.uint16)
        self.instances = np.asarray(instances, dtype=np.uint16)
        self.background = np.asarray(background, dtype=bool)
        self.info = dict(info or {})
        shapes = {self.components.shape, self.instances.shape, self.background.shape}
        if len(shapes) != 1 or self.components.ndim != 2:
            raise ValueError(f"proposal maps disagree in shape: {sorted(shapes)}")

    @classmethod
    def empty(cls, shape: tuple[int, int], info: dict | None = None) -> Proposals:
        """No components at all (a normal outcome: the image becomes unlabelled)."""
        zeros = np.zeros(shape, dtype=np.uint16)
        return cls(zeros, zeros, np.zeros(shape, dtype=bool), info)
