"""Tiny generated images and stand-ins shared by the label_gen tests."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from label_gen.refine import Proposals

SURFACE = (200, 205, 210)
KINDS = {  # kind -> (colour, shape)
    1: ((220, 60, 40), "disc"),
    2: ((40, 80, 200), "square"),
    3: ((240, 200, 40), "bar"),
}


def scene(seed: int, size: int = 96, kinds=(1, 2, 3), noise: float = 3.0):
    """A uniform surface with one disc, square and bar at jittered places.

    Returns:
      (uint8 [size, size, 3] image, uint8 [size, size] true kind map).
    """
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (size, size), SURFACE)
    lab = Image.new("L", (size, size), 0)
    draw, draw_lab = ImageDraw.Draw(img), ImageDraw.Draw(lab)
    slots = {1: (0.27, 0.3), 2: (0.72, 0.3), 3: (0.5, 0.74)}
    for kind in kinds:
        colour, shape = KINDS[kind]
        cx, cy = (np.array(slots[kind]) + rng.uniform(-0.03, 0.03, 2)) * size
        r = size * 0.12
        if shape == "disc":
            box = [cx - r, cy - r, cx + r, cy + r]
            draw.ellipse(box, fill=colour)
            draw_lab.ellipse(box, fill=kind)
        elif shape == "square":
            box = [cx - r, cy - r, cx + r, cy + r]
            draw.rectangle(box, fill=colour)
            draw_lab.rectangle(box, fill=kind)
        else:
            box = [cx - 2.2 * r, cy - 0.4 * r, cx + 2.2 * r, cy + 0.4 * r]
            draw.rectangle(box, fill=colour)
            draw_lab.rectangle(box, fill=kind)
    pixels = np.asarray(img, np.float32) + rng.normal(0, noise, (size, size, 3))
    return np.clip(pixels, 0, 255).astype(np.uint8), np.asarray(lab)


def scene_dataset(folder, n: int = 8, size: int = 64, same: bool = False):
    """Write n scenes (all scene 0 when `same`) as PNGs into `folder`.

    Returns:
      (InputImage list, {image sum: true kind map}) for TruthProposer.
    """
    from label_gen.output import InputImage

    folder.mkdir(parents=True, exist_ok=True)
    images, truths = [], {}
    for i in range(n):
        image, truth = scene(0 if same else i, size)
        path = folder / f"{i:03d}.png"
        Image.fromarray(image).save(path)
        images.append(InputImage(f"{i:03d}", path))
        truths[int(image.astype(np.int64).sum())] = truth
    return images, truths


def colour_features(crops: np.ndarray) -> np.ndarray:
    """Stand-in FeatureExtractor: mean colour of non-black crop pixels, x20.

    Args:
      crops: float32 [B, S, S, 3] ImageNet-normalised.

    Returns:
      float32 [B, 3].
    """
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    rgb = crops * std + mean
    inside = rgb.sum(-1, keepdims=True) > 0.05
    total = (rgb * inside).sum((1, 2)) / np.maximum(inside.sum((1, 2)), 1)
    return (20.0 * total).astype(np.float32)


class TruthProposer:
    """Stand-in proposer: components are the connected pieces of the truth."""

    def __init__(self, truths: dict[int, np.ndarray]):
        self.truths = truths  # image sum (a cheap key) -> kind map
        self.calls = 0

    def __call__(self, image: np.ndarray) -> Proposals:
        from scipy import ndimage

        self.calls += 1
        truth = self.truths[int(image.astype(np.int64).sum())]
        comps, _ = ndimage.label(truth > 0)
        return Proposals(comps, comps, truth == 0, {"components": int(comps.max())})


class EmptyProposer:
    """Stand-in proposer that never finds anything."""

    def __call__(self, image: np.ndarray) -> Proposals:
        return Proposals.empty(image.shape[:2])
