"""SAM's automatic mask generator with bounded memory and without OpenCV.

segment-anything keeps masks as run-length encodings between its point batches
(`points_per_batch` prompts at a time), but its small-region clean-up decodes
every mask at once and needs OpenCV. `StreamingMaskGenerator` replaces that
clean-up with a SciPy one that decodes one mask at a time, and hands masks out
one at a time, so a 1700x1000 image never holds all its masks decoded.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from scipy import ndimage
from segment_anything import SamAutomaticMaskGenerator
from segment_anything.utils.amg import mask_to_rle_pytorch, rle_to_mask

from label_gen.settings import SamSettings

_EIGHT = np.ones((3, 3), dtype=bool)


def remove_small_regions(
    mask: np.ndarray, area: float, mode: str
) -> tuple[np.ndarray, bool]:
    """Fill holes ("holes") or drop islands ("islands") smaller than `area`.

    Same rule as segment-anything's OpenCV version (8-connected pieces; when
    every island is small the largest one is kept).

    Args:
      mask: bool [H, W].
      area: pieces with fewer pixels than this are small.
      mode: "holes" or "islands".

    Returns:
      (new mask, whether it changed).
    """
    holes = mode == "holes"
    labels, count = ndimage.label(~mask if holes else mask, structure=_EIGHT)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    small = np.flatnonzero(sizes < area) + 1
    if small.size == 0:
        return mask, False
    if holes:
        return mask | np.isin(labels, small), True
    large = np.flatnonzero(sizes >= area) + 1
    if large.size == 0:
        large = np.array([int(np.argmax(sizes)) + 1])
    return np.isin(labels, large), True


def _box(mask: np.ndarray) -> list[int]:
    """XYXY box with inclusive max (SAM's convention); zeros when empty."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        return [0, 0, 0, 0]
    return [int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1])]


class StreamingMaskGenerator(SamAutomaticMaskGenerator):
    """The official automatic-mask settings, masks kept as RLE until used."""

    def __init__(self, model, settings: SamSettings):
        super().__init__(
            model,
            points_per_side=settings.points_per_side,
            points_per_batch=settings.points_per_batch,
            pred_iou_thresh=settings.pred_iou_thresh,
            stability_score_thresh=settings.stability_score_thresh,
            stability_score_offset=settings.stability_score_offset,
            box_nms_thresh=settings.box_nms_thresh,
            crop_n_layers=settings.crop_n_layers,
            crop_nms_thresh=settings.crop_nms_thresh,
            crop_overlap_ratio=settings.crop_overlap_ratio,
            crop_n_points_downscale_factor=settings.crop_n_points_downscale_factor,
            min_mask_region_area=0,  # the base class would import OpenCV
            output_mode="uncompressed_rle",
        )
        self.min_mask_region_area = settings.min_mask_region_area

    @staticmethod
    def postprocess_small_regions(mask_data, min_area, nms_thresh):
        """Small-region clean-up and box NMS, one decoded mask at a time."""
        import torch
        from torchvision.ops import batched_nms

        rles = mask_data["rles"]
        if len(rles) == 0:
            return mask_data
        boxes, scores, changed = [], [], {}
        for i, rle in enumerate(rles):
            mask = rle_to_mask(rle)
            mask, fixed_holes = remove_small_regions(mask, min_area, "holes")
            mask, fixed_islands = remove_small_regions(mask, min_area, "islands")
            boxes.append(_box(mask))
            scores.append(0.0 if fixed_holes or fixed_islands else 1.0)
            if fixed_holes or fixed_islands:
                changed[i] = mask_to_rle_pytorch(torch.as_tensor(mask)[None])[0]
        boxes_t = torch.as_tensor(boxes, dtype=torch.float32)
        keep = batched_nms(
            boxes_t, torch.as_tensor(scores), torch.zeros(len(boxes)), nms_thresh
        )
        for i in keep.tolist():
            if i in changed:
                rles[i] = changed[i]
                mask_data["boxes"][i] = np.asarray(boxes[i])
        mask_data.filter(keep)
        return mask_data

    def _process_crop(self, image, crop_box, crop_layer_idx, orig_size):
        """The base crop step; an empty result gets [0, 4] crop boxes.

        segment-anything builds them as a [0] tensor, which makes the
        cross-crop NMS fail when no crop produced any mask.
        """
        import torch

        data = super()._process_crop(image, crop_box, crop_layer_idx, orig_size)
        if len(data["rles"]) == 0:
            data["crop_boxes"] = torch.zeros((0, 4), dtype=torch.int64)
        return data

    def stream(self, image: np.ndarray) -> Iterator[np.ndarray]:
        """Automatic masks of uint8 [H, W, 3] `image`, each bool [H, W]."""
        for record in self.generate(image):
            yield rle_to_mask(record["segmentation"])
