"""Tiny MVTec LOCO-layout trees written inside each test (PNG files via Pillow)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

DEFECTS = [
    {
        "defect_name": "missing_item",
        "pixel_value": 255,
        "saturation_threshold": 1.0,
        "relative_saturation": True,
    },
    {
        "defect_name": "scratch",
        "pixel_value": 240,
        "saturation_threshold": 30,
        "relative_saturation": False,
    },
]


def write_png(path: Path, array: np.ndarray) -> Path:
    """Write `array` as an image file (mode chosen by Pillow from the dtype)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def random_rgb(h: int, w: int, seed: int) -> np.ndarray:
    """A reproducible random uint8 [h, w, 3] image."""
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def rect_mask(h: int, w: int, value: int) -> np.ndarray:
    """A uint8 [h, w] mask with one rectangle of `value`."""
    mask = np.zeros((h, w), np.uint8)
    mask[h // 4 : h // 2, w // 4 : w // 2] = value
    return mask


def build_category(
    root: Path,
    name: str = "box",
    size: tuple[int, int] = (12, 16),
    counts: tuple[int, int, int, int, int] = (3, 2, 2, 2, 1),
    defects: list | None = DEFECTS,
) -> Path:
    """Write a clean category: counts = train, val, good, logical, structural."""
    h, w = size
    folder = root / name
    n_train, n_val, n_good, n_logical, n_structural = counts
    plan = [
        ("train", "good", n_train),
        ("validation", "good", n_val),
        ("test", "good", n_good),
        ("test", "logical_anomalies", n_logical),
        ("test", "structural_anomalies", n_structural),
    ]
    seed = 0
    for split, kind, n in plan:
        (folder / split / kind).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            seed += 1
            write_png(folder / split / kind / f"{i:03d}.png", random_rgb(h, w, seed))
            if kind != "good":
                value = 255 if kind == "logical_anomalies" else 240
                gt = folder / "ground_truth" / kind / f"{i:03d}" / "000.png"
                write_png(gt, rect_mask(h, w, value))
    if defects is not None:
        (folder / "defects_config.json").write_text(json.dumps(defects))
    return folder


@pytest.fixture
def loco_root(tmp_path: Path) -> Path:
    """A dataset root holding one clean category named `box`."""
    root = tmp_path / "loco"
    build_category(root)
    return root
